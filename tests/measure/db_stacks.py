#!/usr/bin/env python3
"""Measures drainwatch's verdicts on real database client stacks against the database's own
ground truth (issue 14's closing table). For each stack (a server on a real client library:
psycopg, asyncpg, PyMySQL, Go lib/pq, PostgreSQL JDBC; plaintext, TLS, unix sockets) and each
scenario (kill -9 mid-transaction, graceful SIGTERM, `wait` mid-transaction, a handler that
exits at once, the tidy-but-lossy handler, a write-behind server), it runs the scenario
RUNS times against private databases and compares what drainwatch said with what the
database recorded: whether the request's transaction committed (the ledger table), and
whether the server saw every goodbye (PostgreSQL's "unexpected EOF" log lines).

    sudo target/pyenv/bin/python tests/measure/db_stacks.py target/debug/drainwatch [RUNS] [STACK...]

Needs root (drainwatch loads its probe), the Debian packages of `cargo xtask setup`
(postgresql, mariadb-server, golang-go, golang-github-lib-pq-dev, default-jdk-headless,
libpostgresql-jdbc-java, openssl) and target/pyenv (psycopg, asyncpg, PyMySQL).

The servers all speak tests/fixtures/pg_shop.py's line protocol (see its docstring), so a
stack is a command line and a DSN: add one to STACKS (e.g. node-pg once its fixture
exists) and every scenario it has a mode for runs on it.
"""
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TARGET = os.path.join(ROOT, "target", "stacks")
DRAINWATCH = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
ONLY = set(sys.argv[3:])
PATIENCE = 60


# ---- private databases ---------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Postgres:
    """A private PostgreSQL (Debian's newest), trust auth for `postgres`, as
    tests/src/db/pg.rs starts it; `tls` adds ssl=on with a self-signed certificate."""

    def __init__(self, tls):
        import psycopg  # noqa: F401 (fail early without target/pyenv)

        self.tls = tls
        bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))[-1]
        self.dir = tempfile.mkdtemp(prefix="dw-measure-pg-")
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        as_pg = lambda: (os.setgid(user.pw_gid), os.setuid(user.pw_uid))  # noqa: E731
        data = os.path.join(self.dir, "data")
        subprocess.run([f"{bindir}/initdb", "-D", data, "--auth=trust", "-U", "postgres", "--no-sync",
                        "--locale=C", "-E", "UTF8"], preexec_fn=as_pg, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"LC_ALL": "C"})
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-subj", "/CN=localhost", "-keyout", f"{data}/server.key",
                            "-out", f"{data}/server.crt"], check=True, capture_output=True)
            for f in ("server.key", "server.crt"):
                os.chown(f"{data}/{f}", user.pw_uid, user.pw_gid)
            os.chmod(f"{data}/server.key", 0o600)
        self.port = free_port()
        self.log = os.path.join(self.dir, "postgres.log")
        self.proc = subprocess.Popen(
            [f"{bindir}/postgres", "-D", data, "-k", self.dir, "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "max_connections=40", "-c", "log_min_messages=debug1",
             "-c", "ssl=on" if tls else "ssl=off"],
            preexec_fn=as_pg, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + PATIENCE
        while True:
            try:
                self.query("SELECT 1")
                break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit(f"postgres did not start; see {self.log}")
                time.sleep(0.1)
        self.query("CREATE TABLE IF NOT EXISTS ledger(id serial PRIMARY KEY, op text, step text)")

    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def unix_url(self):
        return f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def query(self, sql, params=()):
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, sslmode="disable") as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def ledger(self, op):
        return [r[0] for r in self.query("SELECT step FROM ledger WHERE op = %s ORDER BY id", (op,))]

    def unclean(self):
        """Backends that logged a close without Terminate, once all other sessions are gone."""
        deadline = time.time() + 10
        while self.query("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                         "AND pid <> pg_backend_pid()")[0][0] and time.time() < deadline:
            time.sleep(0.05)
        pids = set()
        for line in open(self.log, errors="replace"):
            if "unexpected EOF on client connection" in line or "could not receive data from client" in line:
                pids.add(line.split("[")[1].split("]")[0] if "[" in line else line)
        return len(pids)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=20)
        shutil.rmtree(self.dir, ignore_errors=True)


