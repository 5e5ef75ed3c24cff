//! drainwatch: see what is still in flight inside a server before you stop it.
//!
//! The library holds everything but the command-line edge: loading and attaching the eBPF
//! probe ([`probe`]), turning its wire events into domain events ([`event`]), the pure state
//! machine that turns events into violations and verdicts ([`state`]), the report types
//! ([`report`]) and the runners of each subcommand ([`audit`]).

pub mod cli;
pub mod commands;
pub mod error;
pub mod events;
pub mod host;
pub mod kernel;
pub mod model;
pub mod output;
pub mod session;
pub mod settings;
pub mod verdict;

pub use error::{Error, Result};
