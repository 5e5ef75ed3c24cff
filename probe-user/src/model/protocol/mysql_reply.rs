//! Where a MySQL/MariaDB reply ends: packet kinds and the shape of each command's response.
//!
//! References:
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_response_packets.html>,
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_query_response_text_resultset.html>,
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_stmt_prepare.html#sect_protocol_com_stmt_prepare_response>.

use super::chunk::{le16, le24};
use super::frame::{Frame, Framing};

/// 3-byte little-endian payload length, 1-byte sequence id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MyFraming;

impl Framing for MyFraming {
    const HDR: usize = 4;
    fn body_len(hdr: &[u8]) -> Option<u32> {
        le24(hdr)
    }
}

pub(crate) const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
pub(crate) const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;

pub(crate) const COM_QUERY: u8 = 0x03;
const COM_FIELD_LIST: u8 = 0x04;
const COM_STATISTICS: u8 = 0x09;
const COM_BINLOG_DUMP: u8 = 0x12;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_FETCH: u8 = 0x1c;
const COM_BINLOG_DUMP_GTID: u8 = 0x1e;

/// What a packet is, from its first payload bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `0x00`, payload >= 7: affected rows, last insert id (length-encoded), status, warnings.
    Ok(Option<u16>),
    /// `0xfe`, payload < 7: the 4.1 EOF packet (warnings, status).
    Eof(Option<u16>),
    /// `0xfe`, 7 <= payload < 0xffffff: OK packet ending a result set under
    /// CLIENT_DEPRECATE_EOF.
    OkFe(Option<u16>),
    /// `0xff`: carries no status flags.
    Err,
    /// Anything else: column count, column definition, row, LOCAL INFILE request...
    Data,
}

pub(crate) fn classify(f: &Frame) -> Kind {
    let first = f.first();
    match first.first() {
        Some(0xff) => Kind::Err,
        Some(0xfe) if f.body_len < 7 => Kind::Eof(first.get(3..).and_then(le16)),
        Some(0xfe) if f.body_len < 0xff_ffff => Kind::OkFe(ok_status(first, f.body_len)),
        Some(0x00) if f.body_len >= 7 => Kind::Ok(ok_status(first, f.body_len)),
        _ => Kind::Data,
    }
}

/// Status flags of an OK packet: after the header byte and two length-encoded integers.
fn ok_status(first: &[u8], body_len: u32) -> Option<u16> {
    let mut at = 1;
    for _ in 0..2 {
        let (_, n) = lenenc(first.get(at..)?)?;
        at += n;
    }
    (at + 2 <= body_len as usize).then_some(())?;
    le16(first.get(at..)?)
}

/// A length-encoded integer and how many bytes it took.
pub(crate) fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let size = match *b.first()? {
        v @ 0..=0xfa => return Some((u64::from(v), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = b.get(1..=size)?;
    let v = bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &x| acc << 8 | u64::from(x));
    Some((v, size + 1))
}

/// The bytes before a packet look like the end of a ColumnDefinition41: the 0x0c length of
/// the fixed fields, 11 bytes of them, ending in the 2-byte zero filler. `None`: not enough
/// bytes known.
pub(crate) fn after_column_def(before: &[u8]) -> Option<bool> {
    let b = before.get(before.len().checked_sub(13)?..)?;
    Some(b[0] == 0x0c && b[11] == 0 && b[12] == 0)
}

/// Where the current reply is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Nothing asked, or a conversation joined midway.
    Idle,
    /// Handshake response or COM_CHANGE_USER sent: ends at OK or ERR (0xfe is an auth switch,
    /// 0x01 more auth data).
    Auth,
    /// Awaiting the first packet of the response to a command (None: command byte unseen).
    First(Option<u8>),
    /// Column definitions of a result set: `n` of them after the column-count packet with
    /// sequence `s0`; `seen` counts them while every packet is seen.
    Defs { s0: u8, n: u64, seen: Option<u64> },
    /// Rows: ends at EOF / OK(0xfe) / ERR.
    Rows,
    /// After a COM_STMT_PREPARE OK (sequence `s0`): parameter and column definitions.
    Prep {
        s0: u8,
        params: u64,
        cols: u64,
        seen: Option<u64>,
    },
    /// LOCAL INFILE requested: the client sends the file, the server answers OK/ERR.
    Infile,
    /// Binlog dump: events until EOF or ERR.
    Stream,
}

