//! What every file of this directory speaks of: one send or recv as the kernel reports it,
//! the transaction state, and what a reader asks of its connection. A leaf: the readers, the
//! trait (spec.rs) and the connection (mod.rs) import it, it imports none of them.

use crate::events::Direction;

/// Bytes the kernel copies from the start of each send/recv on a database connection.
pub const HEAD_BYTES: usize = 32;
/// Bytes the kernel copies from the end of each send/recv on a database connection.
pub const TAIL_BYTES: usize = 32;

/// One send or recv syscall on a database connection.
#[derive(Clone, Copy, Debug)]
pub struct DbIo<'a> {
    pub dir: Direction,
    /// How many bytes moved.
    pub len: u32,
    /// The first `min(len, 32)` bytes.
    pub head: &'a [u8],
    /// The last `min(len, 32)` bytes (equal to `head` when `len <= 32`).
    pub tail: &'a [u8],
}

/// Transaction state, as the database's own replies tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Txn {
    /// Not (yet) told by the database: a connection opened before attach, or encrypted.
    Unknown,
    Idle,
    Open,
    /// PostgreSQL: in a failed transaction block (ReadyForQuery 'E').
    Failed,
}

/// What a protocol parser asks of its connection after one syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Go,
    /// The rest of the conversation is encrypted or compressed: read it as opaque.
    Opaque {
        in_flight: bool,
    },
}
