//! What a drain verdict rests on besides what is in flight (docs/design.md, "drain tail",
//! "drained", "request in flight": push-style): the last client input, the last database
//! query sent, and the client connections on which the target pushes. Pure: the connection
//! tracker feeds it from the events; the verdict reads it.

use std::collections::{BTreeMap, BTreeSet};

/// A client connection seen push-style, for the report's basis and the live view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConn {
    pub tgid: u32,
    pub fd: u32,
    pub peer: Option<String>,
    /// When it was seen push-style (ms since attach).
    pub at_ms: u64,
}

/// One target's push-style connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pushes {
    /// How many of its client connections the kernel has marked (once each, closed ones
    /// included): more than are named when one closed before userspace looked.
    counted: u64,
    /// `counted` when userspace last looked for which ones.
    looked_at: u64,
}

#[derive(Clone, Debug, Default)]
pub struct DrainFacts {
    /// ktime (ns) of the last client input: bytes received on a client connection (the
    /// kernel's counters) or the close of one; 0 before any.
    last_input_ns: u64,
    /// ktime (ns) of the last database query sent; 0 before any.
    last_query_ns: u64,
    pushes: BTreeMap<u32, Pushes>,
    /// Every connection named push-style during the run, in order.
    named: Vec<PushConn>,
    /// Those still open: (tgid, fd).
    live: BTreeSet<(u32, u32)>,
    /// Targets seen running an event loop (an epoll instance in their fds, `host`).
    event_loops: BTreeSet<u32>,
}

impl DrainFacts {
    /// Client input at `ktime_ns`: bytes received, or a client connection closed.
    pub fn input(&mut self, ktime_ns: u64) {
        self.last_input_ns = self.last_input_ns.max(ktime_ns);
    }

    /// A database query sent at `ktime_ns` (its first bytes; a goodbye is no query).
    pub fn query(&mut self, ktime_ns: u64) {
        self.last_query_ns = self.last_query_ns.max(ktime_ns);
    }

    /// The kernel's counters of one target: its last client input and how many of its
    /// client connections became push-style.
    pub fn counters(&mut self, tgid: u32, pushed: u64, last_input_ns: u64) {
        self.input(last_input_ns);
        if pushed > 0 {
            let entry = self.pushes.entry(tgid).or_default();
            entry.counted = entry.counted.max(pushed);
        }
    }

    /// Targets whose count of push-style connections moved since the last call: which
    /// connections they are is to be read from the kernel's map (once per move, not once
    /// per tick).
    pub fn take_look_due(&mut self) -> Vec<u32> {
        let mut due = Vec::new();
        for (tgid, pushes) in &mut self.pushes {
            if pushes.counted > pushes.looked_at {
                pushes.looked_at = pushes.counted;
                due.push(*tgid);
            }
        }
        due
    }

    /// A client connection the kernel marked push-style.
    pub fn push_style(&mut self, conn: PushConn) {
        if self.live.insert((conn.tgid, conn.fd)) {
            let entry = self.pushes.entry(conn.tgid).or_default();
            let named = self.named.iter().filter(|c| c.tgid == conn.tgid).count() as u64 + 1;
            entry.counted = entry.counted.max(named);
            self.named.push(conn);
        }
    }

    pub fn is_push(&self, tgid: u32, fd: u32) -> bool {
        self.live.contains(&(tgid, fd))
    }

    /// A connection closed (its fd may be reused by one that is no push).
    pub fn closed(&mut self, tgid: u32, fd: u32) {
        self.live.remove(&(tgid, fd));
    }

    /// A target exited: its connections are gone.
    pub fn exited(&mut self, tgid: u32) {
        self.live.retain(|(t, _)| *t != tgid);
    }

    pub fn event_loop(&mut self, tgid: u32) {
        self.event_loops.insert(tgid);
    }

