//! Each database protocol's kernel rules, one file each, declared from probe-common's
//! `protocols!` list (a protocol is its line there and its files): what of its messages may
//! leave the kernel ([`KernelRules::keep`], which `crate::redact` applies: message types,
//! lengths and status bytes, never query text or payload, docs/design.md) and how its first
//! bytes tell it off its port (`opens`, `midstream`, `greets`, which
//! probe-ebpf/src/sockets/recognize.rs asks in the list's order).
//!
//! All of it runs in the kernel: every array index is a constant once loops are unrolled
//! (the verifier rejects variable-offset reads from the stack, where the event is built),
//! and every loop has a constant bound (Linux 5.10's verifier cannot bound a count that
//! depends on a runtime length).

use crate::{DbIoEvent, HEAD_BYTES, TAIL_BYTES};

/// A protocol's kernel rules. What a protocol does not say keeps nothing and recognises
/// nothing.
pub trait KernelRules {
    /// How many bytes of each end of the data leave the kernel: (head, tail), for a send
    /// (`send`) or a recv; `head`, `tail`: how many were copied from each end (`event.head`
    /// left-aligned, `event.tail` right-aligned: its last byte is `tail[31]`).
    #[inline(always)]
    fn keep(_event: &DbIoEvent, _head: u8, _tail: u8, _send: bool) -> (u8, u8) {
        (0, 0)
    }

    /// The first bytes a client sends to open a conversation (`head[..n]` copied).
    #[inline(always)]
    fn opens(_head: &[u8; HEAD_BYTES], _n: u8) -> bool {
        false
    }

    /// A client message in the middle of a conversation (a connection from before attach),
    /// in a send of `moved` bytes.
    #[inline(always)]
    fn midstream(_head: &[u8; HEAD_BYTES], _n: u8, _moved: u64) -> bool {
        false
    }

    /// The first bytes a server sends (its greeting).
    #[inline(always)]
    fn greets(_head: &[u8; HEAD_BYTES], _n: u8) -> bool {
        false
    }
}

/// Declares each protocol's module, from `protocols!`.
macro_rules! protocol_modules {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        $(pub mod $module;)*
    };
}
crate::protocols!(protocol_modules);

/// Byte `back` places before the end of the data (1 = last byte), if it was copied
/// (`copied` bytes of the tail).
#[inline(always)]
pub(crate) fn from_end(event: &DbIoEvent, copied: u8, back: usize) -> Option<u8> {
    if back == 0 || back > copied as usize {
        return None;
    }
    // `get`, not indexing: no panic path for the verifier to reject.
    event.tail.get(TAIL_BYTES.wrapping_sub(back)).copied()
}
