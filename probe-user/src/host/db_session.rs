//! What a database says of one client session, whichever database says it: a local
//! PostgreSQL backend's process title ([`super::pg_title`]), `pg_stat_activity`
//! ([`super::pg_view`]), MySQL/MariaDB's PROCESSLIST and INNODB_TRX ([`super::my_view`]).

use std::{collections::HashMap, net::SocketAddr};

/// A session's transaction state, as its database tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Idle,
    InTransaction,
    /// In a failed transaction block (PostgreSQL).
    Aborted,
}

/// Client address (as the server sees it) -> its session's state.
pub type Sessions = HashMap<SocketAddr, SessionState>;
