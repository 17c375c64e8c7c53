"""An app instrumented with the real X-Ray SDK for Python (aws-xray-sdk from PyPI): an HTTP
server whose handler opens a segment and calls a downstream service through http.client
(patched by the SDK, so the call is a subsegment and carries X-Amzn-Trace-Id). Every document
the SDK sends to the daemon address is also appended to SENT_LOG, so the test can compare
what reached X-Ray with what the SDK sent.
Usage: sdk_app.py PORT DAEMON_UDP_ADDRESS DOWNSTREAM_PORT SENT_LOG"""
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aws_xray_sdk.core import patch, xray_recorder
from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter

PORT, DAEMON, DOWNSTREAM, SENT_LOG = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]


class RecordingEmitter(UDPEmitter):
    def _send_data(self, data):
        with open(SENT_LOG, "a") as f:
            f.write(data.split("\n", 1)[1] + "\n")
        super()._send_data(data)


xray_recorder.configure(service="sdk-app", sampling=False, context_missing="LOG_ERROR",
                        emitter=RecordingEmitter(DAEMON))
patch(["httplib"])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        segment = xray_recorder.begin_segment("sdk-app")
        segment.put_http_meta("url", "http://127.0.0.1:%d%s" % (PORT, self.path))
        segment.put_http_meta("method", "GET")
        # The SDK injects X-Amzn-Trace-Id from the subsegment open around the call.
        with xray_recorder.in_subsegment("call-callee"):
            conn = http.client.HTTPConnection("127.0.0.1", DOWNSTREAM)
            conn.request("GET", self.path.replace("/front-", "/callee-"))
            conn.getresponse().read()
            conn.close()
        segment.put_http_meta("status", 200)
        xray_recorder.end_segment()
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
