"""An X-Ray sampling endpoint for the tests (moto has no sampling API): GetSamplingRules returns
one catch-all rule, GetSamplingTargets its quota for this client, both from the command line;
every request of any method is recorded (path, method, Authorization header, body) and listed by
GET /calls.
Usage: fake_xray_sampling.py PORT FIXED_RATE RESERVOIR"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, RATE, RESERVOIR = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
CALLS = []
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def record(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        with LOCK:
            CALLS.append({"path": self.path, "method": self.command,
                          "authorization": self.headers.get("Authorization", ""),
                          "body": body.decode(errors="replace")})

    def do_GET(self):
        if self.path != "/calls":
            self.record()
            self.reply({})
            return
        with LOCK:
            self.reply(CALLS)

    def do_other(self):
        self.record()
        self.reply({})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_other

    def do_POST(self):
        self.record()
        now = time.time()
        if self.path == "/GetSamplingRules":
            self.reply({"SamplingRuleRecords": [{"SamplingRule": {
                "RuleName": "test-rule", "RuleARN": "arn:aws:xray:us-east-1:123456789012:sampling-rule/test-rule",
                "ResourceARN": "*", "Priority": 1, "FixedRate": RATE, "ReservoirSize": RESERVOIR,
                "ServiceName": "*", "ServiceType": "*", "Host": "*", "HTTPMethod": "*", "URLPath": "*",
                "Version": 1, "Attributes": {}}, "CreatedAt": now - 60, "ModifiedAt": now - 60}]})
        elif self.path == "/SamplingTargets":
            self.reply({"SamplingTargetDocuments": [{"RuleName": "test-rule", "FixedRate": RATE,
                        "ReservoirQuota": RESERVOIR, "ReservoirQuotaTTL": now + 60, "Interval": 10}],
                        "LastRuleModification": now - 60, "UnprocessedStatistics": []})
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
