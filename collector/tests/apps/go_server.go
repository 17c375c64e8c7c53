// Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200.
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