class MariaDb:
    """A private MariaDB, root without password on 127.0.0.1, database `drainwatch`, as
    tests/src/db/mariadb.rs starts it."""

    SMALL = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M",
             "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--skip-log-bin"]

    def __init__(self):
        import pymysql  # noqa: F401

        self.tls = False
        self.dir = tempfile.mkdtemp(prefix="dw-measure-my-")
        data = os.path.join(self.dir, "data")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db", "--user=root",
                        *self.SMALL], check=True, capture_output=True, cwd=self.dir)
        self.port = free_port()
        self.sock = os.path.join(self.dir, "sock")
        self.log = os.path.join(self.dir, "mariadbd.log")
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.sock}",
             f"--pid-file={self.dir}/pid", f"--log-error={self.log}", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--skip-name-resolve", "--user=root", *self.SMALL,
             "--innodb-fast-shutdown=2"], cwd=self.dir)
        deadline = time.time() + PATIENCE
        while True:
            try:
                self.query("CREATE DATABASE IF NOT EXISTS drainwatch", db=None)
                break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit(f"mariadbd did not start; see {self.log}")
                time.sleep(0.1)
        self.query("CREATE TABLE IF NOT EXISTS ledger(id INT AUTO_INCREMENT PRIMARY KEY, "
                   "op VARCHAR(200), step VARCHAR(10)) ENGINE=InnoDB")

    def url(self):
        return f"mysql://root@127.0.0.1:{self.port}/drainwatch"

    def unix_url(self):
        return f"mysql-unix:{self.sock}"

    def query(self, sql, params=(), db="drainwatch"):
        import pymysql

        c = pymysql.connect(host="127.0.0.1", port=self.port, user="root", database=db, autocommit=True)
        try:
            with c.cursor() as cur:
                cur.execute(sql, params or None)
                return cur.fetchall()
        finally:
            c.close()

    def ledger(self, op):
        return [r[0] for r in self.query("SELECT step FROM ledger WHERE op = %s ORDER BY id", (op,))]

    def unclean(self):
        deadline = time.time() + 10
        while self.query("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                         "AND COMMAND <> 'Daemon'")[0][0] and time.time() < deadline:
            time.sleep(0.05)
        return int(self.query("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")[0][1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- stacks ----------------------------------------------------------------------------------

def python():
    return os.path.join(ROOT, "target", "pyenv", "bin", "python")


def build_go():
    out = os.path.join(TARGET, "go-shop")
    os.makedirs(TARGET, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH="/usr/share/gocode",
               GOCACHE=os.path.join(TARGET, "gocache"), GOFLAGS="")
    subprocess.run(["go", "build", "-o", out, os.path.join(FIXTURES, "stacks", "shop.go")], env=env, check=True)
    return out


def build_java():
    out = os.path.join(TARGET, "java")
    subprocess.run(["javac", "-nowarn", "-d", out, "-cp", "/usr/share/java/postgresql.jar",
                    os.path.join(FIXTURES, "stacks", "Shop.java")], check=True, capture_output=True)
    return out


BUILT = {}


def pg_shop(mode, dsn):
    return [python(), os.path.join(FIXTURES, "pg_shop.py"), mode, dsn]


def go_shop(mode, dsn):
    if "go" not in BUILT:
        BUILT["go"] = build_go()
    return [BUILT["go"], mode, dsn]


def java_shop(mode, dsn):
    if "java" not in BUILT:
        BUILT["java"] = build_java()
    return ["java", "-Xmx64m", "-XX:+UseSerialGC", "-cp", f"{BUILT['java']}:/usr/share/java/postgresql.jar",
            "Shop", mode, dsn]


def node_shop(mode, dsn, tls=False):
    # node-pg from target/nodeenv (`cargo xtask setup`); `tls`: ssl {rejectUnauthorized: false}.
    os.environ.setdefault("DW_NODE_MODULES", os.path.join(ROOT, "target", "nodeenv", "node_modules"))
    return ["node", os.path.join(FIXTURES, "node_shop.js"), mode, dsn] + (["tls"] if tls else [])


def go_dsn(db):
    return f"postgres://postgres@127.0.0.1:{db.port}/postgres?sslmode={'require' if db.tls else 'disable'}"


def jdbc_dsn(db):
    tls = "sslmode=require&sslfactory=org.postgresql.ssl.NonValidatingFactory" if db.tls else "sslmode=disable"
    return f"jdbc:postgresql://127.0.0.1:{db.port}/postgres?user=postgres&{tls}"


# name -> (database: "pg" | "pg-tls" | "mariadb", command(mode, dsn), dsn(db),
#          {scenario: mode}, extra drainwatch args(db, dir))
SCEN_SYNC = {"kill9": "graceful", "graceful": "graceful", "wait": "graceful", "exit": "exit"}
STACKS = {
    "psycopg": ("pg", pg_shop, lambda db: db.url(), {**SCEN_SYNC, "lossy": "lossy"}),
    "psycopg/unix": ("pg", pg_shop, lambda db: db.unix_url(), {**SCEN_SYNC, "lossy": "lossy"}),
    "psycopg/tls": ("pg-tls", pg_shop, lambda db: db.url(), {**SCEN_SYNC, "lossy": "lossy"}),
    "asyncpg": ("pg", pg_shop, lambda db: db.url(),
                {"kill9": "asyncpg-exit", "wait": "asyncpg-exit", "exit": "asyncpg-exit"}),
    "asyncpg/tls": ("pg-tls", pg_shop, lambda db: db.url(),
                    {"kill9": "asyncpg-exit", "wait": "asyncpg-exit", "exit": "asyncpg-exit"}),
    "node-pg": ("pg", node_shop, lambda db: db.url(),
                {"kill9": "graceful", "graceful": "graceful", "wait": "graceful"}),
    "node-pg/tls": ("pg-tls", lambda mode, dsn: node_shop(mode, dsn, tls=True), lambda db: db.url(),
                    {"kill9": "graceful", "graceful": "graceful", "wait": "graceful"}),
    "pymysql": ("mariadb", pg_shop, lambda db: db.url(), {**SCEN_SYNC, "lossy": "lossy"}),
    "pymysql/unix": ("mariadb", pg_shop, lambda db: db.unix_url(), {"kill9": "graceful", "lossy": "lossy"}),
    "go-lib/pq": ("pg", go_shop, go_dsn, dict(SCEN_SYNC)),
    "go-lib/pq/tls": ("pg-tls", go_shop, go_dsn, dict(SCEN_SYNC)),
    "jdbc": ("pg", java_shop, jdbc_dsn, dict(SCEN_SYNC)),
    "jdbc/tls": ("pg-tls", java_shop, jdbc_dsn, dict(SCEN_SYNC)),
    "write-behind/pg": ("pg", pg_shop, lambda db: db.url(), {"wb-exit": "write-behind", "wb-wait": "write-behind"}),
    "write-behind/pg-unix": ("pg", pg_shop, lambda db: db.unix_url(),
                             {"wb-exit": "write-behind", "wb-wait": "write-behind"}),
    "write-behind/mariadb": ("mariadb", pg_shop, lambda db: db.url(),
                             {"wb-exit": "write-behind", "wb-wait": "write-behind",
                              "wb-wait+db-url": "write-behind"}),
}


# ---- one run ---------------------------------------------------------------------------------

class Shop:
    def __init__(self, argv):
        self.dir = tempfile.mkdtemp(prefix="dw-measure-shop-")
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"{argv} did not say ready")
        fields = dict(w.split("=") for w in ready[1:])
        self.pid, self.port = int(fields["pid"]), int(fields["port"])

    def request(self, name):
        """Sends `op NAME`, waits for `txn NAME`; returns a dict that gets the answer."""
        c = socket.create_connection(("127.0.0.1", self.port))
        c.sendall(f"op {name}\n".encode())
        answer = {}

        def read():
            got = b""
            try:
                while not got.endswith(b"\n"):
                    chunk = c.recv(100)
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                pass
            answer["line"] = got.decode()
            answer["at"] = time.monotonic()

        threading.Thread(target=read, daemon=True).start()
        line = self.proc.stdout.readline().strip()
        if line != f"txn {name}":
            raise RuntimeError(f"expected txn {name}, got {line!r}")
        return answer

    def gate(self):
        open(os.path.join(self.dir, "gate"), "w").close()

    def kill(self, sig):
        os.kill(self.pid, sig)

    def wait(self):
        try:
            return self.proc.wait(timeout=PATIENCE)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def attach(args):
    """Starts drainwatch ARGS and returns once it says it attached."""
    proc = subprocess.Popen([DRAINWATCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = []
    for line in proc.stderr:
        err.append(line)
        if "drainwatch: attached to" in line:
            break
    else:
        raise RuntimeError("drainwatch did not attach: " + "".join(err))
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    return proc, err


def run_once(stack, scenario, db, n, url_file):
    _, command, dsn, modes = STACKS[stack]
    mode = modes[scenario]
    name = f"{scenario}-{n}-{time.monotonic_ns()}"
    unclean_before = db.unclean()
    shop = Shop(command(mode, dsn(db)))
    tmp = tempfile.mkdtemp(prefix="dw-measure-report-")
    report_path = os.path.join(tmp, "report.json")
    try:
        if scenario in ("wait", "wb-wait", "wb-wait+db-url"):
            answer = shop.request(name)
            args = ["wait", "--pid", str(shop.pid), "--json", "--timeout", "30s"]
            if scenario == "wb-wait+db-url":
                args += ["--db-url", f"file:{url_file}"]
            dw, _ = attach(args)
            held = time.monotonic() + 0.8
            early = False
            while time.monotonic() < held:
                if dw.poll() is not None:
                    early = True
                    break
                time.sleep(0.02)
            shop.gate()
            out, _ = dw.communicate(timeout=PATIENCE)
            committed_at_verdict = db.ledger(name) == ["A", "B"]
            report = json.loads(out.strip().splitlines()[-1])
            shop.kill(signal.SIGTERM)
            shop.wait()
            seen = "drained" if report.get("drain", {}).get("drained_at_ms") is not None else report["verdict"]
            truth = "committed before drained" if committed_at_verdict else "open when drained"
            if early:
                # It returned before the gate opened: the transaction was still open.
                seen, truth = "drained early", "open when drained"
            right = committed_at_verdict and not early
            return seen, truth, right
        dw, _ = attach(["audit", "--pid", str(shop.pid), "--report", report_path])
        answer = shop.request(name)
        if scenario == "kill9":
            shop.kill(signal.SIGKILL)
        elif scenario == "graceful":
            shop.kill(signal.SIGTERM)
            shop.gate()
        else:  # exit, lossy, wb-exit
            shop.kill(signal.SIGTERM)
        shop.wait()
        dw.wait(timeout=PATIENCE)
        report = json.load(open(report_path))
        kinds = [v["kind"] for v in report["violations"]]
        unverified = len(report.get("coverage", {}).get("unverified") or [])
        committed = db.ledger(name) == ["A", "B"]
        unclean = db.unclean() - unclean_before
        truth = ("committed" if committed else "rolled back") + (f", {unclean} unclean close" if unclean else "")
        seen = report["verdict"] + (": " + ",".join(k for k in kinds) if kinds else "")
        if unverified:
            seen += f" ({unverified} unverified)"
        txn_flagged = "open_transaction" in kinds or "transaction_rolled_back" in kinds
        if committed and not unclean:
            # Nothing lost: clean, or incomplete when a conversation could not be read.
            right = not kinds and report["verdict"] == ("incomplete" if unverified else "clean")
        elif not committed:
            # Work lost: the transaction must be named, or the verdict incomplete where the
            # conversation was encrypted (never clean).
            right = txn_flagged or (unverified > 0 and report["verdict"] != "clean")
        else:
            right = report["verdict"] != "clean"
        return seen, truth, right
    finally:
        shop.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    dbs = {}
    rows = []
    try:
        for stack, (kind, _, _, modes) in STACKS.items():
            if ONLY and stack not in ONLY:
                continue
            if kind not in dbs:
                dbs[kind] = MariaDb() if kind == "mariadb" else Postgres(tls=kind == "pg-tls")
            db = dbs[kind]
            url_file = os.path.join(db.dir, "db-url")
            with open(url_file, "w") as f:
                f.write(db.url() + "\n")
            for scenario in modes:
                results = []
                for n in range(RUNS):
                    try:
                        results.append(run_once(stack, scenario, db, n, url_file))
                    except Exception as e:  # a failed run is a row, not the end of the table
                        results.append((f"error: {e}"[:60], "?", False))
                row = {"stack": stack, "scenario": scenario, "runs": RUNS,
                       "right": sum(r[2] for r in results),
                       "seen": sorted({r[0] for r in results}), "truth": sorted({r[1] for r in results})}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for db in dbs.values():
            db.stop()
    print()
    print(f"{'stack':<22} {'scenario':<15} {'right':<6} {'seen (drainwatch)':<70} truth (database)")
    for r in rows:
        print(f"{r['stack']:<22} {r['scenario']:<15} {r['right']}/{r['runs']:<4} "
              f"{' | '.join(r['seen']):<70} {' | '.join(r['truth'])}")


if __name__ == "__main__":
    main()
