//! What of a database send/recv may leave the kernel: message types, lengths and status
//! bytes, nothing else (docs/design.md: "Query text and payloads never leave the kernel").
//!
//! The probe copies up to 32 bytes from each end of the data: the head left-aligned in
//! `head`, the tail right-aligned in `tail` (its last byte is `tail[31]`). These functions
//! decide how many to keep (`head[..head_len]`, `tail[32 - tail_len..]`) and zero every
//! other byte. Userspace's protocol parsers work from what is kept.
//!
//! Every array index here is a constant once loops are unrolled: the verifier rejects
//! variable-offset reads from the stack, where the event is built.
//!
//! It lives here, not in probe-ebpf, so that it is unit tested on the host; the kernel
//! calls its two halves, [`keep`] and [`apply`], from two global BPF functions
//! (probe-ebpf/src/sockets/db.rs: the verifier checks the masks once, not once per path
//! through the protocol rules).

use crate::{
    DbIoEvent, DIR_SEND, HEAD_BYTES, PROTO_MYSQL, PROTO_POSTGRES, PROTO_REDIS, TAIL_BYTES,
};

/// `copied_head`/`copied_tail`: bytes actually copied from each end.
#[inline(always)]
pub fn redact(event: &mut DbIoEvent, copied_head: u8, copied_tail: u8) {
    let (head_keep, tail_keep) = keep(event, copied_head, copied_tail);
    apply(event, head_keep, tail_keep);
}

/// How many bytes of each end [`redact`] keeps: (head, tail), at most what was copied.
#[inline(always)]
pub fn keep(event: &DbIoEvent, copied_head: u8, copied_tail: u8) -> (u8, u8) {
    let send = event.dir == DIR_SEND;
    let (head_keep, tail_keep) = match event.proto {
        PROTO_POSTGRES => postgres(event, copied_head, copied_tail, send),
        PROTO_MYSQL => mysql(event, copied_head, copied_tail, send),
        PROTO_REDIS => redis(event, copied_head, copied_tail, send),
        _ => (0, 0),
    };
    (min(head_keep, copied_head), min(tail_keep, copied_tail))
}

