//! Wire types shared by drainwatch's eBPF probe (`probe-ebpf`) and its userspace
//! (`probe-user`).
//!
//! Every type here is `#[repr(C)]` with fixed-width fields and explicit padding, so the
//! kernel and userspace agree on the layout byte for byte. The `size_of` assertions at the
//! bottom are checked when either side compiles.
//!
//! Naming follows the kernel: a **tgid** is what userspace calls a process id (`getpid()`),
//! a **pid** is what userspace calls a thread id (`gettid()`).
#![no_std]

pub mod latency;
pub mod ops;
pub mod protocols;
pub mod redact;

/// Length of a task's `comm`, including the trailing NUL (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Default size of the event ring buffer, in bytes (a power of two, as the kernel requires).
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// Most tgids/pids tracked as targets at once (tgids plus the threads of followed children).
pub const MAX_TARGETS: u32 = 16384;

/// Names of the maps, as they appear in the object file.
pub mod map_names {
    pub const EVENTS: &str = "EVENTS";
    pub const TARGETS: &str = "TARGETS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CONNS: &str = "CONNS";
    pub const PENDING: &str = "PENDING";
    pub const DB_PORTS: &str = "DB_PORTS";
    pub const DB_ADDRS: &str = "DB_ADDRS";
    pub const COMMS: &str = "COMMS";
    pub const REQUEST_LATENCY: &str = "REQUEST_LATENCY";
    pub const REQUEST_COUNTS: &str = "REQUEST_COUNTS";
    pub const USER_TARGET_BITS: &str = "USER_TARGET_BITS";
    pub const LISTEN_PORTS: &str = "LISTEN_PORTS";
    pub const SURVEYED: &str = "SURVEYED";
    pub const TLS_ON: &str = "TLS_ON";
}

/// Most process names `--comm` can watch for.
pub const MAX_COMMS: u32 = 64;

/// Words of the target bitmaps: one bit per pid up to the kernel's PID_MAX_LIMIT (4M on
/// 64-bit, include/linux/threads.h). A clear bit means "not a target" without a hash
/// lookup, which is what every other process on the machine pays on each hooked syscall.
pub const TARGET_BITMAP_WORDS: u32 = 1 << 16;

/// (word, mask) of a pid in the target bitmaps; `None` beyond them (then only the hash
/// lookup decides).
#[inline(always)]
pub const fn target_bit(pid: u32) -> Option<(u32, u64)> {
    let word = pid >> 6;
    if word >= TARGET_BITMAP_WORDS {
        return None;
    }
    Some((word, 1u64 << (pid & 63)))
}

/// Event kinds, the first field of every event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Signal = 1,
    Fork = 2,
    Exec = 3,
    Exit = 4,
    ConnOpen = 5,
    ConnClose = 6,
    // 7 was a per-request event; requests are now counted in the kernel (TargetInfo).
    DbIo = 8,
    // 9 and up: the probe units' own kinds, each in its module (`ops::OP_CUT_KIND`), which
    // the unit decodes (probe-user/src/session/unit.rs).
}

impl EventKind {
    pub fn from_u32(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Signal,
            2 => Self::Fork,
            3 => Self::Exec,
            4 => Self::Exit,
            5 => Self::ConnOpen,
            6 => Self::ConnClose,
            8 => Self::DbIo,
            _ => return None,
        })
    }
}

/// Common header of every event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// `size_of` the whole event, header included.
    pub size: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ktime_ns: u64,
}

impl EventHeader {
    pub const fn new(kind: EventKind, size: usize, ktime_ns: u64) -> Self {
        Self::of_kind(kind as u32, size, ktime_ns)
    }

    /// A header of a raw kind: a probe unit's own (see [`EventKind`]).
    pub const fn of_kind(kind: u32, size: usize, ktime_ns: u64) -> Self {
        Self {
            kind,
            size: size as u32,
            ktime_ns,
        }
    }
}

