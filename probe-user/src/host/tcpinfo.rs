//! What the kernel knows about each TCP socket's conversation, from its sock_diag interface
//! (NETLINK_SOCK_DIAG, inet_diag with INET_DIAG_INFO: `struct tcp_info`), by socket inode:
//! when it last sent and received data, when the peer last acknowledged, how many bytes
//! wait unread, how many data segments went each way. For a connection that existed before
//! attach this is the evidence of whether a request is in flight (`attach_rule`).
//!
//! Layouts: include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h, tcp.h
//! (<https://man7.org/linux/man-pages/man7/sock_diag.7.html>).

use std::collections::HashMap;

use super::sockdiag::{self, u16_at, u32_at};

/// One socket's conversation as the kernel keeps it. The `*_ago_ms` stamps are kept in
/// jiffies (`tcp_jiffies32`), so two events within one kernel tick (1-10 ms by CONFIG_HZ)
/// have the same stamp.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct SockInfo {
    /// ms since data was last sent (`tcpi_last_data_sent`, from `tp->lsndtime`; set at
    /// connection setup, so a connection that never sent data counts from then).
    pub sent_ago_ms: u32,
    /// ms since data was last received (`tcpi_last_data_recv`, `icsk_ack.lrcvtime`).
    pub recv_ago_ms: u32,
    /// ms since an acknowledgement was last received (`tcpi_last_ack_recv`,
    /// `tp->rcv_tstamp`: every segment from the peer that acknowledges, data or not).
    pub ack_recv_ago_ms: u32,
    /// Bytes received and not yet read by the process (`idiag_rqueue`, less the peer's FIN,
    /// which counts one in it).
    pub unread: u32,
    /// Data segments received and sent (`tcpi_data_segs_in`, `tcpi_data_segs_out`).
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// The peer closed its side (its FIN arrived: CLOSE_WAIT and after).
    pub peer_closed: bool,
}

const INET_DIAG_INFO: u16 = 2;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte sockid.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const MSG_INODE_AT: usize = 4 + 48 + 16;
const MSG_LEN: usize = MSG_INODE_AT + 4;
/// `struct inet_diag_msg`: idiag_state, and TCP states (include/net/tcp_states.h).
const MSG_STATE_AT: usize = 1;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;
/// `struct inet_diag_msg`: idiag_rqueue (for an established socket, bytes not yet read).
const MSG_RQUEUE_AT: usize = 4 + 48 + 4;
/// `struct tcp_info` (include/uapi/linux/tcp.h) offsets.
const LAST_DATA_SENT_AT: usize = 44;
const LAST_DATA_RECV_AT: usize = 52;
const LAST_ACK_RECV_AT: usize = 56;
/// tcpi_data_segs_in / tcpi_data_segs_out: since Linux 4.6.
const DATA_SEGS_IN_AT: usize = 152;
const DATA_SEGS_OUT_AT: usize = 156;

/// Every TCP socket of this network namespace (IPv4 and IPv6), by inode. Empty when
/// sock_diag is not available: callers then know nothing, and must assume the worst.
pub fn sockets() -> HashMap<u64, SockInfo> {
    let mut out = HashMap::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        if let Err(err) = dump(family as u8, &mut out) {
            log::debug!("sock_diag dump of family {family} failed: {err}");
        }
    }
    out
}

fn dump(family: u8, out: &mut HashMap<u64, SockInfo>) -> std::io::Result<()> {
    let mut request = [0u8; REQ_LEN];
    request[0] = family;
    request[1] = libc::IPPROTO_TCP as u8;
    request[2] = 1 << (INET_DIAG_INFO - 1); // ext: ask for tcp_info
    request[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
    sockdiag::dump(&request, |msg| parse_message(msg, out))
}

/// One `inet_diag_msg` and its attributes.
fn parse_message(msg: &[u8], out: &mut HashMap<u64, SockInfo>) {
    let (Some(inode), Some(rqueue), Some(&state)) = (
        u32_at(msg, MSG_INODE_AT),
        u32_at(msg, MSG_RQUEUE_AT),
        msg.get(MSG_STATE_AT),
    ) else {
        return;
    };
    // rqueue is rcv_nxt - copied_seq, and a FIN advances rcv_nxt by one: in the states after
    // the peer's FIN, one of it is not data (net/ipv4/tcp_diag.c, tcp_diag_get_info).
    let peer_closed = matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING);
    let unread = rqueue.saturating_sub(peer_closed as u32);
    let mut at = MSG_LEN;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at).unwrap_or(0) as usize;
        let kind = u16_at(msg, at + 2).unwrap_or(0);
        if len < 4 || at + len > msg.len() {
            return;
        }
        if kind == INET_DIAG_INFO {
            let info = &msg[at + 4..at + len];
            if let (Some(sent), Some(recv), Some(ack)) = (
                u32_at(info, LAST_DATA_SENT_AT),
                u32_at(info, LAST_DATA_RECV_AT),
                u32_at(info, LAST_ACK_RECV_AT),
            ) {
                out.insert(
                    inode as u64,
                    SockInfo {
                        sent_ago_ms: sent,
                        recv_ago_ms: recv,
                        ack_recv_ago_ms: ack,
                        unread,
                        // Older kernels have a shorter tcp_info: unknown counts read as 0.
                        data_segs_in: u32_at(info, DATA_SEGS_IN_AT).unwrap_or(0),
                        data_segs_out: u32_at(info, DATA_SEGS_OUT_AT).unwrap_or(0),
                        peer_closed,
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
    /// last data went in; once the server has replied, out. Unread bytes are counted.
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
        client.write_all(b"cc").unwrap();
        let unread = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while sockets()[&inode].unread != 2 {
            assert!(
                std::time::Instant::now() < unread,
                "{:?}",
                sockets()[&inode]
            );
            std::thread::yield_now();
        }
        server.read_exact(&mut [0u8; 2]).unwrap();
        let busy = sockets()[&inode];
        assert!(
            busy.recv_ago_ms < busy.sent_ago_ms,
            "a request in flight: {busy:?}"
        );
        assert_eq!(
            (busy.unread, busy.data_segs_in, busy.data_segs_out),
            (0, 2, 1)
        );
        std::thread::sleep(std::time::Duration::from_millis(30));
        server.write_all(b"d").unwrap();
        let done = sockets()[&inode];
        assert!(done.sent_ago_ms < done.recv_ago_ms, "answered: {done:?}");
        assert_eq!(done.data_segs_out, 2);
        // The client reads the answer (unread bytes would make its close a reset) and
        // closes: its FIN is not a byte to read.
        client.read_exact(&mut [0u8; 1]).unwrap();
        drop(client);
        let closed = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !sockets()[&inode].peer_closed {
            assert!(
                std::time::Instant::now() < closed,
                "{:?}",
                sockets()[&inode]
            );
            std::thread::yield_now();
        }
        assert_eq!(sockets()[&inode].unread, 0, "{:?}", sockets()[&inode]);
    }
}