/// What one packet did to the reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub done: bool,
    pub status: Option<u16>,
}

/// What is known about a packet besides its bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx<'a> {
    /// Every packet of this reply so far has been seen.
    pub exact: bool,
    /// The packet ends the receive stream.
    pub stream_end: bool,
    /// Known bytes just before the packet header (may be empty).
    pub before: &'a [u8],
}

#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub stage: Stage,
    /// CLIENT_DEPRECATE_EOF, from the handshake response or learned from packets.
    pub deprecate_eof: Option<bool>,
}

impl Reply {
    /// Some packets were not seen: exact counts are gone.
    pub(crate) fn lost(&mut self) {
        match &mut self.stage {
            Stage::Defs { seen, .. } | Stage::Prep { seen, .. } => *seen = None,
            _ => {}
        }
    }

    /// Could this packet end (or punctuate) the reply when found in the last bytes of the
    /// stream by a lost walker?
    pub(crate) fn plausible_end(&self, kind: Kind) -> bool {
        matches!(
            (self.stage, kind),
            (_, Kind::Err | Kind::Eof(_) | Kind::OkFe(_))
                | (
                    Stage::Idle | Stage::Auth | Stage::First(_) | Stage::Infile,
                    Kind::Ok(_)
                )
        )
    }

    /// A lost walker found no final packet in the last bytes: does the stream end where a
    /// COM_STMT_PREPARE reply under CLIENT_DEPRECATE_EOF ends, after a column definition?
    pub(crate) fn ends_after_definitions(&self, window: &[u8]) -> bool {
        matches!(self.stage, Stage::Prep { .. })
            && self.deprecate_eof != Some(false)
            && after_column_def(window) == Some(true)
    }

    pub(crate) fn packet(&mut self, f: &Frame, ctx: Ctx) -> Verdict {
        let kind = classify(f);
        let seq = f.hdr[3];
        let end = |status| Verdict { done: true, status };
        let more = |status| Verdict {
            done: false,
            status,
        };
        match kind {
            Kind::Eof(_) => self.deprecate_eof = Some(false),
            Kind::OkFe(_) if self.stage != Stage::Auth => self.deprecate_eof = Some(true),
            _ => {}
        }
        match self.stage {
            Stage::Idle => match kind {
                // Joined midway: trust only packets that can be nothing but a status.
                Kind::Eof(s) | Kind::OkFe(s) => more(s),
                Kind::Ok(s) if seq == 1 && ctx.exact => more(s),
                _ => Verdict::default(),
            },
            Stage::Auth => match kind {
                Kind::Ok(s) => end(s),
                Kind::Err => end(None),
                _ => Verdict::default(),
            },
            Stage::First(cmd) => self.first(cmd, f, kind, seq),
            Stage::Defs { s0, n, seen } => match kind {
                Kind::Err => end(None),
                Kind::OkFe(s) => self.result_end(s),
                Kind::Eof(s) => {
                    let defs_eof = match seen {
                        Some(seen) => seen >= n && !matches!(self.deprecate_eof, Some(true)),
                        None => {
                            seq == s0.wrapping_add((n % 256) as u8).wrapping_add(1)
                                && after_column_def(ctx.before) != Some(false)
                        }
                    };
                    if defs_eof {
                        self.stage = Stage::Rows;
                        more(s)
                    } else {
                        self.result_end(s)
                    }
                }
                Kind::Ok(_) | Kind::Data => {
                    if let Some(seen) = seen {
                        if seen >= n {
                            // A row right after the definitions: no EOF between them.
                            self.deprecate_eof = Some(true);
                            self.stage = Stage::Rows;
                        } else {
                            self.stage = Stage::Defs {
                                s0,
                                n,
                                seen: Some(seen + 1),
                            };
                        }
                    }
                    Verdict::default()
                }
            },
            Stage::Rows | Stage::Stream => match kind {
                Kind::Err => end(None),
                Kind::Eof(s) | Kind::OkFe(s) => self.result_end(s),
                _ => Verdict::default(),
            },
            Stage::Prep {
                s0,
                params,
                cols,
                seen,
            } => {
                let eofs = u64::from(params > 0) + u64::from(cols > 0);
                let with_eofs = params + cols + eofs;
                let without = params + cols;
                match (kind, seen) {
                    (Kind::Err, _) => end(None),
                    (_, Some(k)) => {
                        let k = k + 1;
                        self.stage = Stage::Prep {
                            s0,
                            params,
                            cols,
                            seen: Some(k),
                        };
                        if params > 0 && k == params + 1 && self.deprecate_eof.is_none() {
                            self.deprecate_eof = Some(matches!(kind, Kind::Eof(_)));
                        }
                        let dep = self.deprecate_eof;
                        let done = (dep != Some(true) && k == with_eofs)
                            || (dep == Some(true) && k == without)
                            || (dep.is_none() && k == without && ctx.stream_end);
                        Verdict { done, status: None }
                    }
                    (Kind::Eof(_), None) => Verdict {
                        done: seq == s0.wrapping_add((with_eofs % 256) as u8),
                        status: None,
                    },
                    _ => Verdict::default(),
                }
            }
            Stage::Infile => match kind {
                Kind::Ok(s) | Kind::OkFe(s) | Kind::Eof(s) => end(s),
                Kind::Err => end(None),
                Kind::Data => Verdict::default(),
            },
        }
    }

