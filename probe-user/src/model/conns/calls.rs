//! Upstream calls in flight (docs/design.md, "upstream call in flight"): from the kernel's
//! per-target counters (`events::TargetCalls`), the calls found in flight at attach, and
//! the ends the kernel could not count (a unix-domain close seen by userspace).
//!
//! A *first* call, made on a connection that has not answered yet, may be a slow service's
//! first reply or a one-way stream's first send (a log shipper that wrote once): only the
//! reply or the next send tells. It holds the drain for [`FIRST_CALL_HOLD`] after it
//! started, no longer: past that, the verdict's basis names it instead of it holding the
//! drain forever.

use std::time::Duration;

use crate::events::TargetCalls;

use super::tracker::ConnTracker;

/// How long a first call holds the drain (see the module doc): longer than any answer a
/// server's own operation would wait for, short enough that a connection that only ever
/// sent once does not turn a drain into a timeout.
pub const FIRST_CALL_HOLD: Duration = Duration::from_secs(5);

/// Upstream calls of one target or all, as the state counts them now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// In flight, first calls included.
    pub in_flight: u64,
    /// Of `in_flight`, first calls (held until [`FIRST_CALL_HOLD`] after their start).
    pub first: u64,
    /// Upstream connections that turned out one-way.
    pub one_way: u64,
}

impl ConnTracker {
    /// A target's new call counters (from `requests_sample`): the calls' edges are activity.
    pub(super) fn calls_sample(&mut self, before: &TargetCalls, now: &TargetCalls) {
        self.touch(now.last_edge_ns);
        self.calls.ended += now.ended.saturating_sub(before.ended)
            + now.existing_ended.saturating_sub(before.existing_ended);
    }

    /// An upstream connection found awaiting a reply at attach.
    pub(super) fn call_busy_at_attach(&mut self, tgid: u32) {
        *self.calls.busy_at_attach.entry(tgid).or_default() += 1;
    }

    /// Of the upstream connections found awaiting a reply at attach (`AtAttach::Busy`), one
    /// that had never answered: its call is a first call, held from `seen_ns` (its start is
    /// unknown; see [`Self::hold_first_calls_from`]).
    pub fn first_call_at_attach(&mut self, tgid: u32, seen_ns: u64) {
        *self.calls.first_busy_at_attach.entry(tgid).or_default() += 1;
        self.calls.first_at_attach_ns = self.calls.first_at_attach_ns.max(seen_ns);
    }

    /// The first calls found in flight at attach hold from `attached_ns`, when drainwatch
    /// says it is attached (docs/design.md, "upstream call in flight": held from attach),
    /// not from the start of the attach: the programs' load and the surveys before that line
    /// took more than the whole hold under a slow emulated CPU, and such a call was let go
    /// before anyone could see it answered.
    pub fn hold_first_calls_from(&mut self, attached_ns: u64) {
        if !self.calls.first_busy_at_attach.is_empty() {
            self.calls.first_at_attach_ns = self.calls.first_at_attach_ns.max(attached_ns);
        }
    }

    /// A close userspace saw and the kernel did not, with a call in flight (`since`: its
    /// start, 0 when it was in flight at attach).
    pub(super) fn call_ended_here(&mut self, tgid: u32, since: u64) {
        let ended = self.calls.ended_here.entry(tgid).or_default();
        match since {
            0 => ended.1 += 1,
            _ => ended.0 += 1,
        }
    }

    /// Upstream connections to look at in the kernel's map (`CONN_ONE_WAY`), of targets
    /// whose count of one-way connections moved since the last look (once per move).
    pub fn one_way_look_due(&mut self) -> Vec<(u32, u32)> {
        let mut due = Vec::new();
        for (tgid, counted) in &self.requests_by_target {
            let looked = self.calls.one_way_looked.entry(*tgid).or_default();
            if counted.calls.one_way > *looked {
                *looked = counted.calls.one_way;
                due.push(*tgid);
            }
        }
        let named = &self.calls.one_way_named;
        self.conns
            .values()
            .filter(|c| c.role == crate::events::Role::Upstream && due.contains(&c.tgid))
            .filter(|c| {
                !named
                    .iter()
                    .any(|n| (n.0, n.1, n.3) == (c.tgid, c.fd, true))
            })
            .map(|c| (c.tgid, c.fd))
            .collect()
    }

    /// The kernel marked an upstream connection one-way.
    pub(super) fn one_way(&mut self, tgid: u32, fd: u32, peer: Option<String>) {
        let named = &mut self.calls.one_way_named;
        if !named.iter().any(|n| (n.0, n.1, n.3) == (tgid, fd, true)) {
            named.push((tgid, fd, peer, true));
        }
    }

