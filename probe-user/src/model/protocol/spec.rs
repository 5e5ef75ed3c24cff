//! What a database protocol is to drainwatch, written once: the [`DbProtocol`] trait and the
//! [`Conversation`] its reader implements. registry.rs lists the protocols (the one list
//! everything else iterates: the default port table, the kernel's port map, the first-byte
//! recognition mirrored in userspace, the server process names and socket paths found at
//! attach, the `--db-url` schemes, the names shown in summaries); the protocols import this
//! trait and the registry imports them, so no two of these files import each other.
//!
//! # Adding a protocol
//!
//! One new file beside `postgres.rs` (a unit struct implementing [`DbProtocol`], its static
//! `PROTOCOL`, and its reader implementing [`Conversation`], or none), its kernel rules in
//! probe-common/src/protocols/ (what of its bytes may leave the kernel, needed for it to be
//! read at all; its first bytes, for it to be recognised on a port outside its defaults),
//! one line in probe-common's `protocols!` list (which declares both modules and gives it its
//! kernel number `PROTO_*`, its variant of [`crate::events::Protocol`], the report's
//! vocabulary of docs/design.md, and its place in the registry), and its tests under
//! `tests/` (through the kernel's redaction: `tests/redacted.rs`).
//! A protocol without a reader ([`DbProtocol::conversation`] `None`, as MongoDB) is
//! recognised and counted, and its conversation is reported unread (below).
//!
//! # A protocol without a reader
//!
//! Its conversation is not read: no query, transaction or goodbye of it is ever seen. Like an
//! encrypted conversation (docs/design.md, "encrypted conversation"), its close is not a
//! `leaked_db_connection` for want of a visible goodbye, nor its send/recv rhythm a query in
//! flight at exit: it is listed in the report's `coverage.unverified` (`why:
//! "protocol-not-read"`) and a verdict that depends on it is `incomplete`, never `clean`.

use crate::events::{Direction, Protocol};

use super::{
    chunk::Chunk,
    io::{DbIo, Step, Txn},
};

/// One database protocol: how it is recognised, and how its conversation is read.
pub(crate) trait DbProtocol: Sync {
    /// Its name in events and reports.
    fn id(&self) -> Protocol;
    /// Its number in the kernel's events and maps (`probe_common::PROTO_*`).
    fn wire(&self) -> u8 {
        self.id().wire()
    }
    /// Its name for people ("PostgreSQL").
    fn title(&self) -> &'static str;
    /// The TCP ports it listens on by default (docs/design.md, "connection").
    fn default_ports(&self) -> &'static [u16];
    /// What its server processes are called (`ps`'s name): a connection to one, found at
    /// attach, speaks this protocol whatever its port or socket path.
    fn server_names(&self) -> &'static [&'static str];
    /// A unix socket file name its servers bind by default (`.s.PGSQL.5432`).
    fn is_socket_file(&self, _file: &str) -> bool {
        false
    }
    /// The first bytes of a connection on a port outside the defaults are this protocol's
    /// opening (the client's first send, or the server's first recv). The kernel's own
    /// recognition (its `KernelRules` in probe-common/src/protocols/) follows the same rules.
    fn recognize(&self, _dir: Direction, _head: &[u8]) -> bool {
        false
    }
    /// The `--db-url` schemes whose database view covers this protocol's sessions
    /// (host/pg_view.rs, host/my_view.rs); empty: no such view.
    fn url_schemes(&self) -> &'static [&'static str] {
        &[]
    }
    /// A connection found at attach has a transaction state that nothing but the database
    /// can tell until its next reply, so it is listed `unknown` until then (docs/design.md,
    /// "connection"): a transaction spans round trips and commits on the database's word.
    fn txn_unknown_at_attach(&self) -> bool {
        false
    }
    /// A reader of one connection's conversation; `seen_from_start` false for one that
    /// existed before attach (it then resynchronises). `None`: the conversation is not read
    /// (see the module doc).
    fn conversation(&self, seen_from_start: bool) -> Option<Box<dyn Conversation>>;
    /// `first`, the first plaintext the TLS hooks read on a connection, is this protocol's
    /// first message inside TLS (a reader can start there on a connection seen from its
    /// opening).
    fn tls_opening(&self, first: &DbIo) -> bool {
        first.dir == Direction::Send
    }
    /// A reader of the plaintext inside TLS: from the protocol's first message in it
    /// (`from_start`), or from the middle of the conversation.
    fn conversation_in_tls(&self, from_start: bool) -> Option<Box<dyn Conversation>> {
        self.conversation(from_start)
    }
}

/// The reader of one database conversation (docs/design.md: "query in flight",
/// "transaction open", "clean close").
pub(crate) trait Conversation: std::fmt::Debug + Send {
    /// One send or recv, as the kernel reported it.
    fn on_io(&mut self, dir: Direction, chunk: &Chunk) -> Step;
    /// What it has said so far, which the reads below come from.
    fn said(&self) -> &Said;
    fn said_mut(&mut self) -> &mut Said;
    /// A query is in flight: sent, and its reply not yet complete.
    fn in_flight(&self) -> bool {
        self.said().in_flight
    }
    fn txn(&self) -> Txn {
        self.said().txn
    }
    /// The transaction state the database reported outside the conversation, for a
    /// connection whose replies have not told it yet (the next reply that tells overrides
    /// it).
    fn assume_txn(&mut self, txn: Txn) {
        let said = self.said_mut();
        if said.txn == Txn::Unknown {
            said.txn = txn;
        }
    }
    /// The client sent the protocol's goodbye.
    fn goodbye(&self) -> bool {
        self.said().goodbye
    }
    /// The reply just read ended an open transaction with a rollback the client asked for
    /// (PostgreSQL ROLLBACK, Redis DISCARD, MySQL ROLLBACK told by its packet's length);
    /// cleared by reading it.
    fn take_rollback(&mut self) -> bool {
        std::mem::take(&mut self.said_mut().rolled_back)
    }
    /// A close(2) now would end the conversation cleanly (docs/design.md, "clean close"):
    /// after the goodbye, or, where the protocol has no goodbye to send, at a point where
    /// nothing is left to lose.
    fn close_is_clean(&self) -> bool {
        self.goodbye()
    }
}

/// What a conversation has said so far, kept the same way by every protocol's reader: each
/// holds one, sets it from the bytes, and hands it to [`Conversation::said`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Said {
    /// A query sent and its reply not yet complete.
    pub in_flight: bool,
    pub txn: Txn,
    /// The client sent the protocol's goodbye.
    pub goodbye: bool,
    /// The last reply ended a transaction with a rollback the client asked for.
    pub rolled_back: bool,
}

impl Said {
    /// Nothing said yet: no transaction when the conversation is seen from its start, the
    /// state unknown when it began before attach (docs/design.md, "transaction open").
    pub fn new(seen_from_start: bool) -> Self {
        Self {
            in_flight: false,
            txn: if seen_from_start {
                Txn::Idle
            } else {
                Txn::Unknown
            },
            goodbye: false,
            rolled_back: false,
        }
    }
}
