//! Output: what a run shows and writes. [`summary`] (the human summary of a report),
//! [`junit`] (`--junit`), [`metrics`] (the Prometheus text that `serve` answers with),
//! [`publish`] (stdout, and the report files opened before the run), [`doctor`] (what the
//! kernel offers, one line per feature, with a fix).
//!
//! May use: [`crate::model`], [`crate::verdict`], [`crate::events`], the clock in
//! [`crate::host`] and the feature findings of [`crate::kernel`]; never the session or the
//! commands (they hand it what to draw).

pub mod doctor;
pub mod junit;
pub mod metrics;
pub mod publish;
pub mod summary;
