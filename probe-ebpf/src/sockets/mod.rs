//! Sockets: which fds of a target are connections, what role they play, when a client
//! request is in flight, and the few bytes of each database send/recv that the protocol
//! rules need.
//!
//! Two raw tracepoints (kprobes are not available): `raw_syscalls:sys_enter` and
//! `sys_exit`, whose arguments are `struct pt_regs *` and the syscall number or return
//! value (include/trace/events/syscalls.h). Other processes stop at the target bitmap; a
//! target's syscall entry is handed to its own program by syscall number (`ENTER_JUMP`),
//! which reads the arguments from the registers (x86_64 calling convention) and leaves what
//! the exit needs in the thread's pending slot.
//!
//! Hot path: the bitmap, then a `CONNS` lookup before anything else. Client requests send
//! no events at all: they are counted per target process in per-CPU counters (started,
//! ended, last edge) and their latencies in a per-CPU histogram, which userspace reads on
//! its drain tick. Only connection opens/closes, database I/O and lifecycle events use the ring
//! buffer, submitted without waking userspace (unless it is half full).
//!
//! One module per concern: [`dispatch`] (the two attached programs), [`pending`] (a
//! thread's syscall from entry to exit), [`open`] (accept, connect), [`close`], [`dup`]
//! (dup, dup2, dup3, fcntl F_DUPFD), [`io`] (the data syscalls), [`requests`] (client
//! request edges and latencies), [`calls`] (upstream calls, the same the other way round), [`db`] (the database path, a tail-called program) with
//! [`recognize`] (database handshakes); shared by them: [`conns`] (the connection table)
//! and [`syscall`] (arguments, return value, user memory).
//!
//! [`sock_tp`] is the socket backend (docs/hooks.md): the same connection table, request
//! counters and database path, fed from socket tracepoints instead of `raw_syscalls`;
//! [`fexit`] feeds the same code from fexit programs on the TCP and unix-domain send/recv
//! functions where the kernel has no socket length tracepoints (the fentry backend).
//!
//! [`tls`] reads TLS conversations in plaintext (uprobes on OpenSSL's SSL_read/SSL_write),
//! down the same database path; every backend tells it about socket I/O made inside an SSL
//! call.

mod calls;
mod close;
mod conns;
mod db;
mod dispatch;
mod dup;
mod fexit;
mod io;
mod open;
pub mod pending;
mod recognize;
mod requests;
mod sock_tp;
mod syscall;
mod tls;

pub(crate) use requests::forget_counters;
