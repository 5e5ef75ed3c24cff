#!/usr/bin/env python3
"""Records real database clients' conversations, syscall by syscall, as test data.

Run by hand (as root, on a host with the test dependencies: `cargo xtask setup`, plus
python3-mysqldb, golang-gopkg-redis.v5-dev, and node mysql2 from npm in DW_MYSQL2_MODULES),
then commit what it writes:

    python3 tests/measure/record_db.py probe-user/tests/data/db [SCENARIO...]

It starts throwaway PostgreSQL, MariaDB and Redis servers on loopback, runs each client
scenario under strace (every read/write/send/recv the client made on its database socket,
with all its bytes), and writes SCENARIO.rec: one line per syscall on each database
connection. The clients print `#expect ...` lines to stderr at points where the state of
their conversations is known (a transaction open, nothing in flight, the goodbye sent); the
recorder keeps them in order among the syscalls. The replay test
(probe-user/src/model/protocol/tests/redacted.rs) feeds every syscall through the kernel's
redaction (probe_common::redact) and the protocol readers, and checks each expectation:
a rule that works only on unredacted bytes cannot pass it.

Format of a .rec file:
    # comment
    protocol postgres|mysql|redis
    <conn> send|recv <hex>       one syscall's bytes
    <conn> close                 close(2) of the connection
    expect key=value ...         over all connections: open (transaction open),
                                 failed, inflight (query in flight), goodbye, clean
                                 (a close now would be clean), unknown (transaction state
                                 unknown)
    exit                         the client exited; connections not closed are closed by
                                 the kernel

The recorded bytes hold only what these scenarios write (made-up rows and keys); they are
test input, never output of drainwatch.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYENV = Path(os.environ.get("DW_PYTHON", ROOT / "target/pyenv/bin/python"))
NODE_MODULES = Path(os.environ.get("DW_NODE_MODULES", ROOT / "target/nodeenv/node_modules"))
# node mysql2 is not among the test dependencies: `npm install mysql2` somewhere, and point
# DW_MYSQL2_MODULES at its node_modules.
MYSQL2_MODULES = Path(os.environ.get("DW_MYSQL2_MODULES", NODE_MODULES))
SYS_PYTHON = "/usr/bin/python3"

MARK_PY = """
import sys
def mark(s):
    sys.stderr.write("#expect " + s + "\\n")
    sys.stderr.flush()
"""

SCENARIOS = {}


def scenario(name, protocol, runner, describe):
    SCENARIOS[name] = (protocol, runner, describe)


# ---- clients ------------------------------------------------------------------------------

PSYCOPG = MARK_PY + """
import psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
mark("open=0 inflight=0")
c.execute("CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, v text)")
with c.transaction():
    c.execute("INSERT INTO ledger (v) VALUES (%s)", ("secret-" * 20,))
    mark("open=1 inflight=0")
mark("open=0 inflight=0")
rows = c.execute("SELECT repeat('x', 500) FROM generate_series(1, 40)").fetchall()
mark("open=0 inflight=0")
c.execute("BEGIN")
try:
    c.execute("SELECT 1/0")
except psycopg.Error:
    pass
mark("failed=1 inflight=0")
c.execute("ROLLBACK")
mark("open=0 failed=0 inflight=0")
with c.pipeline():
    for i in range(30):
        c.execute("INSERT INTO ledger (v) VALUES (%s)", (f"row-{i}",))