/// `signal:signal_generate` for a target: a signal was generated for it.
/// See include/trace/events/signal.h in the kernel source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalEvent {
    pub header: EventHeader,
    /// The receiving task's pid (thread id) as the tracepoint reports it.
    pub target_pid: u32,
    /// The sending (current) task.
    pub sender_tgid: u32,
    pub sender_pid: u32,
    pub sig: i32,
    /// `siginfo.si_code`: `SI_USER` (0) for kill(2), `SI_KERNEL` (0x80) for the OOM killer
    /// and other kernel-generated signals, negative for sigqueue/tkill.
    pub code: i32,
    /// `TRACE_SIGNAL_*`: 0 delivered, 1 ignored, 2 already pending, 3 overflow, 4 lose info.
    pub result: i32,
    /// Non-zero when sent to the whole thread group.
    pub group: u32,
    /// 1 when this signal made its receiver a target: it was no target, and the sender is
    /// in the tree of the command `audit -- CMD` launched ([`ORIGIN_LAUNCHED_TREE`]).
    pub followed: u32,
    pub sender_comm: [u8; COMM_LEN],
    /// The receiving task's comm, as the tracepoint records it (a receiver killed at once
    /// is gone from /proc before userspace reads this).
    pub target_comm: [u8; COMM_LEN],
}

/// `sched:sched_process_fork` where the parent is a target: the child becomes a target too.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub parent_tgid: u32,
    pub parent_pid: u32,
    pub child_pid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sched:sched_process_exec` of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sched:sched_process_exit` of the last thread of a target tgid (`group_dead`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub pid: u32,
    /// `task_struct.exit_code` in wait(2) status form; valid when `exit_code_known != 0`.
    pub exit_code: u32,
    pub exit_code_known: u32,
    pub comm: [u8; COMM_LEN],
}

/// Connection roles (docs/design.md, "connection").
pub const ROLE_NONE: u8 = 0;
pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_DB: u8 = 2;
pub const ROLE_UPSTREAM: u8 = 3;
pub const ROLE_LISTENER: u8 = 4;

/// Every database protocol drainwatch knows, one line each: its number in the kernel's
/// events and maps (a `PROTO_*` constant, defined below from this list), its name in
/// userspace's events and reports (a variant of `drainwatch::events::Protocol`, defined there
/// from this list), its module under probe-user/src/model/protocol/ (declared there and
/// registered in `spec::REGISTRY` from this list) and its kernel rules, `protocols/<module>.rs`
/// here (declared from this list; its redaction, which redact.rs applies, and its first
/// bytes, which probe-ebpf/src/sockets/recognize.rs asks). Adding a protocol is those two
/// files and one line here.
///
/// Called with the name of a macro, which receives the list as
/// `$(#[doc] CONST = number => Variant, module;)*`. Numbers are the kernel's ABI with
/// userspace (both are built from the same tree), 0 is [`PROTO_UNKNOWN`].
#[macro_export]
macro_rules! protocols {
    ($callback:ident) => {
        $callback! {
            /// PostgreSQL.
            PROTO_POSTGRES = 1 => Postgres, postgres;
            /// MySQL and MariaDB.
            PROTO_MYSQL = 2 => Mysql, mysql;
            /// Redis (RESP).
            PROTO_REDIS = 3 => Redis, redis;
            /// MongoDB: recognised, not read.
            PROTO_MONGO = 4 => Mongodb, mongodb;
        }
    };
}

/// The protocol of a connection not (yet) recognised.
pub const PROTO_UNKNOWN: u8 = 0;

