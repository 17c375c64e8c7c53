"""Demo service B: GET /work/<nonce> sleeps a random 0-200 ms and returns the sleep in its body.

The body's slept_ms is the sleep as measured around it, not the length asked for: a loaded
machine oversleeps by milliseconds, and tests compare B's segment against this number.

Usage: demo_b.py LISTEN [MIN_MS MAX_MS], LISTEN a port (on 127.0.0.1) or host:port.
GET /reset/<nonce> sends half a response and resets the connection.
"""
import socket
import struct
import ctypes
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Name the process (its comm), as a service's own binary would be named: the collector uses
# it as the service name outside Kubernetes.
ctypes.CDLL(None).prctl(15, b"service-b", 0, 0, 0)  # PR_SET_NAME

HOST, _, PORT = sys.argv[1].rpartition(":")
MIN_MS, MAX_MS = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else (0, 200)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) >= 3 and parts[1] == "reset":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            self.wfile.flush()
            # SO_LINGER 0: close() sends a RST instead of a FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if len(parts) < 3 or parts[1] != "work":
            self.send_error(404)
            return
        start = time.perf_counter()
        time.sleep(random.uniform(MIN_MS, MAX_MS) / 1000)
        ms = (time.perf_counter() - start) * 1000
        body = json.dumps({"service": "b", "nonce": parts[2], "slept_ms": ms}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer((HOST or "127.0.0.1", int(PORT)), Handler).serve_forever()
