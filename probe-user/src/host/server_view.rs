//! A target server's own view of its clients, asked once at attach, before the probe
//! watches it: the best outside evidence for what the kernel cannot tell (docs/design.md,
//! "unknown"). Today: Redis (and its forks), whose `CLIENT LIST`
//! (https://redis.io/docs/latest/commands/client-list/) says per connection, by the
//! server's own fd, whether the client is blocked waiting for data (`flags=b`: BLPOP,
//! BRPOP, XREAD BLOCK, WAIT, ...) and how much of a command it has buffered (`qbuf`). Redis
//! runs commands on one thread, so a connection it lists while answering us, not blocked
//! and with nothing buffered, has no command running.
//!
//! Only loopback is ever asked, with a short timeout, and only when the server's main thread
//! waits for input (a server busy with a slow command would answer late and see our
//! connection after the probe attached). No keys or values are read: the listing holds
//! addresses, names, flags and sizes, and only fds, flags and sizes are kept.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// What the server said about one client connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientView {
    /// The server's fd for it.
    pub fd: u32,
    /// Blocked waiting for data (`b` in `flags`): a consumer waiting for work, not a
    /// command being worked on.
    pub blocked: bool,
    /// Bytes of a command received and not run yet (`qbuf`).
    pub buffered: u64,
}

/// The server's view, and when it was taken.
#[derive(Clone, Debug)]
pub struct ServerView {
    pub at: Instant,
    pub clients: Vec<ClientView>,
}

impl ServerView {
    /// The view of a connection, if no data reached it since the view was taken
    /// (`recv_ago_ms`, from tcp_info, judged `now`): else it may be doing something new.
    pub fn of(&self, fd: u32, recv_ago_ms: u32, now: Instant) -> Option<&ClientView> {
        // One kernel tick of slack on top (the stamps are jiffies).
        let since = now.saturating_duration_since(self.at).as_millis() as u64 + 10;
        if (recv_ago_ms as u64) < since {
            return None;
        }
        self.clients.iter().find(|c| c.fd == fd)
    }
}

/// The target's own view of its clients, when it is a server that can give one: asked
/// before the probe watches it (so the question is not one of its requests), only while its
/// main thread waits in epoll, and only when it has clients.
pub fn ask(tgid: u32) -> Option<ServerView> {
    if !speaks_redis(&super::procfs::comm(tgid)?) {
        return None;
    }
    // The main thread is caught between two waits now and then (its timer work, a
    // command, or simply not given the CPU on a loaded host): looked at again for a while
    // before giving up.
    let deadline = Instant::now() + Duration::from_millis(250);
    while !super::blocked::in_epoll_wait(tgid, tgid) {
        if Instant::now() >= deadline {
            log::debug!(
                "{tgid}: its main thread did not wait for input: not asked for its clients"
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let sockets = super::netstat::tcp_sockets(tgid);
    let own: Vec<&super::netstat::TcpSocket> = super::netstat::socket_fds(tgid)
        .into_iter()
        .filter_map(|(_, inode)| sockets.get(&inode))
        .collect();
    let listen = own.iter().find(|s| s.is_listener())?.local;
    let has_clients = own
        .iter()
        .any(|s| !s.is_listener() && !s.is_closed() && s.local.port() == listen.port());
    if !has_clients {
        return None;
    }
    // Twice, the second time with more patience: a host under load can be slow to answer.
    ask_redis(listen, Duration::from_millis(100))
        .or_else(|| ask_redis(listen, Duration::from_millis(500)))
}

/// Names under which a process speaks Redis's protocol and has `CLIENT LIST`.
pub fn speaks_redis(comm: &str) -> bool {
    matches!(comm, "redis-server" | "valkey-server" | "keydb-server")
}

/// Parses a `CLIENT LIST` reply: one line per client, `key=value` fields.
pub fn parse_client_list(text: &str) -> Vec<ClientView> {
    text.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            };
            Some(ClientView {
                fd: field("fd")?.parse().ok()?,
                blocked: field("flags")?.contains('b'),
                buffered: field("qbuf")?.parse().ok()?,
            })
        })
        .collect()
}