/// The `PROTO_*` constants, from [`protocols!`].
macro_rules! proto_consts {
    ($($(#[$doc:meta])* $konst:ident = $num:literal => $variant:ident, $module:ident;)*) => {
        $($(#[$doc])* pub const $konst: u8 = $num;)*
    };
}
protocols!(proto_consts);

/// `DB_PORTS` values: a database port, and which protocol it speaks by default.
pub const DB_PORT_FLAG: u8 = 0x80;
pub const DB_PORT_PROTO_MASK: u8 = 0x7f;

/// Bytes copied from the start and from the end of each send/recv on a database connection:
/// enough for message types, lengths and status bytes; never a query or a row.
pub const HEAD_BYTES: usize = 32;
pub const TAIL_BYTES: usize = 32;

/// First sends/recvs on an `upstream` connection (or a `db` one of unknown protocol) whose
/// head bytes are checked for a database handshake (PostgreSQL StartupMessage/SSLRequest,
/// MySQL greeting, RESP) or, for connections that existed before attach, a database
/// message in mid-conversation.
pub const SNIFF_BUDGET: u8 = 4;

/// Key of `CONNS`: a socket fd of a target process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of `CONNS`: what the kernel keeps per connection fd.
///
/// A connection is known by its first fd (the *primary*). fds made from it with
/// dup/dup2/dup3/fcntl(F_DUPFD) are *aliases* whose entries only point at the primary, so
/// that a server reading from one fd and writing to its duplicate (Rust's `try_clone`,
/// `fdopen` twice) is still one connection. Events always name the primary fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub role: u8,
    pub proto: u8,
    /// Client connections: a request is in flight (bytes received since the server last
    /// sent). Upstream connections: a call is in flight (sent since it last received).
    pub request_in_flight: u8,
    /// Sends/recvs left to look at for a database handshake (upstream connections).
    pub sniff_left: u8,
    /// Primary only: how many aliases are open.
    pub aliases: u8,
    /// Primary only: its own fd was closed while aliases kept the connection open.
    pub primary_closed: u8,
    /// `CONN_EXISTED`: found in /proc at attach (its conversation is seen mid-way).
    pub flags: u8,
    pub _pad: u8,
    /// The primary fd (equal to the key's fd for the primary itself).
    pub primary: u32,
    /// Client connections: when the target last sent on it, in [`PUSH_TIME_SHIFT`] units of
    /// `bpf_ktime_get_ns` (wrapping; 0 = no send seen yet), for telling a push from the
    /// continuation of an answer (`CONN_PUSH`); upstream connections: the same, for telling
    /// a one-way stream (`CONN_ONE_WAY`).
    pub last_send: u32,
    /// When the request (or upstream call) in flight started (`bpf_ktime_get_ns`; 0 when
    /// it was in flight at attach).
    pub request_since_ns: u64,
}

impl ConnState {
    pub const fn new(role: u8, proto: u8, fd: u32) -> Self {
        Self {
            role,
            proto,
            request_in_flight: 0,
            sniff_left: if role == ROLE_UPSTREAM || (role == ROLE_DB && proto == PROTO_UNKNOWN) {
                SNIFF_BUDGET
            } else {
                0
            },
            aliases: 0,
            primary_closed: 0,
            flags: 0,
            _pad: 0,
            primary: fd,
            last_send: 0,
            request_since_ns: 0,
        }
    }
}

/// `ConnState::flags`: the connection existed before attach.
pub const CONN_EXISTED: u8 = 1;
/// `ConnState::flags`: a client connection whose state at attach was unknown and that has
/// had no send or receive since (the kernel clears it at the first one).
pub const CONN_UNKNOWN: u8 = 2;
/// `ConnState::flags`: the socket backend has bound a socket to this entry (docs/hooks.md).
pub const CONN_BOUND: u8 = 4;
/// `ConnState::flags`: a client connection on which the target sent unprompted
/// (docs/design.md, "push-style"): a send with no request in flight, at least
/// [`PUSH_GAP`] after its previous send (the rest of an answer written in pieces follows
/// sooner). Ticks, broadcasts, a gateway link that multiplexes players, a streamed answer:
/// a send there is no evidence that the work for what it received is done.
pub const CONN_PUSH: u8 = 8;
/// `ConnState::last_send` counts `bpf_ktime_get_ns() >> PUSH_TIME_SHIFT`: about 1.05 ms,
/// wrapping after 52 days (compared with wrapping arithmetic).
pub const PUSH_TIME_SHIFT: u32 = 20;
/// The gap (in `last_send` units, ~10.5 ms) after which a send with no request in flight is
/// a push rather than more of the same answer: a server writing an answer in pieces (HTTP
/// headers then body, a large reply in chunks) writes them back to back; a push comes on
/// its own clock (a game's tick is 16-100 ms).
pub const PUSH_GAP: u32 = 10;
/// `ConnState::flags`: an upstream connection that has answered: bytes received on it
/// since it opened (or, for one found at attach, `tcp_info` counted data received in its
/// life). A call on it is request/response by evidence (docs/design.md, "upstream call in
/// flight").
pub const CONN_ANSWERED: u8 = 0x10;
/// `ConnState::flags`: an upstream connection that never answered and on which the target
/// sent again, at least [`PUSH_GAP`] later, while its first call was still unanswered: a
/// one-way stream (a log shipper, a metrics socket), whose sends are no calls.
pub const CONN_ONE_WAY: u8 = 0x20;
/// `ConnState::flags`: the conversation is read in plaintext through the TLS library hooks
/// (probe-ebpf/src/sockets/tls.rs); its socket bytes are ciphertext and not parsed. (High
/// bits, clear of the low ones other features take.)
pub const CONN_TLS: u8 = 0x40;
/// `ConnState::flags`: TLS records were seen on the connection's socket: only such a
/// connection may be tied to an `SSL *` by guess (memory BIOs, tls.rs).
pub const CONN_TLS_SEEN: u8 = 0x80;

/// Syscall kinds remembered between sys_enter and sys_exit (`PENDING`).
pub const IO_READ: u8 = 1;
pub const IO_WRITE: u8 = 2;
pub const IO_RECVFROM: u8 = 3;
pub const IO_SENDTO: u8 = 4;
pub const IO_RECVMSG: u8 = 5;
pub const IO_SENDMSG: u8 = 6;
pub const IO_READV: u8 = 7;
pub const IO_WRITEV: u8 = 8;
pub const IO_ACCEPT: u8 = 9;
pub const IO_CONNECT: u8 = 10;
pub const IO_DUP: u8 = 11;

/// Value of `PENDING`, keyed by the thread's `pid_tgid`: the arguments of a syscall in
/// progress that its exit needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub kind: u8,
    pub _pad: [u8; 3],
    pub fd: u32,
    /// The buffer, iovec array, msghdr or sockaddr pointer (user memory).
    pub ptr: u64,
    /// The iovec count for readv/writev.
    pub count: u64,
    /// connect: the peer, read at enter (user memory may change before exit).
    pub addr: SockAddr,
    pub _pad2: [u8; 4],
}

/// An IPv4 or IPv6 address and port, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockAddr {
    /// `AF_INET` (2), `AF_INET6` (10), `AF_UNIX` (1) or 0 when unknown.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// IPv4 in the first 4 bytes; IPv6 in all 16; zeros for `AF_UNIX`.
    pub addr: [u8; 16],
}

impl SockAddr {
    pub const fn empty() -> Self {
        Self {
            family: 0,
            port: 0,
            addr: [0; 16],
        }
    }
}

/// A connection the kernel saw open after attach: accept/accept4 returned it, or connect
/// succeeded (or is in progress) on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOpenEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub fd: u32,
    pub role: u8,
    pub proto: u8,
    /// `CONN_EXISTED`: a socket that existed before attach, first seen now by the socket
    /// backend and classified from the /proc survey (`SURVEYED`), not from its peer.
    pub flags: u8,
    pub _pad: u8,
    /// The listening fd for accepted connections, else 0.
    pub listener_fd: u32,
    pub peer: SockAddr,
    /// A unix-domain connection first seen by the socket backend: the low 32 bits of the
    /// target's socket inode, for userspace to watch its fd by (its close has no hook
    /// there: session/unix_close.rs); 0 otherwise or when not known.
    pub unix_inode: u32,
}

