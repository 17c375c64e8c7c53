"""An OTLP/HTTP trace receiver for the tests, decoding with the official protobuf definitions
(the `opentelemetry-proto` package). POST /v1/traces takes ExportTraceServiceRequest
(protobuf, gzip or not) and answers ExportTraceServiceResponse; GET /spans lists every span
received as JSON (ids in hex, the resource's and the span's attributes as dicts); POST
/control sets how the next requests are answered: {"status": 503, "retry_after": 2,
"times": 3} or {"reject": 2, "times": 1} (a partial success rejecting that many spans);
--script starts with such a list. With --sigv4 REGION every request's SigV4 signature
(service xray) is recomputed with botocore from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and
a wrong one answered 403. It also stands in for the two X-Ray calls `--exporter auto` makes:
POST /GetTraceSegmentDestination answers --destination (XRay or CloudWatchLogs), and POST
/TraceSegments (PutTraceSegments) records the documents, listed under "documents".
Usage: otlp_receiver.py PORT [--sigv4 REGION] [--script JSON] [--destination D]"""
import argparse
import gzip
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

ARGS = argparse.ArgumentParser()
ARGS.add_argument("port", type=int)
ARGS.add_argument("--sigv4")
ARGS.add_argument("--script", default="[]")
ARGS.add_argument("--destination", default="XRay")
ARGS = ARGS.parse_args()
PORT, REGION = ARGS.port, ARGS.sigv4
SPANS, REQUESTS, DOCUMENTS = [], [], []
CONTROL = json.loads(ARGS.script)
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def signature_ok(handler, body):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    auth = handler.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False, "no SigV4 Authorization header"
    fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    signed = fields["SignedHeaders"].split(";")
    scope = fields["Credential"].split("/")
    if scope[2] != REGION or scope[3] != "xray":
        return False, f"signed for {scope[2]}/{scope[3]}, not {REGION}/xray"
    request = AWSRequest(method="POST", url=f"http://{handler.headers['Host']}{handler.path}",
                         data=body, headers={h: handler.headers[h] for h in signed})
    request.context["timestamp"] = handler.headers["X-Amz-Date"]
    signer = SigV4Auth(Credentials(os.environ["AWS_ACCESS_KEY_ID"],
                                   os.environ["AWS_SECRET_ACCESS_KEY"],
                                   os.environ.get("AWS_SESSION_TOKEN")), "xray", REGION)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)),
                                request)
    return expected == fields["Signature"], "signature mismatch"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="application/x-protobuf", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with LOCK:
            body = json.dumps({"spans": SPANS, "requests": REQUESTS,
                               "documents": DOCUMENTS}).encode()
        self.reply(200, body, "application/json")

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/control":
            with LOCK:
                CONTROL.append(json.loads(raw))
            return self.reply(200, b"{}", "application/json")
        record = {"path": self.path, "bytes": len(raw),
                  "content_type": self.headers.get("Content-Type"),
                  "encoding": self.headers.get("Content-Encoding"),
                  "authorization": self.headers.get("Authorization", ""),
                  "headers": {k.lower(): v for k, v in self.headers.items()}}
        if self.path == "/GetTraceSegmentDestination":
            with LOCK:
                REQUESTS.append(record)
            answer = {"Destination": ARGS.destination, "Status": "ACTIVE"}
            return self.reply(200, json.dumps(answer).encode(), "application/json")
        if self.path == "/TraceSegments":
            with LOCK:
                REQUESTS.append(record)
                DOCUMENTS.extend(json.loads(raw)["TraceSegmentDocuments"])
            return self.reply(200, b'{"UnprocessedTraceSegments": []}', "application/json")
        if REGION:
            ok, why = signature_ok(self, raw)
            record["signature_ok"] = ok
            if not ok:
                with LOCK:
                    REQUESTS.append(record)
                return self.reply(403, json.dumps({"message": why}).encode(), "application/json")
        with LOCK:
            rule = CONTROL[0] if CONTROL else None
            if rule is not None:
                rule["times"] = rule.get("times", 1) - 1
                if rule["times"] <= 0:
                    CONTROL.pop(0)
        if rule and rule.get("status"):
            record["answered"] = rule["status"]
            with LOCK:
                REQUESTS.append(record)
            extra = [("Retry-After", str(rule["retry_after"]))] if "retry_after" in rule else []
            return self.reply(rule["status"], b"busy", "text/plain", extra)
        data = gzip.decompress(raw) if record["encoding"] == "gzip" else raw
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(data)
        received = []
        for rs in request.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    received.append({
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "status": s.status.code, "attributes": attrs(s.attributes),
                        "resource": resource, "scope": ss.scope.name})
        response = trace_service_pb2.ExportTraceServiceResponse()
        rejected = min(rule.get("reject", 0), len(received)) if rule else 0
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = "rejected by the test"
            received = received[rejected:]
        record["answered"] = 200
        record["spans"] = len(received) + rejected
        with LOCK:
            SPANS.extend(received)
            REQUESTS.append(record)
        self.reply(200, response.SerializeToString())


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
