//! Private, throwaway database servers for the tests: PostgreSQL, MariaDB and Redis from
//! Debian's packages, each started by the test in its own temp dir on a free loopback port
//! and stopped (and deleted) when dropped.
//!
//! System services are never used: the packages' postinst may not have started them, CI
//! starts nothing, and a private instance lets tests run in parallel without sharing state.
//! A missing binary fails the test with the package to install (`cargo xtask setup` installs
//! them all); nothing is ever skipped.
//!
//! Readiness is "a real client library connected and ran a query", not "the log says ready".

mod common;
mod mariadb;
mod pg;
mod redis_server;
mod shared;

pub use common::{free_port, Database, DbKind, START_PATIENCE};
pub use mariadb::MariaDbServer;
pub use pg::PgServer;
pub use redis_server::RedisServer;
pub use shared::{shared_mariadb, shared_postgres, shared_redis, MyDatabase, PgDatabase};