    pub(super) fn one_way_closed(&mut self, tgid: u32, fd: u32) {
        for named in &mut self.calls.one_way_named {
            if (named.0, named.1) == (tgid, fd) {
                named.3 = false;
            }
        }
    }

    /// The one-way connections of a target named so far, as `fd N PEER`.
    pub fn one_way_names(&self, tgid: u32) -> Vec<String> {
        self.calls
            .one_way_named
            .iter()
            .filter(|n| n.0 == tgid)
            .map(|(_, fd, peer, _)| match peer {
                Some(peer) => format!("fd {fd} {peer}"),
                None => format!("fd {fd}"),
            })
            .collect()
    }

    pub(super) fn calls_exited(&mut self, tgid: u32) {
        self.calls.busy_at_attach.remove(&tgid);
        self.calls.first_busy_at_attach.remove(&tgid);
        self.calls.ended_here.remove(&tgid);
    }

    /// Upstream calls of each running target.
    pub fn calls_by_target(&self) -> Vec<(u32, Calls)> {
        let mut tgids: Vec<u32> = self.requests_by_target.keys().copied().collect();
        tgids.extend(self.calls.busy_at_attach.keys());
        tgids.sort_unstable();
        tgids.dedup();
        tgids.into_iter().map(|t| (t, self.calls_of(t))).collect()
    }

    /// Upstream calls of one target, or of all.
    pub fn calls(&self, tgid: Option<u32>) -> Calls {
        self.calls_by_target()
            .into_iter()
            .filter(|(t, _)| tgid.is_none_or(|wanted| wanted == *t))
            .map(|(_, c)| c)
            .fold(Calls::default(), |sum, c| Calls {
                in_flight: sum.in_flight + c.in_flight,
                first: sum.first + c.first,
                one_way: sum.one_way + c.one_way,
            })
    }

    fn calls_of(&self, tgid: u32) -> Calls {
        let counted = self
            .requests_by_target
            .get(&tgid)
            .map(|t| t.calls)
            .unwrap_or_default();
        let busy = self.calls.busy_at_attach.get(&tgid).copied().unwrap_or(0);
        let (ended, existing_ended) = self
            .calls
            .ended_here
            .get(&tgid)
            .copied()
            .unwrap_or_default();
        let in_flight = counted.started.saturating_sub(counted.ended + ended)
            + busy.saturating_sub(counted.existing_ended + existing_ended);
        let (first_new, first_old) = self.first_calls_of(tgid, &counted);
        Calls {
            in_flight,
            first: (first_new + first_old).min(in_flight),
            one_way: counted.one_way,
        }
    }

    /// First calls in flight in one target: (started while watched, in flight at attach).
    fn first_calls_of(&self, tgid: u32, counted: &TargetCalls) -> (u64, u64) {
        let first_busy = self
            .calls
            .first_busy_at_attach
            .get(&tgid)
            .copied()
            .unwrap_or(0);
        (
            counted.first_started.saturating_sub(counted.first_ended),
            first_busy.saturating_sub(counted.first_existing_ended),
        )
    }

    /// Until when (ktime ns) first calls in flight hold the drain; 0 when none is. One in
    /// flight at attach holds from attach (its start is unknown).
    pub(super) fn first_calls_hold_until(&self) -> u64 {
        let hold = FIRST_CALL_HOLD.as_nanos() as u64;
        let mut tgids: Vec<u32> = self.requests_by_target.keys().copied().collect();
        tgids.extend(self.calls.first_busy_at_attach.keys());
        tgids
            .into_iter()
            .map(|tgid| {
                let counted = self
                    .requests_by_target
                    .get(&tgid)
                    .map(|t| t.calls)
                    .unwrap_or_default();
                let (new, old) = self.first_calls_of(tgid, &counted);
                let new = if new > 0 {
                    counted.first_last_start_ns + hold
                } else {
                    0
                };
                let old = if old > 0 {
                    self.calls.first_at_attach_ns + hold
                } else {
                    0
                };
                new.max(old)
            })
            .max()
            .unwrap_or(0)
    }

    /// The report's `upstream_calls`.
    pub fn calls_report(&self) -> crate::model::report::UpstreamCalls {
        let calls = self.calls(None);
        crate::model::report::UpstreamCalls {
            count: self.calls_ended(),
            in_flight: calls.in_flight,
            one_way: calls.one_way,
        }
    }

    /// Calls ended (answered, closed, or found one-way) since attach, as the kernel counted
    /// them, over every target, exited ones included.
    pub fn calls_ended(&self) -> u64 {
        self.calls.ended
    }
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;
