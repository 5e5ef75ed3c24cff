//! What the host tells, outside the probe: /proc ([`procfs`]: small reads; [`netstat`]: a
//! process's TCP sockets; [`blocked`]: the syscall a thread waits in), the kernel's sock_diag ([`tcpinfo`]: when each socket last sent and
//! received), a local server's own view of its clients ([`server_view`]: Redis's
//! `CLIENT LIST`, asked on loopback at attach), starting a command held until it is a target
//! ([`launch`]), signalling a process by pidfd and reading what it does with a
//! signal ([`pidfd`]; one taken by sigwait or a signalfd: [`sigwait`]), and which processes the `--pid`/`--comm`/`--unit`/`--cgroup` selectors and
//! their trees are ([`targets`]), whether a process runs an event loop ([`event_loop`]).
//!
//! Taking the probe down after exit ([`detach`]).
//!
//! Owns reads of /proc and netlink, and fork/exec. May use: the crate's errors only. A process
//! that is gone is an answer (`None`), not an error.

pub mod blocked;
pub mod db_session;
pub mod detach;
pub mod event_loop;
pub mod launch;
pub mod my_view;
pub mod netstat;
pub mod pg_title;
pub mod pg_view;
pub mod pidfd;
pub mod procfs;
pub mod server_view;
pub mod sigwait;
pub mod sockdiag;
pub mod targets;
pub mod tcpinfo;
pub mod unixdiag;
