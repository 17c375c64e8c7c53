"""Connection churn that would fill the collector's kernel tables if entries leaked.

Usage: table_churn.py short N           N short connections to a listener of its own, each
                                        closed with a RST (no TIME_WAIT to exhaust ports)
       table_churn.py exits PROCS PER   PROCS child processes each open PER connections to a
                                        listener of the parent's and exit without closing them

The process names itself (prctl) `churn-short` or `churn-exits`, so a test can exclude one and
trace the other. Prints one JSON line with what it did, and exits non-zero if a connection failed.
"""
import ctypes
import json
import os
import resource
import selectors
import socket
import struct
import sys
import threading
import time

MODE = sys.argv[1]
ctypes.CDLL(None).prctl(15, f"churn-{MODE}".encode(), 0, 0, 0)  # PR_SET_NAME
LINGER_RST = struct.pack("ii", 1, 0)
# The listener holds every child's connections until the child exits.
_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (HARD, HARD))


def listener(host="127.0.0.1"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(4096)
    return s


def serve(lsock, stop):
    """Accepts, and closes each connection when its peer closes or resets it; once `stop` is
    set, returns when every connection is closed (or after 30 s)."""
    sel = selectors.DefaultSelector()
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ)
    deadline = None
    while True:
        if stop.is_set():
            deadline = deadline or time.monotonic() + 30
            if len(sel.get_map()) == 1 or time.monotonic() > deadline:
                return
        for key, _ in sel.select(timeout=0.2):
            if key.fileobj is lsock:
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()


def serving():
    """A listener served on a thread: its address, and the call that drains and stops it."""
    lsock = listener()
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(lsock, stop), daemon=True)
    t.start()

    def done():
        stop.set()
        t.join()

    return lsock.getsockname(), done


def short(n):
    addr, done = serving()
    failed = 0
    for _ in range(n):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        try:
            c.connect(addr)
        except OSError:
            failed += 1
        c.close()
    done()
    return {"connections": n, "failed": failed}


def exits(procs, per):
    addr, done = serving()
    failed = 0
    running = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            bad = 0
            held = []
            for _ in range(per):
                c = socket.socket()
                try:
                    c.connect(addr)
                except OSError:
                    bad += 1
                held.append(c)
            # Exit with every socket open: the kernel closes them, close(2) never runs.
            os._exit(min(bad, 255))
        running.append(pid)
        # A few children at a time, so the listener's backlog keeps up.
        if len(running) >= 4:
            failed += os.waitstatus_to_exitcode(os.waitpid(running.pop(0), 0)[1])
    for pid in running:
        failed += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    done()
    return {"processes": procs, "connections": procs * per, "failed": failed}


if MODE == "short":
    result = short(int(sys.argv[2]))
else:
    result = exits(int(sys.argv[2]), int(sys.argv[3]))
print(json.dumps(result), flush=True)
sys.exit(1 if result["failed"] else 0)