/// close(2) of a tracked connection fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnCloseEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub fd: u32,
    pub role: u8,
    pub proto: u8,
    pub request_in_flight: u8,
    /// 1: a client connection the target had sent unprompted on (`CONN_PUSH`).
    pub push: u8,
    pub _pad: [u8; 4],
    /// When the request in flight started (`bpf_ktime_get_ns`), 0 if none or unknown.
    pub request_since_ns: u64,
}

pub const DIR_RECV: u8 = 0;
pub const DIR_SEND: u8 = 1;

/// A send or recv on a database connection: the byte count and the few bytes of its first
/// and last bytes that the protocol rules need. The kernel copies at most 32 from each end,
/// then keeps only message types, lengths and status bytes ([`redact`], called from
/// probe-ebpf/src/sockets/db.rs) and zeroes the rest: query text, rows and values never
/// leave the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbIoEvent {
    pub header: EventHeader,
    pub tgid: u32,
    pub fd: u32,
    pub dir: u8,
    pub proto: u8,
    /// Kept bytes at the start: `head[..head_len]` (a prefix of the data).
    pub head_len: u8,
    /// Kept bytes at the end: `tail[tail_off..tail_off + tail_len]` (a suffix of the data;
    /// right-aligned, so `tail_off + tail_len == TAIL_BYTES`).
    pub tail_len: u8,
    /// Bytes moved by the syscall.
    pub len: u32,
    pub tail_off: u8,
    /// 1: plaintext read inside a TLS library call (SSL_read/SSL_write), not a syscall.
    pub tls: u8,
    pub _pad: [u8; 6],
    pub head: [u8; HEAD_BYTES],
    pub tail: [u8; TAIL_BYTES],
}

