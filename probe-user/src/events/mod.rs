//! Domain events: what the state machine consumes. [`decode`] turns one ring-buffer record
//! (a `probe_common` wire struct) into an [`Event`]; the runner then fills in what only
//! userspace can know (a sender's command line, whether a fork child is a thread).
//!
//! Events serialize to JSON (one per line at `-vv`), so that real sequences can be recorded
//! and replayed in unit tests of the state machine.
//!
//! The events layer also names what events carry: [`Protocol`], [`Direction`], and the
//! signal vocabulary ([`signals`]). A probe unit's own events (lib.rs, `probe_units!`) are
//! none of its business: they travel as [`UnitEvent`]s, which the unit makes and its tracker
//! reads back ([`UnitEventKind`]). May use: probe-common's wire types only; the model and
//! everything above read it.

pub mod signals;
mod unit;

pub use unit::{UnitEvent, UnitEventKind};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use probe_common::{
    ConnCloseEvent, ConnOpenEvent, DbIoEvent, EventHeader, EventKind, ExecEvent, ExitEvent,
    ForkEvent, SignalEvent, SockAddr,
};
use serde::{Deserialize, Serialize};

/// Defines [`Protocol`] from probe-common's one list of protocols.
macro_rules! protocol_enum {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        /// The database protocol a connection speaks (as the probe or the handshake told it):
        /// the names of docs/design.md's report. Its variants come from
        /// `probe_common::protocols!`; what each is to drainwatch is written once, in its
        /// module of model/protocol/ (spec.rs says how).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Protocol {
            $($(#[$doc])* $variant,)*
            Unknown,
        }

        impl Protocol {
            /// The protocol of the kernel's number (`probe_common::PROTO_*`).
            pub fn from_wire(raw: u8) -> Self {
                match raw {
                    $(probe_common::$konst => Self::$variant,)*
                    _ => Self::Unknown,
                }
            }

            /// The kernel's number for it.
            pub fn wire(self) -> u8 {
                match self {
                    $(Self::$variant => probe_common::$konst,)*
                    Self::Unknown => probe_common::PROTO_UNKNOWN,
                }
            }
        }
    };
}
probe_common::protocols!(protocol_enum);

/// Which way the bytes moved, seen from the traced server (which is a database client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The traced server sent to the database.
    Send,
    /// The traced server received from the database.
    Recv,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Signal(Signal),
    Fork(Fork),
    Exec(Exec),
    Exit(Exit),
    ConnOpen(ConnOpen),
    ConnClose(ConnClose),
    DbIo(DbIo),
    /// Not a ring-buffer record: the request counters, read from the kernel's maps on
    /// each drain tick.
    Requests(RequestSample),
    /// Not a ring-buffer record: a client connection whose state at attach was unknown is
    /// known now (`attach_rule`).
    Resolved(Resolved),
    /// Not a ring-buffer record: the kernel marked a client connection push-style
    /// (`probe_common::CONN_PUSH`), read from its map when the target's count moved.
    PushStyle(PushStyle),
    /// A probe unit's own event (a ring-buffer record its unit decoded, or what it read
    /// from its maps): in JSON, the unit's event as it is, tagged by its name like the
    /// others (`{"event":"op_cut",..}`); any name not above is one.
    #[serde(untagged)]
    Unit(UnitEvent),
}

/// A client connection on which the target sent unprompted (docs/design.md, "request in
/// flight": push-style), as of `ktime_ns` (when userspace read the kernel's mark).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStyle {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub fd: u32,
}

/// How a client connection that was `unknown` at attach became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedBy {
    /// It had traffic since attach: the kernel follows its requests from there.
    Traffic,
    /// The same rules as at attach, applied again to what the kernel and /proc say now,
    /// call it idle (no traffic on it seen by the probe): its process now waits for input
    /// with nothing in flight, or it was answered between the look at attach and the probe
    /// watching it.
    Evidence,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub fd: u32,
    pub by: ResolvedBy,
}

impl Event {
    /// The `event` names of the core arms above, in JSON (a new arm adds its own): a probe
    /// unit's event may take none of them (session/units.rs checks it), or a replay would
    /// read it back as the core's.
    #[cfg(test)]
    pub const CORE_NAMES: &'static [&'static str] = &[
        "signal",
        "fork",
        "exec",
        "exit",
        "conn_open",
        "conn_close",
        "db_io",
        "requests",
        "resolved",
        "push_style",
    ];

    pub fn ktime_ns(&self) -> u64 {
        match self {
            Event::Signal(e) => e.ktime_ns,
            Event::Fork(e) => e.ktime_ns,
            Event::Exec(e) => e.ktime_ns,
            Event::Exit(e) => e.ktime_ns,
            Event::ConnOpen(e) => e.ktime_ns,
            Event::ConnClose(e) => e.ktime_ns,
            Event::Requests(e) => e.ktime_ns,
            Event::DbIo(e) => e.ktime_ns,
            Event::Resolved(e) => e.ktime_ns,
            Event::PushStyle(e) => e.ktime_ns,
            Event::Unit(e) => e.ktime_ns(),
        }
    }
}

