//! What of a database send/recv may leave the kernel: message types, lengths and status
//! bytes, nothing else (DESIGN.md: "Query text and payloads never leave the kernel").
//!
//! The probe copies up to 32 bytes from each end of the data; these functions decide how
//! many of them to keep (`head[..head_len]`, `tail[tail_off..tail_off + tail_len]`) and
//! zero every other byte. Userspace's protocol parsers work from what is kept.
//!
//! It lives here, not in probe-ebpf, so that it is unit tested on the host; the kernel
//! calls it inline.

use crate::{
    DbIoEvent, DIR_SEND, HEAD_BYTES, PROTO_MYSQL, PROTO_POSTGRES, PROTO_REDIS, TAIL_BYTES,
};

/// `copied_head`/`copied_tail`: bytes actually copied from each end.
#[inline(always)]
pub fn redact(event: &mut DbIoEvent, copied_head: u8, copied_tail: u8) {
    let send = event.dir == DIR_SEND;
    let (head_keep, tail_keep) = match event.proto {
        PROTO_POSTGRES => postgres(event, copied_head, copied_tail, send),
        PROTO_MYSQL => mysql(event, copied_head, copied_tail, send),
        PROTO_REDIS => redis(event, copied_head, copied_tail, send),
        _ => (0, 0),
    };
    let head_keep = min(head_keep, copied_head);
    let tail_keep = min(tail_keep, copied_tail);
    event.head_len = head_keep;
    event.tail_off = copied_tail - tail_keep;
    event.tail_len = tail_keep;
    for i in 0..HEAD_BYTES {
        if i >= head_keep as usize {
            event.head[i] = 0;
        }
    }
    for i in 0..TAIL_BYTES {
        if i < event.tail_off as usize || i >= copied_tail as usize {
            event.tail[i] = 0;
        }
    }
}

#[inline(always)]
fn min(a: u8, b: u8) -> u8 {
    if a < b {
        a
    } else {
        b
    }
}

/// Byte `back` places before the end of the copied tail (1 = last byte), or None.
#[inline(always)]
fn from_end(event: &DbIoEvent, copied: u8, back: u8) -> Option<u8> {
    if back == 0 || back > copied {
        return None;
    }
    let at = (copied - back) as usize;
    event.tail.get(at & (TAIL_BYTES - 1)).copied()
}

/// PostgreSQL (https://www.postgresql.org/docs/current/protocol-message-formats.html):
/// sends keep the message type and length (5 bytes; 8 for the untyped StartupMessage,
/// SSLRequest and GSSENCRequest, whose first byte is 0); recvs keep the type and length of
/// the first message, a one-byte SSL answer, and at the end only a ReadyForQuery message
/// (`Z`, int32 5, status) or the piece of one that a split read left at either edge.
#[inline(always)]
fn postgres(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
    if send {
        let keep = if head >= 1 && event.head[0] == 0 {
            8
        } else {
            5
        };
        return (keep, 0);
    }
    if event.len == 1 {
        return (1, 1);
    }
    (5, ready_for_query_suffix(event, tail))
}

const RFQ: [u8; 5] = [b'Z', 0, 0, 0, 5];

#[inline(always)]
fn is_status(byte: u8) -> bool {
    byte == b'I' || byte == b'T' || byte == b'E'
}

/// How many of the last bytes belong to a ReadyForQuery message: all 6 when the data ends
/// with one; the first k (< 6) when a split read ends inside one; or, for a read shorter
/// than 6 bytes, all of it when it is the rest of one.
#[inline(always)]
fn ready_for_query_suffix(event: &DbIoEvent, tail: u8) -> u8 {
    // Ends with a whole message: Z 0 0 0 5 status.
    if let Some(status) = from_end(event, tail, 1) {
        if is_status(status) && ends_with_rfq_prefix(event, tail, 1, 5) {
            return 6;
        }
    }
    // Ends inside one: the first k bytes of it, k = 5..1.
    let mut k = 5u8;
    while k >= 1 {
        if ends_with_rfq_prefix(event, tail, 0, k) {
            return k;
        }
        k -= 1;
    }
    // A short read that is the end of one: a suffix of `Z 0 0 0 5 status`.
    if event.len < 6 && tail as u32 == event.len {
        if let Some(status) = from_end(event, tail, 1) {
            if is_status(status) {
                let mut ok = true;
                for j in 0..5u8 {
                    // Byte j of the read must be RFQ[6 - tail + j] (at most RFQ[4]).
                    if j + 1 < tail {
                        let want = RFQ[(6 - tail + j) as usize % 5];
                        if from_end(event, tail, tail - j) != Some(want) {
                            ok = false;
                        }
                    }
                }
                if ok {
                    return tail;
                }
            }
        }
    }
    0
}

/// Whether the `len` bytes ending `skip` bytes before the tail's end are `RFQ[..len]`.
#[inline(always)]
fn ends_with_rfq_prefix(event: &DbIoEvent, tail: u8, skip: u8, len: u8) -> bool {
    if len as u16 + skip as u16 > tail as u16 {
        return false;
    }
    for i in 0..5u8 {
        if i < len && from_end(event, tail, skip + len - i) != Some(RFQ[i as usize]) {
            return false;
        }
    }
    true
}