mark("open=0 inflight=0")
c.close()
mark("goodbye=1 clean=1 inflight=0")
"""

ASYNCPG = MARK_PY + """
import asyncio, asyncpg
async def main():
    c = await asyncpg.connect(sys.argv[1])
    mark("open=0 inflight=0")
    await c.execute("CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, v text)")
    async with c.transaction():
        await c.execute("INSERT INTO ledger (v) VALUES ($1)", "secret-" * 20)
        mark("open=1 inflight=0")
    mark("open=0 inflight=0")
    await c.fetch("SELECT repeat('x', 500) FROM generate_series(1, 40)")
    mark("open=0 inflight=0")
    await c.executemany("INSERT INTO ledger (v) VALUES ($1)", [(f"row-{i}",) for i in range(30)])
    mark("open=0 inflight=0")
    tr = c.transaction()
    await tr.start()
    await c.execute("INSERT INTO ledger (v) VALUES ($1)", "cut")
    mark("open=1 inflight=0")
    await tr.rollback()
    mark("open=0 inflight=0")
    await c.close()
    mark("goodbye=1 clean=1 inflight=0")
asyncio.run(main())
"""

NODE_PG = """
const { Client } = require('pg');
const mark = (s) => process.stderr.write('#expect ' + s + '\\n');
(async () => {
  const c = new Client({ connectionString: process.argv[2] });
  await c.connect();
  mark('open=0 inflight=0');
  await c.query('CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, v text)');
  await c.query('BEGIN');
  await c.query('INSERT INTO ledger (v) VALUES ($1)', ['secret-'.repeat(20)]);
  mark('open=1 inflight=0');
  await c.query('COMMIT');
  mark('open=0 inflight=0');
  await c.query("SELECT repeat('x', 500) FROM generate_series(1, 40)");
  mark('open=0 inflight=0');
  await Promise.all([...Array(20).keys()].map((i) =>
    c.query('INSERT INTO ledger (v) VALUES ($1)', ['row-' + i])));
  mark('open=0 inflight=0');
  await c.end();
  mark('goodbye=1 clean=1 inflight=0');
})();
"""

MYSQL_PY = MARK_PY + """
import {module} as db
c = db.connect(host="127.0.0.1", port=int(sys.argv[1]), user="root", {dbarg}="drainwatch")
c.autocommit(True)
mark("open=0 inflight=0")
cur = c.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS ledger (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT) ENGINE=InnoDB")
cur.execute("BEGIN")
cur.execute("INSERT INTO ledger (v) VALUES (%s)", ("secret-" * 20,))
mark("open=1 inflight=0")
c.commit()
mark("open=0 inflight=0")
cur.execute("SELECT REPEAT('x', 500) FROM information_schema.COLLATIONS LIMIT 40")
cur.fetchall()
mark("open=0 inflight=0")
cur.execute("SELECT 1")
cur.fetchall()
mark("open=0 inflight=0")
cur.close()
c.close()
mark("goodbye=1 clean=1 inflight=0")
"""

NODE_MYSQL2 = """
const mysql = require('mysql2/promise');
const mark = (s) => process.stderr.write('#expect ' + s + '\\n');
(async () => {
  const pool = mysql.createPool({ host: '127.0.0.1', port: +process.argv[2], user: 'root',
    database: 'drainwatch', connectionLimit: 2 });
  const c = await pool.getConnection();
  mark('open=0 inflight=0');
  await c.query('CREATE TABLE IF NOT EXISTS ledger (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT) ENGINE=InnoDB');
  await c.beginTransaction();
  await c.query('INSERT INTO ledger (v) VALUES (?)', ['secret-'.repeat(20)]);
  mark('open=1 inflight=0');
  await c.commit();
  mark('open=0 inflight=0');
  await c.execute('SELECT ? AS n, REPEAT(?, 300) AS pad', [1, 'x']);
  mark('open=0 inflight=0');
  await c.query("SELECT REPEAT('x', 500) FROM information_schema.COLLATIONS LIMIT 40");
  await Promise.all([...Array(10).keys()].map((i) => c.query('SELECT ?', [i])));
  mark('open=0 inflight=0');
  c.release();
  await pool.end();
  mark('goodbye=1 clean=1 inflight=0');
  process.exit(0);
})();
"""

REDIS_CLI_INPUT = """SET plain secret-value
MULTI
INCR counter
SET k2 secret-secret-secret-secret-secret-secret-secret-secret-secret
EXEC
GET k2
"""

GO_REDIS = """
package main

