//! The model: the pure state machine that turns events into what is in flight and what went
//! wrong. [`state`] (targets, signals, exits, and the report out of them), [`conns`]
//! (connections and the requests, queries and transactions in flight on them),
//! [`drain_facts`] (last client input, last query, push-style connections: the drain's
//! basis and tail), a probe unit's part of the state ([`tracker`]; `ops`, operations,
//! `--op`, declared by lib.rs's `probe_units!`), [`protocol`] (database conversations read
//! from redacted head/tail bytes), [`report`] (the
//! `drainwatch.report/v1` types, docs/design.md).
//!
//! Pure: no I/O, no clocks (times come in the events or as arguments), unit-tested by
//! replaying recorded events (probe-user/testdata). May use: [`crate::events`] only.

pub mod conns;
pub mod drain_facts;
pub mod protocol;
pub mod report;
pub mod state;
pub mod tracker;

probe_units!(tracker_modules);
