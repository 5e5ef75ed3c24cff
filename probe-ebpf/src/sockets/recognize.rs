//! Which database a connection speaks, from the first bytes it sends or receives.

use probe_common::{PROTO_MYSQL, PROTO_POSTGRES, PROTO_REDIS};

/// A database handshake in the first bytes of a connection on a non-database port:
/// PostgreSQL StartupMessage (protocol 3.0) / SSLRequest / GSSENCRequest
/// (https://www.postgresql.org/docs/current/protocol-message-formats.html), a RESP array
/// (Redis), or a MySQL/MariaDB server greeting (protocol 10). With `midstream`, also a
/// client message in the middle of a conversation: a PostgreSQL typed message whose length
/// fits the send, or a MySQL command packet (sequence 0) that is exactly the send.
#[inline(always)]
pub(super) fn recognize(
    head: &[u8; 32],
    n: u8,
    send: bool,
    midstream: bool,
    moved: u64,
) -> Option<u8> {
    if send {
        if n >= 8 {
            let code = [head[4], head[5], head[6], head[7]];
            let pg = code == [0, 3, 0, 0]
                || (head[0..4] == [0, 0, 0, 8]
                    && (code == [0x04, 0xd2, 0x16, 0x2f] || code == [0x04, 0xd2, 0x16, 0x30]));
            if pg {
                return Some(PROTO_POSTGRES);
            }
        }
        if n >= 4 && head[0] == b'*' && head[1].is_ascii_digit() {
            return Some(PROTO_REDIS);
        }
        if midstream && n >= 5 {
            let pg_len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as u64;
            let pg_type = matches!(
                head[0],
                b'Q' | b'P' | b'B' | b'E' | b'S' | b'D' | b'C' | b'H' | b'X'
            );
            if pg_type && pg_len >= 4 && pg_len < (1 << 24) && pg_len < moved {
                return Some(PROTO_POSTGRES);
            }
            let my_len = head[0] as u64 | (head[1] as u64) << 8 | (head[2] as u64) << 16;
            if head[3] == 0 && my_len + 4 == moved && (0x01..=0x1f).contains(&head[4]) {
                return Some(PROTO_MYSQL);
            }
        }
    } else if n >= 6 && head[3] == 0 && head[4] == 0x0a && head[5].is_ascii_digit() {
        return Some(PROTO_MYSQL);
    }
    None
}
