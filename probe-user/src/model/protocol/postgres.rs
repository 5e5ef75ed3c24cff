//! PostgreSQL frontend/backend protocol 3.0, seen from the client.
//!
//! References: <https://www.postgresql.org/docs/current/protocol-flow.html>,
//! <https://www.postgresql.org/docs/current/protocol-message-formats.html>.
//!
//! Rules:
//! - **Query in flight** from any send until the ReadyForQuery (`'Z'`, int32 5, status) that
//!   ends the reply. The startup phase counts as one query: StartupMessage → authentication →
//!   ParameterStatus/BackendKeyData → ReadyForQuery. A send of exactly Terminate
//!   (`'X' 00 00 00 04`) is the goodbye, not a query; so is a CancelRequest, which opens a
//!   connection only to cancel a query on another one and is then closed by the server.
//! - **Transaction** from the ReadyForQuery status byte: `'I'` → [`Txn::Idle`], `'T'` →
//!   [`Txn::Open`], `'E'` → [`Txn::Failed`]. A connection opened before attach is
//!   [`Txn::Unknown`] until its first ReadyForQuery.
//! - **SSLRequest / GSSENCRequest** (8 bytes, codes 80877103 / 80877104) get a single byte:
//!   `'N'` ends that in-flight and plaintext goes on; `'S'` / `'G'` make the rest encrypted and
//!   the connection opaque (see `opaque`). A TLS ClientHello as first send (PostgreSQL 17
//!   direct SSL), or a TLS record as a send on a connection opened before attach and not yet
//!   synchronised, does the same.
//! - Messages are followed with their 5-byte headers in both directions. Each Query, Sync and
//!   FunctionCall sent owes one ReadyForQuery (the startup owes one too): while that count is
//!   exact the in-flight ends when the last owed ReadyForQuery arrives, even if it is not the
//!   last byte of its recv (an asynchronous NoticeResponse may follow). The count stops being
//!   exact when a header falls into a gap, on an ErrorResponse (the server then skips
//!   messages up to the next Sync) and on CopyInResponse (Syncs that arrive during COPY IN are
//!   ignored by the server). Without an exact count, a ReadyForQuery ends the in-flight when it
//!   ends the receive stream, or is followed only by asynchronous messages
//!   (NotificationResponse, NoticeResponse, ParameterStatus) up to the end of the stream.
//!
//! Known limits: a batch ending in Flush (`'H'`) without Sync stays in flight until a later
//! ReadyForQuery; a failed authentication stays in flight until the server closes the
//! connection; with an inexact count, pipelined queries whose first ReadyForQuery ends a recv
//! end the in-flight early; a DataRow whose payload ends in `Z 00 00 00 05 I|T|E` exactly at
//! the end of a recv, while the walker is lost, is taken for the end of the reply.

use super::chunk::{be32, looks_like_tls, Chunk, Window};
use super::frame::{Event, Framing, Walker};
use super::io::{DbIo, Step, Txn};
use super::spec::{Conversation, DbProtocol, Said};
use crate::events::Direction;
use crate::events::Protocol;

/// PostgreSQL in the registry (`registry::REGISTRY`).
pub(crate) struct PostgresProtocol;
pub(crate) static PROTOCOL: PostgresProtocol = PostgresProtocol;

impl DbProtocol for PostgresProtocol {
    fn id(&self) -> Protocol {
        Protocol::Postgres
    }
    fn title(&self) -> &'static str {
        "PostgreSQL"
    }
    fn default_ports(&self) -> &'static [u16] {
        &[5432]
    }
    fn server_names(&self) -> &'static [&'static str] {
        &["postgres", "postmaster", "pgbouncer"]
    }
    /// `.s.PGSQL.<port>` in the server's unix_socket_directories.
    fn is_socket_file(&self, file: &str) -> bool {
        file.starts_with(".s.PGSQL.")
    }
    fn recognize(&self, dir: Direction, head: &[u8]) -> bool {
        dir == Direction::Send && is_untyped_opening(head)
    }
    /// pg_stat_activity (host/pg_view.rs); a local backend's process title tells too
    /// (host/pg_title.rs).
    fn url_schemes(&self) -> &'static [&'static str] {
        &["postgres", "postgresql"]
    }
    fn txn_unknown_at_attach(&self) -> bool {
        true
    }
    fn conversation(&self, seen_from_start: bool) -> Option<Box<dyn Conversation>> {
        Some(Box::new(Postgres::new(seen_from_start)))
    }
    /// Inside TLS the StartupMessage follows the SSLRequest answered 'S'.
    fn tls_opening(&self, first: &DbIo) -> bool {
        first.dir == Direction::Send && is_untyped_opening(first.head)
    }
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const TERMINATE: &[u8] = b"X\0\0\0\x04";
/// CommandComplete's body for ROLLBACK: the tag "ROLLBACK" and its NUL.
const ROLLBACK_TAG_LEN: u32 = 9;
const FRONTEND_TYPES: &[u8] = b"BCdcfDEHFpPQSX";
const BACKEND_TYPES: &[u8] = b"RK23CdcGHWDIEVvnNAtS1sZT";

