//! `--op`, the operation probes' flag (a probe unit's own flags: settings/unit.rs), and the
//! SPEC list it validates into.

use clap::Args;

use super::symbols::OpSpec;
use crate::{settings::unit::UnitFlags, Error};

/// The operation probes' flag.
#[derive(Debug, Args, Clone, Default)]
pub struct OpArgs {
    /// An operation: a function of the target whose calls are business work in flight, from
    /// entry to return per thread (repeatable), e.g. `--op purchase`, `--op Game::purchase`,
    /// `--op libgame.so:purchase`. Calls in flight hold wait and stop; an exit inside one is
    /// `operation_cut`. C, C++ and Rust programs (ELF symbols, demangled names accepted).
    #[arg(long = "op", value_name = "SPEC")]
    pub op: Vec<String>,
}

impl UnitFlags for OpArgs {
    /// The functions whose calls are operations; empty: the unit is off.
    type Setting = Vec<OpSpec>;

    fn setting(&self) -> crate::Result<Vec<OpSpec>> {
        OpSpec::parse_all(&self.op).map_err(Error::Unit)
    }
}
