"""Reads back every trace an X-Ray API (moto) holds for a time window, as JSON on stdout:
[{"id": trace id, "segments": [segment document, ...]}, ...]. Fake credentials are fine."""
import json
import sys
from datetime import datetime, timezone

import boto3

endpoint, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
xray = boto3.client(
    "xray",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)
ids = []
kwargs = {
    "StartTime": datetime.fromtimestamp(start, timezone.utc),
    "EndTime": datetime.fromtimestamp(end, timezone.utc),
}
while True:
    page = xray.get_trace_summaries(**kwargs)
    ids += [s["Id"] for s in page.get("TraceSummaries", [])]
    if not page.get("NextToken"):
        break
    kwargs["NextToken"] = page["NextToken"]
traces = []
for i in range(0, len(ids), 5):
    for t in xray.batch_get_traces(TraceIds=ids[i : i + 5])["Traces"]:
        traces.append({"id": t["Id"], "segments": [json.loads(s["Document"]) for s in t["Segments"]]})
json.dump(traces, sys.stdout)
