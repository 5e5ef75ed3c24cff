//! When each TCP socket last sent and last received data, from the kernel's sock_diag
//! interface (NETLINK_SOCK_DIAG, inet_diag with INET_DIAG_INFO: `struct tcp_info`), by
//! socket inode. For a connection that existed before attach, this says which way the last
//! bytes went: received after the last send means a request may be in flight (DESIGN.md,
//! "request in flight"), sent after the last receive means it was answered.
//!
//! Layouts: include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h, tcp.h
//! (<https://man7.org/linux/man-pages/man7/sock_diag.7.html>).

use std::collections::HashMap;

/// ms since the last data sent and since the last data received (`tcpi_last_data_sent`,
/// `tcpi_last_data_recv`; jiffies, so a few ms of resolution).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastData {
    pub sent_ago_ms: u32,
    pub recv_ago_ms: u32,
}

impl LastData {
    /// The server sent after it last received: whatever came in was answered. A tie (both
    /// in the same tick) is not an answer: the bytes may have come in after the send.
    pub fn answered(self) -> bool {
        self.sent_ago_ms < self.recv_ago_ms
    }
}

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_INFO: u16 = 2;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte sockid.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const MSG_INODE_AT: usize = 4 + 48 + 16;
const MSG_LEN: usize = MSG_INODE_AT + 4;
/// `struct tcp_info`: offsets of tcpi_last_data_sent and tcpi_last_data_recv.
const LAST_DATA_SENT_AT: usize = 44;
const LAST_DATA_RECV_AT: usize = 52;

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Every TCP socket of this network namespace (IPv4 and IPv6), by inode. Empty when
/// sock_diag is not available: callers then know nothing, and must assume the worst.
pub fn last_data() -> HashMap<u64, LastData> {
    let mut out = HashMap::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        if let Err(err) = dump(family as u8, &mut out) {
            log::debug!("sock_diag dump of family {family} failed: {err}");
        }
    }
    out
}

fn dump(family: u8, out: &mut HashMap<u64, LastData>) -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut request = [0u8; NLMSG_HDR + REQ_LEN];
    request[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    request[NLMSG_HDR] = family;
    request[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
    request[NLMSG_HDR + 2] = 1 << (INET_DIAG_INFO - 1); // ext: ask for tcp_info
    request[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
                                                                                    // SAFETY: send(2) of a buffer we own, on our socket (the kernel is the default peer).
    let sent = unsafe { libc::send(raw, request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, at most its length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut at = 0;
        let n = n as usize;
        while at + NLMSG_HDR <= n {
            let len = u32_at(&buf, at).unwrap_or(0) as usize;
            let kind = u16_at(&buf, at + 4).unwrap_or(0);
            if len < NLMSG_HDR || at + len > n {
                return Ok(());
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = u32_at(&buf, at + NLMSG_HDR)
                        .map(|e| -(e as i32))
                        .unwrap_or(0);
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                _ => parse_message(&buf[at + NLMSG_HDR..at + len], out),
            }
            at += (len + 3) & !3;
        }
    }
}

/// One `inet_diag_msg` and its attributes.
fn parse_message(msg: &[u8], out: &mut HashMap<u64, LastData>) {
    let Some(inode) = u32_at(msg, MSG_INODE_AT) else {
        return;
    };
    let mut at = MSG_LEN;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at).unwrap_or(0) as usize;
        let kind = u16_at(msg, at + 2).unwrap_or(0);
        if len < 4 || at + len > msg.len() {
            return;
        }
        if kind == INET_DIAG_INFO {
            let info = &msg[at + 4..at + len];
            if let (Some(sent), Some(recv)) = (
                u32_at(info, LAST_DATA_SENT_AT),
                u32_at(info, LAST_DATA_RECV_AT),
            ) {
                out.insert(
                    inode as u64,
                    LastData {
                        sent_ago_ms: sent,
                        recv_ago_ms: recv,
                    },
                );
            }
        }
        at += (len + 3) & !3;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::unix::fs::MetadataExt,
    };

    use super::*;

    fn inode_of(stream: &TcpStream) -> u64 {
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    /// A real loopback connection: after a request is read and before it is answered the
    /// server side is not `answered`; once it has replied, it is.
    #[test]
    fn which_way_the_last_bytes_went() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let inode = inode_of(&server);
        // A first exchange, then a pause so the next one is in a later tick.
        client.write_all(b"a").unwrap();
        server.read_exact(&mut [0u8; 1]).unwrap();
        server.write_all(b"b").unwrap();
        client.read_exact(&mut [0u8; 1]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        client.write_all(b"c").unwrap();
        server.read_exact(&mut [0u8; 1]).unwrap();
        let busy = last_data()[&inode];
        assert!(!busy.answered(), "a request in flight: {busy:?}");
        std::thread::sleep(std::time::Duration::from_millis(30));
        server.write_all(b"d").unwrap();
        let done = last_data()[&inode];
        assert!(done.answered(), "answered: {done:?}");
    }

    #[test]
    fn a_tie_is_not_an_answer() {
        let tie = LastData {
            sent_ago_ms: 7,
            recv_ago_ms: 7,
        };
        assert!(!tie.answered());
    }
}