/// MySQL/MariaDB (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html):
/// sends keep the packet header and command byte (5 bytes). Recvs keep the first packet's
/// header and first payload byte (OK 0x00, EOF 0xfe, ERR 0xff, greeting 0x0a); when the
/// first packet is an OK, its fields up to the status flags and warnings; and at the end,
/// a final OK/EOF packet whole when it is small (no info text) — never an ERR message.
#[inline(always)]
fn mysql(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
    if send {
        return (5, 0);
    }
    let mut head_keep = 5;
    if head >= 5 && event.head[4] == 0x00 {
        // OK: header(4) 0x00 affected_rows(lenenc) last_insert_id(lenenc) status(2) warnings(2)
        let first = lenenc_size(event.head[5 & (HEAD_BYTES - 1)]);
        let second_at = 5 + first;
        let second = lenenc_size(event.head[second_at as usize & (HEAD_BYTES - 1)]);
        head_keep = 5 + first + second + 4;
    }
    (head_keep, mysql_last_packet(event, tail))
}

/// Size of a length-encoded integer from its first byte.
#[inline(always)]
fn lenenc_size(first: u8) -> u8 {
    match first {
        0xfc => 3,
        0xfd => 4,
        0xfe => 9,
        _ => 1,
    }
}

/// The length of a final small OK/EOF packet at the end of the tail, or 0.
#[inline(always)]
fn mysql_last_packet(event: &DbIoEvent, tail: u8) -> u8 {
    // A packet of total size k ends the data when its 3-byte length is k - 4.
    for k in 9u8..28 {
        if k > tail {
            break;
        }
        let (Some(b0), Some(b1), Some(b2), Some(kind)) = (
            from_end(event, tail, k),
            from_end(event, tail, k - 1),
            from_end(event, tail, k - 2),
            from_end(event, tail, k - 4),
        ) else {
            break;
        };
        let payload = b0 as u32 | (b1 as u32) << 8 | (b2 as u32) << 16;
        if payload == (k - 4) as u32 && (kind == 0x00 || kind == 0xfe) {
            return k;
        }
    }
    0
}

/// Redis (https://redis.io/docs/latest/develop/reference/protocol-spec/): sends keep the
/// first command's name only when it is MULTI, EXEC, DISCARD or QUIT (else just the array
/// header `*N\r\n`), and at the end such a command whole; recvs keep the reply type byte
/// and the final CRLF.
#[inline(always)]
fn redis(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
    if !send {
        let crlf =
            from_end(event, tail, 2) == Some(b'\r') && from_end(event, tail, 1) == Some(b'\n');
        return (1, if crlf { 2 } else { 0 });
    }
    let head_keep = redis_head(event, head);
    let mut tail_keep = 0;
    for (name, len) in [
        (b"EXEC\r\n\0\0\0", 6u8),
        (b"DISCARD\r\n", 9),
        (b"MULTI\r\n\0\0", 7),
        (b"QUIT\r\n\0\0\0", 6),
    ] {
        // `$<n>\r\n<NAME>\r\n` at the very end.
        let whole = len + 4;
        if tail_keep == 0 && tail >= whole && tail_matches(event, tail, name, len) {
            if from_end(event, tail, whole) == Some(b'$') {
                tail_keep = whole;
            }
        }
    }
    (head_keep, tail_keep)
}

#[inline(always)]
fn tail_matches(event: &DbIoEvent, tail: u8, name: &[u8; 9], len: u8) -> bool {
    for i in 0..9u8 {
        if i < len {
            let got = from_end(event, tail, len - i).unwrap_or(0);
            if got.to_ascii_uppercase() != name[i as usize] {
                return false;
            }
        }
    }
    true
}

/// `*N\r\n$L\r\nNAME\r\n` with NAME one of the transaction words: keep through NAME's CRLF;
/// otherwise keep `*N\r\n` (or nothing for an inline command).
#[inline(always)]
fn redis_head(event: &DbIoEvent, head: u8) -> u8 {
    if head < 4 || event.head[0] != b'*' {
        return 0;
    }
    // `*N\r\n` with a one-digit N is 4 bytes; longer arrays are never transaction words.
    if event.head[2] != b'\r' || event.head[3] != b'\n' {
        return 0;
    }
    if head < 8 || event.head[4] != b'$' || event.head[6] != b'\r' {
        return 4;
    }
    let name_len = event.head[5].wrapping_sub(b'0');
    if !(4..=7).contains(&name_len) {
        return 4;
    }
    let end = 8 + name_len + 2;
    if end > head {
        return 4;
    }
    let mut word = [0u8; 7];
    for i in 0..7usize {
        if i < name_len as usize {
            word[i] = event.head[(8 + i) & (HEAD_BYTES - 1)].to_ascii_uppercase();
        }
    }
    let known = matches!(
        &word,
        b"EXEC\0\0\0" | b"QUIT\0\0\0" | b"MULTI\0\0" | b"DISCARD"
    );
    if known {
        end
    } else {
        4
    }
}

#[cfg(test)]
mod tests;
