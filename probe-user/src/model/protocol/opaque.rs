//! A conversation whose bytes say nothing: TLS-encrypted, compressed, of an unknown
//! protocol, or of a protocol drainwatch does not read (spec.rs).
//!
//! The best that can be seen is the rhythm of the syscalls: a query is taken to be in flight
//! from a send until the next recv that moved bytes. A reply that arrives in several recvs
//! ends the in-flight at its first recv; a send that gets no reply keeps it in flight until
//! some later recv. The transaction state is [`Txn::Unknown`] for good, and no goodbye can be
//! read.

use super::chunk::Chunk;
use super::spec::Conversation;
use super::{Direction, Step, Txn};

#[derive(Clone, Debug, Default)]
pub(crate) struct Opaque {
    pub(crate) in_flight: bool,
}

impl Conversation for Opaque {
    fn on_io(&mut self, dir: Direction, _chunk: &Chunk) -> Step {
        self.in_flight = dir == Direction::Send;
        Step::Go
    }

    fn in_flight(&self) -> bool {
        self.in_flight
    }

    fn txn(&self) -> Txn {
        Txn::Unknown
    }

    fn assume_txn(&mut self, _txn: Txn) {}

    fn goodbye(&self) -> bool {
        false
    }
}
