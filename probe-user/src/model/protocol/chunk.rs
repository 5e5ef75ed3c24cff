//! What one syscall tells about its bytes, and a window on the end of a byte stream.
//!
//! The kernel copies at most [`HEAD_BYTES`] from the start and [`TAIL_BYTES`] from the end of
//! the bytes a send or recv moved. When `len <= HEAD_BYTES + TAIL_BYTES` every byte is known
//! ([`Chunk::Whole`]); otherwise the middle `len - 64` bytes are a gap ([`Chunk::Split`]).
//! Inputs that do not keep the contract (head or tail shorter than promised) are read as a
//! split chunk with a larger gap, never trusted further than their bytes go.

use super::io::{DbIo, HEAD_BYTES, TAIL_BYTES};

const WHOLE_MAX: usize = HEAD_BYTES + TAIL_BYTES;

/// The bytes of one syscall, as far as they are known.
#[derive(Clone, Debug)]
pub(crate) enum Chunk<'a> {
    /// Every byte, in order.
    Whole { buf: [u8; WHOLE_MAX], len: usize },
    /// The first bytes, a gap of unknown bytes, the last bytes.
    Split {
        head: &'a [u8],
        gap: u64,
        tail: &'a [u8],
    },
}

/// One piece of a chunk, in stream order.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Part<'a> {
    Known(&'a [u8]),
    Gap(u64),
}

impl<'a> Chunk<'a> {
    pub(crate) fn from_io(io: &DbIo<'a>) -> Self {
        let len = io.len as usize;
        let want = len.min(HEAD_BYTES);
        let head = &io.head[..io.head.len().min(want)];
        let tail_keep = io.tail.len().min(len.min(TAIL_BYTES));
        let tail = &io.tail[io.tail.len() - tail_keep..];
        if head.len() == want && len <= HEAD_BYTES {
            let mut buf = [0u8; WHOLE_MAX];
            buf[..len].copy_from_slice(head);
            return Chunk::Whole { buf, len };
        }
        if head.len() == want && tail.len() == TAIL_BYTES && len <= WHOLE_MAX {
            // head = bytes[0..32], tail = bytes[len-32..len]: together they cover everything.
            let mut buf = [0u8; WHOLE_MAX];
            buf[..HEAD_BYTES].copy_from_slice(head);
            let from_tail = len - HEAD_BYTES;
            buf[HEAD_BYTES..len].copy_from_slice(&tail[TAIL_BYTES - from_tail..]);
            return Chunk::Whole { buf, len };
        }
        // Keep head and tail from overlapping, whatever the caller passed.
        let tail = &tail[tail.len() - tail.len().min(len - head.len())..];
        let gap = (len - head.len() - tail.len()) as u64;
        Chunk::Split { head, gap, tail }
    }

    /// How many bytes the syscall moved.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Chunk::Whole { len, .. } => *len as u64,
            Chunk::Split { head, gap, tail } => head.len() as u64 + gap + tail.len() as u64,
        }
    }

    /// The known bytes at the start of the chunk.
    pub(crate) fn head(&self) -> &[u8] {
        match self {
            Chunk::Whole { buf, len } => &buf[..*len],
            Chunk::Split { head, .. } => head,
        }
    }

    /// The pieces in stream order: known bytes and gaps.
    pub(crate) fn parts(&self) -> [Part<'_>; 3] {
        match self {
            Chunk::Whole { buf, len } => {
                [Part::Known(&buf[..*len]), Part::Gap(0), Part::Known(&[])]
            }
            Chunk::Split { head, gap, tail } => {
                [Part::Known(head), Part::Gap(*gap), Part::Known(tail)]
            }
        }
    }
}

/// The last bytes of one direction of a stream that are known and contiguous with its end.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    buf: [u8; Window::CAP],
    len: usize,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buf: [0; Window::CAP],
            len: 0,
        }
    }
}

impl Window {
    pub(crate) const CAP: usize = 64;

    pub(crate) fn push(&mut self, chunk: &Chunk) {
        for part in chunk.parts() {
            match part {
                Part::Known(bytes) => self.append(bytes),
                Part::Gap(0) => {}
                Part::Gap(_) => self.len = 0,
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if bytes.len() >= Self::CAP {
            self.buf.copy_from_slice(&bytes[bytes.len() - Self::CAP..]);
            self.len = Self::CAP;
            return;
        }
        let keep = self.len.min(Self::CAP - bytes.len());
        self.buf.copy_within(self.len - keep..self.len, 0);
        self.buf[keep..keep + bytes.len()].copy_from_slice(bytes);
        self.len = keep + bytes.len();
    }

    /// The known bytes, ending at the end of the stream.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A TLS record header at the start of `head` whose record fits in `len` bytes: a handshake
/// (0x16), alert, change-cipher-spec or application-data (0x17) record of TLS 1.0–1.3.
/// None of the three database protocols starts a message that way.
pub(crate) fn looks_like_tls(head: &[u8], len: u64) -> bool {
    let [kind, 3, minor, hi, lo, ..] = *head else {
        return false;
    };
    let record = u64::from(u16::from_be_bytes([hi, lo]));
    (0x14..=0x17).contains(&kind)
        && minor <= 4
        && record > 0
        && record <= 18_432
        && record + 5 <= len
}

pub(crate) fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

pub(crate) fn le16(b: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(..2)?.try_into().ok()?))
}

pub(crate) fn le24(b: &[u8]) -> Option<u32> {
    let b = b.get(..3)?;
    Some(u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16)
}
