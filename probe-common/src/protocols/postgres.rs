//! PostgreSQL's kernel rules (protocols/mod.rs): what of its messages leaves the kernel, and
//! its first bytes (https://www.postgresql.org/docs/current/protocol-message-formats.html).

use super::{from_end, KernelRules};
use crate::{DbIoEvent, HEAD_BYTES};

pub struct Rules;

impl KernelRules for Rules {
    #[inline(always)]
    fn keep(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
        keep(event, head, tail, send)
    }

    /// A StartupMessage (protocol 3.0), SSLRequest or GSSENCRequest.
    #[inline(always)]
    fn opens(head: &[u8; HEAD_BYTES], n: u8) -> bool {
        if n < 8 {
            return false;
        }
        let code = [head[4], head[5], head[6], head[7]];
        code == [0, 3, 0, 0]
            || (head[0..4] == [0, 0, 0, 8]
                && (code == [0x04, 0xd2, 0x16, 0x2f] || code == [0x04, 0xd2, 0x16, 0x30]))
    }

    /// A typed client message whose length fits the send.
    #[inline(always)]
    // Written as probe-ebpf's recognize.rs had it, for the same instructions.
    #[allow(clippy::manual_range_contains)]
    fn midstream(head: &[u8; HEAD_BYTES], n: u8, moved: u64) -> bool {
        if n < 5 {
            return false;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as u64;
        let typed = matches!(
            head[0],
            b'Q' | b'P' | b'B' | b'E' | b'S' | b'D' | b'C' | b'H' | b'X'
        );
        typed && len >= 4 && len < (1 << 24) && len < moved
    }
}

/// Sends keep the message type and length (5 bytes; 8 for the untyped StartupMessage,
/// SSLRequest and GSSENCRequest, whose first byte is 0); recvs keep the type and length of
/// the first message, a one-byte SSL answer, and at the end only a ReadyForQuery message
/// (`Z`, int32 5, status) or the piece of one that a split read left at either edge.
#[inline(always)]
fn keep(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
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

