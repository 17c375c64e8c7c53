// Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200;
// GET /chunked/<nonce> answers 200 with a chunked body of 6000 bytes; GET /call/<route>/<nonce>
// calls http://<address of route>/work/<nonce> (routes NAME=HOST:PORT,... in $ROUTES) and
// relays its answer. The argument is a port (on 127.0.0.1) or host:port to listen on.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	routes := map[string]string{}
	for _, r := range strings.Split(os.Getenv("ROUTES"), ",") {
		if name, addr, ok := strings.Cut(r, "="); ok {
			routes[name] = addr
		}
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/")
		var body string
		switch {
		case len(parts) >= 3 && parts[1] == "sleep":
			ms, _ := strconv.Atoi(parts[2])
			t0 := time.Now()
			time.Sleep(time.Duration(ms) * time.Millisecond)
			// How long the handler really slept.
			w.Header().Set("X-Slept-Us", strconv.FormatInt(time.Since(t0).Microseconds(), 10))
			body = fmt.Sprintf("slept %d\n", ms)

		case len(parts) >= 4 && parts[1] == "call" && routes[parts[2]] != "":
			reply, err := http.Get("http://" + routes[parts[2]] + "/work/" + parts[3])
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			b, _ := io.ReadAll(reply.Body)
			reply.Body.Close()
			body = string(b)
		case len(parts) >= 2 && parts[1] == "ok":
			body = "ok\n"
		case len(parts) >= 2 && parts[1] == "chunked":
			// No Content-Length and a flush between writes: net/http sends chunks.
			for _, piece := range []string{strings.Repeat("a", 1000), strings.Repeat("b", 2000), strings.Repeat("c", 3000)} {
				w.Write([]byte(piece))
				w.(http.Flusher).Flush()
			}
			return
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write([]byte(body))
	})
	listen := os.Args[1]
	if !strings.Contains(listen, ":") {
		listen = "127.0.0.1:" + listen
	}
	if err := http.ListenAndServe(listen, nil); err != nil {
		panic(err)
	}
}