import (
	"fmt"
	"os"
	"strings"

	"gopkg.in/redis.v5"
)

func mark(s string) { os.Stderr.WriteString("#expect " + s + "\\n") }

func main() {
	c := redis.NewClient(&redis.Options{Addr: os.Args[1], PoolSize: 1})
	if err := c.Set("k", "secret-value", 0).Err(); err != nil {
		panic(err)
	}
	mark("open=0 inflight=0")
	if _, err := c.TxPipelined(func(p *redis.Pipeline) error {
		p.Incr("n")
		p.Set("k2", strings.Repeat("s", 100), 0)
		return nil
	}); err != nil {
		panic(err)
	}
	mark("open=0 inflight=0")
	if _, err := c.Pipelined(func(p *redis.Pipeline) error {
		for i := 0; i < 30; i++ {
			p.Set(fmt.Sprintf("key-%d", i), "value", 0)
		}
		return nil
	}); err != nil {
		panic(err)
	}
	mark("open=0 inflight=0")
	err := c.Watch(func(tx *redis.Tx) error {
		n, err := tx.Get("n").Int64()
		if err != nil {
			return err
		}
		_, err = tx.Pipelined(func(p *redis.Pipeline) error {
			p.Set("n", n+1, 0)
			return nil
		})
		return err
	}, "n")
	if err != nil {
		panic(err)
	}
	mark("open=0 inflight=0")
	if err := c.Get("k2").Err(); err != nil {
		panic(err)
	}
	mark("open=0 inflight=0 clean=1")
	c.Close()
}
"""


# ---- servers ------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start (status {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{what} did not listen on {port}")


class Servers:
    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.procs = []
        self.pg = self.my = self.redis = None

    def postgres(self):
        if self.pg:
            return self.pg
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if not bins:
            sys.exit("no PostgreSQL server under /usr/lib/postgresql")
        bindir = bins[-1].parent
        data = self.tmp / "pg"
        data.mkdir()
        shutil.chown(self.tmp / "pg", "postgres", "postgres")
        os.chmod(self.tmp, 0o755)
        run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data / "d"), "--auth=trust",
                                 "-U", "postgres", "--no-sync"], check=True,
                       stdout=subprocess.DEVNULL)
        port = free_port()
        proc = subprocess.Popen(run_as + [str(bindir / "postgres"), "-D", str(data / "d"),
                                          "-k", str(data), "-p", str(port), "-c",
                                          "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                          "-c", "ssl=off"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_port(port, "postgres", proc)
        time.sleep(0.5)
        self.pg = port
        return port

    def mariadb(self):
        if self.my:
            return self.my
        data = self.tmp / "my"
        small = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M",
                 "--skip-log-bin"]
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--user=root"] + small, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        port = free_port()
        proc = subprocess.Popen(["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}",
                                 f"--socket={self.tmp}/my.sock", f"--port={port}",
                                 f"--pid-file={self.tmp}/my.pid", "--bind-address=127.0.0.1",
                                 "--skip-name-resolve", "--user=root"] + small,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_port(port, "mariadbd", proc)
        for _ in range(50):
            done = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-e",
                                   "CREATE DATABASE IF NOT EXISTS drainwatch"],
                                  capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        self.my = port
        return port

    def redis_server(self):
        if self.redis:
            return self.redis
        port = free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_port(port, "redis-server", proc)
        self.redis = port
        return port

    def stop(self):
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---- strace -------------------------------------------------------------------------------

SYSCALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
SOCK = re.compile(r"^(\d+)<(TCP|TCPv6):\[([^\]]*)\]>")
STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
SENDS = {"write", "writev", "sendto", "sendmsg"}
RECVS = {"read", "readv", "recvfrom", "recvmsg"}


def trace(cmd, db_port, env=None, stdin=None):
    """Runs cmd under strace; returns the syscalls on sockets to db_port and the marks, in
    order of completion."""
    out = tempfile.mktemp(prefix="dw-strace-")
    strace = ["strace", "-f", "-yy", "-xx", "-s", "1048576", "-o", out, "-e",
              "trace=read,write,readv,writev,sendto,recvfrom,sendmsg,recvmsg,close"]
    done = subprocess.run(strace + cmd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    lines = Path(out).read_text().splitlines()
    os.unlink(out)
    pending = {}
    conns = {}
    events = []
    for line in lines:
        pid = line.split(" ", 1)[0]
        if line.endswith("<unfinished ...>"):
            pending[pid] = line[: -len("<unfinished ...>")]
            continue
        m = re.match(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$", line)
        if m:
            line = pending.pop(m.group(1), "") + m.group(2)
        m = SYSCALL.match(line)
        if not m:
            continue
        _, name, args, ret = m.groups()
        ret = int(ret)
        if name == "write" and (args.startswith("2<") or args.startswith("2,")):
            text = bytes.fromhex("".join(STRING.findall(args)).replace("\\x", ""))
            for mark in text.decode(errors="replace").splitlines():
                if mark.startswith("#expect "):
                    events.append(("expect", mark[len("#expect "):]))
            continue
        sock = SOCK.match(args)
        if not sock:
            continue
        fd, _, addrs = sock.groups()
        if "->" not in addrs:
            continue
        local, peer = addrs.split("->")
        if not peer.endswith(f":{db_port}"):
            continue
        conn = conns.setdefault(local, len(conns) + 1)
        if name == "close":
            events.append((conn, "close"))
            continue
        if ret <= 0:
            continue
        data = bytes.fromhex("".join(STRING.findall(args[len(sock.group(0)):])).replace("\\x", ""))
        if len(data) < ret:
            sys.exit(f"strace cut a {name} of {ret} bytes short: raise -s")
        data = data[:ret]
        if name in SENDS:
            events.append((conn, "send", data))
        elif name in RECVS:
            events.append((conn, "recv", data))
    return events, done.stderr


def write_rec(path, protocol, describe, events):
    lines = [f"# {line}" for line in describe.splitlines()]
    lines.append(f"# recorded {time.strftime('%Y-%m-%d')} by tests/measure/record_db.py")
    lines.append(f"protocol {protocol}")
    for event in events:
        if event[0] == "expect":
            lines.append(f"expect {event[1]}")
        elif event[1] == "close":
            lines.append(f"{event[0]} close")
        else:
            lines.append(f"{event[0]} {event[1]} {event[2].hex()}")
    lines.append("exit")
    path.write_text("\n".join(lines) + "\n")
    syscalls = sum(1 for e in events if e[0] != "expect")
    marks = sum(1 for e in events if e[0] == "expect")
    print(f"{path}: {syscalls} syscalls, {marks} expectations")
    if not syscalls or not marks:
        sys.exit(f"{path}: nothing recorded")


def script(tmp, name, text):
    path = Path(tmp) / name
    path.write_text(text)
    return str(path)


def run_psycopg(srv, tmp):
    port = srv.postgres()
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return trace([str(PYENV), script(tmp, "psycopg_rec.py", PSYCOPG), url], port)


def run_asyncpg(srv, tmp):
    port = srv.postgres()
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return trace([str(PYENV), script(tmp, "asyncpg_rec.py", ASYNCPG), url], port)


def run_node_pg(srv, tmp):
    port = srv.postgres()
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    return trace(["node", script(tmp, "node_pg_rec.js", NODE_PG), url], port, env=env)


def run_pymysql(srv, tmp):
    port = srv.mariadb()
    text = MYSQL_PY.replace("{module}", "pymysql").replace("{dbarg}", "database")
    return trace([str(PYENV), script(tmp, "pymysql_rec.py", text), str(port)], port)


def run_mysqlclient(srv, tmp):
    port = srv.mariadb()
    text = MYSQL_PY.replace("{module}", "MySQLdb").replace("{dbarg}", "db")
    return trace([SYS_PYTHON, script(tmp, "mysqldb_rec.py", text), str(port)], port)


def run_node_mysql2(srv, tmp):
    port = srv.mariadb()
    env = dict(os.environ, NODE_PATH=str(MYSQL2_MODULES))
    return trace(["node", script(tmp, "node_mysql2_rec.js", NODE_MYSQL2), str(port)], port,
                 env=env)


def run_redis_cli(srv, tmp):
    port = srv.redis_server()
    events, err = trace(["redis-cli", "-p", str(port)], port, stdin=REDIS_CLI_INPUT)
    # redis-cli prints no marks: after its last reply nothing is in flight or open, and it
    # exits without QUIT (Redis 7.2 deprecates it): the close is clean by the Redis rule.
    close = next((i for i, e in enumerate(events) if e[1:] == ("close",)), len(events))
    events.insert(close, ("expect", "open=0 inflight=0 clean=1"))
    return events, err


def run_redis_cli_pipe(srv, tmp):
    port = srv.redis_server()
    text = "".join(f"SET key-{i} value-{i}\n" for i in range(200)) + "MULTI\nINCR n\nEXEC\n"
    events, err = trace(["redis-cli", "-p", str(port), "--pipe"], port, stdin=text)
    close = next((i for i, e in enumerate(events) if e[1:] == ("close",)), len(events))
    events.insert(close, ("expect", "open=0 inflight=0 clean=1"))
    return events, err


def run_go_redis(srv, tmp):
    port = srv.redis_server()
    src = Path(tmp) / "goredis"
    src.mkdir()
    (src / "main.go").write_text(GO_REDIS)
    env = dict(os.environ, GOPATH="/usr/share/gocode", GO111MODULE="off", GOFLAGS="-mod=mod",
               GOCACHE=str(Path(tmp) / "gocache"))
    env.pop("GOFLAGS")
    subprocess.run(["go", "build", "-o", str(src / "goredis"), "."], cwd=src, env=env,
                   check=True)
    return trace([str(src / "goredis"), f"127.0.0.1:{port}"], port)


scenario("psycopg", "postgres", run_psycopg,
         "psycopg 3 (libpq): a transaction, a large result, a failed transaction, a pipeline, close")
scenario("asyncpg", "postgres", run_asyncpg,
         "asyncpg: extended protocol, a transaction, a large result, executemany, rollback, close")
scenario("node_pg", "postgres", run_node_pg,
         "node-pg: a transaction, a large result, 20 queries pipelined, end()")
scenario("pymysql", "mysql", run_pymysql,
         "PyMySQL against MariaDB: a transaction, a large result, COM_QUIT")
scenario("mysqlclient", "mysql", run_mysqlclient,
         "mysqlclient (MySQLdb, libmariadb) against MariaDB: a transaction, a large result, COM_QUIT")
scenario("node_mysql2", "mysql", run_node_mysql2,
         "node mysql2 (promise pool) against MariaDB: a transaction, a prepared statement, a large "
         "result, 10 queries at once, pool.end() then process.exit(0)")
scenario("redis_cli", "redis", run_redis_cli,
         "redis-cli, one command at a time: SET, MULTI/INCR/SET/EXEC, GET; exits without QUIT")
scenario("redis_cli_pipe", "redis", run_redis_cli_pipe,
         "redis-cli --pipe: 200 SETs and a MULTI/INCR/EXEC in one pipeline; exits without QUIT")
scenario("go_redis", "redis", run_go_redis,
         "go-redis v5 (Debian golang-gopkg-redis.v5-dev): SET, TxPipelined (MULTI...EXEC in one "
         "write), Pipelined, Watch, GET, Close without QUIT")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or list(SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="dw-record-") as tmp:
        srv = Servers(tmp)
        try:
            for name in names:
                protocol, runner, describe = SCENARIOS[name]
                events, _ = runner(srv, tmp)
                write_rec(out / f"{name}.rec", protocol, describe, events)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
