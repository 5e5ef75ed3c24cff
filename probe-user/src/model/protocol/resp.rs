//! A streaming RESP2/RESP3 reader that counts complete top-level values (replies, or
//! commands) in one direction of a Redis conversation seen through 32+32-byte keyholes.
//!
//! Reference: <https://redis.io/docs/latest/develop/reference/protocol-spec/>.
//!
//! Bulk strings carry their length, so their data may fall into a gap; a type line or a
//! length may not. When one does, the reader is lost until the caller resynchronises it at a
//! point known to be a value boundary.

use super::chunk::{Chunk, Part};

/// Nesting deeper than this is not followed (the reader declares itself lost).
const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// At the start of a value.
    None,
    /// Reading the length of an aggregate (`*`, `%`, `~`, `>`, `|`) or a bulk (`$`, `=`, `!`).
    Number {
        ty: u8,
        neg: bool,
        n: u64,
        digits: u8,
    },
    /// Skipping a simple line (`+`, `-`, `:`, `_`, `#`, `,`, `(`), or an inline command
    /// (`content`: a byte other than CR has been seen).
    Simple { inline: bool, content: bool },
}

/// The name of a request (its first bulk string, or an inline command's first word), as far
/// as it is short and seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Name {
    buf: [u8; 8],
    len: usize,
    cut: bool,
}

impl Name {
    /// The whole name, if it was seen and is at most 8 bytes.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        (!self.cut && self.len > 0).then_some(&self.buf[..self.len])
    }

    /// The first bytes seen start with `prefix`.
    pub(crate) fn starts_with(&self, prefix: &[u8]) -> bool {
        self.buf[..self.len].starts_with(prefix)
    }

    fn push(&mut self, b: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.cut = true;
        }
    }
}

/// Where the name of the current request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    Off,
    /// A top-level array began: its first element is the name.
    AwaitFirst,
    InBulk,
    InInline,
    /// The first line of a top-level reply.
    InReply,
}

#[derive(Clone, Debug)]
pub(crate) struct RespReader {
    /// Requests (client → server) may be inline commands.
    requests: bool,
    lost: bool,
    /// Elements still expected by each open aggregate, outermost first.
    stack: Vec<u64>,
    line: Line,
    /// Bytes of bulk data (with its CRLF) still to skip.
    bulk: u64,
    name: Name,
    naming: Naming,
    /// The first bytes of the last complete top-level reply.
    last_reply: Name,
}

impl RespReader {
    pub(crate) fn new(requests: bool, synced: bool) -> Self {
        RespReader {
            requests,
            lost: !synced,
            stack: Vec::new(),
            line: Line::None,
            bulk: 0,
            name: Name::default(),
            naming: Naming::Off,
            last_reply: Name::default(),
        }
    }

    /// The last complete top-level reply started with `prefix`.
    pub(crate) fn last_reply_starts_with(&self, prefix: &[u8]) -> bool {
        self.last_reply.starts_with(prefix)
    }

    pub(crate) fn resync(&mut self) {
        self.lost = false;
        self.stack.clear();
        self.line = Line::None;
        self.bulk = 0;
        self.naming = Naming::Off;
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost
    }

    /// Between two top-level values.
    pub(crate) fn at_boundary(&self) -> bool {
        !self.lost && self.stack.is_empty() && self.line == Line::None && self.bulk == 0
    }

    /// Read one syscall's bytes; returns how many top-level values completed. In request
    /// mode the name of each completed request is appended to `names`.
    pub(crate) fn feed(&mut self, chunk: &Chunk, names: &mut Vec<Name>) -> u64 {
        let mut done = 0;
        for part in chunk.parts() {
            match part {
                Part::Known(bytes) => done += self.known(bytes, names),
                Part::Gap(0) => {}
                Part::Gap(n) if self.line == Line::None && self.bulk >= n => {
                    if self.naming == Naming::InBulk && self.bulk > 2 {
                        self.name.cut = true;
                    }
                    self.bulk -= n;
                    if self.bulk == 0 {
                        self.naming = Naming::Off;
                        if self.value_done() {
                            done += 1;
                            if self.requests {
                                names.push(self.name);
                            }
                        }
                    }
                }
                Part::Gap(_) => self.lost = true,
            }
        }
        done
    }

