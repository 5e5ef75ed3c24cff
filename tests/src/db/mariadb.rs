//! A private MariaDB for tests (db/mod.rs says why each server is private).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use mysql::prelude::Queryable;

use super::common::{
    copy_initialized, euid_is_root, initialized_once, on_free_port, require_binary, tail,
    wait_until_alone, Daemon, Database, DbKind, NotReady,
};
use crate::TempDir;

/// A private MariaDB (`mariadbd`), user `root` without password on 127.0.0.1, database
/// `drainwatch`.
pub struct MariaDbServer {
    port: u16,
    /// Started with a certificate (`start_tls`): `url()` asks clients for TLS.
    tls: bool,
    pub(super) log: PathBuf,
    pub(super) _daemon: Daemon,
    pub(super) _dir: TempDir,
}

const MARIADBD: &str = "/usr/sbin/mariadbd";
const MARIADB_INSTALL_DB: &str = "/usr/bin/mariadb-install-db";

/// Options for both the bootstrap and the server: a small, fast, throwaway InnoDB. The log
/// file size must be the same at bootstrap and at start.
const MARIADB_SMALL: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--skip-log-bin",
];

impl MariaDbServer {
    pub fn start() -> Self {
        Self::start_with(false, false)
    }

    /// With name resolution on (MariaDB's default, which the other starts turn off):
    /// PROCESSLIST then shows TCP clients as `localhost:PORT`, as on most production hosts.
    pub fn start_resolving_names() -> Self {
        Self::start_with(false, true)
    }

    /// With a self-signed certificate (`--ssl-cert/--ssl-key/--ssl-ca`): clients may speak
    /// TLS (the server upgrades after its handshake packet when the client sets
    /// CLIENT_SSL, https://mariadb.com/kb/en/connection/#sslrequest-packet); TLS is not
    /// required, so the harness's own ground-truth connections stay plaintext.
    pub fn start_tls() -> Self {
        Self::start_with(true, false)
    }

    fn start_with(tls: bool, resolve_names: bool) -> Self {
        require_binary(Path::new(MARIADBD), "mariadb-server");
        require_binary(Path::new(MARIADB_INSTALL_DB), "mariadb-server");
        let dir = TempDir::new("mariadb");
        let data = dir.0.join("data");
        // As root, mariadbd insists on --user; root keeps the files ours to delete.
        let user: &[&str] = if euid_is_root() {
            &["--user=root"]
        } else {
            &[]
        };
        let template = initialized_once("mariadb", Path::new(MARIADB_INSTALL_DB), None, |made| {
            let mut install = Command::new(MARIADB_INSTALL_DB);
            install
                // --no-defaults: never read /etc/mysql (the system service's config).
                .arg("--no-defaults")
                .arg(format!("--datadir={}", made.display()))
                // "normal": root@localhost/127.0.0.1 log in without a password (the default,
                // unix_socket auth, would refuse TCP clients).
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .args(user)
                .args(MARIADB_SMALL);
            install
        });
        copy_initialized(&template, &data);

        let mut ssl = Vec::new();
        if tls {
            // Owned by us: mariadbd runs as root (--user=root) or as the test's own user.
            super::pg::make_certificate(&dir.0, None);
            let (crt, key) = (dir.0.join("server.crt"), dir.0.join("server.key"));
            ssl.push(format!("--ssl-cert={}", crt.display()));
            ssl.push(format!("--ssl-key={}", key.display()));
            // Self-signed: its own CA.
            ssl.push(format!("--ssl-ca={}", crt.display()));
        }
        let log = dir.0.join("mariadbd.log");
        let (port, daemon) = on_free_port("mariadbd", |port| {
            let mut cmd = Command::new(MARIADBD);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", dir.0.join("sock").display()))
                .arg(format!("--pid-file={}", dir.0.join("pid").display()))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .args((!resolve_names).then_some("--skip-name-resolve"))
                // "Aborted connection ... to db: 'NAME'" for each client gone without
                // COM_QUIT (logged above log_warnings 3): db/shared.rs counts them per
                // database.
                .arg("--log-warnings=4")
                .args(user)
                .args(MARIADB_SMALL)
                .args(&ssl)
                // Nothing to keep between runs: skip the buffer pool dump/load.
                .args([
                    "--innodb-buffer-pool-dump-at-shutdown=OFF",
                    "--innodb-buffer-pool-load-at-startup=OFF",
                    "--innodb-fast-shutdown=2",
                ])
                .current_dir(&dir.0);
            let mut daemon = Daemon::spawn("mariadbd", &mut cmd, &log, libc::SIGTERM);
            let mut conn =
                daemon.wait_ready(|| my_connect(port, None).map_err(|e| e.to_string()))?;
            Queryable::query_drop(&mut conn, "CREATE DATABASE IF NOT EXISTS drainwatch")
                .map_err(|e| NotReady::Failed(format!("create database drainwatch: {e}")))?;
            Ok((port, daemon))
        });
        Self {
            port,
            tls,
            log,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// The server's unix socket (in its temp dir): the same-host setup of many legacy
    /// servers.
    pub fn socket_path(&self) -> PathBuf {
        self._dir.0.join("sock")
    }

    /// A new connection as `root` to database `drainwatch`, over TCP.
    pub fn conn(&self) -> mysql::Conn {
        my_connect(self.port, Some("drainwatch"))
            .unwrap_or_else(|e| panic!("connect to mariadb: {e}"))
    }

    /// Runs SQL statements (text protocol), e.g. to create a table.
    pub fn execute(&self, sql: &str) {
        self.conn()
            .query_drop(sql)
            .unwrap_or_else(|e| panic!("mariadb: {sql}: {e}"));
    }
}

fn my_connect(port: u16, db: Option<&str>) -> Result<mysql::Conn, mysql::Error> {
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .user(Some("root"))
        .db_name(db)
        // The crate would otherwise switch to the server's unix socket when it is local.
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(2)));
    mysql::Conn::new(opts)
}

impl Database for MariaDbServer {
    fn kind(&self) -> DbKind {
        DbKind::Mysql
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// With TLS, `?ssl=1`: the shop (fixtures/pg_shop.py) then asks PyMySQL for TLS.
    fn url(&self) -> String {
        let ssl = if self.tls { "?ssl=1" } else { "" };
        format!("mysql://root@127.0.0.1:{}/drainwatch{ssl}", self.port)
    }

    fn ledger_steps(&self, op: &str) -> Vec<String> {
        self.conn()
            .exec("SELECT step FROM ledger WHERE op = ? ORDER BY id", (op,))
            .unwrap_or_else(|e| panic!("mariadb: read ledger: {e}"))
    }

    fn unclean_closes(&self) -> Option<u64> {
        let mut conn = self.conn();
        wait_until_alone("mariadb", || {
            conn.query_first::<u64, _>(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'",
            )
            .expect("mariadb: count sessions")
            .unwrap_or(0)
        });
        // Aborted_clients: "connections aborted because the client died without closing the
        // connection properly", i.e. without COM_QUIT
        // (https://mariadb.com/kb/en/server-status-variables/#aborted_clients).
        let row: Option<(String, u64)> = conn
            .query_first("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
            .expect("mariadb: read Aborted_clients");
        Some(row.map(|(_, n)| n).unwrap_or(0))
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}
