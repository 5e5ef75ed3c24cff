//! The protocols drainwatch knows, registered from probe-common's `protocols!` list, and the
//! lookups every other place makes in them (spec.rs says what a protocol is).

use super::spec::DbProtocol;
use crate::events::Protocol;

/// Defines [`REGISTRY`] from probe-common's one list of protocols.
macro_rules! registry {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        /// Every protocol drainwatch knows: each module's `PROTOCOL`, in the order of
        /// `probe_common::protocols!`. Order matters only for [`default_ports`], which
        /// lists the defaults in this order.
        pub(crate) static REGISTRY: &[&dyn DbProtocol] = &[$(&super::$module::PROTOCOL,)*];
    };
}
probe_common::protocols!(registry);

/// The protocol named `id` (`None` for [`Protocol::Unknown`]).
pub(crate) fn of(id: Protocol) -> Option<&'static dyn DbProtocol> {
    REGISTRY.iter().copied().find(|p| p.id() == id)
}

/// Every default database port, in registry order (docs/design.md: 5432, 3306, 6379, 27017).
pub(crate) fn default_ports() -> Vec<u16> {
    REGISTRY
        .iter()
        .flat_map(|p| p.default_ports().iter().copied())
        .collect()
}

/// The protocol a database port speaks by default, in the kernel's numbering
/// (`probe_common::PROTO_UNKNOWN` for a port of none: its first bytes will tell).
pub(crate) fn wire_of_port(port: u16) -> u8 {
    REGISTRY
        .iter()
        .find(|p| p.default_ports().contains(&port))
        .map_or(probe_common::PROTO_UNKNOWN, |p| p.wire())
}

/// The protocol a local server process speaks, by its name (what `ps` shows).
pub(crate) fn of_server(comm: &str) -> Option<&'static dyn DbProtocol> {
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.server_names().contains(&comm))
}

/// The protocol whose servers bind a unix socket at `path` by default.
pub(crate) fn of_socket_path(path: &str) -> Option<&'static dyn DbProtocol> {
    let file = path.rsplit('/').next()?;
    REGISTRY.iter().copied().find(|p| p.is_socket_file(file))
}

/// The protocol whose sessions a `--db-url` lists, by its scheme.
pub(crate) fn of_url(url: &str) -> Option<&'static dyn DbProtocol> {
    let scheme = url.split_once("://")?.0;
    REGISTRY
        .iter()
        .copied()
        .find(|p| p.url_schemes().contains(&scheme))
}

/// How people call the protocol ("database" for one not recognised).
pub(crate) fn title(id: Protocol) -> &'static str {
    of(id).map_or("database", |p| p.title())
}
