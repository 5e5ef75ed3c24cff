//! A conversation whose bytes say nothing: TLS-encrypted, compressed, or of an unknown
//! protocol.
//!
//! The best that can be seen is the rhythm of the syscalls: a query is taken to be in flight
//! from a send until the next recv that moved bytes. A reply that arrives in several recvs
//! ends the in-flight at its first recv; a send that gets no reply keeps it in flight until
//! some later recv. The transaction state is [`Txn::Unknown`] for good, and no goodbye can be
//! read.

use super::{Direction, Txn};

#[derive(Clone, Debug)]
pub(crate) struct Opaque {
    pub(crate) in_flight: bool,
    /// A database conversation that turned encrypted (or compressed) after its opening, as
    /// opposed to a conversation of an unknown protocol: there was something to read.
    pub(crate) encrypted: bool,
}

impl Opaque {
    pub(crate) fn on_io(&mut self, dir: Direction) {
        self.in_flight = dir == Direction::Send;
    }

    pub(crate) fn txn(&self) -> Txn {
        Txn::Unknown
    }
}