/// What a connection is to the target (docs/design.md, "connection").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Db,
    Upstream,
    Listener,
}

impl Role {
    pub fn from_wire(raw: u8) -> Option<Self> {
        Some(match raw {
            probe_common::ROLE_CLIENT => Role::Client,
            probe_common::ROLE_DB => Role::Db,
            probe_common::ROLE_UPSTREAM => Role::Upstream,
            probe_common::ROLE_LISTENER => Role::Listener,
            _ => return None,
        })
    }

    /// The kernel's number for the role (`probe_common::ROLE_*`).
    pub fn to_wire(self) -> u8 {
        match self {
            Role::Client => probe_common::ROLE_CLIENT,
            Role::Db => probe_common::ROLE_DB,
            Role::Upstream => probe_common::ROLE_UPSTREAM,
            Role::Listener => probe_common::ROLE_LISTENER,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Db => "db",
            Role::Upstream => "upstream",
            Role::Listener => "listener",
        }
    }
}

/// A connection opened after attach (accept or connect).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnOpen {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub fd: u32,
    pub role: Role,
    pub protocol: Protocol,
    pub peer: Option<SocketAddr>,
    /// From /proc when the event was read (the kernel side does not see it).
    pub local: Option<SocketAddr>,
    /// A unix-domain connection the socket backend opened: the low 32 bits of the target's
    /// socket inode. Its close has no kernel hook there: userspace watches its fd by it
    /// (session/unix_close.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_inode: Option<u32>,
    /// A socket from before attach that the socket backend reached before userspace had
    /// added it (its process was being attached), classified from the /proc survey
    /// (`CONN_EXISTED`): its conversation is seen mid-way, and it is no new connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub existed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnClose {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub fd: u32,
    /// A client connection closed by the target with a request in flight: when that request
    /// started (ktime ns; 0 when it was already in flight at attach). `None`: nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_since_ns: Option<u64>,
    /// Seen by userspace, not by a kernel hook (a unix-domain close on the socket backend,
    /// `session/unix_close.rs`): the kernel's request counters never ended that request, so
    /// the state ends it itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request_uncounted: bool,
    /// A client connection the target had sent unprompted on (push-style): bytes received
    /// since its last send are no request it owed an answer to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
}

/// Client requests as counted in the kernel (`probe_common::RequestCounters`), read with
/// the time of the read. Requests are counted there instead of being sent one event each:
/// at saturated request rates the events outran the reader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSample {
    /// When the maps were read (ktime ns).
    pub ktime_ns: u64,
    /// One entry per running target.
    pub targets: Vec<TargetRequests>,
    /// Latencies of requests answered since the previous sample: (µs, how many). Empty
    /// when the histogram was not read this time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_us: Vec<(u64, u64)>,
    /// The same latencies by the process that answered them: (tgid, [(µs, how many)]),
    /// so that two servers are never one series. tgid 0: processes that found the kernel's
    /// histogram map full (`probe_common::latency::LATENCY_OVERFLOW_TGID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_by_tgid: Vec<(u32, Vec<(u64, u64)>)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRequests {
    pub tgid: u32,
    /// Requests that started while watched.
    pub started: u64,
    /// Of those, how many ended (answered or closed).
    pub ended: u64,
    /// Requests in flight at attach that have ended since.
    pub existing_ended: u64,
    /// ktime (ns) of the latest start or end; 0 if none yet.
    pub last_edge_ns: u64,
    /// Client connections that became push-style (`probe_common::CONN_PUSH`), once each.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pushed: u64,
    /// ktime (ns) of the last bytes received on a client connection; 0 if none yet.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_input_ns: u64,
    /// Upstream calls of the target (`probe_common::CallCounters`).
    #[serde(default, skip_serializing_if = "TargetCalls::is_zero")]
    pub calls: TargetCalls,
}

