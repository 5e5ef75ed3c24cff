//! Following length-prefixed frames (PostgreSQL messages, MySQL packets) through one direction
//! of a stream that is seen through 32+32-byte keyholes.
//!
//! A [`Walker`] knows where the next frame header starts as long as every header byte it
//! reaches is known: a frame's body may fall into a gap (its length says how far to skip), a
//! header may not. When a header falls into a gap the walker is *lost*; the protocol module
//! then resynchronises it at a point it can prove is a frame boundary.

use super::chunk::{Chunk, Part};

/// How many bytes of each frame body are kept for the protocol module to read.
pub(crate) const FIRST: usize = 24;

/// A frame format: header size and body length read from the header.
pub(crate) trait Framing {
    const HDR: usize;
    /// The body length, or `None` if the header cannot be one.
    fn body_len(hdr: &[u8]) -> Option<u32>;
}

/// What the walker has seen of one frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub hdr: [u8; 5],
    pub body_len: u32,
    first: [u8; FIRST],
    first_len: usize,
    begun: bool,
}

impl Frame {
    pub(crate) fn new(hdr: &[u8], body_len: u32, first: &[u8]) -> Self {
        let mut f = Frame {
            hdr: [0; 5],
            body_len,
            first: [0; FIRST],
            first_len: 0,
            begun: true,
        };
        let n = hdr.len().min(5);
        f.hdr[..n].copy_from_slice(&hdr[..n]);
        let n = first.len().min(FIRST).min(body_len as usize);
        f.first[..n].copy_from_slice(&first[..n]);
        f.first_len = n;
        f
    }

    /// The first bytes of the body that are known (all of them up to [`FIRST`] unless a gap
    /// interrupted them).
    pub(crate) fn first(&self) -> &[u8] {
        &self.first[..self.first_len]
    }

    /// The first body byte, if known.
    pub(crate) fn first_byte(&self) -> Option<u8> {
        self.first().first().copied()
    }
}

/// A frame starting (its first body byte is known, or unknowable) or ending.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Begin(Frame),
    End(Frame),
}

#[derive(Clone, Copy, Debug)]
enum State {
    Lost,
    /// Skipping bytes that are not framed (e.g. a PostgreSQL startup packet).
    Skip(u64),
    Header {
        buf: [u8; 5],
        got: usize,
    },
    Body {
        frame: Frame,
        left: u32,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Walker<F: Framing> {
    state: State,
    _framing: std::marker::PhantomData<F>,
}

impl<F: Framing> Walker<F> {
    pub(crate) fn new(synced: bool) -> Self {
        let mut w = Walker {
            state: State::Lost,
            _framing: std::marker::PhantomData,
        };
        if synced {
            w.resync();
        }
        w
    }

    /// Declare the current stream position a frame boundary.
    pub(crate) fn resync(&mut self) {
        self.state = State::Header {
            buf: [0; 5],
            got: 0,
        };
    }

    /// Declare the current stream position a boundary, followed by `n` unframed bytes.
    pub(crate) fn resync_skip(&mut self, n: u64) {
        self.state = if n == 0 {
            State::Header {
                buf: [0; 5],
                got: 0,
            }
        } else {
            State::Skip(n)
        };
    }

    pub(crate) fn lose(&mut self) {
        self.state = State::Lost;
    }

    pub(crate) fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// At a frame boundary: nothing of a next frame seen yet.
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { got: 0, .. })
    }

    pub(crate) fn feed(&mut self, chunk: &Chunk, out: &mut Vec<Event>) {
        for part in chunk.parts() {
            match part {
                Part::Known(bytes) => self.known(bytes, out),
                Part::Gap(n) => self.gap(n, out),
            }
        }
    }

    fn known(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.state {
                State::Lost => return,
                State::Skip(n) => {
                    let k = (*n).min((bytes.len() - i) as u64);
                    *n -= k;
                    i += k as usize;
                    if *n == 0 {
                        self.resync();
                    }
                }
                State::Header { buf, got } => {
                    buf[*got] = bytes[i];
                    *got += 1;
                    i += 1;
                    if *got == F::HDR {
                        let hdr = *buf;
                        match F::body_len(&hdr[..F::HDR]) {
                            None => self.state = State::Lost,
                            Some(body_len) => {
                                let mut frame = Frame::new(&hdr, body_len, &[]);
                                frame.begun = false;
                                self.state = State::Body {
                                    frame,
                                    left: body_len,
                                };
                                self.settle(out);
                            }
                        }
                    }
                }
                State::Body { frame, left } => {
                    let k = (*left).min((bytes.len() - i).min(u32::MAX as usize) as u32);
                    let seen = (frame.body_len - *left) as usize;
                    if seen == frame.first_len && frame.first_len < FIRST {
                        let n = (k as usize).min(FIRST - frame.first_len);
                        frame.first[frame.first_len..frame.first_len + n]
                            .copy_from_slice(&bytes[i..i + n]);
                        frame.first_len += n;
                    }
                    *left -= k;
                    i += k as usize;
                    self.settle(out);
                }
            }
        }
    }

    fn gap(&mut self, n: u64, out: &mut Vec<Event>) {
        if n == 0 {
            return;
        }
        match &mut self.state {
            State::Lost => {}
            State::Skip(s) if *s >= n => {
                *s -= n;
                if *s == 0 {
                    self.resync();
                }
            }
            State::Body { frame, left } if u64::from(*left) >= n => {
                *left -= n as u32;
                if !frame.begun {
                    frame.begun = true;
                    out.push(Event::Begin(*frame));
                }
                self.settle(out);
            }
            _ => self.state = State::Lost,
        }
    }

    /// Emit Begin once the first body byte is known, End once the body is complete.
    fn settle(&mut self, out: &mut Vec<Event>) {
        if let State::Body { frame, left } = &mut self.state {
            if !frame.begun && (frame.first_len > 0 || *left == 0) {
                frame.begun = true;
                out.push(Event::Begin(*frame));
            }
            if *left == 0 {
                out.push(Event::End(*frame));
                self.resync();
            }
        }
    }
}
