//! The doctor's findings: what this kernel offers and what drainwatch will use, one line
//! each, with the fix where something is missing. `drainwatch doctor` prints them
//! (commands::doctor); every command that attaches logs them at `-v` (see `session`).

use serde::Serialize;

use crate::kernel::{
    backends::{self, Backend, BACKENDS},
    features::{Features, LIFECYCLE_TRACEPOINTS, MINIMUM_KERNEL, REQUIRED_TRACEPOINTS},
};

/// How a finding bears on drainwatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present.
    Ok,
    /// Absent, and drainwatch cannot attach without it.
    Missing,
    /// Absent; drainwatch works without it (with the stated loss, if any).
    Absent,
}

/// One line of the doctor's report.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    pub what: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn line(what: impl Into<String>, status: Status, detail: impl Into<String>) -> Line {
    Line {
        what: what.into(),
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Line {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        if self.status != Status::Ok {
            self.fix = Some(fix.into());
        }
        self
    }
}

fn essential(ok: bool) -> Status {
    if ok {
        Status::Ok
    } else {
        Status::Missing
    }
}

fn optional(ok: bool) -> Status {
    if ok {
        Status::Ok
    } else {
        Status::Absent
    }
}

/// Every finding, in the order `doctor` prints them.
pub fn lines(f: &Features) -> Vec<Line> {
    let mut out = vec![
        line(
            "privileges",
            essential(f.privileged.ok),
            &f.privileged.detail,
        )
        .fix("run as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE"),
        line(
            "lockdown",
            essential(f.lockdown.as_deref() != Some("confidentiality")),
            f.lockdown.as_deref().unwrap_or("unknown (securityfs not mounted)"),
        )
        .fix("confidentiality mode forbids BPF kernel reads: boot with lockdown=integrity"),
        line(
            "bpf ring buffer",
            essential(f.ring_buffer.ok),
            &f.ring_buffer.detail,
        )
        .fix("Linux 5.8 or newer"),
        line(
            "raw tracepoints",
            essential(f.raw_tracepoints.ok),
            &f.raw_tracepoints.detail,
        )
        .fix("Linux 4.17 or newer"),
        line(
            "bpf task registers",
            optional(f.task_regs.ok),
            &f.task_regs.detail,
        )
        .fix(format!(
            "Linux 5.15 or newer for the socket-level hooks (socket tracepoints, fentry); \
             the syscall hooks work from Linux {MINIMUM_KERNEL}"
        )),
        line(
            "tracefs",
            optional(f.tracefs.is_some()),
            f.tracefs
                .as_ref()
                .map_or("not mounted".into(), |p| p.display().to_string()),
        )
        .fix("drainwatch mounts it itself when run as root; or `mount -t tracefs tracefs /sys/kernel/tracing`"),
    ];
    // Which tracepoints the chosen hook backend attaches to (kernel/backends/; signals and
    // lifecycle always).
    let backend = backends::choose(f).ok();
    for &(category, name, present) in &f.tracepoints {
        let tracepoint = (category, name);
        let lifecycle = LIFECYCLE_TRACEPOINTS.contains(&tracepoint);
        let used = lifecycle || backend.is_some_and(|b| b.tracepoints().contains(&tracepoint));
        let required = lifecycle || (REQUIRED_TRACEPOINTS.contains(&tracepoint) && used);
        let status = if present {
            Status::Ok
        } else if required && f.tracefs.is_some() {
            Status::Missing
        } else {
            Status::Absent
        };
        let detail = match (used, present) {
            (true, true) => "used".to_string(),
            (true, false) => "needed, not on this kernel".to_string(),
            (false, true) => available_through(tracepoint),
            (false, false) => "not on this kernel".to_string(),
        };
        let found = line(format!("tracepoint {category}:{name}"), status, detail);
        out.push(if f.tracefs.is_none() {
            found.fix("mount tracefs to look")
        } else if required {
            found.fix("a kernel built with CONFIG_TRACEPOINTS and CONFIG_FTRACE_SYSCALLS")
        } else {
            found
        });
    }
    out.push(line(
        "process exit",
        Status::Ok,
        if f.exit_group_dead_field {
            "sched_process_exit.group_dead"
        } else if f.btf.ok {
            "sched_process_exit + signal_struct.live from kernel BTF (no group_dead field here)"
        } else {
            "sched_process_exit of the main thread (no group_dead, no BTF: a multi-threaded \
             target whose main thread exits first is seen exited then)"
        },
    ));
    out.push(
        line("kernel BTF", optional(f.btf.ok), &f.btf.detail)
            .fix("exit codes are reported as null; use a kernel with CONFIG_DEBUG_INFO_BTF"),
    );
    out.push(
        line(
            "uprobes",
            optional(f.uprobes),
            if f.uprobes {
                "available (TLS read in plaintext: OpenSSL's SSL_read/SSL_write in the targets)"
            } else {
                "no uprobe PMU: TLS database conversations stay unverified"
            },
        )
        .fix("CONFIG_UPROBE_EVENTS (TLS plaintext through OpenSSL's SSL_read/SSL_write)"),
    );
    out.push(
        line(
            "kprobes",
            optional(f.kprobes),
            if f.kprobes {
                "available"
            } else {
                "no kprobe PMU (CONFIG_KPROBES)"
            },
        )
        .fix("not needed on this kernel's hooks"),
    );
    out.push(line("fentry", optional(f.fentry.ok), &f.fentry.detail).fix("not needed"));
    out.push(
        line(
            "cgroup v2",
            optional(f.cgroup2.is_some()),
            f.cgroup2
                .as_ref()
                .map_or("not mounted".into(), |p| p.display().to_string()),
        )
        .fix("`--unit`/`--cgroup` need it: mount -t cgroup2 none /sys/fs/cgroup"),
    );
    out.push(match backends::choose(f) {
        Ok(backend) => line("hooks", Status::Ok, hooks_detail(backend)),
        Err(err) => line("hooks", Status::Missing, format!("{err}")),
    });
    if !f.privileged.ok {
        unprivileged(&mut out);
    }
    out
}

