#!/usr/bin/env python3
"""How many MySQL/MariaDB connections from before attach stay `unknown` (issue #23), per
client stack, with and without `--db-url`.

    python3 tests/measure/my_unknown.py DRAINWATCH [DRAINWATCH_BEFORE]

Starts a throwaway MariaDB with name resolution on (its default: PROCESSLIST then shows
TCP clients as `localhost:PORT`), an account with only PROCESS (`watch`) and one without
(`nogrant`). Per stack (PyMySQL; mysqlclient, i.e. libmariadb), a holder process opens a
pool of 3 connections before drainwatch attaches: two idle after a query, one inside a
transaction that has written a row. Then `drainwatch audit --pid HOLDER --duration 2s`,
without `--db-url`, and with the root, `watch` and `nogrant` accounts' URLs; counts the
connections the report lists unknown and unresolved. Prints one line per run, and the
warning drainwatch gave, if any.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYENV = os.environ.get("DW_PYTHON", str(ROOT / "target/pyenv/bin/python"))

HOLDER = """
import sys, time
import {module} as db
port = int(sys.argv[1])
conns = [db.connect(host="127.0.0.1", port=port, user="root", {dbarg}="drainwatch") for _ in range(3)]
for c in conns:
    c.autocommit(True)
    cur = c.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
cur = conns[2].cursor()
cur.execute("BEGIN")
cur.execute("INSERT INTO ledger (v) VALUES ('held')")
print("ready", flush=True)
time.sleep(120)
"""

NODE_HOLDER = """
const mysql = require('mysql2/promise');
(async () => {
  const port = +process.argv[2];
  const conns = [];
  for (let i = 0; i < 3; i++) {
    const c = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root', database: 'drainwatch' });
    await c.query('SELECT 1');
    conns.push(c);
  }
  await conns[2].beginTransaction();
  await conns[2].query("INSERT INTO ledger (v) VALUES ('held')");
  console.log('ready');
  setTimeout(() => {}, 120000);
})();
"""

# node mysql2 is not among the test dependencies: `npm install mysql2` somewhere and point
# DW_MYSQL2_MODULES at its node_modules to measure it too.
STACKS = {
    "pymysql": (PYENV, "pymysql", "database"),
    "mysqlclient": ("/usr/bin/python3", "MySQLdb", "db"),
}
if os.environ.get("DW_MYSQL2_MODULES"):
    STACKS["node-mysql2"] = ("node", None, None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sql(port, text):
    subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-e", text], check=True)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binaries = [("after", sys.argv[1])] + ([("before", sys.argv[2])] if len(sys.argv) > 2 else [])
    tmp = Path(tempfile.mkdtemp(prefix="dw-my-unknown-"))
    data = tmp / "data"
    small = ["--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M", "--skip-log-bin"]
    subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                    "--auth-root-authentication-method=normal", "--skip-test-db",
                    "--user=root"] + small, check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={data}",
                               f"--socket={tmp}/sock", f"--port={port}",
                               f"--pid-file={tmp}/pid", "--bind-address=127.0.0.1",
                               "--user=root"] + small,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-e", "SELECT 1"],
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        sql(port, "CREATE DATABASE drainwatch; "
                  "CREATE TABLE drainwatch.ledger (id INT AUTO_INCREMENT PRIMARY KEY, v TEXT) ENGINE=InnoDB; "
                  "CREATE USER watch@'%'; CREATE USER watch@localhost; "
                  "GRANT PROCESS ON *.* TO watch@'%'; GRANT PROCESS ON *.* TO watch@localhost; "
                  "CREATE USER nogrant@'%'; CREATE USER nogrant@localhost")
        urls = {
            "none": None,
            "root": f"mysql://root@127.0.0.1:{port}/",
            "process-only": f"mysql://watch@127.0.0.1:{port}/",
            "no-PROCESS": f"mysql://nogrant@127.0.0.1:{port}/",
        }
        for stack, (python, module, dbarg) in STACKS.items():
            if module:
                script = tmp / f"hold_{stack}.py"
                script.write_text(HOLDER.replace("{module}", module).replace("{dbarg}", dbarg))
                env = None
            else:
                script = tmp / f"hold_{stack}.js"
                script.write_text(NODE_HOLDER)
                env = dict(os.environ, NODE_PATH=os.environ["DW_MYSQL2_MODULES"])
            holder = subprocess.Popen([python, str(script), str(port)], stdout=subprocess.PIPE,
                                      text=True, env=env)
            assert holder.stdout.readline().strip() == "ready"
            hosts = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{port}", "-uroot", "-N", "-e",
                                    "SELECT HOST FROM information_schema.PROCESSLIST "
                                    "WHERE COMMAND = 'Sleep'"],
                                   capture_output=True, text=True).stdout.split()
            try:
                (tmp / "url").write_text(urls["no-PROCESS"] + "\n")
                check = subprocess.run([sys.argv[1], "check", "--pid", str(holder.pid),
                                        "--db-url", f"file:{tmp}/url"],
                                       capture_output=True, text=True)
                print(f"{stack:12} check --db-url no-PROCESS: {check.stderr.strip()}")
                for label, binary in binaries:
                    for which, url in urls.items():
                        report = tmp / "report.json"
                        args = [binary, "audit", "--pid", str(holder.pid), "--duration", "2s",
                                "--report", str(report)]
                        if url:
                            (tmp / "url").write_text(url + "\n")
                            args += ["--db-url", f"file:{tmp}/url"]
                        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
                        rep = json.loads(report.read_text())
                        unknown = [u for u in rep["coverage"]["unknown_at_attach"]
                                   if u["what"] == "transaction" and u["resolved_by"] is None]
                        warn = [l for l in done.stderr.splitlines() if "db-url" in l]
                        print(f"{stack:12} {label:6} --db-url {which:13} unknown {len(unknown)}/3"
                              f"  (HOST {hosts[0] if hosts else '?'})"
                              + (f"\n{'':14}{warn[0]}" if warn else ""))
            finally:
                holder.kill()
                holder.wait()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
