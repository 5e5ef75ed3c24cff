//! A private Redis for tests (db/mod.rs says why each server is private).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::common::{free_port, on_free_port, require_binary, tail, Daemon, Database, DbKind};
use crate::TempDir;

/// A private Redis without persistence.
pub struct RedisServer {
    port: u16,
    /// `start_tls`: the TLS port beside the plaintext one.
    tls_port: Option<u16>,
    log: PathBuf,
    pub(super) _daemon: Daemon,
    pub(super) _dir: TempDir,
}

const REDIS_SERVER: &str = "/usr/bin/redis-server";

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Also listening for TLS on `tls_port()`, with a self-signed certificate and no client
    /// certificates asked for (Debian's redis-server is built with TLS: it links libssl.so.3;
    /// https://redis.io/docs/latest/operate/oss_and_stack/management/security/encryption/).
    /// The plaintext port stays open for the harness's own ground-truth reads.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        require_binary(Path::new(REDIS_SERVER), "redis-server");
        let dir = TempDir::new("redis");
        let log = dir.0.join("redis.log");
        if tls {
            super::pg::make_certificate(&dir.0, None);
        }
        let mut tls_port = None;
        let (port, daemon) = on_free_port("redis-server", |port| {
            let mut cmd = Command::new(REDIS_SERVER);
            if tls {
                // Taken meanwhile: redis-server says "Address already in use", as for the
                // plaintext port, and on_free_port tries again with new ports.
                let port = free_port();
                tls_port = Some(port);
                cmd.args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(dir.0.join("server.crt"))
                    .arg("--tls-key-file")
                    .arg(dir.0.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.0.join("server.crt"));
            }
            // Options as command-line "--name value" pairs and no config file, so nothing of
            // the system service's /etc/redis applies; see "Passing arguments via the command
            // line" in https://redis.io/docs/latest/operate/oss_and_stack/management/config/
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--logfile", ""])
                // DEBUG SLEEP: a command that is slow for sure (tests of requests in flight).
                .args(["--enable-debug-command", "yes"])
                .arg("--dir")
                .arg(&dir.0)
                .current_dir(&dir.0);
            let mut daemon = Daemon::spawn("redis-server", &mut cmd, &log, libc::SIGTERM);
            daemon.wait_ready(|| redis_connect(port).map_err(|e| e.to_string()))?;
            Ok((port, daemon))
        });
        Self {
            port,
            tls_port,
            log,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// The TLS port (`start_tls`).
    pub fn tls_port(&self) -> u16 {
        self.tls_port
            .expect("RedisServer::start_tls has a TLS port")
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self._daemon.child.id()
    }

    /// A new connection (answered a PING).
    pub fn conn(&self) -> redis::Connection {
        redis_connect(self.port).unwrap_or_else(|e| panic!("connect to redis: {e}"))
    }
}

fn redis_connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    redis::cmd("PING").query::<String>(&mut conn)?;
    Ok(conn)
}

impl Database for RedisServer {
    fn kind(&self) -> DbKind {
        DbKind::Redis
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn ledger_steps(&self, op: &str) -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(format!("ledger:{op}"))
            .arg(0)
            .arg(-1)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis: read ledger: {e}"))
    }

    fn unclean_closes(&self) -> Option<u64> {
        None
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}
