//! What the running kernel offers drainwatch, found by asking it rather than by reading
//! version numbers (distribution kernels backport features, RHEL's most of all): a BPF ring
//! buffer is created, a program calling the task-register helpers is loaded, an empty
//! fentry program is attached, tracepoints are looked up in tracefs. Each probe is a
//! syscall or two and leaves nothing behind.
//!
//! Used by `drainwatch doctor` (every line) and before every attach (the essentials: a
//! kernel without them gets one line naming the feature and the first Linux release that has
//! it, exit 2, before anything is loaded). The hook backends ask it what they need
//! (kernel/backends/); it knows nothing of them.

use std::{
    ffi::CString,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use crate::{
    kernel::bpf_sys::{
        bpf, ProgLoadAttr, BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN,
        PROG_TYPE_RAW_TRACEPOINT, PROG_TYPE_TRACING, TRACE_FENTRY,
    },
    kernel::btf,
    kernel::tracefs,
    Error, Result,
};

/// The oldest kernel release with everything the probe needs on its last-resort backend
/// (the syscall hooks): the BPF ring buffer (Linux 5.8), the newest of what it uses —
/// `bpf_probe_read_kernel`/`_user` (5.5), bounded loops (5.3), raw tracepoints (4.17),
/// `bpf_get_current_task` (4.8) and atomic add (`BPF_XADD`, older than all of them; the
/// probe needs no other atomic: probe-ebpf's pending.rs and shared.rs). The socket-level
/// backends need more (the task-register helpers, 5.15; see [`Features::task_regs`]).
pub const MINIMUM_KERNEL: &str = "5.8";

/// The tracepoints of signals and the process lifecycle, which the probe attaches on every
/// backend (its programs are named after them).
pub const LIFECYCLE_TRACEPOINTS: [(&str, &str); 4] = [
    ("signal", "signal_generate"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
];

/// The tracepoints on every syscall's entry and exit: the last-resort hooks
/// (kernel/backends/syscalls.rs), which every kernel drainwatch watches sockets on must offer.
pub const RAW_SYSCALL_TRACEPOINTS: [(&str, &str); 2] =
    [("raw_syscalls", "sys_enter"), ("raw_syscalls", "sys_exit")];

/// The tracepoints the probe needs; any one missing is fatal (the raw syscall ones only
/// when sockets are watched).
pub const REQUIRED_TRACEPOINTS: [(&str, &str); 6] = [
    LIFECYCLE_TRACEPOINTS[0],
    LIFECYCLE_TRACEPOINTS[1],
    LIFECYCLE_TRACEPOINTS[2],
    LIFECYCLE_TRACEPOINTS[3],
    RAW_SYSCALL_TRACEPOINTS[0],
    RAW_SYSCALL_TRACEPOINTS[1],
];

/// A yes/no finding with the detail that explains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub ok: bool,
    pub detail: String,
}

impl Found {
    fn yes(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: detail.into(),
        }
    }

    fn no(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Everything `doctor` reports.
#[derive(Clone, Debug)]
pub struct Features {
    pub release: String,
    pub privileged: Found,
    pub ring_buffer: Found,
    /// `bpf_get_current_task_btf` (5.11) and `bpf_task_pt_regs` (5.15): how the
    /// socket-level backends' programs find the syscall in progress (its fd and buffer).
    pub task_regs: Found,
    pub raw_tracepoints: Found,
    pub tracefs: Option<PathBuf>,
    /// (category, name, present)
    pub tracepoints: Vec<(&'static str, &'static str, bool)>,
    pub exit_group_dead_field: bool,
    pub btf: Found,
    pub uprobes: bool,
    pub kprobes: bool,
    pub fentry: Found,
    pub cgroup2: Option<PathBuf>,
    /// `none`, `integrity` or `confidentiality`; `None` when securityfs is not readable.
    pub lockdown: Option<String>,
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Features {
    /// Asks the kernel, looking up the required tracepoints and `hook_tracepoints` (the
    /// backends', kernel/backends/: `backends::detect`). Needs the same privileges as
    /// attaching; without them the BPF probes report "permission denied" rather than
    /// "missing".
    pub fn detect(hook_tracepoints: &[(&'static str, &'static str)]) -> Self {
        let tracefs = tracefs::find_root();
        let tracepoints = REQUIRED_TRACEPOINTS
            .iter()
            .chain(
                hook_tracepoints
                    .iter()
                    .filter(|t| !REQUIRED_TRACEPOINTS.contains(t)),
            )
            .map(|&(category, name)| {
                let present = tracefs
                    .as_deref()
                    .is_some_and(|root| tracepoint_exists(root, category, name));
                (category, name, present)
            })
            .collect();
        let exit_group_dead_field = tracefs.as_deref().is_some_and(|root| {
            tracefs::Format::find(root, "sched", "sched_process_exit")
                .is_ok_and(|f| f.has("group_dead"))
        });
        Self {
            release: kernel_release(),
            privileged: privileges(),
            ring_buffer: ring_buffer(),
            task_regs: load_check(
                "bpf_get_current_task_btf, bpf_task_pt_regs",
                PROG_TYPE_RAW_TRACEPOINT,
                &TASK_REGS,
            ),
            raw_tracepoints: load_check("raw tracepoint program", PROG_TYPE_RAW_TRACEPOINT, &EMPTY),
            tracefs,
            tracepoints,
            exit_group_dead_field,
            btf: kernel_btf(),
            uprobes: Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
            kprobes: Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
            fentry: fentry(),
            cgroup2: cgroup2_mount(),
            lockdown: lockdown(),
        }
    }

    /// The first missing essential, as the error every attaching command exits 2 with.
    pub fn require_essentials(&self, sockets: bool) -> Result<()> {
        let missing = |feature: &str, since: &str, detail: &str| {
            Err(Error::KernelFeature {
                release: self.release.clone(),
                feature: feature.to_string(),
                detail: detail.to_string(),
                since: since.to_string(),
            })
        };
        if !self.privileged.ok {
            return Err(Error::NotPermitted);
        }
        if self.lockdown.as_deref() == Some("confidentiality") {
            return missing(
                "kernel memory reads by BPF (lockdown=confidentiality forbids them)",
                MINIMUM_KERNEL,
                "boot with lockdown=integrity or none",
            );
        }
        if !self.ring_buffer.ok {
            return missing("the BPF ring buffer", "5.8", &self.ring_buffer.detail);
        }
        if !self.raw_tracepoints.ok {
            return missing(
                "raw tracepoint programs",
                "4.17",
                &self.raw_tracepoints.detail,
            );
        }
        for &(category, name, present) in &self.tracepoints {
            let required = REQUIRED_TRACEPOINTS.contains(&(category, name));
            let needed = required && (sockets || category != "raw_syscalls");
            if needed && !present && self.tracefs.is_some() {
                return missing(
                    &format!("the tracepoint {category}:{name}"),
                    MINIMUM_KERNEL,
                    "CONFIG_TRACEPOINTS / CONFIG_FTRACE_SYSCALLS",
                );
            }
        }
        Ok(())
    }

    /// Whether the tracepoint `category:name` was found (one [`Features::detect`] looked up).
    pub fn has_tracepoint(&self, category: &str, name: &str) -> bool {
        self.tracepoints
            .iter()
            .any(|&(c, n, present)| c == category && n == name && present)
    }
}

#[cfg(test)]
impl Features {
    /// A kernel that has everything, with `hook_tracepoints` too, as a starting point for
    /// unit tests (here and in kernel/backends/).
    pub fn complete(hook_tracepoints: &[(&'static str, &'static str)]) -> Features {
        Features {
            release: "6.1.0-57-amd64".into(),
            privileged: Found::yes("root"),
            ring_buffer: Found::yes("ringbuf"),
            task_regs: Found::yes("task regs"),
            raw_tracepoints: Found::yes("raw tp"),
            tracefs: Some(PathBuf::from("/sys/kernel/tracing")),
            tracepoints: REQUIRED_TRACEPOINTS
                .iter()
                .chain(hook_tracepoints)
                .map(|&(c, n)| (c, n, true))
                .collect(),
            exit_group_dead_field: false,
            btf: Found::yes("btf"),
            uprobes: true,
            kprobes: true,
            fentry: Found::yes("fentry"),
            cgroup2: Some(PathBuf::from("/sys/fs/cgroup")),
            lockdown: Some("none".into()),
        }
    }
}

fn tracepoint_exists(root: &Path, category: &str, name: &str) -> bool {
    root.join("events").join(category).join(name).is_dir()
}

/// Checks privileges up front, so the user gets the fix rather than a bare EPERM.
pub fn check_privileges() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    // CAP_PERFMON = 38, CAP_BPF = 39 (include/uapi/linux/capability.h).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let needed = (1u64 << 38) | (1u64 << 39);
    if effective & needed == needed {
        Ok(())
    } else {
        Err(Error::NotPermitted)
    }
}

fn privileges() -> Found {
    match check_privileges() {
        Ok(()) => Found::yes("root or CAP_BPF + CAP_PERFMON"),
        Err(_) => Found::no("not root and no CAP_BPF + CAP_PERFMON"),
    }
}

fn kernel_btf() -> Found {
    let [exit_code, live] =
        btf::kernel_member_offsets([("task_struct", "exit_code"), ("signal_struct", "live")]);
    if !Path::new(btf::KERNEL_BTF).exists() {
        return Found::no(format!(
            "{} missing (CONFIG_DEBUG_INFO_BTF)",
            btf::KERNEL_BTF
        ));
    }
    match (exit_code, live) {
        (Some(_), Some(_)) => Found::yes(btf::KERNEL_BTF),
        _ => Found::no(format!(
            "{} lacks task_struct.exit_code or signal_struct.live",
            btf::KERNEL_BTF
        )),
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn lockdown() -> Option<String> {
    parse_lockdown(&std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?)
}

/// The bracketed word of /sys/kernel/security/lockdown (`none [integrity] confidentiality`).
fn parse_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

// ---- the bpf(2) probes (include/uapi/linux/bpf.h) ----

const MAP_TYPE_RINGBUF: u32 = 27;

/// `struct bpf_insn`: opcode, dst (low nibble) and src (high nibble) registers, offset, imm.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// `r0 = 0; exit`.
const EMPTY: [Insn; 2] = [insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)];

/// `call bpf_get_current_task_btf; r1 = r0; call bpf_task_pt_regs; r0 = 0; exit`
/// (helpers 158 and 175 of include/uapi/linux/bpf.h): a kernel without either rejects the
/// call as an unknown function (before 5.11 and 5.15).
const TASK_REGS: [Insn; 5] = [
    insn(0x85, 0, 0, 0, 158),
    insn(0xbf, 1, 0, 0, 0),
    insn(0x85, 0, 0, 0, 175),
    insn(0xb7, 0, 0, 0, 0),
    insn(0x95, 0, 0, 0, 0),
];

fn describe(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ENOSYS) => "no bpf() system call (CONFIG_BPF_SYSCALL)".into(),
        Some(libc::EINVAL) => "not supported by this kernel".into(),
        _ => err.to_string(),
    }
}

fn ring_buffer() -> Found {
    #[repr(C)]
    struct MapCreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    let mut attr = MapCreateAttr {
        map_type: MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: page,
        map_flags: 0,
    };
    match bpf(BPF_MAP_CREATE, &mut attr) {
        Ok(_fd) => Found::yes("BPF_MAP_TYPE_RINGBUF"),
        Err(err) => Found::no(describe(&err)),
    }
}

fn load(prog_type: u32, insns: &[Insn], attach_type: u32, btf_id: u32) -> std::io::Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        attach_btf_id: btf_id,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr)
}

