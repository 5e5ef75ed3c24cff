//! A conversation whose bytes say nothing: TLS-encrypted, compressed, of an unknown
//! protocol, or of a protocol drainwatch does not read (spec.rs).
//!
//! The best that can be seen is the rhythm of the syscalls: a query is taken to be in flight
//! from a send until the next recv that moved bytes. A reply that arrives in several recvs
//! ends the in-flight at its first recv; a send that gets no reply keeps it in flight until
//! some later recv. The transaction state is [`Txn::Unknown`] for good, and no goodbye can be
//! read.

use super::chunk::Chunk;
use super::io::{Step, Txn};
use super::spec::{Conversation, Said};
use crate::events::Direction;

#[derive(Clone, Debug)]
pub(crate) struct Opaque {
    /// Only `in_flight` ever changes: the transaction stays unknown, no goodbye is read.
    said: Said,
}

impl Opaque {
    pub(crate) fn new(in_flight: bool) -> Self {
        Self {
            said: Said {
                in_flight,
                ..Said::new(false)
            },
        }
    }
}

impl Conversation for Opaque {
    fn on_io(&mut self, dir: Direction, _chunk: &Chunk) -> Step {
        self.said.in_flight = dir == Direction::Send;
        Step::Go
    }

    fn said(&self) -> &Said {
        &self.said
    }

    fn said_mut(&mut self) -> &mut Said {
        &mut self.said
    }

    fn assume_txn(&mut self, _txn: Txn) {}
}