/// The 5-byte header of a typed message: type byte, int32 length counting itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PgFraming;

impl Framing for PgFraming {
    const HDR: usize = 5;
    fn body_len(hdr: &[u8]) -> Option<u32> {
        let len = be32(hdr.get(1..)?)?;
        (4..=0x7fff_ffff).contains(&len).then(|| len - 4)
    }
}

/// The first send of a PostgreSQL connection: StartupMessage (protocol 3.x), SSLRequest,
/// GSSENCRequest or CancelRequest.
pub(crate) fn is_untyped_opening(head: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(head), head.get(4..).and_then(be32)) else {
        return false;
    };
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => len == 16,
        _ => code >> 16 == 3 && (9..=10_000).contains(&len),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing sent yet on a connection seen from its start.
    Start,
    /// SSLRequest or GSSENCRequest sent, awaiting the one-byte answer.
    SslReply,
    /// StartupMessage sent, awaiting the first ReadyForQuery.
    Startup,
    Ready,
}

#[derive(Clone, Debug)]
pub(crate) struct Postgres {
    phase: Phase,
    send: Walker<PgFraming>,
    recv: Walker<PgFraming>,
    window: Window,
    said: Said,
    /// ReadyForQuery messages owed for what was sent.
    owed: u64,
    /// `owed` is exact for the current in-flight.
    exact: bool,
    /// A ReadyForQuery has been seen, or the connection was seen from its start.
    synced: bool,
    /// The first bytes of an opening message sent in pieces.
    opening: Vec<u8>,
    events: Vec<Event>,
    /// The body length of the last CommandComplete since the last ReadyForQuery.
    last_tag: Option<u32>,
}

impl Postgres {
    pub(crate) fn new(seen_from_start: bool) -> Self {
        Postgres {
            phase: if seen_from_start {
                Phase::Start
            } else {
                Phase::Ready
            },
            send: Walker::new(seen_from_start),
            recv: Walker::new(seen_from_start),
            window: Window::default(),
            said: Said::new(seen_from_start),
            owed: 0,
            exact: seen_from_start,
            synced: seen_from_start,
            opening: Vec::new(),
            events: Vec::new(),
            last_tag: None,
        }
    }

    /// The first send(s): untyped StartupMessage, SSLRequest, GSSENCRequest, CancelRequest.
    /// Their first 8 bytes (length, code) are gathered across sends if need be.
    fn opening(&mut self, chunk: &Chunk) -> Step {
        let earlier = self.opening.len();
        let mut hdr = self.opening.clone();
        hdr.extend(chunk.head().iter().take(8 - earlier));
        if hdr.len() < 8 && matches!(chunk, Chunk::Whole { .. }) {
            self.begin();
            self.opening = hdr;
            return Step::Go;
        }
        self.opening.clear();
        if looks_like_tls(&hdr, chunk.len() + earlier as u64) {
            return Step::Opaque { in_flight: true };
        }
        let len = be32(&hdr).unwrap_or(0);
        match hdr.get(4..).and_then(be32) {
            Some(SSL_REQUEST | GSSENC_REQUEST) if len == 8 => {
                self.begin();
                self.phase = Phase::SslReply;
            }
            Some(CANCEL_REQUEST) if len == 16 => self.said.goodbye = true,
            Some(code) if code >> 16 == 3 && len >= 8 => {
                self.begin();
                self.phase = Phase::Startup;
                self.owed = 1;
                self.send
                    .resync_skip(u64::from(len).saturating_sub(earlier as u64));
                self.feed_send(chunk);
            }
            _ => {
                // Not an opening: read the conversation as already running.
                self.phase = Phase::Ready;
                self.send.lose();
                self.send_typed(chunk);
            }
        }
        Step::Go
    }

    fn ssl_reply(&mut self, chunk: &Chunk) -> Step {
        match chunk.head().first() {
            Some(b'S' | b'G') => return Step::Opaque { in_flight: false },
            Some(b'N') => self.recv.resync_skip(1),
            _ => self.recv.resync(),
        }
        self.phase = Phase::Start;
        self.end();
        self.recv_typed(chunk);
        Step::Go
    }