/// Indices into the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events the probe produced for a target.
    Emitted = 0,
    /// Ring-buffer reservations that failed: events lost.
    Lost = 1,
    /// Fork children that could not be added to `TARGETS` (map full): they are not followed.
    TargetsFull = 2,
    /// Connections that could not be added to `CONNS` (map full): not tracked.
    ConnsFull = 3,
    /// Database sends/recvs handed to the `db_io` program.
    DbIoRuns = 4,
    /// Tail calls to `db_io` that did not happen: those sends/recvs went unseen.
    DbIoMissed = 5,
    /// Operations (`--op`) not followed: the per-thread map was full.
    OpsMissed = 6,
}

pub const COUNTER_SLOTS: u32 = 8;

/// Most connections tracked at once, over all targets.
pub const MAX_CONNS: u32 = 65536;
/// Most syscalls in progress at once (one per thread at most).
pub const MAX_PENDING: u32 = 16384;
/// Per-thread pending-syscall slots, indexed by `pid % THREAD_SLOTS`.
pub const THREAD_SLOTS: u32 = 16384;
/// `DB_PORTS` has one slot per TCP port.
pub const DB_PORT_SLOTS: u32 = 65536;
pub const MAX_DB_ADDRS: u32 = 256;
/// Slots of the syscall dispatch table (x86_64 syscall numbers are below 512).
pub const SYSCALL_SLOTS: u32 = 512;

/// `ConnKey::fd` of a connection whose fd the socket backend could not name (first seen
/// through io_uring, say): this bit, and the low 31 bits of the socket's inode, which
/// userspace resolves from `/proc/PID/fd` for display (docs/hooks.md).
pub const FD_BY_INODE: u32 = 0x8000_0000;

