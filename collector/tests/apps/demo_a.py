"""Demo service A (threaded Python): GET /call/<nonce> calls B's /work/<nonce> and relays its body.

Usage: demo_a.py LISTEN B, each a port (on 127.0.0.1) or host:port; B may also be a list of
routes NAME=HOST:PORT,... that GET /call/<NAME>/<nonce> picks from (/call/<nonce>: route b).
"""
import ctypes
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Name the process (its comm), as a service's own binary would be named: the collector uses
# it as the service name outside Kubernetes.
ctypes.CDLL(None).prctl(15, b"service-a", 0, 0, 0)  # PR_SET_NAME

def addr(text):
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


ROUTES = (
    dict((name, addr(a)) for name, a in (r.split("=", 1) for r in sys.argv[2].split(",")))
    if "=" in sys.argv[2]
    else {"b": addr(sys.argv[2])}
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self):
        parts = self.path.split("/")
        route = parts[2] if len(parts) > 3 else "b"
        if len(parts) < 3 or parts[1] != "call" or route not in ROUTES:
            self.send_error(404)
            return
        host, port = ROUTES[route]
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", f"/work/{parts[-1]}")
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


ThreadingHTTPServer(addr(sys.argv[1]), Handler).serve_forever()
