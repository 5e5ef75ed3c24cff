//! The protocol registry: one table that every other place reads.

use super::super::registry::{self, REGISTRY};
use super::super::spec;
use super::super::Unread;
use super::*;

#[test]
fn the_default_port_table_is_the_registry_s() {
    // docs/design.md, "connection": 5432 PostgreSQL, 3306 MySQL/MariaDB, 6379 Redis,
    // 27017 MongoDB.
    assert_eq!(registry::default_ports(), [5432, 3306, 6379, 27017]);
    assert_eq!(registry::wire_of_port(5432), probe_common::PROTO_POSTGRES);
    assert_eq!(registry::wire_of_port(3306), probe_common::PROTO_MYSQL);
    assert_eq!(registry::wire_of_port(6379), probe_common::PROTO_REDIS);
    assert_eq!(registry::wire_of_port(27017), probe_common::PROTO_MONGO);
    assert_eq!(registry::wire_of_port(8080), probe_common::PROTO_UNKNOWN);
}

#[test]
fn every_protocol_is_registered_once_and_named_apart() {
    for (i, a) in REGISTRY.iter().enumerate() {
        assert_ne!(a.id(), Protocol::Unknown);
        assert_eq!(registry::of(a.id()).map(|p| p.wire()), Some(a.wire()));
        assert_eq!(crate::events::Protocol::from_wire(a.wire()), a.id());
        for b in &REGISTRY[i + 1..] {
            assert_ne!(a.id(), b.id());
            assert_ne!(a.wire(), b.wire());
            assert!(a
                .default_ports()
                .iter()
                .all(|p| !b.default_ports().contains(p)));
        }
    }
    assert!(registry::of(Protocol::Unknown).is_none());
    assert_eq!(registry::title(Protocol::Unknown), "database");
}

/// The variants of probe-common's `protocols!` list, in its order.
macro_rules! listed {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        [$(Protocol::$variant),*]
    };
}

#[test]
fn each_listed_module_is_the_protocol_its_line_names() {
    // The registry takes each line's module: one that says it is another protocol (a copied
    // file whose `id` was not changed) would be looked up under the wrong name.
    let ids: Vec<Protocol> = REGISTRY.iter().map(|p| p.id()).collect();
    assert_eq!(ids, probe_common::protocols!(listed));
}

#[test]
fn servers_socket_paths_and_urls_name_their_protocol() {
    let id = |p: Option<&dyn spec::DbProtocol>| p.map(|p| p.id());
    assert_eq!(id(registry::of_server("mariadbd")), Some(Protocol::Mysql));
    assert_eq!(
        id(registry::of_server("valkey-server")),
        Some(Protocol::Redis)
    );
    assert_eq!(id(registry::of_server("mongod")), Some(Protocol::Mongodb));
    assert_eq!(id(registry::of_server("nginx")), None);
    assert_eq!(
        id(registry::of_socket_path("/tmp/mongodb-27017.sock")),
        Some(Protocol::Mongodb)
    );
    assert_eq!(
        id(registry::of_socket_path("/run/mysqld/mysqld.sock")),
        Some(Protocol::Mysql)
    );
    assert_eq!(
        id(registry::of_url("mariadb://watch@127.0.0.1/")),
        Some(Protocol::Mysql)
    );
    assert_eq!(
        id(registry::of_url("postgresql://watch@127.0.0.1/")),
        Some(Protocol::Postgres)
    );
    assert_eq!(id(registry::of_url("mongodb://127.0.0.1/")), None);
    assert_eq!(id(registry::of_url("POSTGRES://x")), None);
}

/// MongoDB has no reader: its conversation is unread from the start, its transaction state
/// unknown for good, its rhythm the only sign of a query.
#[test]
fn a_protocol_without_a_reader_is_unread_not_guessed() {
    let mut conn = DbConn::new(Protocol::Mongodb, true);
    assert_eq!(conn.unread(), Some(Unread::NotParsed));
    assert_eq!(conn.unread().map(Unread::why), Some("protocol-not-read"));
    assert!(!conn.encrypted());
    io(&mut conn, Send, b"\x3a\0\0\0anything at all");
    assert!(conn.query_in_flight());
    io(&mut conn, Recv, b"\x20\0\0\0a reply");
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Unknown);
    assert!(!conn.goodbye_sent() && !conn.close_is_clean());
    // A connection of no known protocol is read by its rhythm too, but is not "unread":
    // its first bytes may still name it.
    assert_eq!(DbConn::new(Protocol::Unknown, true).unread(), None);
}