    fn send_typed(&mut self, chunk: &Chunk) {
        if chunk.len() == TERMINATE.len() as u64 && chunk.head() == TERMINATE {
            self.said.goodbye = true;
            self.feed_send(chunk);
            return;
        }
        if !self.said.in_flight && self.recv.is_lost() {
            // The server answered everything asked so far: its next byte starts a message.
            self.recv.resync();
        }
        self.begin();
        if self.send.is_lost() {
            // Clients write whole messages; assume this send starts one, but do not count on it.
            self.send.resync();
            self.exact = false;
        }
        self.feed_send(chunk);
    }

    fn feed_send(&mut self, chunk: &Chunk) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.send.feed(chunk, &mut events);
        for ev in &events {
            let Event::Begin(frame) = ev else { continue };
            let ty = frame.hdr[0];
            if !FRONTEND_TYPES.contains(&ty) {
                self.send.lose();
                break;
            }
            if matches!(ty, b'Q' | b'S' | b'F') {
                self.owed += 1;
            }
        }
        if self.send.is_lost() {
            self.exact = false;
        }
        self.events = events;
    }

    fn recv_typed(&mut self, chunk: &Chunk) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.recv.feed(chunk, &mut events);
        // A ReadyForQuery followed by nothing but asynchronous messages so far.
        let mut ready_last = false;
        for ev in &events {
            let Event::End(frame) = ev else { continue };
            let ty = frame.hdr[0];
            if !BACKEND_TYPES.contains(&ty) {
                self.recv.lose();
                break;
            }
            match ty {
                b'Z' => match (frame.body_len, frame.first_byte()) {
                    (1, Some(status @ (b'I' | b'T' | b'E'))) => {
                        self.ready(status);
                        ready_last = true;
                    }
                    _ => {
                        self.recv.lose();
                        break;
                    }
                },
                b'A' | b'N' | b'S' => {}
                b'C' => {
                    self.last_tag = Some(frame.body_len);
                    ready_last = false;
                }
                b'E' | b'G' => {
                    self.exact = false;
                    ready_last = false;
                }
                _ => ready_last = false,
            }
        }
        self.events = events;
        if self.recv.is_lost() {
            self.exact = false;
            if let [.., b'Z', 0, 0, 0, 5, status @ (b'I' | b'T' | b'E')] = *self.window.bytes() {
                self.ready(status);
                self.end();
                self.recv.resync();
            }
        } else if ready_last && !self.exact && self.recv.at_boundary() {
            self.end();
        }
    }

    fn ready(&mut self, status: u8) {
        // The statement that ended the transaction was a ROLLBACK (or ABORT, or a COMMIT of
        // a failed transaction): its CommandComplete tag is "ROLLBACK" (9 bytes with its
        // NUL). Only when that tag was seen, never guessed from a lost walker.
        let tag = self.last_tag.take();
        self.said.rolled_back = status == b'I'
            && matches!(self.said.txn, Txn::Open | Txn::Failed)
            && tag == Some(ROLLBACK_TAG_LEN);
        self.said.txn = match status {
            b'T' => Txn::Open,
            b'E' => Txn::Failed,
            _ => Txn::Idle,
        };
        self.synced = true;
        if self.phase == Phase::Startup || self.phase == Phase::Start {
            self.phase = Phase::Ready;
        }
        self.owed = self.owed.saturating_sub(1);
        if self.exact && self.owed == 0 {
            self.end();
        }
    }

    /// A send: a new in-flight starts unless one is running.
    fn begin(&mut self) {
        if !self.said.in_flight {
            self.said.in_flight = true;
            self.owed = 0;
            self.exact = true;
        }
    }

    fn end(&mut self) {
        self.said.in_flight = false;
        self.owed = 0;
        self.exact = true;
    }
}

impl Conversation for Postgres {
    fn said(&self) -> &Said {
        &self.said
    }

    fn said_mut(&mut self) -> &mut Said {
        &mut self.said
    }

    fn on_io(&mut self, dir: Direction, chunk: &Chunk) -> Step {
        match dir {
            Direction::Send => {
                if !self.synced && looks_like_tls(chunk.head(), chunk.len()) {
                    return Step::Opaque { in_flight: true };
                }
                match self.phase {
                    Phase::Start | Phase::SslReply => self.opening(chunk),
                    Phase::Startup | Phase::Ready => {
                        self.send_typed(chunk);
                        Step::Go
                    }
                }
            }
            Direction::Recv => {
                self.window.push(chunk);
                if self.phase == Phase::SslReply {
                    return self.ssl_reply(chunk);
                }
                self.recv_typed(chunk);
                Step::Go
            }
        }
    }
}
