"""An X-Ray endpoint that fails before it works: for the first THROTTLE seconds it answers 429
ThrottledException, for the next FAIL seconds 500, then it forwards every request to the real
endpoint (moto). Usage: fault_proxy.py PORT UPSTREAM_PORT THROTTLE FAIL"""
import http.client
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, UPSTREAM, THROTTLE, FAIL = (int(a) for a in sys.argv[1:5])
START = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        elapsed = time.monotonic() - START
        if elapsed < THROTTLE:
            return self.reply(429, b'{"__type":"ThrottledException","message":"Rate exceeded"}')
        if elapsed < THROTTLE + FAIL:
            return self.reply(500, b'{"__type":"InternalFailure","message":"injected"}')
        upstream = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=30)
        upstream.request("POST", self.path, body, dict(self.headers))
        r = upstream.getresponse()
        self.reply(r.status, r.read())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