/// A [`ProbeConfig`] offset that this kernel does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// Load-time configuration, written into the object's `.rodata` by userspace before load
/// (aya's `EbpfLoader::set_global`), so the verifier sees constants.
///
/// Tracepoint field offsets come from tracefs `format` files on the running kernel, so the
/// probe does not depend on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// tgid of drainwatch itself (never a target).
    pub self_tgid: u32,
    /// 1: add fork children to the targets in the kernel (`--no-follow` clears it).
    pub follow_forks: u32,
    pub signal_sig_off: u32,
    pub signal_code_off: u32,
    pub signal_pid_off: u32,
    pub signal_group_off: u32,
    pub signal_result_off: u32,
    /// `comm` of `signal:signal_generate`: the receiver's name.
    pub signal_comm_off: u32,
    pub fork_parent_pid_off: u32,
    pub fork_child_pid_off: u32,
    pub exec_pid_off: u32,
    pub exit_pid_off: u32,
    /// `group_dead` of `sched:sched_process_exit` (kernels after 6.12); [`NO_OFFSET`] on kernels
    /// whose tracepoint lacks it, where `signal_struct.live` tells the same (below).
    pub exit_group_dead_off: u32,
    /// Byte offset of `exit_code` in `struct task_struct`, from kernel BTF; 0 if unknown.
    pub task_exit_code_off: u32,
    /// Byte offsets of `task_struct.signal` and `signal_struct.live`, from kernel BTF;
    /// [`NO_OFFSET`] if unknown. do_exit() decrements `live` before it fires
    /// sched_process_exit, so `live == 0` there means the last thread of the process is
    /// exiting: the `group_dead` that older kernels' tracepoint does not carry
    /// (kernel/exit.c, do_exit()).
    pub task_signal_off: u32,
    pub signal_live_off: u32,
    /// Byte offsets of `task_struct.pid`, `task_struct.comm` and `kernel_siginfo.si_code`,
    /// from kernel BTF; [`NO_OFFSET`] if unknown. The raw-tracepoint lifecycle programs read
    /// their tracepoints' `TP_PROTO` arguments (a task, a siginfo) at them; without them the
    /// classic tracepoints' records are read instead (docs/hooks.md, "Lifecycle hooks").
    pub task_pid_off: u32,
    pub task_comm_off: u32,
    pub siginfo_code_off: u32,
    /// Ring-buffer size: above half full, events wake userspace instead of waiting for its
    /// next timed drain.
    pub ring_bytes: u32,
    /// The socket backend's offsets (docs/hooks.md), from kernel BTF; [`NO_OFFSET`] when
    /// unknown (the syscall backend needs none of them). `struct sock_common` fields sit at
    /// the start of `struct sock` (`__sk_common`, include/net/sock.h).
    pub sock: SockOffsets,
}

/// Byte offsets the socket backend reads at, from kernel BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    /// `sock_common.skc_family` (u16).
    pub family: u32,
    /// `sock_common.skc_num`: the local port, host order (u16).
    pub num: u32,
    /// `sock_common.skc_dport`: the peer port, network order (u16).
    pub dport: u32,
    /// `sock_common.skc_daddr`: the IPv4 peer.
    pub daddr: u32,
    /// `sock_common.skc_v6_daddr`: the IPv6 peer.
    pub v6_daddr: u32,
    /// `sock.sk_socket`, `socket.file`, `file.f_inode`, `inode.i_ino`: the inode that
    /// `/proc/PID/fd` shows as `socket:[N]`.
    pub sk_socket: u32,
    pub socket_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    /// `task_struct.flags` (PF_EXITING: the socket is closed by the exit, which userspace
    /// accounts from the exit event).
    pub task_flags: u32,
    /// `sock.sk_type` (u16: SOCK_STREAM, SOCK_DGRAM, ...), `unix_sock.addr` (the bound
    /// name, or NULL; an accepted socket shares its listener's) and `unix_sock.peer`: how
    /// a unix-domain socket first seen in a send/recv is told accepted from connected
    /// (unix sockets have no state tracepoint; net/unix/af_unix.c `unix_stream_connect`).
    pub sk_type: u32,
    pub unix_addr: u32,
    pub unix_peer: u32,
    /// `socket.sk`: the fentry backend's unix-domain functions take a `struct socket *`.
    pub socket_sk: u32,
}

impl SockOffsets {
    pub const fn unknown() -> Self {
        Self {
            family: NO_OFFSET,
            num: NO_OFFSET,
            dport: NO_OFFSET,
            daddr: NO_OFFSET,
            v6_daddr: NO_OFFSET,
            sk_socket: NO_OFFSET,
            socket_file: NO_OFFSET,
            file_inode: NO_OFFSET,
            inode_ino: NO_OFFSET,
            task_flags: NO_OFFSET,
            sk_type: NO_OFFSET,
            unix_addr: NO_OFFSET,
            unix_peer: NO_OFFSET,
            socket_sk: NO_OFFSET,
        }
    }
}

