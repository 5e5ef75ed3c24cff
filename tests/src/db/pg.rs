//! A private PostgreSQL for tests (db/mod.rs says why each server is private).

use std::{
    fs,
    os::unix::{fs::chown, process::CommandExt},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use super::common::{
    chain, copy_initialized, euid_is_root, initialized_once, missing, on_free_port, require_binary,
    run_setup, tail, wait_until_alone, Daemon, Database, DbKind,
};
use crate::TempDir;

/// A private PostgreSQL (Debian's, /usr/lib/postgresql/<major>/bin), trust auth for user
/// `postgres` on 127.0.0.1, database `postgres`.
///
/// initdb and postgres refuse to run as root, so as root both run as the `postgres` OS user
/// (created by the postgresql-common package), and the temp dir is handed to that user.
pub struct PgServer {
    port: u16,
    pub(super) log: PathBuf,
    pub(super) _daemon: Daemon,
    // Last: removed after the server has stopped.
    pub(super) _dir: TempDir,
}

/// The newest installed PostgreSQL's bin directory.
fn pg_bin_dir() -> PathBuf {
    let newest = fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .max();
    let Some((_, bin)) = newest else {
        missing("/usr/lib/postgresql/<major>/bin/postgres", "postgresql");
    };
    require_binary(&bin.join("initdb"), "postgresql");
    bin
}

/// uid and gid of an OS user (getpwnam_r: no static buffer shared between test threads).
fn os_user(name: &str) -> (u32, u32) {
    let cname = std::ffi::CString::new(name).expect("user name");
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all pointers are valid for the call; `pwd` is only read if `found` is non-null.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        assert!(
            rc == 0 && !found.is_null(),
            "no OS user {name:?}: the postgresql-common package creates it; \
             `cargo xtask setup` installs postgresql"
        );
        (pwd.pw_uid, pwd.pw_gid)
    }
}

impl PgServer {
    pub fn start() -> Self {
        Self::start_with(false, true)
    }

    /// With `update_process_title=off` (a documented setting, and the default on Windows):
    /// its backends' process titles no longer tell a session's state, as for a database on
    /// another host (https://www.postgresql.org/docs/15/runtime-config-logging.html).
    pub fn start_without_titles() -> Self {
        Self::start_with(false, false)
    }

    /// With `ssl=on` and a self-signed certificate made for it (as Debian's package sets
    /// up): libpq's default sslmode=prefer then speaks TLS.
    pub fn start_tls() -> Self {
        Self::start_with(true, true)
    }