fn load_check(what: &str, prog_type: u32, insns: &[Insn]) -> Found {
    match load(prog_type, insns, 0, 0) {
        Ok(_fd) => Found::yes(what),
        Err(err) => Found::no(format!("{what}: {}", describe(&err))),
    }
}

/// Loads an empty fentry program on `tcp_sendmsg` and attaches it for an instant: fentry
/// needs BTF, the BPF trampoline (x86_64 with DYNAMIC_FTRACE_WITH_DIRECT_CALLS) and a
/// kernel that lets tracing programs attach, and only trying tells all three.
fn fentry() -> Found {
    const FUNCTION: &str = "tcp_sendmsg";
    let Some(id) = btf::kernel_func_id(FUNCTION) else {
        return Found::no(format!("no kernel BTF for {FUNCTION}"));
    };
    let prog = match load(PROG_TYPE_TRACING, &EMPTY, TRACE_FENTRY, id) {
        Ok(fd) => fd,
        Err(err) => return Found::no(format!("load: {}", describe(&err))),
    };
    #[repr(C)]
    struct RawTpOpenAttr {
        name: u64,
        prog_fd: u32,
        _pad: u32,
    }
    let mut attr = RawTpOpenAttr {
        name: 0,
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        _pad: 0,
    };
    match bpf(BPF_RAW_TRACEPOINT_OPEN, &mut attr) {
        Ok(_link) => Found::yes(format!("attached to {FUNCTION}")),
        Err(err) => Found::no(format!("attach: {}", describe(&err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With two tracepoints a hook backend would look up (features knows none of its own).
    fn complete() -> Features {
        Features::complete(&[("sock", "sock_send_length"), ("tcp", "tcp_destroy_sock")])
    }

    #[test]
    fn a_complete_kernel_passes_and_optional_absences_do_not_matter() {
        let mut f = complete();
        f.btf = Found::no("no BTF");
        f.kprobes = false;
        f.fentry = Found::no("attach: permission denied");
        f.tracepoints.retain(|&(c, _, _)| c != "sock" && c != "tcp");
        f.require_essentials(true).unwrap();
    }

    #[test]
    fn a_kernel_older_than_5_8_is_refused_naming_the_feature_and_the_release() {
        let mut f = complete();
        f.release = "5.4.0-200-generic".into();
        f.ring_buffer = Found::no("not supported by this kernel");
        let text = f.require_essentials(true).unwrap_err().to_string();
        assert!(text.contains("5.4.0-200-generic"), "{text}");
        assert!(text.contains("BPF ring buffer"), "{text}");
        assert!(
            text.contains(&format!("Linux {MINIMUM_KERNEL} or newer")),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
    }

    #[test]
    fn a_missing_lifecycle_tracepoint_is_fatal_and_raw_syscalls_only_with_sockets() {
        let mut f = complete();
        for tp in f.tracepoints.iter_mut() {
            if tp.1 == "sys_enter" {
                tp.2 = false;
            }
        }
        assert!(
            f.require_essentials(false).is_ok(),
            "--no-sockets needs no syscall hooks"
        );
        let text = f.require_essentials(true).unwrap_err().to_string();
        assert!(text.contains("raw_syscalls:sys_enter"), "{text}");
        for tp in f.tracepoints.iter_mut() {
            if tp.1 == "sched_process_exit" {
                tp.2 = false;
            }
        }
        let text = f.require_essentials(false).unwrap_err().to_string();
        assert!(text.contains("sched:sched_process_exit"), "{text}");
    }

    #[test]
    fn lockdown_confidentiality_and_missing_privileges_are_refused() {
        let mut f = complete();
        f.lockdown = Some("confidentiality".into());
        let text = f.require_essentials(true).unwrap_err().to_string();
        assert!(text.contains("lockdown"), "{text}");
        let mut f = complete();
        f.privileged = Found::no("not root");
        assert!(matches!(
            f.require_essentials(true),
            Err(Error::NotPermitted)
        ));
    }

    #[test]
    fn instructions_have_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        // `*(u64 *)(r10 - 8) = 0`: dst r10 in the low nibble, offset -8.
        let raw: [u8; 8] = unsafe { std::mem::transmute(insn(0x7a, 10, 0, -8, 0)) };
        assert_eq!(raw, [0x7a, 0x0a, 0xf8, 0xff, 0, 0, 0, 0]);
        // `r1 = r0`: dst r1, src r0; `call 175`: the helper number in imm.
        let raw: [u8; 8] = unsafe { std::mem::transmute(TASK_REGS[1]) };
        assert_eq!(raw, [0xbf, 0x01, 0, 0, 0, 0, 0, 0]);
        let raw: [u8; 8] = unsafe { std::mem::transmute(TASK_REGS[2]) };
        assert_eq!(raw, [0x85, 0, 0, 0, 175, 0, 0, 0]);
    }

    #[test]
    fn lockdown_word_is_the_bracketed_one() {
        let text = "none [integrity] confidentiality\n";
        assert_eq!(parse_lockdown(text).as_deref(), Some("integrity"));
        assert_eq!(
            parse_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(parse_lockdown("garbage"), None);
    }
}
