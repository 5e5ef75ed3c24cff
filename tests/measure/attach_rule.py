#!/usr/bin/env python3
"""Measures the rule for client connections that existed before attach
(probe-user/src/session/attach_rule.rs, docs/how-it-sees.md) against ground truth, on real servers:
redis-server, the asyncio fixture, nginx-light (keep-alive), dw-fixture (thread per
connection). For each scenario it opens connections whose truth it knows (answered and idle,
or with a request in flight), runs `drainwatch wait -v` on the server, and counts how each
connection was judged at attach (`client fd N of P at attach: ...` debug lines), under the
rule now and under the previous one (idle only if sent strictly after received, or a thread
blocked reading it), and what `wait` concluded.

    sudo python3 tests/measure/attach_rule.py target/debug/drainwatch target/debug/dw-fixture [ROUNDS]

Needs root (drainwatch loads its probe), redis-server and nginx (Debian packages).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

DRAINWATCH, FIXTURE = sys.argv[1], sys.argv[2]
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 10
HERE = os.path.dirname(os.path.abspath(__file__))
EVENT_LOOP = os.path.join(HERE, "..", "fixtures", "event_loop_server.py")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def readline(conn):
    out = b""
    while not out.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        out += chunk
    return out


# ---- servers -------------------------------------------------------------------------------

def start_redis(tmp):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--logfile", "", "--dir", tmp, "--enable-debug-command", "yes"],
        stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, proc.pid, port


def start_event_loop():
    proc = subprocess.Popen([sys.executable, EVENT_LOOP], stdout=subprocess.PIPE)
    port = int(proc.stdout.readline())
    return proc, proc.pid, port


def start_nginx(tmp):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process on; worker_processes 1; pid {tmp}/nginx.pid;
error_log {tmp}/error.log; events {{ worker_connections 64; }}
http {{ access_log off; keepalive_timeout 75s; client_body_temp_path {tmp};
  proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL)
    wait_port(port)
    # Connections live in the worker: it is the target.
    deadline = time.time() + 5
    while time.time() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if kids:
            return proc, int(kids[0]), port
        time.sleep(0.05)
    raise SystemExit("no nginx worker")


def start_fixture():
    proc = subprocess.Popen([FIXTURE, "server"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return proc, int(fields["pid"]), int(fields["port"])


# ---- clients: each returns the open sockets (kept open while drainwatch looks) -------------

PING = b"*1\r\n$4\r\nPING\r\n"


def redis_ping(port, n=1, gap=0.0):
    c = socket.create_connection(("127.0.0.1", port))
    for _ in range(n):
        c.sendall(PING)
        assert c.recv(16) == b"+PONG\r\n"
        time.sleep(gap)
    return c


def redis_slow(port, gap):
    c = redis_ping(port)
    time.sleep(gap)
    c.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$1\r\n3\r\n")
    return c


def redis_blpop(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"*3\r\n$5\r\nBLPOP\r\n$7\r\nnothing\r\n$1\r\n0\r\n")
    return c


def loop_ops(port, n=1, then_slow=None, gap=0.0):
    c = socket.create_connection(("127.0.0.1", port))
    for _ in range(n):
        c.sendall(b"op fast 0\n")
        assert readline(c) == b"done\n"
    if then_slow is not None:
        time.sleep(gap)
        c.sendall(b"op slow %d\n" % then_slow)
    return c


def http_get(port, n=1):
    c = socket.create_connection(("127.0.0.1", port))
    for _ in range(n):
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while not got.endswith(b"ok\n"):
            got += c.recv(4096)
    return c


def echo(port):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"hello\n")
    assert c.recv(16) == b"hello\n"
    return c


# ---- one measurement ------------------------------------------------------------------------

JUDGED = re.compile(r"client fd (\d+) of (\d+) from \S+:(\d+) at attach: (\w+) \(([^;]*); (.*)\)$")
STAMPS = re.compile(r"sent_ago_ms: (\d+), recv_ago_ms: (\d+)")


def judge(pid, port, idle_for):
    """Runs wait -v for at most 1.5 s; returns the judgements of the connection from client
    port `port` (earlier rounds' connections may linger in the server) and whether it
    drained."""
    time.sleep(idle_for)
    out = subprocess.run([DRAINWATCH, "wait", "--pid", str(pid), "--json", "-v", "--timeout", "1500ms"],
                         capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        m = JUDGED.search(line)
        if not m or int(m.group(3)) != port:
            continue
        now, why, info = m.group(4), m.group(5), m.group(6)
        s = STAMPS.search(info)
        # The previous rule: idle only if sent strictly after received (or a blocked reader).
        before = "Idle" if (why == "a thread is blocked reading it" or (s and int(s.group(1)) < int(s.group(2)))) else "Busy"
        rows.append((now, before, why))
    return rows, out.returncode == 0


SCENARIOS = [
    # name, server, truth, client(port) -> socket, pause before attach (s)
    ("redis: 1 PING, idle", "redis", "idle", lambda p: redis_ping(p), 0.05),
    ("redis: 5 PINGs 50 ms apart, idle", "redis", "idle", lambda p: redis_ping(p, 5, 0.05), 0.05),
    ("redis: 50 PINGs back to back, idle", "redis", "idle", lambda p: redis_ping(p, 50), 0.3),
    ("redis: DEBUG SLEEP 30 ms after PONG", "redis", "busy", lambda p: redis_slow(p, 0.03), 0.1),
    ("redis: DEBUG SLEEP right after PONG", "redis", "busy", lambda p: redis_slow(p, 0.0), 0.1),
    ("redis: BLPOP on a new connection", "redis", "idle (issue 13)", redis_blpop, 0.1),
    ("asyncio: 1 op, idle", "loop", "idle", lambda p: loop_ops(p), 0.05),
    ("asyncio: 50 ops back to back, idle", "loop", "idle", lambda p: loop_ops(p, 50), 0.3),
    ("asyncio: slow op 100 ms after an answer", "loop", "busy", lambda p: loop_ops(p, 1, 3000, 0.1), 0.1),
    ("asyncio: slow op right after an answer", "loop", "busy", lambda p: loop_ops(p, 1, 3000, 0.0), 0.1),
    ("asyncio: slow op on a new connection", "loop", "busy", lambda p: loop_ops(p, 0, 3000), 0.1),
    ("nginx: 1 GET keep-alive, idle", "nginx", "idle", lambda p: http_get(p), 0.05),
    ("nginx: 20 GETs keep-alive, idle", "nginx", "idle", lambda p: http_get(p, 20), 0.3),
    ("dw-fixture: 1 echo, idle", "fixture", "idle", echo, 0.05),
]


def main():
    tmp = tempfile.mkdtemp(prefix="dw-measure-")
    servers = {"redis": start_redis(tmp), "loop": start_event_loop(),
               "nginx": start_nginx(tmp), "fixture": start_fixture()}
    results = []
    try:
        for name, server, truth, client, idle_for in SCENARIOS:
            _, pid, port = servers[server]
            tally = {"now": {}, "before": {}, "wait_drained": 0, "rounds": ROUNDS}
            for _ in range(ROUNDS):
                conn = client(port)
                rows, drained = judge(pid, conn.getsockname()[1], idle_for)
                conn.close()
                if truth.startswith("busy"):
                    # Let the server finish the slow work, so that no connection of this
                    # round is still being worked on in the next.
                    time.sleep(3)
                tally["wait_drained"] += drained
                for now, before, why in rows:
                    tally["now"][f"{now} ({why})"] = tally["now"].get(f"{now} ({why})", 0) + 1
                    tally["before"][before] = tally["before"].get(before, 0) + 1
            results.append((name, truth, tally))
            print(json.dumps({"scenario": name, "truth": truth, **tally}), flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
