//! Database conversations read through keyholes: is a query in flight, is a transaction open,
//! did the client say goodbye?
//!
//! For each send or recv on a database connection the kernel reports how many bytes moved and
//! copies at most [`HEAD_BYTES`] from their start and [`TAIL_BYTES`] from their end
//! ([`DbIo`]); query text and payloads in between never leave the kernel. One [`DbConn`] per
//! connection turns that sequence into the three answers of docs/design.md ("query in flight",
//! "transaction open", "clean close"). Pure code: no I/O, no clocks, no panics on any input.
//!
//! # How the bytes are followed
//!
//! - A syscall of at most 64 bytes is known whole; a longer one is head, gap, tail.
//! - PostgreSQL and MySQL frame every message with a length. A walker follows the frames of
//!   each direction: a frame body may fall into a gap (its length says how far to skip), a
//!   header may not. When a header falls into a gap the walker is lost until a point that is
//!   provably a boundary: the end of a ReadyForQuery / final packet found in the last bytes of
//!   the stream, or (MySQL, Redis) a new command from the client, which the server only reads
//!   after finishing its previous reply.
//! - Redis replies are followed the same way with a RESP reader (bulk strings carry lengths).
//! - A window of the last 64 known bytes of the receive stream spans syscalls, so a final
//!   message split across recvs (down to 1-byte reads) is still seen whole.
//!
//! # What 32+32 bytes per syscall cannot tell
//!
//! - Messages wholly inside a gap are unseen: commands in the middle of a large pipelined send
//!   (a Redis `MULTI` there, a PostgreSQL Sync there) and the number of replies owed for them.
//!   When that count is not exact, a reply is taken as complete when the receive stream ends
//!   at the protocol's end-of-reply marker (PostgreSQL: ReadyForQuery; Redis: the end of a
//!   top-level reply, with at least as many replies as commands seen). A pipelined batch
//!   whose first replies arrive in a recv of their own may then end the in-flight early.
//!   MySQL replies are not counted but shaped: the final packet is told by its kind, its
//!   place in the response and its sequence id.
//! - Bytes of payload that happen to look like an end-of-reply marker exactly at the end of a
//!   recv while the walker is lost (a PostgreSQL DataRow ending in `Z 00 00 00 05 I`, a MySQL
//!   row ending like an EOF packet, a Redis bulk string holding RESP-looking lines and split
//!   right after one) end the in-flight early. The walker is lost only after a frame header
//!   fell into a gap, so this takes a large reply and an unlucky recv boundary. Conversely a
//!   final packet whose header fell into a gap and that is longer than the known last bytes
//!   (a MySQL OK with a long session-state block after a large result set) is not seen: the
//!   in-flight then lasts until the next command resynchronises the walker.
//! - Encrypted conversations (PostgreSQL SSL/GSS, MySQL CLIENT_SSL or compression, TLS seen on
//!   a connection opened before attach) are opaque: a query is taken to be in flight from a
//!   send until the next recv, and the transaction state stays [`Txn::Unknown`].
//!
//! Per-protocol rules and limits are documented in the modules `postgres`, `mysql` and
//! `redis`; `mongodb` is recognised and not read. Each is one module behind one trait
//! ([`spec::DbProtocol`]), registered in [`registry::REGISTRY`] from probe-common's
//! `protocols!` list, which also declares its module here: adding a protocol is one new file,
//! its kernel rules (probe-common/src/protocols/), one line in that list and its tests
//! (spec.rs says what else it needs).

mod chunk;
mod frame;
mod io;
mod mysql_reply;
mod opaque;
pub mod registry;
mod resp;
pub mod spec;

/// Declares each protocol's module, from `probe_common::protocols!`.
macro_rules! protocol_modules {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        $(mod $module;)*
    };
}
probe_common::protocols!(protocol_modules);

#[cfg(test)]
mod tests;
/// What of one syscall's bytes leaves the kernel (for the state machine's tests).
#[cfg(test)]
pub(crate) use tests::redacted::kept as tests_through_kernel;

use chunk::Chunk;
pub(crate) use io::Step;
pub use io::{DbIo, Txn, HEAD_BYTES, TAIL_BYTES};
use opaque::Opaque;
use registry::REGISTRY;
use spec::Conversation;

use crate::events::{Direction, Protocol};

/// Why a database conversation is not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unread {
    /// It went encrypted (or compressed) and the TLS hooks did not read it
    /// (docs/design.md, "encrypted conversation").
    Encrypted,
    /// Its protocol has no reader (spec.rs, "A protocol without a reader": MongoDB).
    NotParsed,
}

impl Unread {
    /// The report's `coverage.unverified[].why`.
    pub fn why(self) -> &'static str {
        match self {
            Unread::Encrypted => "tls-not-decrypted",
            Unread::NotParsed => "protocol-not-read",
        }
    }
}

/// The protocol state of one database connection.
#[derive(Debug)]
pub struct DbConn {
    protocol: Protocol,
    reader: Box<dyn Conversation>,
    /// `None` while the conversation is read.
    unread: Option<Unread>,
    seen_from_start: bool,
    /// Read in plaintext through the TLS library hooks (docs/how-it-sees.md, "TLS").
    tls: bool,
    /// What the database said of the transaction outside the conversation
    /// ([`DbConn::assume_txn`]), kept for a reader that starts over inside TLS.
    assumed: Option<Txn>,
}

