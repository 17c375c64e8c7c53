// Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200;
// GET /chunked/<nonce> answers 200 with a chunked body of 6000 bytes.
package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
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
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], nil); err != nil {
		panic(err)
	}
}