impl ProbeConfig {
    /// An all-zero config: what the object holds before userspace fills it in.
    pub const fn zeroed() -> Self {
        Self {
            self_tgid: 0,
            follow_forks: 0,
            signal_sig_off: 0,
            signal_code_off: 0,
            signal_pid_off: 0,
            signal_group_off: 0,
            signal_result_off: 0,
            signal_comm_off: 0,
            fork_parent_pid_off: 0,
            fork_child_pid_off: 0,
            exec_pid_off: 0,
            exit_pid_off: 0,
            exit_group_dead_off: 0,
            task_exit_code_off: 0,
            task_signal_off: NO_OFFSET,
            signal_live_off: NO_OFFSET,
            task_pid_off: NO_OFFSET,
            task_comm_off: NO_OFFSET,
            siginfo_code_off: NO_OFFSET,
            ring_bytes: 0,
            sock: SockOffsets::unknown(),
        }
    }
}

/// Value of the `TARGETS` map: why a tgid/pid is a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// The tgid this entry belongs to (equal to the key for a process, the owning tgid for
    /// a thread; 0 when the kernel added a fork child before knowing whether it is a thread).
    pub tgid: u32,
    /// `ORIGIN_*`: 1 when userspace named it, 2 when the kernel followed a fork, 3 a
    /// `--comm` exec, 4 a receiver of the launched command's signal; possibly with
    /// [`ORIGIN_LAUNCHED_TREE`] set on top.
    pub origin: u32,
    /// Client requests of this process (kept in the entry keyed by the tgid only) that
    /// found no room in the per-CPU `REQUEST_COUNTS` map, where they are counted otherwise;
    /// userspace adds the two.
    pub requests: RequestCounters,
}

impl TargetInfo {
    pub const fn new(tgid: u32, origin: u32) -> Self {
        Self {
            tgid,
            origin,
            requests: RequestCounters::zeroed(),
        }
    }
}

/// Client requests counted in the kernel, per target process (docs/design.md, "request in
/// flight"): in flight = `started - ended`, plus the requests userspace found in flight at
/// attach minus `existing_ended`. Each counter only grows. One copy per CPU (probe-ebpf's
/// `REQUEST_COUNTS`): a request may start on one CPU and end on another, so only the sum
/// of the copies means anything.
///
/// `ended` comes first: a reader copying the struct front to back sees `ended` no later than
/// `started`, so a torn read can only over-count what is in flight, never under-count it.
/// Across the copies of the CPUs that order needs two reads: the `ended` side from the first,
/// the `started` side from the second (probe-user's `kernel/probe/maps.rs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounters {
    /// Requests that started while watched and have ended (the server sent, or the
    /// connection closed).
    pub ended: u64,
    /// Requests that started while watched (first bytes received after idle).
    pub started: u64,
    /// Requests in flight at attach (start unknown) that have ended since.
    pub existing_ended: u64,
    /// ktime (ns) of the latest start or end.
    pub last_edge_ns: u64,
    /// Client connections of this process that became push-style (`CONN_PUSH`), once each.
    pub pushed: u64,
    /// ktime (ns) of the last bytes received on one of its client connections: the drain
    /// tail counts from the last client input (docs/design.md, "drain tail").
    pub last_input_ns: u64,
    /// Upstream calls of this process (docs/design.md, "upstream call in flight"), in the
    /// same order and with the same meaning as the request counters above.
    pub calls: CallCounters,
}

/// Upstream calls counted in the kernel, per target process: in flight = `started - ended`,
/// plus the calls userspace found in flight at attach minus `existing_ended`. A *first*
/// call is one made on a connection that has not answered yet (no `CONN_ANSWERED`): it may
/// be the first of a request/response conversation or a one-way stream's first send, which
/// only its reply (or the next send) tells; userspace holds the drain for it a bounded time
/// (`first_last_start_ns`). `ended` fields come first, as in [`RequestCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallCounters {
    pub ended: u64,
    pub started: u64,
    pub existing_ended: u64,
    /// ktime (ns) of the latest start or end.
    pub last_edge_ns: u64,
    /// Of `started`/`ended`, the first calls.
    pub first_ended: u64,
    pub first_started: u64,
    /// ktime (ns) of the latest first call's start.
    pub first_last_start_ns: u64,
    /// Upstream connections of this process that became one-way (`CONN_ONE_WAY`), once each.
    pub one_way: u64,
    /// Of `existing_ended`, calls on connections that had not answered (first calls).
    pub first_existing_ended: u64,
    /// Of `started`, calls taken back: their connection's first bytes made it a database's
    /// (probe-ebpf's `undo_call`). A counter of its own rather than a subtraction from
    /// `started`, so that it is read with the `ended` side and every count only grows.
    pub taken_back: u64,
    /// Of `first_started`, the same.
    pub first_taken_back: u64,
}

