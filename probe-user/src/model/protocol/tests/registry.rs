//! The protocol registry: one table that every other place reads.

use super::super::spec::{self, REGISTRY};
use super::super::Unread;
use super::*;

#[test]
fn the_default_port_table_is_the_registry_s() {
    // docs/design.md, "connection": 5432 PostgreSQL, 3306 MySQL/MariaDB, 6379 Redis,
    // 27017 MongoDB.
    assert_eq!(spec::default_ports(), [5432, 3306, 6379, 27017]);
    assert_eq!(spec::wire_of_port(5432), probe_common::PROTO_POSTGRES);
    assert_eq!(spec::wire_of_port(3306), probe_common::PROTO_MYSQL);
    assert_eq!(spec::wire_of_port(6379), probe_common::PROTO_REDIS);
    assert_eq!(spec::wire_of_port(27017), probe_common::PROTO_MONGO);
    assert_eq!(spec::wire_of_port(8080), probe_common::PROTO_UNKNOWN);
}

#[test]
fn every_protocol_is_registered_once_and_named_apart() {
    for (i, a) in REGISTRY.iter().enumerate() {
        assert_ne!(a.id(), Protocol::Unknown);
        assert_eq!(spec::of(a.id()).map(|p| p.wire()), Some(a.wire()));
        assert_eq!(crate::events::protocol_from_wire(a.wire()), a.id());
        for b in &REGISTRY[i + 1..] {
            assert_ne!(a.id(), b.id());
            assert_ne!(a.wire(), b.wire());
            assert!(a
                .default_ports()
                .iter()
                .all(|p| !b.default_ports().contains(p)));
        }
    }
    assert!(spec::of(Protocol::Unknown).is_none());
    assert_eq!(spec::title(Protocol::Unknown), "database");
}

#[test]
fn servers_socket_paths_and_urls_name_their_protocol() {
    let id = |p: Option<&dyn spec::DbProtocol>| p.map(|p| p.id());
    assert_eq!(id(spec::of_server("mariadbd")), Some(Protocol::Mysql));
    assert_eq!(id(spec::of_server("valkey-server")), Some(Protocol::Redis));
    assert_eq!(id(spec::of_server("mongod")), Some(Protocol::Mongodb));
    assert_eq!(id(spec::of_server("nginx")), None);
    assert_eq!(
        id(spec::of_socket_path("/tmp/mongodb-27017.sock")),
        Some(Protocol::Mongodb)
    );
    assert_eq!(
        id(spec::of_socket_path("/run/mysqld/mysqld.sock")),
        Some(Protocol::Mysql)
    );
    assert_eq!(
        id(spec::of_url("mariadb://watch@127.0.0.1/")),
        Some(Protocol::Mysql)
    );
    assert_eq!(
        id(spec::of_url("postgresql://watch@127.0.0.1/")),
        Some(Protocol::Postgres)
    );
    assert_eq!(id(spec::of_url("mongodb://127.0.0.1/")), None);
    assert_eq!(id(spec::of_url("POSTGRES://x")), None);
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