/// Upstream calls as counted in the kernel (`probe_common::CallCounters`, docs/design.md
/// "upstream call in flight"): a call is in flight from a send on an upstream connection
/// to the first bytes received after it, or the close.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetCalls {
    /// Calls that started while watched, and of those how many ended.
    pub started: u64,
    pub ended: u64,
    /// Calls in flight at attach that have ended since.
    pub existing_ended: u64,
    /// ktime (ns) of the latest start or end; 0 if none yet.
    pub last_edge_ns: u64,
    /// Of `started`/`ended`: first calls, made on a connection that had not answered yet.
    pub first_started: u64,
    pub first_ended: u64,
    /// ktime (ns) of the latest first call's start.
    pub first_last_start_ns: u64,
    /// Upstream connections that became one-way (`probe_common::CONN_ONE_WAY`), once each.
    pub one_way: u64,
    /// Of `existing_ended`, first calls (on connections that had not answered).
    pub first_existing_ended: u64,
}

impl TargetCalls {
    /// The kernel's counters; calls taken back (a database's first bytes, not a call) are
    /// not counted as started.
    pub fn from_wire(c: &probe_common::CallCounters) -> Self {
        Self {
            started: c.started.wrapping_sub(c.taken_back),
            ended: c.ended,
            existing_ended: c.existing_ended,
            last_edge_ns: c.last_edge_ns,
            first_started: c.first_started.wrapping_sub(c.first_taken_back),
            first_ended: c.first_ended,
            first_last_start_ns: c.first_last_start_ns,
            one_way: c.one_way,
            first_existing_ended: c.first_existing_ended,
        }
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A send or recv on a database connection: its length and the kept (redacted) bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbIo {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub fd: u32,
    pub dir: Direction,
    pub protocol: Protocol,
    pub len: u32,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    /// Plaintext read inside a TLS library call (the kernel's SSL uprobes), not a syscall.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// `probe_common::SockAddr` as a std address; `None` when the kernel did not see one.
pub fn socket_addr(wire: &SockAddr) -> Option<SocketAddr> {
    let ip = match wire.family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(
            wire.addr[0],
            wire.addr[1],
            wire.addr[2],
            wire.addr[3],
        )),
        libc::AF_INET6 => {
            let v6 = Ipv6Addr::from(wire.addr);
            // Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, wire.port))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub ktime_ns: u64,
    /// The receiving task (a thread id; equal to the tgid for kill(2) on a process).
    pub target_pid: u32,
    pub sender_tgid: u32,
    pub sender_pid: u32,
    pub sender_comm: String,
    /// From /proc when the event was read; `None` if the sender was already gone.
    pub sender_cmdline: Option<String>,
    pub sig: i32,
    pub code: i32,
    pub result: i32,
    /// Sent to a whole process (kill(2), pidfd_send_signal(2): the tracepoint's `group`),
    /// not to one task (tgkill(2), which the Go runtime sends its own threads to preempt
    /// them): only such a signal names a process (kernel/signal.c, `__send_signal_locked`
    /// traces `type != PIDTYPE_PID`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group: bool,
    /// This signal made its receiver a target: the sender is in the launched command's tree
    /// and the receiver was none (docs/design.md, "Command line").
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub followed: bool,
    /// The receiver's comm, from the tracepoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub ktime_ns: u64,
    pub parent_tgid: u32,
    pub child_pid: u32,
    pub comm: String,
    /// The child's tgid from /proc: equal to `child_pid` for a new process, the parent's
    /// tgid for a new thread, `None` when the child was already gone.
    pub child_tgid: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub ktime_ns: u64,
    pub tgid: u32,
    pub comm: String,
    /// wait(2) status (`task_struct.exit_code`); `None` if the probe could not read it.
    pub wait_status: Option<u32>,
    /// Client connections with a request in flight when the process exited (from the
    /// kernel's connection map, read when the event was read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy_fds: Vec<u32>,
}

/// A record the decoder did not understand: counted with the lost events, since whatever
/// it said was not seen.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("field {0} has an unknown value {1}")]
    BadField(&'static str, u8),
    #[error("event kind {kind} says {said} bytes, expected {expected}, record has {len}")]
    BadSize {
        kind: u32,
        said: u32,
        expected: usize,
        len: usize,
    },
}

fn comm_to_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Reads a `T` from the front of `bytes` after checking the header's size claim.
fn read_wire<T: Copy>(bytes: &[u8], kind: EventKind, said: u32) -> Result<T, DecodeError> {
    // SAFETY: every `T` read here is one of probe-common's event structs.
    unsafe { read_record_of(bytes, kind as u32, said) }
}

/// A probe unit's record (its own kind, see `probe_common::EventKind`): its wire struct,
/// after the header's size claim is checked.
///
/// # Safety
/// `T` is a `#[repr(C)]` plain-old-data wire struct (probe-common's) for which every bit
/// pattern is valid.
pub unsafe fn read_record<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; EventHeader is plain old data.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<EventHeader>()) };
    // SAFETY: the caller's.
    unsafe { read_record_of(bytes, header.kind, header.size) }
}