impl CallCounters {
    pub const fn zeroed() -> Self {
        Self {
            ended: 0,
            started: 0,
            existing_ended: 0,
            last_edge_ns: 0,
            first_ended: 0,
            first_started: 0,
            first_last_start_ns: 0,
            one_way: 0,
            first_existing_ended: 0,
            taken_back: 0,
            first_taken_back: 0,
        }
    }
}

impl RequestCounters {
    pub const fn zeroed() -> Self {
        Self {
            ended: 0,
            started: 0,
            existing_ended: 0,
            last_edge_ns: 0,
            pushed: 0,
            last_input_ns: 0,
            calls: CallCounters::zeroed(),
        }
    }
}

pub const ORIGIN_USER: u32 = 1;
pub const ORIGIN_FORK: u32 = 2;
/// A process that exec'd into a name given with `--comm`.
pub const ORIGIN_COMM: u32 = 3;
/// A process that a process of [`ORIGIN_LAUNCHED_TREE`] sent a signal (docs/design.md,
/// "Command line": `audit -- CMD` follows what it signals).
pub const ORIGIN_SIGNALLED: u32 = 4;
/// A flag on top of the origin: the command `audit -- CMD` launched, and what it forks
/// (inherited in the kernel at fork). A signal such a process sends makes its receiver a
/// target; nothing else carries the flag, so a signal between other processes costs only
/// the bitmap reads of [`target_bit`].
pub const ORIGIN_LAUNCHED_TREE: u32 = 1 << 8;
/// `TRACE_SIGNAL_IGNORED`, `signal:signal_generate`'s `result` for a signal the receiver
/// ignores (include/trace/events/signal.h): it changed nothing, and follows nothing.
pub const TRACE_SIGNAL_IGNORED: i32 = 1;

// Layouts are part of the wire contract: both sides fail to compile if they drift.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);
const _: () = assert!(core::mem::size_of::<SignalEvent>() == 16 + 32 + 2 * COMM_LEN);
const _: () = assert!(core::mem::size_of::<ForkEvent>() == 16 + 16 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 16 + 8 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ExitEvent>() == 16 + 16 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 80 + 56);
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 8 + 48 + 88);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 8);
const _: () = assert!(core::mem::size_of::<ConnState>() == 24);
const _: () = assert!(core::mem::size_of::<SockAddr>() == 20);
const _: () = assert!(core::mem::size_of::<Pending>() == 48);
const _: () = assert!(core::mem::size_of::<ConnOpenEvent>() == 16 + 16 + 20 + 4);
const _: () = assert!(core::mem::size_of::<ConnCloseEvent>() == 16 + 24);
const _: () = assert!(core::mem::size_of::<RequestCounters>() == 48 + 88);
const _: () = assert!(core::mem::size_of::<CallCounters>() == 88);
const _: () =
    assert!(core::mem::size_of::<latency::LatencyHistogram>() == 8 * latency::LATENCY_SLOTS);
const _: () = assert!(core::mem::size_of::<DbIoEvent>() == 16 + 24 + HEAD_BYTES + TAIL_BYTES);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], made of integers and byte arrays, with explicit padding,
    // so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::TargetInfo {}
    unsafe impl aya::Pod for super::RequestCounters {}
    unsafe impl aya::Pod for super::latency::LatencyHistogram {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::SockAddr {}
    unsafe impl aya::Pod for super::Pending {}
}
