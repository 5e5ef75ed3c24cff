//! Validated settings, built once from parsed flags. Everything a run needs is checked here,
//! before anything is attached: a bad value costs one clear line and exit 2, never a
//! half-done run.
//!
//! One job per file: [`values`] (single flags' values), [`common`] (what every subcommand
//! shares: flags, targets, `--settle`, `--db-url`), [`commands`] (each subcommand's settings),
//! [`unit`] (what a probe unit's own flags become).

mod commands;
mod common;
pub mod unit;
mod values;

pub use self::{commands::*, common::*, values::*};

#[cfg(test)]
mod tests;