    /// The first packet of a command's response.
    fn first(&mut self, cmd: Option<u8>, f: &Frame, kind: Kind, seq: u8) -> Verdict {
        let first = f.first();
        match (cmd, kind) {
            (_, Kind::Err) => Verdict {
                done: true,
                status: None,
            },
            (Some(COM_STATISTICS), _) => Verdict {
                done: true,
                status: None,
            },
            (Some(COM_STMT_PREPARE), Kind::Ok(_)) if f.body_len >= 9 => {
                let cols = first.get(5..).and_then(le16).unwrap_or(0);
                let params = first.get(7..).and_then(le16).unwrap_or(0);
                if cols == 0 && params == 0 {
                    return Verdict {
                        done: true,
                        status: None,
                    };
                }
                self.stage = Stage::Prep {
                    s0: seq,
                    params: u64::from(params),
                    cols: u64::from(cols),
                    seen: Some(0),
                };
                Verdict::default()
            }
            (Some(COM_BINLOG_DUMP | COM_BINLOG_DUMP_GTID), Kind::Ok(_) | Kind::Data) => {
                self.stage = Stage::Stream;
                Verdict::default()
            }
            (_, Kind::Ok(s) | Kind::OkFe(s) | Kind::Eof(s)) => self.result_end(s),
            (Some(COM_QUERY), Kind::Data) if first.first() == Some(&0xfb) => {
                self.stage = Stage::Infile;
                Verdict::default()
            }
            (Some(COM_FIELD_LIST | COM_STMT_FETCH), Kind::Data) => {
                self.stage = Stage::Rows;
                Verdict::default()
            }
            (_, Kind::Data) => {
                self.stage = match lenenc(first) {
                    Some((n, _)) if n > 0 => Stage::Defs {
                        s0: seq,
                        n,
                        seen: Some(0),
                    },
                    _ => Stage::Rows,
                };
                Verdict::default()
            }
        }
    }

    /// The end of one result: the reply ends unless more results follow.
    fn result_end(&mut self, status: Option<u16>) -> Verdict {
        let more = status.is_some_and(|s| s & SERVER_MORE_RESULTS_EXISTS != 0);
        if more {
            self.stage = match self.stage {
                Stage::First(cmd) => Stage::First(cmd),
                _ => Stage::First(Some(COM_QUERY)),
            };
        }
        Verdict {
            done: !more,
            status,
        }
    }
}