/// Keeps `head[..head_keep]` and `tail[32 - tail_keep..]`, zeroes every other byte, and
/// sets the event's lengths. `head_keep`, `tail_keep` <= 32 ([`keep`]'s).
#[inline(always)]
pub fn apply(event: &mut DbIoEvent, head_keep: u8, tail_keep: u8) {
    event.head_len = head_keep;
    event.tail_off = TAIL_BYTES as u8 - tail_keep;
    event.tail_len = tail_keep;
    // Masks instead of branches: 0xff keeps a byte, 0 clears it. The verifier would
    // otherwise explore both sides of 64 comparisons.
    for i in 0..HEAD_BYTES {
        let keep = ((i as i32 - head_keep as i32) >> 31) as u8;
        event.head[i] &= keep;
    }
    let off = event.tail_off as i32;
    for i in 0..TAIL_BYTES {
        let from_off = !(((i as i32 - off) >> 31) as u8);
        event.tail[i] &= from_off;
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

/// Byte `back` places before the end of the data (1 = last byte), if it was copied.
#[inline(always)]
fn from_end(event: &DbIoEvent, copied: u8, back: usize) -> Option<u8> {
    if back == 0 || back > copied as usize {
        return None;
    }
    // `get`, not indexing: no panic path for the verifier to reject.
    event.tail.get(TAIL_BYTES.wrapping_sub(back)).copied()
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

/// Byte `i` (0..5) of ReadyForQuery before its status: `Z 0 0 0 5`. A function, not a
/// table: the verifier cannot bound a computed index into .rodata.
#[inline(always)]
fn rfq(i: u8) -> u8 {
    match i {
        0 => b'Z',
        4 => 5,
        _ => 0,
    }
}

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
    for k in [5usize, 4, 3, 2, 1] {
        if ends_with_rfq_prefix(event, tail, 0, k) {
            return k as u8;
        }
    }
    // A short read (under 6 bytes) that is the end of one: `Z 0 0 0 5 status` from byte
    // 6 - len on. One unrolled case per length keeps every index constant.
    if event.len < 6 && tail as u32 == event.len && from_end(event, tail, 1).is_some_and(is_status)
    {
        for len in 1..6usize {
            if tail as usize == len {
                let mut ok = true;
                for j in 0..len - 1 {
                    if from_end(event, tail, len - j) != Some(rfq((6 - len + j) as u8)) {
                        ok = false;
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

/// Whether the `len` bytes ending `skip` bytes before the end are `Z 0 0 0 5`[..len].
#[inline(always)]
fn ends_with_rfq_prefix(event: &DbIoEvent, tail: u8, skip: usize, len: usize) -> bool {
    if len + skip > tail as usize {
        return false;
    }
    for i in 0..len {
        if from_end(event, tail, skip + len - i) != Some(rfq(i as u8)) {
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
        let first = lenenc_size(event.head[5]);
        // The second integer starts right after the first: one constant index per size.
        let second = lenenc_size(match first {
            1 => event.head[6],
            3 => event.head[8],
            4 => event.head[9],
            _ => event.head[14],
        });
        head_keep = 5 + first + second + 4;
    }
    (head_keep, mysql_last_packet(event, tail))
}

/// Size of a length-encoded integer from its first byte: 1, or 3/4/9 after 0xfc/0xfd/0xfe.
/// Arithmetic rather than a match: LLVM turns the match into a shifted lookup whose
/// out-of-range branch the BPF backend leaves pointing past the end of the program.
#[inline(always)]
fn lenenc_size(first: u8) -> u8 {
    1 + 2 * (first >= 0xfc) as u8 + (first >= 0xfd) as u8 + 5 * (first >= 0xfe) as u8
}

/// The length of a final small OK/EOF packet at the end of the tail, or 0.
#[inline(always)]
fn mysql_last_packet(event: &DbIoEvent, tail: u8) -> u8 {
    // A packet of total size k ends the data when its 3-byte length is k - 4.
    for k in 9usize..28 {
        if k > tail as usize {
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
            return k as u8;
        }
    }
    0
}

/// Redis (https://redis.io/docs/latest/develop/reference/protocol-spec/): sends keep the
/// first command's name only when it is MULTI, EXEC, DISCARD or QUIT (else just the array
/// header `*N\r\n`), and at the end such a command whole, with the CRLF that ended the
/// command before it (`\r\n*1\r\n$4\r\nEXEC\r\n`): the array header is what the parser
/// resynchronises on after a gap (go-redis's MULTI…EXEC in one write), and the CRLF before it
/// proves the `*` starts a command, not a value's data, and a value that merely ends with the
/// word (`SET k EXEC`) is not kept. Recvs keep the reply type byte and the final CRLF.
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
        // `\r\n*1\r\n$<n>\r\n<NAME>\r\n` at the very end.
        let word = len as usize + 4;
        let whole = word + 6;
        if tail_keep == 0
            && tail as usize >= whole
            && tail_matches(event, tail, name, len as usize, 0)
            && from_end(event, tail, word) == Some(b'$')
            && from_end(event, tail, word - 1) == Some(b'0' + len - 2)
            && tail_matches(event, tail, b"\r\n*1\r\n\0\0\0", 6, word)
        {
            tail_keep = whole as u8;
        }
    }
    (head_keep, tail_keep)
}

/// The `len` bytes ending `skip` bytes before the end of the data are `name[..len]`
/// (letters compared in upper case).
#[inline(always)]
fn tail_matches(event: &DbIoEvent, tail: u8, name: &[u8; 9], len: usize, skip: usize) -> bool {
    for i in 0..len {
        let got = from_end(event, tail, skip + len - i).unwrap_or(0);
        if name.get(i) != Some(&got.to_ascii_uppercase()) {
            return false;
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
    for (i, letter) in word.iter_mut().enumerate() {
        if i < name_len as usize {
            *letter = event.head[(8 + i) & (HEAD_BYTES - 1)].to_ascii_uppercase();
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