/// Without privileges the kernel refuses every BPF load and hides tracefs: those checks
/// say nothing about the kernel ("permission denied (fix: Linux 5.8 or newer)", tracepoints
/// "not on this kernel"), and neither does the hook backend chosen from them. They are left
/// out, and the privileges line says so, once.
fn unprivileged(out: &mut Vec<Line>) {
    // Every BPF load probe answers "permission denied" (whatever it probes: ring buffer,
    // atomics, task registers, fentry, ...); tracefs is root's; the rest follows from them.
    let refused = |l: &Line| {
        l.detail.contains("permission denied")
            || l.what == "tracefs"
            || l.what == "hooks"
            || l.what.starts_with("tracepoint ")
    };
    out.retain(|l| l.what == "privileges" || !refused(l));
    if let Some(privileges) = out.iter_mut().find(|l| l.what == "privileges") {
        privileges.detail.push_str(
            "; the BPF, tracefs, tracepoint and hook checks need them too and were not made",
        );
    }
}

/// The `hooks` line's detail: `<coverage.hooks word>: sockets through ...
/// (DRAINWATCH_HOOKS=<word>)`. Its first word and its last are read from outside (the
/// integration tests' `hooks()`, xtask's `default_hooks`, the kernel matrix's check), which
/// build or run drainwatch and so cannot link its backend registry: keep both where they
/// are.
fn hooks_detail(backend: &Backend) -> String {
    format!(
        "{}: sockets through {}; signals and process lifecycle through the signal and sched \
         tracepoints ({}={})",
        backend.coverage(),
        backend.describe(),
        backends::ENV,
        backend.word()
    )
}

/// What an unused tracepoint that is there would serve: the first backend that attaches to
/// it (the last-resort one said as such).
fn available_through(tracepoint: (&str, &str)) -> String {
    let users: Vec<&Backend> = BACKENDS
        .iter()
        .copied()
        .filter(|b| b.tracepoints().contains(&tracepoint))
        .collect();
    match users.first() {
        Some(b) if Some(b) != BACKENDS.last() => format!(
            "available (the {} backend: {}={})",
            b.word(),
            backends::ENV,
            b.word()
        ),
        _ => "available (the last-resort backend, not used)".to_string(),
    }
}

/// Whether drainwatch can attach here.
pub fn usable(lines: &[Line]) -> bool {
    lines.iter().all(|l| l.status != Status::Missing)
}

/// `  ok       what                 detail (fix: ...)`
pub fn render(l: &Line) -> String {
    let status = match l.status {
        Status::Ok => "ok",
        Status::Missing => "MISSING",
        Status::Absent => "absent",
    };
    let mut text = format!("  {status:<8} {:<36} {}", l.what, l.detail);
    if let Some(fix) = &l.fix {
        text.push_str(&format!(" (fix: {fix})"));
    }
    text
}

/// Logs every line at debug level (`-v`), before an attach.
pub fn log(features: &Features) {
    log::debug!("kernel: Linux {}", features.release);
    for l in lines(features) {
        log::debug!("doctor:{}", render(&l));
    }
}
