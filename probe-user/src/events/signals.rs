//! Signal names and numbers (signal(7)), and the siginfo codes the audit reads.

/// `si_code` of signals the kernel generates itself, e.g. the OOM killer (SEND_SIG_PRIV);
/// include/uapi/asm-generic/siginfo.h.
pub const SI_KERNEL: i32 = 0x80;

const NAMES: [(i32, &str); 31] = [
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGSTKFLT, "SIGSTKFLT"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
    (libc::SIGTTIN, "SIGTTIN"),
    (libc::SIGTTOU, "SIGTTOU"),
    (libc::SIGURG, "SIGURG"),
    (libc::SIGXCPU, "SIGXCPU"),
    (libc::SIGXFSZ, "SIGXFSZ"),
    (libc::SIGVTALRM, "SIGVTALRM"),
    (libc::SIGPROF, "SIGPROF"),
    (libc::SIGWINCH, "SIGWINCH"),
    (libc::SIGIO, "SIGIO"),
    (libc::SIGPWR, "SIGPWR"),
    (libc::SIGSYS, "SIGSYS"),
];

/// Signals that ask a process to end (signal(7), and what servers use them for: SIGQUIT is
/// nginx's graceful shutdown, SIGINT Ctrl-C). `audit -- CMD` follows a target sent one of
/// these to its exit. Not SIGHUP, SIGUSR1/2, SIGWINCH: servers catch them to reload, reopen
/// logs or retire workers, and go on running.
pub fn asks_to_end(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGKILL | libc::SIGABRT
    )
}

/// `SIGTERM` for 15; `SIG42` for numbers without a name (real-time signals).
/// Every signal name drainwatch knows, without `SIG` (`TERM`, `QUIT`, ...), for completion.
pub fn names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().map(|(_, name)| name.trim_start_matches("SIG"))
}

pub fn name(signal: i32) -> String {
    NAMES
        .iter()
        .find(|(number, _)| *number == signal)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("SIG{signal}"))
}

/// Reads `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse(text: &str) -> Option<i32> {
    if let Ok(number) = text.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let upper = text.to_ascii_uppercase();
    let wanted = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    NAMES
        .iter()
        .find(|(_, name)| *name == wanted)
        .map(|(number, _)| *number)
}

/// Whether a siginfo code means the kernel generated the signal itself rather than a
/// process calling kill(2)/tgkill(2)/sigqueue(3): `SI_KERNEL`, and the positive fault codes.
pub fn generated_by_kernel(code: i32) -> bool {
    code > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(name(9), "SIGKILL");
        assert_eq!(name(15), "SIGTERM");
        assert_eq!(name(40), "SIG40");
        assert_eq!(parse("TERM"), Some(15));
        assert_eq!(parse("sigkill"), Some(9));
        assert_eq!(parse("2"), Some(2));
        assert_eq!(parse("TERMINATE"), None);
        assert_eq!(parse("0"), None);
    }

    #[test]
    fn kernel_codes() {
        assert!(generated_by_kernel(SI_KERNEL));
        assert!(!generated_by_kernel(0)); // SI_USER: kill(2)
        assert!(!generated_by_kernel(-6)); // SI_TKILL
    }
}
