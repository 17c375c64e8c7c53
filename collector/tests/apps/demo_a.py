"""Demo service A (threaded Python): GET /call/<nonce> calls B's /work/<nonce> and relays its body."""
import ctypes
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Name the process (its comm), as a service's own binary would be named: the collector uses
# it as the service name outside Kubernetes.
ctypes.CDLL(None).prctl(15, b"service-a", 0, 0, 0)  # PR_SET_NAME

B_PORT = int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) < 3 or parts[1] != "call":
            self.send_error(404)
            return
        conn = http.client.HTTPConnection("127.0.0.1", B_PORT, timeout=10)
        conn.request("GET", f"/work/{parts[2]}")
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
