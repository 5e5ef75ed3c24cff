//! Redis's kernel rules (protocols/mod.rs): what of its commands and replies leaves the
//! kernel, and its first bytes
//! (https://redis.io/docs/latest/develop/reference/protocol-spec/).

use super::{from_end, KernelRules};
use crate::{DbIoEvent, HEAD_BYTES};

pub struct Rules;

impl KernelRules for Rules {
    #[inline(always)]
    fn keep(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
        keep(event, head, tail, send)
    }

    /// A RESP array (a command).
    #[inline(always)]
    fn opens(head: &[u8; HEAD_BYTES], n: u8) -> bool {
        n >= 4 && head[0] == b'*' && head[1].is_ascii_digit()
    }
}

/// Sends keep the
/// first command's name only when it is MULTI, EXEC, DISCARD or QUIT (else just the array
/// header `*N\r\n`), and at the end such a command whole, with the CRLF that ended the
/// command before it (`\r\n*1\r\n$4\r\nEXEC\r\n`): the array header is what the parser
/// resynchronises on after a gap (go-redis's MULTI…EXEC in one write), and the CRLF before it
/// proves the `*` starts a command, not a value's data, and a value that merely ends with the
/// word (`SET k EXEC`) is not kept. Recvs keep the reply type byte and the final CRLF.
#[inline(always)]
fn keep(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
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
