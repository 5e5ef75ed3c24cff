//! Which hooks feed the socket side of the probe (docs/hooks.md): socket tracepoints,
//! fentry/fexit, kprobes, or the raw syscall tracepoints as the last resort. Chosen at load
//! from what the kernel offers ([`Features`]), or forced with `DRAINWATCH_HOOKS`, which the
//! integration tests read too. A forced backend the kernel cannot run (or that is not built
//! yet) is an error, never a quiet downgrade: the report's `coverage.hooks` is what ran.

use crate::{kernel::features::Features, Error, Result};

/// The environment variable that forces a backend.
pub const ENV: &str = "DRAINWATCH_HOOKS";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    /// `sock:sock_send_length`/`sock_recv_length` (tp_btf) and the TCP state tracepoints.
    Socket,
    /// fentry/fexit on the socket functions.
    Fentry,
    /// kprobes/kretprobes on the socket functions.
    Kprobe,
    /// `raw_syscalls:sys_enter`/`sys_exit`: every task of the host on the syscall slow path.
    Syscalls,
}

impl Hooks {
    /// The report's `coverage.hooks` word (docs/design.md).
    pub fn coverage(self) -> &'static str {
        match self {
            Hooks::Socket => "socket-tracepoints",
            Hooks::Fentry => "fentry",
            Hooks::Kprobe => "kprobes",
            Hooks::Syscalls => "syscalls",
        }
    }

    /// Whether connections are keyed by socket (probe-ebpf's `SOCKS`): every backend but
    /// the syscall hooks.
    pub fn by_socket(self) -> bool {
        self != Hooks::Syscalls
    }

    /// What `DRAINWATCH_HOOKS` accepts for it.
    pub fn env_word(self) -> &'static str {
        match self {
            Hooks::Socket => "socket",
            Hooks::Fentry => "fentry",
            Hooks::Kprobe => "kprobe",
            Hooks::Syscalls => "syscalls",
        }
    }

    pub fn parse(word: &str) -> Option<Self> {
        [Hooks::Socket, Hooks::Fentry, Hooks::Kprobe, Hooks::Syscalls]
            .into_iter()
            .find(|h| h.env_word() == word.trim())
    }

    /// What `doctor` and `-v` say about it.
    pub fn describe(self) -> &'static str {
        match self {
            Hooks::Socket => {
                "socket tracepoints (sock_send_length, sock_recv_length, inet_sock_set_state, \
                 tcp_destroy_sock; tp_btf): processes drainwatch does not watch pay nothing on \
                 their system calls"
            }
            Hooks::Fentry => {
                "fexit on tcp_sendmsg, tcp_recvmsg, unix_stream_sendmsg, unix_stream_recvmsg \
                 and the TCP state tracepoints (inet_sock_set_state, tcp_destroy_sock; tp_btf): \
                 processes drainwatch does not watch pay nothing on their system calls"
            }
            Hooks::Kprobe => "kprobes on the socket functions",
            Hooks::Syscalls => {
                "raw_syscalls sys_enter/sys_exit (the last-resort hook: every process's system \
                 calls take the tracepoint slow path while drainwatch runs)"
            }
        }
    }
}

/// The backend for this kernel: `DRAINWATCH_HOOKS` if set (checked against `features`),
/// else the default.
pub fn choose(features: &Features) -> Result<Hooks> {
    choose_from(std::env::var(ENV).ok().as_deref(), features)
}

/// [`choose`] with the variable's value given (unit-testable).
pub fn choose_from(forced: Option<&str>, features: &Features) -> Result<Hooks> {
    let Some(word) = forced.filter(|w| !w.trim().is_empty()) else {
        // The first backend whose every hook the kernel offers (docs/hooks.md, "Choosing
        // one"); the syscall tracepoints, which tax every process of the host, last.
        return Ok(default_for(features));
    };
    let refuse = |problem: String| {
        Err(Error::Hooks {
            value: word.to_string(),
            problem,
        })
    };
    let Some(hooks) = Hooks::parse(word) else {
        return refuse("not one of socket, fentry, kprobe, syscalls".into());
    };
    match hooks {
        Hooks::Syscalls => Ok(hooks),
        Hooks::Socket => match features.socket_hooks_missing() {
            None => Ok(hooks),
            Some(missing) => refuse(format!("this kernel lacks {missing}")),
        },
        Hooks::Fentry => match features.fentry_hooks_missing() {
            None => Ok(hooks),
            Some(missing) => refuse(format!("this kernel lacks {missing}")),
        },
        Hooks::Kprobe => refuse(format!(
            "the {} backend is designed (docs/hooks.md) but not built yet",
            hooks.coverage()
        )),
    }
}

/// The default backend on a kernel with these features.
fn default_for(features: &Features) -> Hooks {
    let socket = features.socket_hooks_missing();
    let fentry = socket
        .is_some()
        .then(|| features.fentry_hooks_missing())
        .flatten();
    pick_default(socket.as_deref(), fentry.as_deref())
}

/// The first backend with nothing missing, given what the socket and fentry backends lack:
/// socket tracepoints (a static tracepoint per socket call), then fexit on the socket
/// functions (a trampoline per call: Debian 12's 6.1, which has no sock length
/// tracepoints), and only then the syscall hooks, which tax every process of the host.
fn pick_default(socket_missing: Option<&str>, fentry_missing: Option<&str>) -> Hooks {
    let Some(socket_missing) = socket_missing else {
        return Hooks::Socket;
    };
    log::debug!("socket tracepoints not used: this kernel lacks {socket_missing}");
    match fentry_missing {
        None => Hooks::Fentry,
        Some(missing) => {
            log::debug!("fentry not used: this kernel lacks {missing}");
            Hooks::Syscalls
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for h in [Hooks::Socket, Hooks::Fentry, Hooks::Kprobe, Hooks::Syscalls] {
            assert_eq!(Hooks::parse(h.env_word()), Some(h));
        }
        assert_eq!(Hooks::parse("sockets"), None);
    }

    #[test]
    fn the_default_is_socket_then_fentry_then_syscalls() {
        assert_eq!(pick_default(None, None), Hooks::Socket);
        assert_eq!(pick_default(None, Some("fentry (EPERM)")), Hooks::Socket);
        let no_tp = Some("the tracepoint sock:sock_send_length");
        assert_eq!(pick_default(no_tp, None), Hooks::Fentry);
        assert_eq!(pick_default(no_tp, Some("fentry (EPERM)")), Hooks::Syscalls);
    }
}