impl DbConn {
    /// `seen_from_start` is false for a connection that existed before drainwatch attached:
    /// its transaction state is [`Txn::Unknown`] until the database reports one, and the
    /// readers resynchronise on the first point they can prove is a message boundary.
    pub fn new(protocol: Protocol, seen_from_start: bool) -> Self {
        let spec = registry::of(protocol);
        let reader = spec.and_then(|p| p.conversation(seen_from_start));
        // A protocol in the registry without a reader is not read; one of no known protocol
        // (Protocol::Unknown) is read by its rhythm alone, as before a first-bytes upgrade.
        let unread = (spec.is_some() && reader.is_none()).then_some(Unread::NotParsed);
        DbConn {
            protocol,
            reader: reader.unwrap_or_else(|| Box::new(Opaque::new(false))),
            unread,
            seen_from_start,
            tls: false,
            assumed: None,
        }
    }

    /// The kernel read this conversation's plaintext inside the TLS library (SSL_read /
    /// SSL_write), `first` being the first of it: from now on it is read as the protocol
    /// again. When `first` is the protocol's first message inside TLS (PostgreSQL
    /// StartupMessage after SSLRequest/'S'; MySQL's full handshake response, sequence 2,
    /// after its SSL request packet) on a connection seen from its opening, the reader
    /// starts there; otherwise (opened before attach, or TLS hooked only after its opening)
    /// mid-conversation, and it resynchronises. The ciphertext the socket hooks reported
    /// until the kernel tied the connection to its `SSL *` is dropped with the opaque
    /// reader that held it.
    pub fn start_tls_plaintext(&mut self, first: &DbIo) {
        if self.tls {
            return;
        }
        self.tls = true;
        let Some(spec) = registry::of(self.protocol) else {
            return;
        };
        let from_start = self.seen_from_start && self.encrypted() && spec.tls_opening(first);
        let Some(reader) = spec.conversation_in_tls(from_start) else {
            return;
        };
        self.reader = reader;
        self.unread = None;
        if let (false, Some(txn)) = (from_start, self.assumed) {
            self.assume_txn(txn);
        }
    }

    /// Read in plaintext through the TLS library hooks.
    pub fn tls_plaintext(&self) -> bool {
        self.tls
    }

    /// Feed one send or recv. Syscalls that moved no bytes change nothing.
    pub fn on_io(&mut self, io: &DbIo) {
        if io.len == 0 {
            return;
        }
        let chunk = Chunk::from_io(io);
        if let Step::Opaque { in_flight } = self.reader.on_io(io.dir, &chunk) {
            self.reader = Box::new(Opaque::new(in_flight));
            self.unread = Some(Unread::Encrypted);
        }
    }

    /// The transaction state the database itself reported outside the conversation (a
    /// PostgreSQL backend's process title), for a connection whose state is still unknown.
    pub fn assume_txn(&mut self, txn: Txn) {
        self.assumed = Some(txn);
        self.reader.assume_txn(txn);
    }

    /// A query is in flight: sent, and its reply not yet complete.
    pub fn query_in_flight(&self) -> bool {
        self.reader.in_flight()
    }

    pub fn txn(&self) -> Txn {
        self.reader.txn()
    }

    /// The client sent the protocol's goodbye (PostgreSQL Terminate, MySQL COM_QUIT, Redis
    /// QUIT): a close after it is clean.
    pub fn goodbye_sent(&self) -> bool {
        self.reader.goodbye()
    }

    /// The syscall just fed ended an open transaction with a rollback the client asked for
    /// (PostgreSQL ROLLBACK, Redis DISCARD, MySQL ROLLBACK); cleared by asking.
    pub fn take_rollback(&mut self) -> bool {
        self.reader.take_rollback()
    }

    /// A close now is clean (docs/design.md, "clean close"): after the goodbye, or, for a
    /// protocol without one to send, with nothing left to lose.
    pub fn close_is_clean(&self) -> bool {
        self.reader.close_is_clean()
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The conversation went encrypted (PostgreSQL SSLRequest answered 'S', a TLS record,
    /// MySQL CLIENT_SSL): nothing of it can be read from here on, not even a goodbye.
    pub fn encrypted(&self) -> bool {
        self.unread == Some(Unread::Encrypted)
    }

    /// Why the conversation is not read, if it is not.
    pub fn unread(&self) -> Option<Unread> {
        self.unread
    }
}

/// The protocol of a connection on a non-default port, from the first bytes it carried:
/// the client's first send (PostgreSQL StartupMessage, SSLRequest, GSSENCRequest or
/// CancelRequest; a RESP array `*<digits>\r\n$` for Redis) or the server's first recv (a MySQL
/// greeting: 3-byte length, sequence 0, protocol version 10, NUL-terminated version string).
/// See <https://www.postgresql.org/docs/current/protocol-message-formats.html>,
/// <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_v10.html>,
/// <https://redis.io/docs/latest/develop/reference/protocol-spec/>.
pub fn recognize(dir: Direction, head: &[u8]) -> Option<Protocol> {
    REGISTRY
        .iter()
        .find(|p| p.recognize(dir, head))
        .map(|p| p.id())
}