    /// Known contiguous bytes; returns how many top-level values completed.
    pub(crate) fn known(&mut self, bytes: &[u8], names: &mut Vec<Name>) -> u64 {
        let mut done = 0;
        for &b in bytes {
            if self.lost {
                break;
            }
            if self.byte(b) {
                done += 1;
                if self.requests {
                    names.push(self.name);
                } else {
                    self.last_reply = self.name;
                }
            }
        }
        done
    }

    /// One byte; true when it completed a top-level value.
    fn byte(&mut self, b: u8) -> bool {
        if self.bulk > 0 {
            if self.naming == Naming::InBulk && self.bulk > 2 {
                self.name.push(b);
            }
            self.bulk -= 1;
            if self.bulk > 0 {
                return false;
            }
            if self.naming == Naming::InBulk {
                self.naming = Naming::Off;
            }
            return self.value_done();
        }
        if self.line == Line::None && self.stack.is_empty() {
            self.name = Name::default();
            self.naming = if self.requests {
                Naming::Off
            } else {
                Naming::InReply
            };
        }
        if self.naming == Naming::InReply {
            if b == b'\n' {
                self.naming = Naming::Off;
            } else {
                self.name.push(b);
            }
        }
        match &mut self.line {
            Line::None => {
                self.line = match b {
                    b'*' | b'%' | b'~' | b'>' | b'|' | b'$' | b'=' | b'!' => Line::Number {
                        ty: b,
                        neg: false,
                        n: 0,
                        digits: 0,
                    },
                    b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Line::Simple {
                        inline: false,
                        content: true,
                    },
                    _ if self.requests && self.stack.is_empty() => {
                        if !matches!(b, b' ' | b'\r' | b'\n') {
                            self.naming = Naming::InInline;
                            self.name.push(b);
                        }
                        Line::Simple {
                            inline: true,
                            content: !matches!(b, b'\r' | b'\n'),
                        }
                    }
                    _ => {
                        self.lost = true;
                        Line::None
                    }
                };
                if b == b'\n' {
                    // An empty inline line: nothing to count.
                    self.line = Line::None;
                }
                false
            }
            Line::Simple { inline, content } => {
                if b != b'\n' {
                    *content |= b != b'\r';
                    if self.naming == Naming::InInline {
                        if matches!(b, b' ' | b'\r') {
                            self.naming = Naming::Off;
                        } else {
                            self.name.push(b);
                        }
                    }
                    return false;
                }
                let counts = !*inline || *content;
                self.line = Line::None;
                self.naming = Naming::Off;
                counts && self.value_done()
            }
            Line::Number { ty, neg, n, digits } => match b {
                b'0'..=b'9' if *digits < 18 => {
                    *n = *n * 10 + u64::from(b - b'0');
                    *digits += 1;
                    false
                }
                b'-' if *digits == 0 && !*neg => {
                    *neg = true;
                    false
                }
                b'\r' if *digits > 0 => false,
                b'\n' if *digits > 0 => {
                    let (ty, neg, n) = (*ty, *neg, *n);
                    self.line = Line::None;
                    self.header(ty, neg, n)
                }
                _ => {
                    self.lost = true;
                    false
                }
            },
        }
    }

    /// A complete length line.
    fn header(&mut self, ty: u8, neg: bool, n: u64) -> bool {
        let top = self.stack.is_empty();
        let first_element = self.naming == Naming::AwaitFirst;
        self.naming = Naming::Off;
        if neg {
            // Null array or bulk string (RESP2 `*-1`, `$-1`).
            return self.value_done();
        }
        match ty {
            b'$' | b'=' | b'!' => {
                if first_element {
                    self.naming = Naming::InBulk;
                }
                self.bulk = n + 2;
                false
            }
            _ => {
                let n = if matches!(ty, b'%' | b'|') { n * 2 } else { n };
                if n == 0 {
                    self.value_done()
                } else if self.stack.len() >= MAX_DEPTH {
                    self.lost = true;
                    false
                } else {
                    self.stack.push(n);
                    if top && ty == b'*' && self.requests {
                        self.naming = Naming::AwaitFirst;
                    }
                    false
                }
            }
        }
    }

    /// One value is complete: close the aggregates it completes; true if it was top-level.
    fn value_done(&mut self) -> bool {
        while let Some(top) = self.stack.last_mut() {
            *top -= 1;
            if *top > 0 {
                return false;
            }
            self.stack.pop();
        }
        true
    }
}
