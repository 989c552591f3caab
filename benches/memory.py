#!/usr/bin/env python3
"""Server memory after loads end, for gearframe and gearmand.

Usage: benches/memory.py [PATH-TO-gearframe] [--jobs N] [--servers gearframe,gearmand]
                         [--scenarios payload,conns,drain]

Each scenario starts a fresh server on a free loopback port and reads its
/proc/PID/status: VmRSS before (baseline), VmHWM (peak) and VmRSS once the
load ended and the server is idle again.

- payload: one 50 MB foreground job, submitted, taken by a worker and
  completed with the same 50 MB back to the client;
- conns: 5,000 connections open at once, each answered one ECHO, then closed;
- drain: a million background jobs of 16 bytes queued, then drained by a
  worker (`gearframe bench --mode drain`).
"""

import os
import socket
import struct
import subprocess
import sys
import time

GEARFRAME = "target/release/gearframe"
JOBS = 1_000_000
SERVERS = ["gearframe", "gearmand"]
SCENARIOS = ["payload", "conns", "drain"]
args = sys.argv[1:]
for flag in ["--jobs", "--servers", "--scenarios"]:
    if flag in args:
        i = args.index(flag)
        value = args[i + 1]
        del args[i : i + 2]
        if flag == "--jobs":
            JOBS = int(value)
        elif flag == "--servers":
            SERVERS = value.split(",")
        else:
            SCENARIOS = value.split(",")
if args:
    GEARFRAME = args[0]


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # KiB
    raise KeyError(field)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start(kind):
    port = free_port()
    if kind == "gearframe":
        cmd = [GEARFRAME, "server", "-L", f"127.0.0.1:{port}"]
    else:
        cmd = ["/usr/sbin/gearmand", "--listen=127.0.0.1", f"--port={port}",
               "--log-file=none", "--threads=4"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    time.sleep(0.3)
    return p, port


def pkt(kind, *args):
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", kind, len(body)) + body


def recv_pkt(s):
    def exact(n):
        out = bytearray()
        while len(out) < n:
            chunk = s.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise EOFError("server closed the connection")
            out += chunk
        return bytes(out)

    h = exact(12)
    _, kind, size = struct.unpack(">4sII", h)
    return kind, exact(size)


def idle_rss(pid):
    """VmRSS once it stopped falling (the server released what it frees)."""
    last = status(pid, "VmRSS")
    for _ in range(10):
        time.sleep(0.5)
        now = status(pid, "VmRSS")
        if now >= last:
            break
        last = now
    return status(pid, "VmRSS")


def payload(port):
    data = b"x" * 50_000_000
    w = socket.create_connection(("127.0.0.1", port))
    w.sendall(pkt(1, b"big"))  # CAN_DO
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(pkt(7, b"big", b"", data))  # SUBMIT_JOB
    kind, handle = recv_pkt(c)
    assert kind == 8, kind  # JOB_CREATED
    w.sendall(pkt(9))  # GRAB_JOB
    while True:
        kind, body = recv_pkt(w)
        if kind == 11:  # JOB_ASSIGN
            break
        w.sendall(pkt(9))
    h, _f, got = body.split(b"\0", 2)
    assert len(got) == len(data)
    del got, body
    w.sendall(pkt(13, h, data))  # WORK_COMPLETE
    kind, body = recv_pkt(c)
    assert kind == 13 and len(body) == len(h) + 1 + len(data), kind
    del body
    w.close()
    c.close()


def conns(port, n=5000):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(pkt(16, b"ping"))  # ECHO_REQ
        socks.append(s)
    for s in socks:
        kind, _ = recv_pkt(s)
        assert kind == 17, kind
    for s in socks:
        s.close()


def drain(port):
    subprocess.run(
        [GEARFRAME, "bench", "--server", f"127.0.0.1:{port}", "--mode", "drain",
         "--jobs", str(JOBS), "--workers", "1", "--rounds", "1", "--json"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    print(f"{'scenario':10} {'server':10} {'baseline':>10} {'peak':>10} "
          f"{'peak-base':>10} {'idle after':>11} (MiB)")
    runs = {"payload": payload, "conns": conns, "drain": drain}
    for name in SCENARIOS:
        run = runs[name]
        for kind in SERVERS:
            p, port = start(kind)
            try:
                base = status(p.pid, "VmRSS")
                run(port)
                peak = status(p.pid, "VmHWM")
                after = idle_rss(p.pid)
            finally:
                p.terminate()
                p.wait()
            mib = lambda k: f"{k / 1024:.1f}"
            print(f"{name:10} {kind:10} {mib(base):>10} {mib(peak):>10} "
                  f"{mib(peak - base):>10} {mib(after):>11}", flush=True)


if __name__ == "__main__":
    main()
