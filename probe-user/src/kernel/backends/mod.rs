//! The hook backends that feed the socket side of the probe (docs/hooks.md): socket
//! tracepoints, fentry/fexit, or the raw syscall tracepoints as the last resort. Each is one
//! [`Backend`] descriptor (descriptor.rs) in its own file: its programs and what they
//! attach to, what it needs of the kernel and what this kernel lacks of it, what `doctor`
//! says of it, its `coverage.hooks` and `DRAINWATCH_HOOKS` words, and how it attaches (its
//! links are owned, kernel/links.rs: detaching is the same for all). [`BACKENDS`] lists them
//! once, in the order the default is picked.
//!
//! Chosen at load from what the kernel offers ([`Features`]), or forced with
//! `DRAINWATCH_HOOKS`, which the integration tests and xtask read through `drainwatch
//! doctor`'s `hooks` line (output/doctor.rs). A forced backend the kernel cannot run (or that
//! is not built yet) is an error, never a quiet downgrade: the report's `coverage.hooks` is
//! what ran.
//!
//! Adding a backend (kprobes, designed in docs/hooks.md): one new file here with its
//! `pub static` descriptor and one line of the `backends!` list below (which declares its
//! module) at its place in the default order (a backend that taxes bystanders less goes
//! first), and its word out of [`DESIGNED`]. The
//! probe (kernel/probe.rs), `doctor` and the choice below need nothing more.

mod descriptor;

pub use descriptor::Backend;

use crate::{kernel::features::Features, Error, Result};

/// The environment variable that forces a backend.
pub const ENV: &str = "DRAINWATCH_HOOKS";

/// Declares each backend's module and lists its descriptor in [`BACKENDS`].
macro_rules! backends {
    ($($module:ident::$descriptor:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// Every built backend, in the order the default is picked (docs/hooks.md,
        /// "Choosing one"): the first whose every hook the kernel offers. The syscall
        /// tracepoints, which tax every process of the host, last.
        pub static BACKENDS: &[&Backend] = &[$(&$module::$descriptor),*];
    };
}

// One line each: its file and its descriptor.
backends! {
    socket::SOCKET,
    fentry::FENTRY,
    syscalls::SYSCALLS,
}

/// Backends designed in docs/hooks.md but not built: (`DRAINWATCH_HOOKS` word,
/// `coverage.hooks` word). Asking for one is refused with one line, never replaced.
const DESIGNED: &[(&str, &str)] = &[("kprobe", "kprobes")];

/// The backend `DRAINWATCH_HOOKS` names.
pub fn parse(word: &str) -> Option<&'static Backend> {
    BACKENDS.iter().copied().find(|b| b.word == word.trim())
}

/// What the running kernel offers, with every backend's tracepoints looked up.
pub fn detect() -> Features {
    Features::detect(&tracepoints())
}

/// Every backend's tracepoints, each once, in registry order.
fn tracepoints() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for &tracepoint in BACKENDS.iter().flat_map(|b| b.tracepoints) {
        if !out.contains(&tracepoint) {
            out.push(tracepoint);
        }
    }
    out
}

/// The backend for this kernel: `DRAINWATCH_HOOKS` if set (checked against `features`),
/// else the default.
pub fn choose(features: &Features) -> Result<&'static Backend> {
    choose_from(std::env::var(ENV).ok().as_deref(), features)
}

/// [`choose`] with the variable's value given (unit-testable).
pub fn choose_from(forced: Option<&str>, features: &Features) -> Result<&'static Backend> {
    let Some(word) = forced.filter(|w| !w.trim().is_empty()) else {
        return Ok(pick(|b| b.missing(features)));
    };
    let refuse = |problem: String| {
        Err(Error::Hooks {
            value: word.to_string(),
            problem,
        })
    };
    if let Some(&(_, coverage)) = DESIGNED.iter().find(|(w, _)| *w == word.trim()) {
        return refuse(format!(
            "the {coverage} backend is designed (docs/hooks.md) but not built yet"
        ));
    }
    let Some(backend) = parse(word) else {
        let words: Vec<&str> = BACKENDS
            .iter()
            .map(|b| b.word)
            .chain(DESIGNED.iter().map(|d| d.0))
            .collect();
        return refuse(format!("not one of {}", words.join(", ")));
    };
    match backend.missing(features) {
        None => Ok(backend),
        Some(missing) => refuse(format!("this kernel lacks {missing}")),
    }
}

