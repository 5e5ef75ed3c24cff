//! The report of a run out of the state (docs/design.md's report schema,
//! `drainwatch.report/v1`): the verdict, the targets, and each part's section.

use super::{AuditState, Origin};
use crate::model::report::{Coverage, EventCounts, Mode, Report, TargetReport, Verdict, SCHEMA};

impl AuditState {
    /// The report of this run. `lost` counts events the kernel could not deliver (and
    /// records userspace could not decode); `probe_failures` names probes that did not attach.
    pub fn report(&self, mode: Mode, lost: u64, probe_failures: Vec<String>) -> Report {
        let unverified = self.conns.as_ref().map(|c| c.unverified()).unwrap_or(&[]);
        // A connection still unknown when its process exited could have been a request the
        // exit cut: the report cannot be `clean` about it (nor call it a violation).
        let exited_unknown = self.conns.as_ref().map_or(0, |c| c.exited_unknown());
        // An unread conversation that ended could have hidden a rollback, an open
        // transaction or a leak: never `clean` about it (docs/design.md, "encrypted conversation").
        let unseen = lost > 0 || !probe_failures.is_empty() || !unverified.is_empty();
        let verdict = if unseen || (self.violations.is_empty() && exited_unknown > 0) {
            Verdict::Incomplete
        } else if !self.violations.is_empty() {
            Verdict::Violations
        } else {
            Verdict::Clean
        };
        let targets = self
            .targets
            .values()
            .map(|t| TargetReport {
                pid: t.tgid,
                comm: t.comm.clone(),
                parent_pid: match t.origin {
                    Origin::Forked { parent } | Origin::Tree { parent } => Some(parent),
                    Origin::Named | Origin::Launched | Origin::Matched => None,
                    Origin::Signalled { .. } => None,
                },
                signalled_by: t.signalled_by.clone(),
                exit: t.exit.clone(),
            })
            .collect();
        let mut report = Report {
            schema: SCHEMA,
            mode,
            verdict,
            targets,
            violations: self.violations.clone(),
            warnings: Vec::new(),
            drain: None,
            operations: None,
            connections: self.conns.as_ref().map(|c| c.counts().clone()),
            requests: self.conns.as_ref().map(|c| c.requests()),
            db_queries: self.conns.as_ref().map(|c| c.queries()),
            upstream_calls: self.conns.as_ref().map(|c| c.calls_report()),
            events: EventCounts {
                received: self.received,
                lost,
            },
            coverage: self.conns.as_ref().map(|c| Coverage {
                unverified: c.unverified().to_vec(),
                unknown_at_attach: c.unknown_at_attach(),
                ..Coverage::default()
            }),
            probe_failures,
        };
        for tracker in &self.trackers {
            tracker.report(&mut report);
        }
        report
    }
}