    fn start_with(tls: bool, titles: bool) -> Self {
        let bin = pg_bin_dir();
        let dir = TempDir::new("postgres");
        // As root, hand everything to `postgres`; std applies setgroups/setgid/setuid in the
        // child before exec, so the server itself runs as that user (no runuser parent to
        // signal through). The temp dir's parents must be traversable by it: /tmp is.
        let owner = euid_is_root().then(|| os_user("postgres"));
        if let Some((uid, gid)) = owner {
            chown(&dir.0, Some(uid), Some(gid)).expect("chown the temp dir to postgres");
        }
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
            cmd.current_dir(&dir.0)
                .env("LC_ALL", "C")
                .env_remove("PGDATA");
        };
        let data = dir.0.join("data");
        let initdb = bin.join("initdb");
        let template = initialized_once("postgres", &initdb, owner, |made| {
            let mut cmd = Command::new(&initdb);
            cmd.arg("-D")
                .arg(made)
                // --no-sync: the cluster is thrown away, and fsync is most of initdb's time.
                .args([
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "--locale=C",
                    "-E",
                    "UTF8",
                ])
                .env("LC_ALL", "C")
                .env_remove("PGDATA");
            if let Some((uid, gid)) = owner {
                cmd.uid(uid).gid(gid);
            }
            cmd
        });
        copy_initialized(&template, &data);
        if tls {
            make_certificate(&data, owner);
        }
        let log = dir.0.join("postgres.log");
        let (port, daemon) = on_free_port("postgres", |port| {
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(&dir.0)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                // Durability is pointless for a throwaway cluster and costs test time.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "autovacuum=off"])
                .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
                // A backend logs "unexpected EOF on client connection" (a close without
                // Terminate) only at DEBUG1: unclean_closes() counts those lines.
                .args(["-c", "log_min_messages=debug1"])
                // Each session's lines name its database (db/shared.rs reads a shared
                // server's log per database); "[pid]" stays where unclean_closes reads it.
                .args(["-c", "log_line_prefix=%m [%p] %q%d "])
                .args(["-c", if tls { "ssl=on" } else { "ssl=off" }]);
            if !titles {
                // Only when asked: a -c on the command line would override ALTER SYSTEM.
                cmd.args(["-c", "update_process_title=off"]);
            }
            as_user(&mut cmd);
            // SIGINT is PostgreSQL's "fast" shutdown; SIGTERM ("smart") waits for clients
            // (https://www.postgresql.org/docs/15/server-shutdown.html).
            let mut daemon = Daemon::spawn("postgres", &mut cmd, &log, libc::SIGINT);
            let client = daemon.wait_ready(|| pg_connect(port).map_err(|e| chain(&e)))?;
            drop(client);
            Ok((port, daemon))
        });
        Self {
            port,
            log,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// A libpq URL through the server's unix socket (its directory is the temp dir, `-k`):
    /// the same-host setup of many legacy servers.
    pub fn unix_url(&self) -> String {
        format!(
            "postgresql://postgres@/postgres?host={}&port={}",
            self._dir.0.display(),
            self.port
        )
    }

    /// A new connection as `postgres` to database `postgres`.
    pub fn client(&self) -> postgres::Client {
        pg_connect(self.port).unwrap_or_else(|e| panic!("connect to postgres: {}", chain(&e)))
    }

    /// Runs SQL statements (simple query protocol), e.g. to create a table.
    pub fn execute(&self, sql: &str) {
        let mut client = self.client();
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("postgres: {sql}: {}", chain(&e)));
        client.close().expect("close postgres client");
    }
}

/// A self-signed certificate for localhost in the data directory (server.crt/server.key,
/// PostgreSQL's defaults), owned by the server's user; the key readable by it alone, as
/// PostgreSQL insists. MariaDB's TLS server (db/mariadb.rs) uses it too.
pub(super) fn make_certificate(data: &std::path::Path, owner: Option<(u32, u32)>) {
    let (crt, key) = (data.join("server.crt"), data.join("server.key"));
    require_binary(std::path::Path::new("/usr/bin/openssl"), "openssl");
    let mut cmd = Command::new("/usr/bin/openssl");
    cmd.args([
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
    ])
    .args(["-subj", "/CN=localhost", "-keyout"])
    .arg(&key)
    .arg("-out")
    .arg(&crt);
    run_setup("openssl req", &mut cmd, &data.join("openssl.log"));
    for file in [&crt, &key] {
        if let Some((uid, gid)) = owner {
            chown(file, Some(uid), Some(gid)).expect("chown the certificate to postgres");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod server.key");
}

fn pg_connect(port: u16) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2))
        .connect(postgres::NoTls)
}

impl Database for PgServer {
    fn kind(&self) -> DbKind {
        DbKind::Postgres
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ledger_steps(&self, op: &str) -> Vec<String> {
        let mut client = self.client();
        let rows = client
            .query("SELECT step FROM ledger WHERE op = $1 ORDER BY id", &[&op])
            .unwrap_or_else(|e| panic!("postgres: read ledger: {}", chain(&e)));
        rows.iter().map(|row| row.get(0)).collect()
    }

    fn unclean_closes(&self) -> Option<u64> {
        let mut client = self.client();
        wait_until_alone("postgres", || {
            let row = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                    &[],
                )
                .expect("postgres: count sessions");
            row.get::<_, i64>(0) as u64
        });
        let _ = client.close();
        // A backend that read EOF (or a reset) instead of Terminate logs one of these before
        // it exits; both can appear for one backend, so count backends ("[pid]" prefix).
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let mut pids: Vec<&str> = log
            .lines()
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
        tail(&self.log, 40)
    }
}
