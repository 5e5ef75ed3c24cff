//! drainwatch: see what is still in flight inside a server before you stop it.
//!
//! The library holds everything but the command-line edge: loading and attaching the eBPF
//! probe ([`probe`]), turning its wire events into domain events ([`event`]), the pure state
//! machine that turns events into violations and verdicts ([`state`]), the report types
//! ([`report`]) and the runners of each subcommand ([`audit`]).

pub mod audit;
pub mod btf;
pub mod check;
pub mod cli;
pub mod conns;
pub mod doctor;
pub mod drain;
pub mod error;
pub mod event;
pub mod existing;
pub mod features;
pub mod junit;
pub mod launch;
pub mod metrics;
pub mod netstat;
pub mod policy;
pub mod probe;
pub mod procfs;
pub mod protocol;
pub mod report;
pub mod serve;
pub mod session;
pub mod settings;
pub mod signals;
pub mod state;
pub mod summary;
pub mod tcpinfo;
pub mod tracefs;
pub mod watch;

pub use error::{Error, Result};
