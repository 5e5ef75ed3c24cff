//! Verdicts: the rules that judge what the model saw. [`policy`] (which violations fail and
//! which only warn, `--policy`), [`drain`] (when a target is drained, and a drain's verdict),
//! [`outcome`] (how a run ended and the exit code it earns), [`shutdown`] (which stop
//! signals of well-known servers are fast shutdowns, for `check --signal`).
//!
//! Pure. May use: [`crate::model`] and [`crate::events`].

pub mod drain;
pub mod outcome;
pub mod policy;
pub mod shutdown;
