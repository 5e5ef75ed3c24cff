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
//! What each protocol keeps is its own file's (protocols/<name>.rs, `KernelRules::keep`);
//! this file applies it. It lives here, not in probe-ebpf, so that it is unit tested on the
//! host; the kernel calls its two halves, [`keep`] and [`apply`], from two global BPF functions
//! (probe-ebpf/src/sockets/db.rs: the verifier checks the masks once, not once per path
//! through the protocol rules).

use crate::{protocols::KernelRules, DbIoEvent, DIR_SEND, HEAD_BYTES, TAIL_BYTES};

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
    let (head_keep, tail_keep) = by_protocol(event, copied_head, copied_tail, send);
    (min(head_keep, copied_head), min(tail_keep, copied_tail))
}

/// `by_protocol`: the rules of the event's protocol (protocols/), from `protocols!`.
macro_rules! by_protocol {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        /// What the event's protocol keeps of it; nothing of a protocol not recognised.
        #[inline(always)]
        fn by_protocol(event: &DbIoEvent, head: u8, tail: u8, send: bool) -> (u8, u8) {
            match event.proto {
                $(crate::$konst => {
                    <crate::protocols::$module::Rules as KernelRules>::keep(event, head, tail, send)
                })*
                _ => (0, 0),
            }
        }
    };
}
crate::protocols!(by_protocol);

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

#[cfg(test)]
mod tests;
