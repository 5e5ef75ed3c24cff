//! dw-game's database side: one connection per pool slot, through the client crate a real
//! server would use, and the transaction each request runs (see game_server.rs's header).
//! Goodbyes on close, as drainwatch's "clean close" expects:
//! - PostgreSQL Terminate:
//!   https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-TERMINATION
//! - MySQL COM_QUIT: https://mariadb.com/kb/en/com_quit/
//! - Redis QUIT: https://redis.io/docs/latest/commands/quit/

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use mysql::prelude::Queryable;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Postgres,
    Mysql,
    Redis,
}

/// One database connection, through the crate a real server would use.
pub enum Conn {
    Pg(postgres::Client),
    My(mysql::Conn),
    Redis(redis::Connection),
}

/// An error with its causes ("error connecting to server: Connection refused ..."): the
/// client crates' Display alone often omits the reason.
/// How long a request holds its transaction open between the two writes.
#[derive(Clone, Debug)]
pub enum Pause {
    For(Duration),
    /// Until the test creates this file (a gate it opens when it has seen what it waits
    /// for), at most ten minutes: timing that holds at any machine speed.
    UntilFile(PathBuf),
    /// A call to another service (`--service`): `GET /NAME` over a new TCP connection, the
    /// answer read to its end; `kept`: `call NAME` on a connection kept for the next call,
    /// its answer line read.
    Call {
        service: std::net::SocketAddr,
        name: String,
        kept: bool,
    },
}

/// The kept service connections not in use (`--service-kept`).
static KEPT: std::sync::Mutex<Vec<std::io::BufReader<std::net::TcpStream>>> =
    std::sync::Mutex::new(Vec::new());

/// `call NAME` on a kept connection (a new one when none is free), its answer line read;
/// the connection is kept again unless the call failed.
fn kept_call(service: &std::net::SocketAddr, name: &str) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let free = KEPT.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut conn = match free {
        Some(conn) => conn,
        None => std::io::BufReader::new(std::net::TcpStream::connect(service).map_err(why)?),
    };
    conn.get_mut()
        .write_all(format!("call {name}\n").as_bytes())
        .map_err(why)?;
    let mut answer = String::new();
    conn.read_line(&mut answer).map_err(why)?;
    if answer.trim() != "ok" {
        return Err(format!("answer {answer:?}"));
    }
    KEPT.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    Ok(())
}

