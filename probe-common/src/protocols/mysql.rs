//! MySQL's and MariaDB's kernel rules (protocols/mod.rs): what of their packets leaves the
//! kernel, and their first bytes
//! (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html).

use super::{from_end, KernelRules};
use crate::{DbIoEvent, HEAD_BYTES};

pub struct Rules;

impl KernelRules for Rules {
    #[inline(always)]
    fn keep(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
        keep(event, head, tail, send)
    }

    /// A command packet (sequence 0) that is exactly the send.
    #[inline(always)]
    fn midstream(head: &[u8; HEAD_BYTES], n: u8, moved: u64) -> bool {
        if n < 5 {
            return false;
        }
        let len = head[0] as u64 | (head[1] as u64) << 8 | (head[2] as u64) << 16;
        head[3] == 0 && len + 4 == moved && (0x01..=0x1f).contains(&head[4])
    }

    /// The server greeting (protocol 10).
    #[inline(always)]
    fn greets(head: &[u8; HEAD_BYTES], n: u8) -> bool {
        n >= 6 && head[3] == 0 && head[4] == 0x0a && head[5].is_ascii_digit()
    }
}

/// Sends keep the packet header and command byte (5 bytes). Recvs keep the first packet's
/// header and first payload byte (OK 0x00, EOF 0xfe, ERR 0xff, greeting 0x0a); when the
/// first packet is an OK, its fields up to the status flags and warnings; and at the end,
/// a final OK/EOF packet whole when it is small (no info text) — never an ERR message.
#[inline(always)]
fn keep(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
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

