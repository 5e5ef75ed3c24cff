//! drainwatch: see what is still in flight inside a server before you stop it.
//!
//! The library holds everything but the command-line edge, in layers that data flows
//! through; each may use only the layers before it:
//!
//! - [`kernel`]: loading and attaching the eBPF probe, the userspace ends of its maps,
//!   tracefs, BTF and feature probes; [`host`]: /proc, sock_diag, launching a held command.
//! - [`events`]: the probe's wire records decoded into domain events.
//! - [`model`]: the pure state machine (targets, connections, database protocols) and the
//!   report it fills.
//! - [`verdict`]: the rules that judge it (policy, drained, exit codes).
//! - [`output`]: the summary, JUnit, metrics, the doctor's lines, where reports are written.
//! - [`session`]: the probe attached to targets and the loop feeding events into the model.
//! - [`commands`]: one runner per subcommand, on top.
//!
//! [`cli`] and [`settings`] parse and validate the flags before anything is attached
//! ([`duration`]: durations read and shown as systemd does);
//! [`error`] holds the library's one-line errors; [`usage`] shows what clap could not parse;
//! [`manual`] holds the examples and the man pages.

/// The probe units (docs/extending.md, "A probe unit"): watchers beside the socket core that
/// hook the targets' own code. One line each: its module, which every layer that has a part
/// of it names alike and which this list declares there (`kernel::<module>`: its kernel
/// half; `session::<module>`: the `session::unit::Unit` it is); its `Unit` type; when flags
/// turn it on, its `#[derive(clap::Args)]` type in `kernel::<module>` (flattened into every
/// probing command's flags, its validated value `Common::units.<module>`: settings/unit.rs);
/// when it has a part of the state, its `model::tracker::Tracker` type in
/// `model::<module>`. Called with the name of a macro, which receives
/// `$($module: $unit $(($args))? $(+ $tracker)?;)*`.
macro_rules! probe_units {
    ($callback:ident) => {
        $callback! {
            tls: Tls;
            ops: Operations(OpArgs) + OpsTracker;
        }
    };
}

/// Declares each probe unit's module in the layer it is called in (kernel/, session/).
macro_rules! unit_modules {
    ($($module:ident: $unit:ident $(($args:ident))? $(+ $tracker:ident)?;)*) => {
        $(pub mod $module;)*
    };
}

/// Declares the module of each probe unit that has a part of the state (model/).
macro_rules! tracker_modules {
    ($($module:ident: $unit:ident $(($args:ident))? $(+ $tracker:ident)?;)*) => {
        $($(
            #[doc = concat!("A probe unit's part of the state: [`", stringify!($module), "::",
                stringify!($tracker), "`].")]
            pub mod $module;
        )?)*
    };
}

pub mod cli;
pub mod commands;
pub mod duration;
pub mod error;
pub mod events;
pub mod host;
pub mod kernel;
pub mod manual;
pub mod model;
pub mod output;
pub mod session;
pub mod settings;
pub mod usage;
pub mod verdict;

pub use error::{Error, Result};