/// The first backend in [`BACKENDS`] with nothing missing, given what each lacks; the last
/// one, the syscall hooks, whatever it says (every supported kernel has them: the
/// essentials, kernel/features.rs).
fn pick(missing: impl Fn(&Backend) -> Option<String>) -> &'static Backend {
    let (last, rest) = BACKENDS.split_last().expect("at least one backend");
    for &backend in rest {
        match missing(backend) {
            None => return backend,
            Some(lacks) => log::debug!("{} not used: this kernel lacks {lacks}", backend.coverage),
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_are_unique() {
        for &b in BACKENDS {
            assert_eq!(parse(b.word()), Some(b));
            assert_eq!(
                BACKENDS.iter().filter(|o| o.coverage == b.coverage).count(),
                1
            );
            assert!(!DESIGNED.iter().any(|d| d.0 == b.word || d.1 == b.coverage));
        }
        assert_eq!(parse("sockets"), None);
        assert_eq!(parse("kprobe"), None, "designed, not built");
    }

    #[test]
    fn the_default_is_socket_then_fentry_then_syscalls() {
        let lacking = |words: &'static [&'static str]| {
            move |b: &Backend| words.contains(&b.word).then(|| "something".to_string())
        };
        assert_eq!(pick(lacking(&[])).word, "socket");
        assert_eq!(pick(lacking(&["fentry"])).word, "socket");
        assert_eq!(pick(lacking(&["socket"])).word, "fentry");
        assert_eq!(pick(lacking(&["socket", "fentry"])).word, "syscalls");
        assert_eq!(
            pick(lacking(&["socket", "fentry", "syscalls"])).word,
            "syscalls"
        );
    }

    #[test]
    fn without_the_sock_length_tracepoints_or_fentry_the_default_is_the_syscall_hooks() {
        let mut f = Features::complete(&tracepoints());
        f.fentry = crate::kernel::features::Found {
            ok: false,
            detail: "attach: permission denied".into(),
        };
        for tp in f.tracepoints.iter_mut() {
            if (tp.0, tp.1) == ("sock", "sock_send_length") {
                tp.2 = false;
            }
        }
        assert_eq!(
            socket::SOCKET.missing(&f).as_deref(),
            Some("the tracepoint sock:sock_send_length")
        );
        assert_eq!(choose_from(None, &f).unwrap(), &syscalls::SYSCALLS);
        // Forced, it is refused, never quietly replaced.
        assert!(choose_from(Some("socket"), &f).is_err());
        assert_eq!(
            choose_from(Some("syscalls"), &f).unwrap(),
            &syscalls::SYSCALLS
        );
    }

    #[test]
    fn linux_5_10_runs_on_the_syscall_hooks_though_fentry_attaches() {
        // Debian 11 / Amazon Linux 2: no sock length tracepoints (6.3), fentry attaches,
        // but the socket-level programs' task-register helpers are 5.11/5.15.
        let mut f = Features::complete(&tracepoints());
        f.release = "5.10.0-32-amd64".into();
        f.task_regs = crate::kernel::features::Found {
            ok: false,
            detail: "bpf_get_current_task_btf, bpf_task_pt_regs: not supported by this kernel"
                .into(),
        };
        for tp in f.tracepoints.iter_mut() {
            if tp.0 == "sock" && tp.1.ends_with("_length") {
                tp.2 = false;
            }
        }
        f.require_essentials(true).unwrap();
        let missing = fentry::FENTRY
            .missing(&f)
            .expect("fentry lacks the helpers");
        assert!(missing.contains("task-register helpers"), "{missing}");
        assert_eq!(choose_from(None, &f).unwrap(), &syscalls::SYSCALLS);
        assert!(choose_from(Some("fentry"), &f).is_err());
    }

    #[test]
    fn fentry_is_refused_where_it_does_not_attach_and_kprobes_everywhere() {
        let mut f = Features::complete(&tracepoints());
        f.fentry = crate::kernel::features::Found {
            ok: false,
            detail: "attach: permission denied".into(),
        };
        assert_eq!(
            fentry::FENTRY.missing(&f).as_deref(),
            Some("fentry (attach: permission denied)")
        );
        assert!(choose_from(Some("fentry"), &f).is_err());
        let text = choose_from(Some("kprobe"), &f).unwrap_err().to_string();
        assert!(text.contains("not built"), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
        let text = choose_from(Some("sockets-please"), &f)
            .unwrap_err()
            .to_string();
        assert!(text.contains("not one of"), "{text}");
    }
}