impl Pause {
    fn wait(&self) {
        match self {
            Pause::Call {
                service,
                name,
                kept: true,
            } => {
                if let Err(e) = kept_call(service, name) {
                    eprintln!("dw-game: the service call for {name} failed: {e}");
                }
            }
            Pause::Call { service, name, .. } => {
                use std::io::{Read, Write};
                // A failed call still ends the wait: write B follows, as a server that
                // logs the error and goes on would do it (the test checks the answer came).
                let Ok(mut stream) = std::net::TcpStream::connect(service) else {
                    eprintln!("dw-game: cannot reach the service at {service}");
                    return;
                };
                let request = format!("GET /{name} HTTP/1.1\r\nHost: service\r\n\r\n");
                let mut answer = Vec::new();
                if stream.write_all(request.as_bytes()).is_err()
                    || stream.read_to_end(&mut answer).is_err()
                    || !answer.starts_with(b"HTTP/1.1 200")
                {
                    eprintln!("dw-game: the service call for {name} failed");
                }
            }
            Pause::For(d) => thread::sleep(*d),
            Pause::UntilFile(path) => {
                let deadline = Instant::now() + Duration::from_secs(600);
                while !path.exists() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

pub fn why(e: impl std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text = format!("{text}: {inner_text}");
        }
        cause = inner.source();
    }
    text
}

impl Conn {
    pub fn open(kind: Kind, url: &str) -> Result<Conn, String> {
        Ok(match kind {
            Kind::Postgres => {
                Conn::Pg(postgres::Client::connect(url, postgres::NoTls).map_err(why)?)
            }
            Kind::Mysql => {
                let opts = mysql::Opts::from_url(url).map_err(why)?;
                // Otherwise the crate reconnects through the server's unix socket when the
                // server is local, and the conversation would leave TCP.
                let opts = mysql::OptsBuilder::from_opts(opts).prefer_socket(false);
                Conn::My(mysql::Conn::new(opts).map_err(why)?)
            }
            Kind::Redis => Conn::Redis(
                redis::Client::open(url)
                    .and_then(|c| c.get_connection())
                    .map_err(why)?,
            ),
        })
    }

    pub fn create_schema(&mut self) -> Result<(), String> {
        match self {
            // The advisory lock: concurrent CREATE TABLE IF NOT EXISTS can still collide in
            // PostgreSQL's catalog when two servers start on one database.
            Conn::Pg(client) => client
                .batch_execute(
                    "SELECT pg_advisory_lock(7245); \
                     CREATE TABLE IF NOT EXISTS ledger \
                       (id bigserial PRIMARY KEY, op text NOT NULL, step text NOT NULL); \
                     SELECT pg_advisory_unlock(7245);",
                )
                .map_err(why),
            Conn::My(conn) => conn
                .query_drop(
                    "CREATE TABLE IF NOT EXISTS ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
                     op VARCHAR(64) NOT NULL, step VARCHAR(8) NOT NULL) ENGINE=InnoDB",
                )
                .map_err(why),
            // Lists are created by their first RPUSH.
            Conn::Redis(_) => Ok(()),
        }
    }

    /// The two writes with `pause` between them, inside one transaction, or with
    /// `autocommit` each its own (the story's half-done-operation danger: nothing holds a
    /// database connection between them). `in_pause` runs once write A is done (the
    /// database said so), right before the pause: the ground truth counts from there, so
    /// that a test that sees it can rely on being inside the pause. `writing` runs right
    /// before each write is sent.
    pub fn two_writes(
        &mut self,
        op: &str,
        pause: &Pause,
        autocommit: bool,
        writing: &dyn Fn(),
        in_pause: impl FnOnce(),
    ) -> Result<(), String> {
        if autocommit {
            self.write(op, "A", writing)?;
            in_pause();
            pause.wait();
            return self.write(op, "B", writing);
        }
        match self {
            Conn::Pg(client) => {
                let mut tx = client.transaction().map_err(why)?;
                writing();
                tx.execute("INSERT INTO ledger(op, step) VALUES ($1, 'A')", &[&op])
                    .map_err(why)?;
                in_pause();
                pause.wait();
                writing();
                tx.execute("INSERT INTO ledger(op, step) VALUES ($1, 'B')", &[&op])
                    .map_err(why)?;
                tx.commit().map_err(why)
            }
            Conn::My(conn) => {
                let mut tx = conn
                    .start_transaction(mysql::TxOpts::default())
                    .map_err(why)?;
                writing();
                tx.exec_drop("INSERT INTO ledger(op, step) VALUES (?, 'A')", (op,))
                    .map_err(why)?;
                in_pause();
                pause.wait();
                writing();
                tx.exec_drop("INSERT INTO ledger(op, step) VALUES (?, 'B')", (op,))
                    .map_err(why)?;
                tx.commit().map_err(why)
            }
            Conn::Redis(conn) => {
                let key = format!("ledger:{op}");
                redis::cmd("MULTI").query::<()>(conn).map_err(why)?;
                let queued = (|| {
                    writing();
                    redis::cmd("RPUSH").arg(&key).arg("A").query::<()>(conn)?;
                    in_pause();
                    pause.wait();
                    writing();
                    redis::cmd("RPUSH").arg(&key).arg("B").query::<()>(conn)
                })();
                if let Err(e) = queued {
                    let _ = redis::cmd("DISCARD").query::<()>(conn);
                    return Err(why(e));
                }
                redis::cmd("EXEC").query::<()>(conn).map_err(why)
            }
        }
    }

    /// One autocommit write of `step` for `op`.
    fn write(&mut self, op: &str, step: &str, writing: &dyn Fn()) -> Result<(), String> {
        writing();
        match self {
            Conn::Pg(client) => client
                .execute(
                    "INSERT INTO ledger(op, step) VALUES ($1, $2)",
                    &[&op, &step],
                )
                .map(drop)
                .map_err(why),
            Conn::My(conn) => conn
                .exec_drop("INSERT INTO ledger(op, step) VALUES (?, ?)", (op, step))
                .map_err(why),
            Conn::Redis(conn) => redis::cmd("RPUSH")
                .arg(format!("ledger:{op}"))
                .arg(step)
                .query::<()>(conn)
                .map_err(why),
        }
    }

    /// Closes with the protocol's goodbye.
    pub fn close(self) -> Result<(), String> {
        match self {
            // close() sends Terminate ('X') and waits for the server to hang up.
            Conn::Pg(client) => client.close().map_err(why),
            // The crate's `Drop for Conn` writes COM_QUIT.
            Conn::My(conn) => {
                drop(conn);
                Ok(())
            }
            // redis-rs just closes the socket on drop, so QUIT is sent by hand.
            Conn::Redis(mut conn) => redis::cmd("QUIT")
                .query::<String>(&mut conn)
                .map(drop)
                .map_err(why),
        }
    }
}
