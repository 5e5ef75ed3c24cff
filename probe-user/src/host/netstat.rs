//! TCP sockets of a process from /proc: its fd table (`/proc/PID/fd/N` -> `socket:[INODE]`)
//! joined with `/proc/PID/net/tcp` and `tcp6` (read in the process's own network
//! namespace). Used for connections that existed before attach, and to name the local
//! address of a database connection. Format: proc(5), "/proc/net/tcp".

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// TCP_LISTEN in include/net/tcp_states.h.
const TCP_LISTEN: u8 = 0x0a;
/// TCP_CLOSE: sockets that are not connected (or no longer).
const TCP_CLOSE: u8 = 0x07;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// The kernel's delayed-ACK "interactive" (pingpong) mode, from the `quick/pingpong`
    /// column (net/ipv4/tcp_ipv4.c, get_tcp4_sock: `(quick << 1) | in_pingpong_mode`):
    /// set when the socket sent data soon after it received some, cleared when it had to
    /// acknowledge received data on its own (a delayed ACK timed out). `None` if absent.
    pub interactive: Option<bool>,
}

impl TcpSocket {
    pub fn is_listener(&self) -> bool {
        self.state == TCP_LISTEN
    }

    pub fn is_closed(&self) -> bool {
        self.state == TCP_CLOSE
    }
}

/// `(fd, inode)` of every socket fd of a process.
pub fn socket_fds(tgid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{tgid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let fd = entry.file_name().to_str()?.parse().ok()?;
        let target = fs::read_link(entry.path()).ok()?;
        let inode = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((fd, inode))
    })
    .collect()
}

/// Socket inode -> the process holding it (the lowest pid, when several do), over all
/// processes.
pub fn socket_owners() -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return out;
    };
    let mut pids: Vec<u32> = proc_dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        for (_, inode) in socket_fds(pid) {
            out.entry(inode).or_insert(pid);
        }
    }
    out
}

/// The TCP sockets visible in the process's network namespace, by inode.
pub fn tcp_sockets(tgid: u32) -> HashMap<u64, TcpSocket> {
    let mut out = HashMap::new();
    for file in ["tcp", "tcp6"] {
        if let Ok(text) = fs::read_to_string(format!("/proc/{tgid}/net/{file}")) {
            out.extend(parse_table(&text));
        }
    }
    out
}

/// The TCP socket behind one fd, if it is one.
pub fn socket_of(tgid: u32, fd: u32) -> Option<TcpSocket> {
    let target = fs::read_link(format!("/proc/{tgid}/fd/{fd}")).ok()?;
    let inode: u64 = target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    tcp_sockets(tgid).remove(&inode)
}

/// Parses the lines of /proc/net/tcp or tcp6:
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`.
pub fn parse_table(text: &str) -> HashMap<u64, TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = parse_addr(fields.get(1)?)?;
            let remote = parse_addr(fields.get(2)?)?;
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            let interactive = fields
                .get(14)
                .and_then(|f| f.parse::<u32>().ok())
                .map(|quick_pingpong| quick_pingpong & 1 == 1);
            Some((
                inode,
                TcpSocket {
                    local,
                    remote,
                    state,
                    interactive,
                },
            ))
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6). The address is printed as
/// 32-bit words in the kernel's (host, little-endian here) byte order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let ip = match words.as_slice() {
        [v4] => IpAddr::V4(Ipv4Addr::from(v4.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, word) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D2F0 0100007F:1538 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1538 0000000000000000FFFF00000100007F:E3A2 01 00000000:00000000 00:00000000 00000000   106        0 778 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_ipv4_sockets() {
        let table = parse_table(TCP);
        let listener = &table[&12345];
        assert!(listener.is_listener());
        assert_eq!(listener.local, "127.0.0.1:8080".parse().unwrap());
        let conn = &table[&12346];
        assert_eq!(conn.remote, "127.0.0.1:5432".parse().unwrap());
        assert!(!conn.is_listener() && !conn.is_closed());
        assert_eq!(conn.interactive, Some(false), "quick 15, not pingpong");
    }

    #[test]
    fn parses_ipv6_and_mapped_ipv4() {
        let table = parse_table(TCP6);
        assert_eq!(table[&777].local, "[::1]:5432".parse().unwrap());
        assert_eq!(table[&778].remote, "127.0.0.1:58274".parse().unwrap());
    }

    #[test]
    fn reads_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        let sockets = tcp_sockets(me);
        let found = socket_fds(me)
            .into_iter()
            .filter_map(|(_, inode)| sockets.get(&inode))
            .any(|s| s.is_listener() && s.local.port() == port);
        assert!(found, "own listener found through /proc");
    }

    /// The kernel behaviour the rule for ties relies on (`attach_rule`): a socket that
    /// answered at once is in interactive (pingpong) mode; once it has received data it
    /// does not answer, it leaves it (at the latest when its delayed ACK times out,
    /// TCP_DELACK_MAX = 200 ms).
    #[test]
    fn answering_at_once_is_interactive_and_leaving_a_request_unanswered_is_not() {
        use std::io::{Read, Write};
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&server);
        let inode = fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino();
        let me = std::process::id();
        let interactive = || tcp_sockets(me)[&inode].interactive;
        client.write_all(b"ping\n").unwrap();
        server.read_exact(&mut [0u8; 5]).unwrap();
        server.write_all(b"pong\n").unwrap();
        client.read_exact(&mut [0u8; 5]).unwrap();
        assert_eq!(interactive(), Some(true), "answered at once");
        client.write_all(b"slow\n").unwrap();
        server.read_exact(&mut [0u8; 5]).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while interactive() != Some(false) {
            assert!(std::time::Instant::now() < deadline, "still interactive");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