    pub fn event_loops(&self) -> impl Iterator<Item = u32> + '_ {
        self.event_loops.iter().copied()
    }

    /// Push-style client connections open now, for one target or all.
    pub fn live_pushes(&self, tgid: Option<u32>) -> u64 {
        self.live
            .iter()
            .filter(|(t, _)| tgid.is_none_or(|wanted| wanted == *t))
            .count() as u64
    }

    /// Targets with push-style client connections during the run, each with how many
    /// (counted by the kernel) and those named.
    pub fn pushing_targets(&self) -> Vec<(u32, u64, Vec<&PushConn>)> {
        self.pushes
            .iter()
            .filter(|(_, p)| p.counted > 0)
            .map(|(tgid, p)| {
                let named = self.named.iter().filter(|c| c.tgid == *tgid).collect();
                (*tgid, p.counted, named)
            })
            .collect()
    }

    pub fn last_input_ns(&self) -> Option<u64> {
        (self.last_input_ns > 0).then_some(self.last_input_ns)
    }

    /// The drain tail (docs/design.md): from the last client input to the last database
    /// query sent after it (0 when none was); `None` before any client input.
    pub fn tail_ns(&self) -> Option<u64> {
        self.last_input()
            .map(|input| self.last_query_ns.saturating_sub(input))
    }

    fn last_input(&self) -> Option<u64> {
        self.last_input_ns()
    }

    /// Where a settle time counts from (docs/design.md, "drain tail": `--settle D` holds
    /// drained until no database query has been sent for D after the last client input):
    /// the later of the last client input and the last query, and never before `attach_ns`
    /// (what came before attach is unknown, so attach counts as an input that just came).
    pub fn settle_from(&self, attach_ns: u64) -> u64 {
        attach_ns.max(self.last_input_ns).max(self.last_query_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn tail_runs_from_the_last_input_to_the_last_query_after_it() {
        let mut facts = DrainFacts::default();
        assert_eq!(facts.tail_ns(), None, "no input: no tail");
        facts.query(5 * MS);
        assert_eq!(facts.tail_ns(), None, "a query alone is no tail");
        facts.counters(7, 0, 10 * MS);
        assert_eq!(facts.tail_ns(), Some(0), "nothing written after the input");
        facts.query(12 * MS);
        facts.query(810 * MS);
        assert_eq!(facts.tail_ns(), Some(800 * MS));
        // A later input starts the tail again: only what follows the last one counts.
        facts.input(900 * MS);
        assert_eq!(facts.tail_ns(), Some(0));
        // Counters read late never move the input back.
        facts.counters(7, 0, 10 * MS);
        assert_eq!(facts.last_input_ns(), Some(900 * MS));
    }

    #[test]
    fn settle_counts_from_the_later_of_input_query_and_attach() {
        let mut facts = DrainFacts::default();
        assert_eq!(
            facts.settle_from(3 * MS),
            3 * MS,
            "nothing seen: from attach"
        );
        facts.input(10 * MS);
        assert_eq!(facts.settle_from(3 * MS), 10 * MS);
        // Write A just after the input, write B 700 ms later: each query starts it again.
        facts.query(12 * MS);
        assert_eq!(facts.settle_from(3 * MS), 12 * MS);
        facts.query(712 * MS);
        assert_eq!(facts.settle_from(3 * MS), 712 * MS);
    }

    #[test]
    fn a_moved_count_asks_for_one_look_and_names_stay_after_close() {
        let mut facts = DrainFacts::default();
        facts.counters(7, 0, 0);
        assert!(facts.take_look_due().is_empty());
        facts.counters(7, 1, 0);
        assert_eq!(facts.take_look_due(), vec![7]);
        assert!(facts.take_look_due().is_empty(), "one look per move");
        facts.push_style(PushConn {
            tgid: 7,
            fd: 5,
            peer: Some("127.0.0.1:4000".into()),
            at_ms: 3,
        });
        facts.push_style(PushConn {
            tgid: 7,
            fd: 5,
            peer: None,
            at_ms: 4,
        });
        assert_eq!(facts.live_pushes(None), 1);
        assert!(facts.is_push(7, 5));
        facts.closed(7, 5);
        assert_eq!(facts.live_pushes(Some(7)), 0);
        let pushing = facts.pushing_targets();
        assert_eq!(pushing.len(), 1);
        assert_eq!((pushing[0].0, pushing[0].1, pushing[0].2.len()), (7, 1, 1));
        // A second connection closed before anyone looked: counted, not named.
        facts.counters(7, 2, 0);
        assert_eq!(facts.pushing_targets()[0].1, 2);
        assert_eq!(facts.take_look_due(), vec![7]);
    }
}