/// Asks the Redis server listening at `listen` (a wildcard address is asked on loopback)
/// for its client list; `None` on any error (authentication required, timeout, ...).
pub fn ask_redis(listen: SocketAddr, timeout: Duration) -> Option<ServerView> {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip if ip.is_loopback() => ip,
        // Only loopback is ever asked.
        _ => return None,
    };
    let mut conn = TcpStream::connect_timeout(&SocketAddr::new(ip, listen.port()), timeout).ok()?;
    conn.set_read_timeout(Some(timeout)).ok()?;
    conn.set_write_timeout(Some(timeout)).ok()?;
    conn.write_all(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n")
        .ok()?;
    let at = Instant::now();
    // A bulk string: `$LEN\r\n` then LEN bytes and `\r\n`; an error starts with `-`.
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + timeout;
    loop {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || Instant::now() > deadline {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        let Some(header_end) = reply.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let header = std::str::from_utf8(&reply[..header_end]).ok()?;
        let len: usize = header.strip_prefix('$')?.parse().ok()?;
        let body = header_end + 2;
        if reply.len() >= body + len {
            let text = std::str::from_utf8(&reply[body..body + len]).ok()?;
            let view = ServerView {
                at,
                clients: parse_client_list(text),
            };
            say_goodbye(&mut conn, deadline);
            return Some(view);
        }
    }
}

/// QUIT, then read until the server closes: the server's end of this connection is gone
/// before the caller looks at the target's sockets. Dropping ours instead left the
/// server's end in CLOSE_WAIT for a moment, and an attach in that moment took it for a
/// client of the target (our CLIENT LIST "in flight" at attach, then "dropped" when the
/// server closed it during a stop).
fn say_goodbye(conn: &mut TcpStream, deadline: Instant) {
    if conn.write_all(b"*1\r\n$4\r\nQUIT\r\n").is_err() {
        return;
    }
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as redis-server 7.0 printed them (addresses changed).
    const LISTED: &str = "\
id=3 addr=127.0.0.1:40001 laddr=127.0.0.1:6379 fd=8 name= age=3 idle=3 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=1928 events=r cmd=ping user=default redir=-1 resp=2
id=4 addr=127.0.0.1:40002 laddr=127.0.0.1:6379 fd=9 name= age=2 idle=2 flags=b db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=14 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=1942 events=r cmd=blpop user=default redir=-1 resp=2
id=5 addr=127.0.0.1:40003 laddr=127.0.0.1:6379 fd=10 name= age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=26 qbuf-free=20448 argv-mem=10 multi-mem=0 rbs=16384 rbp=16384 obl=0 oll=0 omem=0 tot-mem=37658 events=r cmd=client|list user=default redir=-1 resp=2
";

    #[test]
    fn client_list_gives_fd_blocked_and_buffered() {
        let clients = parse_client_list(LISTED);
        let fds: Vec<(u32, bool, u64)> = clients
            .iter()
            .map(|c| (c.fd, c.blocked, c.buffered))
            .collect();
        assert_eq!(fds, vec![(8, false, 0), (9, true, 0), (10, false, 26)]);
        assert!(parse_client_list("garbage\nfd=x flags=N qbuf=0\n").is_empty());
    }

    #[test]
    fn a_view_older_than_the_last_data_received_says_nothing() {
        let at = Instant::now();
        let view = ServerView {
            at,
            clients: parse_client_list(LISTED),
        };
        let now = at + Duration::from_millis(5);
        assert!(view.of(9, 500, now).is_some_and(|c| c.blocked));
        assert!(view.of(9, 3, now).is_none(), "data came after the view");
        assert!(view.of(42, 500, now).is_none());
    }
}
