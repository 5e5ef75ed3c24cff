//! Tests: real byte sequences written out from the protocol documents, fed the way the kernel
//! reports them (length + at most 32 head and 32 tail bytes), split at arbitrary points.

mod mysql;
mod postgres;
mod props;
mod recognize;
pub(super) mod redacted;
mod redis;
mod registry;

use super::{DbConn, DbIo, Direction, Protocol, Txn, HEAD_BYTES, TAIL_BYTES};

pub(super) use Direction::{Recv, Send};

/// What the kernel reports of one syscall that moved `bytes`.
pub(super) struct Kernel {
    dir: Direction,
    len: u32,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Kernel {
    pub(super) fn new(dir: Direction, bytes: &[u8]) -> Self {
        Kernel {
            dir,
            len: bytes.len() as u32,
            head: bytes[..bytes.len().min(HEAD_BYTES)].to_vec(),
            tail: bytes[bytes.len() - bytes.len().min(TAIL_BYTES)..].to_vec(),
        }
    }

    pub(super) fn io(&self) -> DbIo<'_> {
        DbIo {
            dir: self.dir,
            len: self.len,
            head: &self.head,
            tail: &self.tail,
        }
    }
}

/// One syscall.
pub(super) fn io(conn: &mut DbConn, dir: Direction, bytes: &[u8]) {
    conn.on_io(&Kernel::new(dir, bytes).io());
}

/// `bytes` in several syscalls, cut at `cuts` (sorted positions; out-of-range ones ignored).
pub(super) fn io_cut(conn: &mut DbConn, dir: Direction, bytes: &[u8], cuts: &[usize]) {
    let mut from = 0;
    for &cut in cuts {
        if cut > from && cut < bytes.len() {
            io(conn, dir, &bytes[from..cut]);
            from = cut;
        }
    }
    io(conn, dir, &bytes[from..]);
}

/// Like [`io_cut`], but true only if the in-flight did not end before the last piece.
pub(super) fn io_cut_held(conn: &mut DbConn, dir: Direction, bytes: &[u8], cuts: &[usize]) -> bool {
    let mut from = 0;
    let mut held = true;
    for &cut in cuts {
        if cut > from && cut < bytes.len() {
            io(conn, dir, &bytes[from..cut]);
            held &= conn.query_in_flight();
            from = cut;
        }
    }
    io(conn, dir, &bytes[from..]);
    held
}

/// `bytes` in syscalls of `size` bytes each.
pub(super) fn io_by(conn: &mut DbConn, dir: Direction, bytes: &[u8], size: usize) {
    for piece in bytes.chunks(size.max(1)) {
        io(conn, dir, piece);
    }
}

/// A step of a conversation and the state expected once all of it has been seen.
pub(super) struct Step {
    pub dir: Direction,
    pub bytes: Vec<u8>,
    pub in_flight: bool,
    pub txn: Txn,
}

pub(super) fn step(dir: Direction, bytes: impl AsRef<[u8]>, in_flight: bool, txn: Txn) -> Step {
    Step {
        dir,
        bytes: bytes.as_ref().to_vec(),
        in_flight,
        txn,
    }
}

/// Play a conversation, each step cut by `cut(step index, bytes)`, checking the state after
/// each step and that a step still incomplete never ends the in-flight early.
pub(super) fn play(
    protocol: Protocol,
    seen_from_start: bool,
    steps: &[Step],
    cut: impl Fn(usize, &[u8]) -> Vec<usize>,
) -> DbConn {
    let mut conn = DbConn::new(protocol, seen_from_start);
    for (i, s) in steps.iter().enumerate() {
        let cuts = cut(i, &s.bytes);
        let mut from = 0;
        let mut pieces: Vec<&[u8]> = Vec::new();
        for &c in &cuts {
            if c > from && c < s.bytes.len() {
                pieces.push(&s.bytes[from..c]);
                from = c;
            }
        }
        pieces.push(&s.bytes[from..]);
        let last = pieces.len() - 1;
        let before = conn.query_in_flight();
        for (k, piece) in pieces.iter().enumerate() {
            io(&mut conn, s.dir, piece);
            if k < last && s.dir == Recv {
                // A reply is not complete before its last byte.
                assert_eq!(
                    conn.query_in_flight(),
                    before,
                    "step {i}: in-flight changed after piece {k} of {cuts:?}"
                );
            }
        }
        assert_eq!(
            conn.query_in_flight(),
            s.in_flight,
            "step {i} in_flight, cuts {cuts:?}"
        );
        assert_eq!(conn.txn(), s.txn, "step {i} txn, cuts {cuts:?}");
    }
    conn
}

/// Play with every single cut point of every recv step (and no cuts in sends), then with
/// 1-byte recvs.
pub(super) fn play_every_cut(protocol: Protocol, seen_from_start: bool, steps: &[Step]) {
    play(protocol, seen_from_start, steps, |_, _| vec![]);
    for (target, s) in steps.iter().enumerate() {
        for at in 1..s.bytes.len() {
            play(protocol, seen_from_start, steps, |i, _| {
                if i == target {
                    vec![at]
                } else {
                    vec![]
                }
            });
        }
    }
    play(protocol, seen_from_start, steps, |i, b| {
        if steps[i].dir == Recv {
            (1..b.len()).collect()
        } else {
            vec![]
        }
    });
}

/// Concatenate byte strings.
pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A TLS record of `kind` (0x16 handshake, 0x17 application data) with `n` bytes of body.
pub(super) fn tls_record(kind: u8, n: u16) -> Vec<u8> {
    cat(&[&[kind, 3, 3], &n.to_be_bytes(), &vec![0x5c; usize::from(n)]])
}
