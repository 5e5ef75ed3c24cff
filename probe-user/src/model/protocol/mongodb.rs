//! MongoDB: recognised, not read.
//!
//! A connection to a MongoDB server (port 27017, a `mongod`/`mongos` process, the socket
//! `mongodb-<port>.sock`) is a database connection: counted, holding the drain while its
//! sends wait for recvs. Its conversation is not read: the kernel keeps none of its bytes
//! (probe-common/src/protocols/mongodb.rs keeps nothing) and there is no reader here, so no query,
//! transaction or goodbye of it is ever seen. What that means for verdicts (spec.rs, "A
//! protocol without a reader"): its close is `unverified` (`protocol-not-read`), never a
//! `leaked_db_connection`, and a verdict that depends on it is `incomplete`.
//!
//! Reading it would take an OP_MSG reader (<https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/>):
//! messages carry a length, so they could be walked like PostgreSQL's; transactions are
//! per logical session (`lsid`, `txnNumber`, `startTransaction` in the BSON body), which
//! 32 bytes from each end of a syscall cannot show.

use super::spec::{Conversation, DbProtocol};
use crate::events::Protocol;

pub(crate) struct MongodbProtocol;
pub(crate) static PROTOCOL: MongodbProtocol = MongodbProtocol;

impl DbProtocol for MongodbProtocol {
    fn id(&self) -> Protocol {
        Protocol::Mongodb
    }
    fn title(&self) -> &'static str {
        "MongoDB"
    }
    fn default_ports(&self) -> &'static [u16] {
        &[27017]
    }
    fn server_names(&self) -> &'static [&'static str] {
        &["mongod", "mongos"]
    }
    /// `/tmp/mongodb-27017.sock` (net.unixDomainSocket, on by default).
    fn is_socket_file(&self, file: &str) -> bool {
        file.starts_with("mongodb-") && file.ends_with(".sock")
    }
    fn conversation(&self, _seen_from_start: bool) -> Option<Box<dyn Conversation>> {
        None
    }
}
