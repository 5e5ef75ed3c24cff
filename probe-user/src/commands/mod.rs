//! The subcommands, one module each: [`audit`], [`check`], [`watch`], [`drain`] (`wait` and
//! `stop`), [`serve`], [`doctor`]. Each runs a [`crate::session`] (`check` only reads the
//! host, `doctor` only asks the kernel), then judges with [`crate::verdict`] and shows with
//! [`crate::output`].
//!
//! The top layer: may use everything; nothing in the library uses it (main.rs calls it).

pub mod audit;
pub mod check;
pub mod doctor;
pub mod drain;
pub mod serve;
pub mod watch;
