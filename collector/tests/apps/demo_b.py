"""Demo service B: GET /work/<nonce> sleeps a random 0-200 ms and returns the sleep in its body."""
import ctypes
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Name the process (its comm), as a service's own binary would be named: the collector uses
# it as the service name outside Kubernetes.
ctypes.CDLL(None).prctl(15, b"service-b", 0, 0, 0)  # PR_SET_NAME


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) < 3 or parts[1] != "work":
            self.send_error(404)
            return
        ms = random.uniform(0, 200)
        time.sleep(ms / 1000)
        body = json.dumps({"service": "b", "nonce": parts[2], "slept_ms": ms}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
