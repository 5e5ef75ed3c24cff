//! Looks again, while the run lasts, at what was unknown at attach: client connections
//! whose request state was a tie ([`unknown_conns`], by the same rule as at attach,
//! attach_rule.rs) and database connections whose transaction state no view told
//! ([`unknown_txns`], db_view.rs). Each returns whether it had something to look at (the
//! session's timer counts only those looks).

use crate::{
    events::{Event, Protocol, Resolved, ResolvedBy},
    host::procfs,
    kernel::probe::Probe,
    model::{conns::AtAttach, state::AuditState},
    session::{db_view, existing, trace},
    settings::Common,
};

/// Settles client connections whose state at attach was unknown: one that had traffic
/// since (the kernel cleared its flag: it follows its requests from there), or, with no
/// traffic on it, whose process now waits for input with nothing in flight, no outbound
/// connection awaiting a reply and no bytes unread. Resolved events are traced at `-vv`.
pub(super) fn unknown_conns(
    probe: &Probe,
    state: &mut AuditState,
    common: &Common,
    verbose: u8,
) -> bool {
    let Some(conns) = state.conns() else {
        return false;
    };
    let unresolved: Vec<(u32, u32)> = conns.unresolved().collect();
    if unresolved.is_empty() {
        return false;
    }
    let ktime_ns = procfs::monotonic_now().as_nanos() as u64;
    let mut settled = Vec::new();
    let mut quiet: Vec<(u32, u32)> = Vec::new();
    for (tgid, fd) in unresolved {
        if probe.had_traffic(probe_common::ConnKey { tgid, fd }) {
            settled.push((tgid, fd, ResolvedBy::Traffic));
        } else {
            quiet.push((tgid, fd));
        }
    }
    let mut tgids: Vec<u32> = quiet.iter().map(|(tgid, _)| *tgid).collect();
    tgids.dedup();
    for tgid in tgids {
        // The same rule as at attach, on what the kernel and /proc say now.
        let held = existing::survey(tgid, common);
        let in_flight = conns.in_flight(Some(tgid));
        let extra = (in_flight.requests + in_flight.queries) as usize;
        let judged = existing::judge_clients(tgid, &held, None, extra);
        for (fd, at_attach, why) in judged {
            if at_attach == AtAttach::Idle && quiet.contains(&(tgid, fd)) {
                log::debug!("client fd {fd} of {tgid}, unknown at attach, now idle: {why}");
                settled.push((tgid, fd, ResolvedBy::Evidence));
            }
        }
    }
    for (tgid, fd, by) in settled {
        let event = Event::Resolved(Resolved {
            ktime_ns,
            tgid,
            fd,
            by,
        });
        if verbose >= 2 {
            trace::event(&event);
        }
        state.apply(&event);
    }
    true
}

/// Asks the database's own view again about database connections from before attach
/// whose transaction state is still unknown: a PostgreSQL backend that was running a
/// command at attach has its state in its title again once the command ends; a
/// `--db-url` view may list a session it did not then. Resolved: `database`.
pub(super) fn unknown_txns(state: &mut AuditState, common: &Common) -> bool {
    let Some(conns) = state.conns() else {
        return false;
    };
    type Unknown = (
        (u32, u32),
        Protocol,
        std::net::SocketAddr,
        std::net::SocketAddr,
    );
    let unknown: Vec<Unknown> = conns
        .unresolved_txns()
        .filter_map(|key| {
            let conn = conns.conns().find(|c| (c.tgid, c.fd) == key)?;
            Some((key, conn.protocol, conn.local?, conn.peer?))
        })
        .collect();
    if unknown.is_empty() {
        return false;
    }
    let mut view = db_view::DbView::again(common);
    let mut told = Vec::new();
    for (key, protocol, local, peer) in unknown {
        if let Some(txn) = db_view::db_state_now(protocol, local, peer, &mut view) {
            told.push((key, txn));
        }
    }
    let at_ns = procfs::monotonic_now().as_nanos() as u64;
    for (key, txn) in told {
        log::debug!("fd {} of {}: the database now says {txn:?}", key.1, key.0);
        state.db_state_seen(key, txn, at_ns);
    }
    true
}
