//! The database's own view of a session of a target's database connection from before
//! attach: is a transaction open? A local PostgreSQL backend's process title
//! (host/pg_title.rs), else `--db-url`'s pg_stat_activity (host/pg_view.rs) or innodb_trx
//! (host/my_view.rs), matched by the target's end. Asked at attach ([`super::seed`]) and
//! again while the state is unknown (`Session`'s transaction recheck).

use std::net::SocketAddr;

use crate::{
    events::Protocol,
    host::{
        db_session::{SessionState, Sessions},
        pg_title,
    },
    model::protocol::{registry, Txn},
    settings::Common,
};

/// `--db-url`'s own view of its sessions (PostgreSQL's pg_stat_activity, MySQL's
/// information_schema.innodb_trx: which one is the URL's scheme), asked once per look and
/// only when needed.
pub(super) struct DbView<'a> {
    url: Option<&'a str>,
    sessions: Option<Sessions>,
    /// Asked again during a run: a failure was said at attach already.
    again: bool,
}

impl<'a> DbView<'a> {
    pub(super) fn new(common: &'a Common) -> Self {
        Self {
            url: common.db_url.as_ref().map(|u| u.expose()),
            sessions: None,
            again: false,
        }
    }

    /// The same, asked again during a run.
    pub(super) fn again(common: &'a Common) -> Self {
        Self {
            again: true,
            ..Self::new(common)
        }
    }

    /// The URL's protocol: a postgres:// URL says nothing of MySQL sessions.
    fn protocol(url: &str) -> Option<Protocol> {
        registry::of_url(url).map(|p| p.id())
    }

    fn state(&mut self, protocol: Protocol, client: SocketAddr) -> Option<SessionState> {
        let url = self
            .url
            .filter(|url| Self::protocol(url) == Some(protocol))?;
        let sessions = self.sessions.get_or_insert_with(|| {
            let asked = match protocol {
                Protocol::Mysql => crate::host::my_view::sessions(url),
                _ => crate::host::pg_view::sessions(url),
            };
            asked.unwrap_or_else(|why| {
                if self.again {
                    log::debug!("{why}: asked again");
                } else {
                    log::warn!("{why}: transactions open before attach stay unknown");
                }
                Default::default()
            })
        });
        sessions.get(&client).copied()
    }
}

/// What is wrong with `--db-url`'s view, if anything, asked once (for `check`: a missing
/// grant is said before the run that needs it, docs/design.md "Command line").
pub fn db_view_problem(common: &Common) -> Option<String> {
    let url = common.db_url.as_ref()?.expose();
    let asked = match DbView::protocol(url)? {
        Protocol::Mysql => crate::host::my_view::sessions(url),
        _ => crate::host::pg_view::sessions(url),
    };
    asked.err()
}

/// The model's word for what the database said of a session.
pub(super) fn txn_of(state: SessionState) -> Txn {
    match state {
        SessionState::Idle => Txn::Idle,
        SessionState::InTransaction => Txn::Open,
        SessionState::Aborted => Txn::Failed,
    }
}

/// What the database's own view says now of the session of the TCP connection
/// `local` -> `peer`: the local backend's process title, else `--db-url`'s view. `None`:
/// neither tells (not PostgreSQL or MySQL, no title, no URL, the session not listed, a
/// backend busy with a command).
pub(super) fn db_state_now(
    protocol: Protocol,
    local: SocketAddr,
    peer: SocketAddr,
    view: &mut DbView,
) -> Option<Txn> {
    if !registry::of(protocol).is_some_and(|p| p.txn_unknown_at_attach()) {
        return None;
    }
    let title = (protocol == Protocol::Postgres && peer.ip().is_loopback())
        .then(|| pg_title::backend_state(local))
        .flatten();
    let backend = title.or_else(|| view.state(protocol, local))?;
    Some(txn_of(backend))
}
