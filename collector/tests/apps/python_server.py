"""Fixture server: GET /sleep/<ms>/<nonce> sleeps <ms> then answers 200; GET /ok/<nonce> 200;
GET /chunked/<nonce> answers 200 with a chunked body of CHUNKED_BODY_BYTES."""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # One send per response (head and body buffered together), and no Nagle delay: otherwise
    # each keep-alive response waits ~40 ms for the client's delayed ACK.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self):
        parts = self.path.split("/")
        slept_us = None
        if len(parts) >= 3 and parts[1] == "sleep":
            ms = int(parts[2])
            t0 = time.monotonic()
            time.sleep(ms / 1000)
            slept_us = int((time.monotonic() - t0) * 1e6)
            body = f"slept {ms}\n".encode()
        elif len(parts) >= 2 and parts[1] == "ok":
            body = b"ok\n"
        elif len(parts) >= 2 and parts[1] == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"a" * 1000, b"b" * 2000, b"c" * 3000):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        if slept_us is not None:
            # How long the handler really slept: what the captured duration is checked against.
            self.send_header("X-Slept-Us", str(slept_us))
        self.send_header("Content-Length", str(len(body)))

        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
