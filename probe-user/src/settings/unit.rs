//! A probe unit's flags (lib.rs, `probe_units!`): its own `#[derive(clap::Args)]` type,
//! flattened into every probing command's flags ([`crate::cli::UnitArgs`]), which turns into
//! its validated setting here, before anything is attached (a bad value: one line, exit 2).
//! A leaf: the units' flag types (in their kernel modules) import it, and the command line
//! and the settings import them.

/// The flags of one probe unit.
pub trait UnitFlags {
    /// What the unit reads from [`crate::settings::Common`]'s `units`.
    type Setting: Clone + std::fmt::Debug + Default;

    /// Checks the flags' values.
    fn setting(&self) -> crate::Result<Self::Setting>;
}
