"""Load with a nonce per request, for tests that check every link.

  nonce_load.py get BASE_URL PREFIX CLIENTS PER_CLIENT
      CLIENTS threads, each PER_CLIENT sequential GETs of BASE_URL/PREFIX-<client>-<i>, one
      connection per request.
  nonce_load.py churn HOST:PORT PREFIX CLIENTS PER_CLIENT
      the same as raw one-request connections (HTTP/1.1, Connection: close), as fast as
      they go.
  nonce_load.py abandon HOST:PORT COUNT
      COUNT connections closed before their first byte.

Prints {"ok": N, "failed": [...]} (the first few failures).
"""
import http.client
import json
import socket
import sys
import threading
import urllib.parse


def run_clients(client, clients):
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def get(base, prefix, clients, per_client):
    url = urllib.parse.urlsplit(base)
    ok, failed = [0], []
    lock = threading.Lock()

    def client(c):
        for i in range(per_client):
            try:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
                conn.request("GET", f"{url.path}/{prefix}-{c}-{i}")
                r = conn.getresponse()
                r.read()
                conn.close()
                with lock:
                    if r.status == 200:
                        ok[0] += 1
                    else:
                        failed.append(f"{c}-{i}: {r.status}")
            except Exception as e:  # noqa: BLE001 - reported, the test decides
                with lock:
                    failed.append(f"{c}-{i}: {e}")

    run_clients(client, clients)
    return ok[0], failed


def churn(addr, prefix, clients, per_client):
    host, port = addr.rsplit(":", 1)
    ok, failed = [0], []
    lock = threading.Lock()

    def client(c):
        for i in range(per_client):
            try:
                with socket.create_connection((host, int(port)), timeout=20) as s:
                    s.sendall(f"GET /work/{prefix}-{c}-{i} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
                    reply = b""
                    while chunk := s.recv(65536):
                        reply += chunk
                with lock:
                    if reply.startswith(b"HTTP/1.") and b" 200 " in reply[:16]:
                        ok[0] += 1
                    else:
                        failed.append(f"{c}-{i}: {reply[:40]!r}")
            except Exception as e:  # noqa: BLE001
                with lock:
                    failed.append(f"{c}-{i}: {e}")

    run_clients(client, clients)
    return ok[0], failed


def abandon(addr, count):
    host, port = addr.rsplit(":", 1)
    ok, failed = 0, []
    for i in range(count):
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            ok += 1
        except Exception as e:  # noqa: BLE001
            failed.append(f"{i}: {e}")
    return ok, failed


mode = sys.argv[1]
if mode == "get":
    ok, failed = get(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
elif mode == "churn":
    ok, failed = churn(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
else:
    ok, failed = abandon(sys.argv[2], int(sys.argv[3]))
print(json.dumps({"ok": ok, "failed": failed[:10], "failures": len(failed)}))