/// # Safety
/// As [`read_record`].
unsafe fn read_record_of<T: Copy>(bytes: &[u8], kind: u32, said: u32) -> Result<T, DecodeError> {
    let expected = size_of::<T>();
    if said as usize != expected || bytes.len() < expected {
        return Err(DecodeError::BadSize {
            kind,
            said,
            expected,
            len: bytes.len(),
        });
    }
    // SAFETY: length checked above; T is a #[repr(C)] plain-old-data wire struct for which
    // every bit pattern is valid (the caller's promise); read_unaligned copes with any
    // alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let header: EventHeader =
        // SAFETY: length checked; EventHeader is plain old data.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<EventHeader>()) };
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    Ok(match kind {
        EventKind::Signal => {
            let e: SignalEvent = read_wire(bytes, kind, header.size)?;
            Event::Signal(Signal {
                ktime_ns: e.header.ktime_ns,
                target_pid: e.target_pid,
                sender_tgid: e.sender_tgid,
                sender_pid: e.sender_pid,
                sender_comm: comm_to_string(&e.sender_comm),
                sender_cmdline: None,
                sig: e.sig,
                code: e.code,
                result: e.result,
                group: e.group != 0,
                followed: e.followed != 0,
                target_comm: comm_to_string(&e.target_comm),
            })
        }
        EventKind::Fork => {
            let e: ForkEvent = read_wire(bytes, kind, header.size)?;
            Event::Fork(Fork {
                ktime_ns: e.header.ktime_ns,
                parent_tgid: e.parent_tgid,
                child_pid: e.child_pid,
                comm: comm_to_string(&e.comm),
                child_tgid: None,
            })
        }
        EventKind::Exec => {
            let e: ExecEvent = read_wire(bytes, kind, header.size)?;
            Event::Exec(Exec {
                ktime_ns: e.header.ktime_ns,
                tgid: e.tgid,
                comm: comm_to_string(&e.comm),
            })
        }
        EventKind::Exit => {
            let e: ExitEvent = read_wire(bytes, kind, header.size)?;
            Event::Exit(Exit {
                ktime_ns: e.header.ktime_ns,
                tgid: e.tgid,
                comm: comm_to_string(&e.comm),
                wait_status: (e.exit_code_known != 0).then_some(e.exit_code),
                busy_fds: Vec::new(),
            })
        }
        EventKind::ConnOpen => {
            let e: ConnOpenEvent = read_wire(bytes, kind, header.size)?;
            Event::ConnOpen(ConnOpen {
                ktime_ns: e.header.ktime_ns,
                tgid: e.tgid,
                fd: e.fd,
                role: Role::from_wire(e.role).ok_or(DecodeError::BadField("role", e.role))?,
                protocol: Protocol::from_wire(e.proto),
                peer: socket_addr(&e.peer),
                local: None,
                unix_inode: (e.peer.family as i32 == libc::AF_UNIX && e.unix_inode != 0)
                    .then_some(e.unix_inode),
                existed: e.flags & probe_common::CONN_EXISTED != 0,
            })
        }
        EventKind::ConnClose => {
            let e: ConnCloseEvent = read_wire(bytes, kind, header.size)?;
            Event::ConnClose(ConnClose {
                ktime_ns: e.header.ktime_ns,
                tgid: e.tgid,
                fd: e.fd,
                request_since_ns: (e.request_in_flight != 0).then_some(e.request_since_ns),
                request_uncounted: false,
                push: e.push != 0,
            })
        }
        EventKind::DbIo => {
            let e: DbIoEvent = read_wire(bytes, kind, header.size)?;
            let head_len = (e.head_len as usize).min(e.head.len());
            let tail_off = (e.tail_off as usize).min(e.tail.len());
            let tail_end = (tail_off + e.tail_len as usize).min(e.tail.len());
            Event::DbIo(DbIo {
                ktime_ns: e.header.ktime_ns,
                tgid: e.tgid,
                fd: e.fd,
                dir: if e.dir == probe_common::DIR_SEND {
                    Direction::Send
                } else {
                    Direction::Recv
                },
                protocol: Protocol::from_wire(e.proto),
                len: e.len,
                head: e.head[..head_len].to_vec(),
                tail: e.tail[tail_off..tail_end].to_vec(),
                tls: e.tls != 0,
            })
        }
    })
}

#[cfg(test)]
mod tests;
