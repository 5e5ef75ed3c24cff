//! One server per test binary, shared by its tests (issue #23: the suite's time on 2 cores),
//! each test on a database of its own, so that one test's ledger and its server's record of
//! unclean closes are not another's: [`MyDatabase`] and [`PgDatabase`] are a [`Database`]
//! each, read from the shared server's tables and log for that database only. Redis has no
//! databases worth the name; its ledger keys are per request name, which tests make unique.

use std::{fs, sync::OnceLock};

use mysql::prelude::Queryable;

use super::{
    common::{chain, tail, wait_until_alone, Database, DbKind},
    mariadb::MariaDbServer,
    pg::PgServer,
    redis_server::RedisServer,
};

/// The binary's MariaDB (name resolution on: PROCESSLIST says `localhost:PORT`), with a
/// monitoring account `watch` that has only PROCESS (`--db-url`'s documented minimum).
pub fn shared_mariadb() -> &'static MariaDbServer {
    static SHARED: OnceLock<MariaDbServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = MariaDbServer::start_resolving_names();
        server._daemon.stop_at_exit(&server._dir.0);
        for host in ["%", "localhost"] {
            server.execute(&format!(
                "CREATE USER watch@'{host}'; GRANT PROCESS ON *.* TO watch@'{host}'"
            ));
        }
        server
    })
}

pub fn shared_postgres() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = PgServer::start();
        server._daemon.stop_at_exit(&server._dir.0);
        server
    })
}

pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = RedisServer::start();
        server._daemon.stop_at_exit(&server._dir.0);
        server
    })
}

/// A fresh database on the shared MariaDB.
pub struct MyDatabase {
    server: &'static MariaDbServer,
    name: String,
}

impl MyDatabase {
    pub fn create(name: &str) -> Self {
        let server = shared_mariadb();
        server.execute(&format!("CREATE DATABASE {name}"));
        Self {
            server,
            name: name.to_string(),
        }
    }

    /// `--db-url` of the shared server's PROCESS-only account (on `port`).
    pub fn monitoring_url(port: u16) -> String {
        format!("mysql://watch@127.0.0.1:{port}/")
    }
}

impl Database for MyDatabase {
    fn kind(&self) -> DbKind {
        DbKind::Mysql
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/{}", self.port(), self.name)
    }

    fn ledger_steps(&self, op: &str) -> Vec<String> {
        self.server
            .conn()
            .exec(
                format!(
                    "SELECT step FROM {}.ledger WHERE op = ? ORDER BY id",
                    self.name
                ),
                (op,),
            )
            .unwrap_or_else(|e| panic!("mariadb: read ledger: {e}"))
    }

    /// The server's log: "Aborted connection ID to db: 'NAME' ..." once per session of
    /// this database that ended without COM_QUIT, counted once its sessions are all gone.
    fn unclean_closes(&self) -> Option<u64> {
        let mut conn = self.server.conn();
        wait_until_alone("mariadb", || {
            conn.exec_first::<u64, _, _>(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ?",
                (&self.name,),
            )
            .expect("mariadb: count sessions")
            .unwrap_or(0)
        });
        let needle = format!("to db: '{}'", self.name);
        let log = fs::read_to_string(&self.server.log).unwrap_or_default();
        Some(
            log.lines()
                .filter(|l| l.contains("Aborted connection") && l.contains(&needle))
                .count() as u64,
        )
    }

    fn log_tail(&self) -> String {
        tail(&self.server.log, 40)
    }
}

/// A fresh database on the shared PostgreSQL.
pub struct PgDatabase {
    server: &'static PgServer,
    name: String,
}

impl PgDatabase {
    pub fn create(name: &str) -> Self {
        let server = shared_postgres();
        server.execute(&format!("CREATE DATABASE {name}"));
        Self {
            server,
            name: name.to_string(),
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to postgres: {}", chain(&e)))
    }
}

impl Database for PgDatabase {
    fn kind(&self) -> DbKind {
        DbKind::Postgres
    }

    fn port(&self) -> u16 {
        self.server.port()
    }

    fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            self.port(),
            self.name
        )
    }

    fn ledger_steps(&self, op: &str) -> Vec<String> {
        let rows = self
            .client()
            .query("SELECT step FROM ledger WHERE op = $1 ORDER BY id", &[&op])
            .unwrap_or_else(|e| panic!("postgres: read ledger: {}", chain(&e)));
        rows.iter().map(|row| row.get(0)).collect()
    }

    /// The server's log, this database's lines only (log_line_prefix names it): backends
    /// that read EOF instead of Terminate, once its sessions are all gone.
    fn unclean_closes(&self) -> Option<u64> {
        let mut client = self.server.client();
        wait_until_alone("postgres", || {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&self.name],
                )
                .expect("postgres: count sessions");
            row.get::<_, i64>(0) as u64
        });
        let prefix = format!("] {} ", self.name);
        let log = fs::read_to_string(&self.server.log).unwrap_or_default();
        let mut pids: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&prefix))
            .filter(|l| {
                l.contains("unexpected EOF on client connection")
                    || l.contains("could not receive data from client")
            })
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        Some(pids.len() as u64)
    }

    fn log_tail(&self) -> String {
        tail(&self.server.log, 40)
    }
}
