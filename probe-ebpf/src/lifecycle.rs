//! Signals and process lifecycle: `signal:signal_generate`, `sched:sched_process_fork`,
//! `sched:sched_process_exec`, `sched:sched_process_exit`.
//!
//! Each is attached one of two ways (docs/hooks.md, "Lifecycle hooks"): as a raw tracepoint
//! (`raw_*`, BPF_RAW_TRACEPOINT_OPEN: no perf event, so neither attach nor detach takes the
//! kernel's `event_mutex`, which another drainwatch's teardown holds across RCU grace
//! periods), reading the tracepoint's `TP_PROTO` arguments and the structs they point to at
//! offsets from kernel BTF; or, where BTF lacks those offsets, as a classic tracepoint,
//! reading its record at offsets from the event's format (include/trace/events/signal.h and
//! include/trace/events/sched.h say how the record is filled from the arguments). The logic
//! is one, generic over [`LifecycleArgs`].

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use probe_common::{
    Counter, EventKind, ExecEvent, ExitEvent, ForkEvent, ProbeConfig, SignalEvent, TargetInfo,
    COMM_LEN, NO_OFFSET, ORIGIN_COMM, ORIGIN_FORK, ORIGIN_LAUNCHED_TREE, ORIGIN_SIGNALLED,
    TRACE_SIGNAL_IGNORED,
};

use crate::shared::{
    add_signalled_target, add_target, bump, config, current_tgid_pid, emit, header, is_target,
    target, COMMS, TARGETS,
};

/// What the lifecycle programs read from their tracepoint, whichever way it is attached.
trait LifecycleArgs: EbpfContext {
    /// signal_generate: the receiving thread's pid (the record's `pid`).
    fn signal_pid(&self, cfg: &ProbeConfig) -> Result<u32, u32>;
    fn signal_sig(&self, cfg: &ProbeConfig) -> Result<i32, u32>;
    /// The record's `code`: `si_code`, or what TP_STORE_SIGINFO stores for the two
    /// pseudo-siginfos.
    fn signal_code(&self, cfg: &ProbeConfig) -> Result<i32, u32>;
    fn signal_group(&self, cfg: &ProbeConfig) -> Result<u32, u32>;
    fn signal_result(&self, cfg: &ProbeConfig) -> Result<i32, u32>;
    /// The receiver's `comm`.
    fn signal_comm(&self, cfg: &ProbeConfig) -> [u8; COMM_LEN];
    /// sched_process_fork: the child's pid.
    fn fork_child_pid(&self, cfg: &ProbeConfig) -> Result<u32, u32>;
    /// sched_process_exit's `group_dead` where the tracepoint carries it (kernels after
    /// 6.12; `cfg.exit_group_dead_off` says whether it does).
    fn exit_group_dead(&self, cfg: &ProbeConfig) -> Result<bool, u32>;
}

impl LifecycleArgs for TracePointContext {
    #[inline(always)]
    fn signal_pid(&self, cfg: &ProbeConfig) -> Result<u32, u32> {
        read_i32(self, cfg.signal_pid_off).map(|pid| pid as u32)
    }
    #[inline(always)]
    fn signal_sig(&self, cfg: &ProbeConfig) -> Result<i32, u32> {
        read_i32(self, cfg.signal_sig_off)
    }
    #[inline(always)]
    fn signal_code(&self, cfg: &ProbeConfig) -> Result<i32, u32> {
        read_i32(self, cfg.signal_code_off)
    }
    #[inline(always)]
    fn signal_group(&self, cfg: &ProbeConfig) -> Result<u32, u32> {
        read_i32(self, cfg.signal_group_off).map(|group| group as u32)
    }
    #[inline(always)]
    fn signal_result(&self, cfg: &ProbeConfig) -> Result<i32, u32> {
        read_i32(self, cfg.signal_result_off)
    }
    #[inline(always)]
    fn signal_comm(&self, cfg: &ProbeConfig) -> [u8; COMM_LEN] {
        // SAFETY: the offset comes from the tracepoint's own format (`char comm[16]`).
        unsafe { self.read_at::<[u8; COMM_LEN]>(cfg.signal_comm_off as usize) }
            .unwrap_or([0; COMM_LEN])
    }
    #[inline(always)]
    fn fork_child_pid(&self, cfg: &ProbeConfig) -> Result<u32, u32> {
        read_i32(self, cfg.fork_child_pid_off).map(|pid| pid as u32)
    }
    #[inline(always)]
    fn exit_group_dead(&self, cfg: &ProbeConfig) -> Result<bool, u32> {
        // SAFETY: offset from the format; group_dead is a one-byte bool.
        let dead =
            unsafe { self.read_at::<u8>(cfg.exit_group_dead_off as usize) }.map_err(|_| 0u32)?;
        Ok(dead != 0)
    }
}

/// `SEND_SIG_NOINFO` and `SEND_SIG_PRIV`, the two pseudo-pointers a kernel sender passes for
/// `info` (include/linux/sched/signal.h), and the `si_code`s the record stores for them
/// (TP_STORE_SIGINFO, include/trace/events/signal.h; SI_USER, SI_KERNEL from
/// include/uapi/asm-generic/siginfo.h).
const SEND_SIG_NOINFO: u64 = 0;
const SEND_SIG_PRIV: u64 = 1;
const SI_USER: i32 = 0;
const SI_KERNEL: i32 = 0x80;

/// The raw tracepoints' arguments are their `TP_PROTO`s: signal_generate(int sig, struct
/// kernel_siginfo *info, struct task_struct *task, int group, int result),
/// sched_process_fork(struct task_struct *parent, struct task_struct *child),
/// sched_process_exit(struct task_struct *p[, bool group_dead]) (include/trace/events/).
/// An `int` argument is passed sign-extended to 64 bits (`__bpf_trace_*`, include/trace/
/// bpf_probe.h); its low 32 bits are the value.
impl LifecycleArgs for RawTracePointContext {
    #[inline(always)]
    fn signal_pid(&self, cfg: &ProbeConfig) -> Result<u32, u32> {
        read_kernel::<i32>(self.arg::<u64>(2), cfg.task_pid_off).map(|pid| pid as u32)
    }
    #[inline(always)]
    fn signal_sig(&self, _cfg: &ProbeConfig) -> Result<i32, u32> {
        Ok(self.arg::<u64>(0) as i32)
    }
    #[inline(always)]
    fn signal_code(&self, cfg: &ProbeConfig) -> Result<i32, u32> {
        match self.arg::<u64>(1) {
            SEND_SIG_NOINFO => Ok(SI_USER),
            SEND_SIG_PRIV => Ok(SI_KERNEL),
            info => read_kernel::<i32>(info, cfg.siginfo_code_off),
        }
    }
    #[inline(always)]
    fn signal_group(&self, _cfg: &ProbeConfig) -> Result<u32, u32> {
        Ok(self.arg::<u64>(3) as i32 as u32)
    }
    #[inline(always)]
    fn signal_result(&self, _cfg: &ProbeConfig) -> Result<i32, u32> {
        Ok(self.arg::<u64>(4) as i32)
    }
    #[inline(always)]
    fn signal_comm(&self, cfg: &ProbeConfig) -> [u8; COMM_LEN] {
        read_kernel::<[u8; COMM_LEN]>(self.arg::<u64>(2), cfg.task_comm_off)
            .unwrap_or([0; COMM_LEN])
    }
    #[inline(always)]
    fn fork_child_pid(&self, cfg: &ProbeConfig) -> Result<u32, u32> {
        read_kernel::<i32>(self.arg::<u64>(1), cfg.task_pid_off).map(|pid| pid as u32)
    }
    #[inline(always)]
    fn exit_group_dead(&self, _cfg: &ProbeConfig) -> Result<bool, u32> {
        // Reached only where the tracepoint has the argument (`exit_group_dead_off` set, a
        // load-time constant): the kernel refuses to attach a raw tracepoint program that
        // reads past its tracepoint's arguments.
        Ok(self.arg::<u64>(1) as u8 != 0)
    }
}

#[inline(always)]
fn read_i32(ctx: &TracePointContext, offset: u32) -> Result<i32, u32> {
    // SAFETY: the offset comes from the tracepoint's own format and is inside the record.
    unsafe { ctx.read_at::<i32>(offset as usize) }.map_err(|_| 0u32)
}

/// A `T` at `base + offset` in kernel memory, through bpf_probe_read_kernel, which fails
/// cleanly on a bad address.
#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Result<T, u32> {
    // SAFETY: see above; the offset comes from kernel BTF.
    unsafe { bpf_probe_read_kernel((base as *const u8).wrapping_add(offset as usize) as *const T) }
        .map_err(|_| 0u32)
}

#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    match try_signal_generate(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[raw_tracepoint]
pub fn raw_signal_generate(ctx: RawTracePointContext) -> u32 {
    match try_signal_generate(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_signal_generate<C: LifecycleArgs>(ctx: &C) -> Result<u32, u32> {
    let cfg = config();
    let target_pid = ctx.signal_pid(&cfg)?;
    let (sender_tgid, sender_pid) = current_tgid_pid();
    let mut followed = 0;
    if !is_target(target_pid) {
        // Every signal on the machine passes here: for one between two non-targets, the
        // sender's bitmap bit is clear and this ends after two array reads.
        if !launched_tree(sender_tgid) {
            return Ok(0);
        }
        let sig = ctx.signal_sig(&cfg)?;
        let code = ctx.signal_code(&cfg)?;
        let result = ctx.signal_result(&cfg)?;
        if !follows(&cfg, target_pid, sig, code, result) {
            return Ok(0);
        }
        // A target from this moment (docs/design.md, "Command line"): its connections and
        // its exit are seen from the next instruction it runs; userspace surveys what it
        // already had going when it reads this event. Its tgid is not known here (a
        // tgkill names a thread); userspace adds the process's own entry.
        if add_signalled_target(target_pid, &TargetInfo::new(0, ORIGIN_SIGNALLED)).is_err() {
            bump(Counter::TargetsFull);
            return Ok(0);
        }
        followed = 1;
    }
    let sig = ctx.signal_sig(&cfg)?;
    let code = ctx.signal_code(&cfg)?;
    let group = ctx.signal_group(&cfg)?;
    let result = ctx.signal_result(&cfg)?;
    debug!(ctx, "signal {} to {} from {}", sig, target_pid, sender_tgid);
    emit(|| SignalEvent {
        header: header::<SignalEvent>(EventKind::Signal),
        target_pid,
        sender_tgid,
        sender_pid,
        sig,
        code,
        result,
        group,
        followed,
        sender_comm: current_comm(),
        target_comm: ctx.signal_comm(&cfg),
    });
    Ok(0)
}

/// Whether the current process is the command `audit -- CMD` launched or one it forked.
#[inline(always)]
fn launched_tree(tgid: u32) -> bool {
    match target(tgid) {
        // SAFETY: a pointer into the map value, valid for this program run; `origin` is
        // written once, when the entry is made.
        Some(info) => (unsafe { (*info).origin } & ORIGIN_LAUNCHED_TREE) != 0,
        None => false,
    }
}

/// Whether a signal from the launched tree makes its receiver a target: one a process sent
/// (kill(2), tgkill(2), sigqueue(3), pidfd_send_signal(2): `si_code` 0 or negative), not
/// one the kernel generates on the tree's behalf (SIGCHLD to a parent outside it when a
/// child exits, SIGPIPE, a tty's SIGHUP: positive codes); one the receiver does not ignore
/// (a kernel thread reached by kill(-1, ...) ignores every signal); never drainwatch itself
/// (kill(0, ...) reaches the process group it shares with the command). A signal 0 (kill -0,
/// a liveness check) never gets here: kill_pid_info() checks permission and stops
/// (kernel/signal.c); it is refused again below for safety.
#[inline(always)]
fn follows(cfg: &ProbeConfig, target_pid: u32, sig: i32, code: i32, result: i32) -> bool {
    sig > 0 && code <= 0 && result != TRACE_SIGNAL_IGNORED && target_pid != cfg.self_tgid
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    match try_sched_process_fork(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[raw_tracepoint]
pub fn raw_sched_process_fork(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_fork(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_sched_process_fork<C: LifecycleArgs>(ctx: &C) -> Result<u32, u32> {
    // The parent is the current task: filter on its tgid before reading anything else.
    let (parent_tgid, parent_pid) = current_tgid_pid();
    let Some(parent) = target(parent_tgid) else {
        return Ok(0);
    };
    let cfg = config();
    if cfg.follow_forks == 0 {
        return Ok(0);
    }
    // SAFETY: a pointer into the map value, valid for this program run.
    let tree = unsafe { (*parent).origin } & ORIGIN_LAUNCHED_TREE;
    let child_pid = ctx.fork_child_pid(&cfg)?;
    // Follow the child in the kernel, before it can run: userspace would be too late for a
    // child that is killed at once. It may be a thread (clone with CLONE_THREAD); userspace
    // tells them apart, and the exit program forgets threads as they go.
    // What the launched command forks is its tree too: their signals are followed.
    let info = TargetInfo::new(0, ORIGIN_FORK | tree);
    if add_target(child_pid, &info).is_err() {
        bump(Counter::TargetsFull);
    }
    emit(|| ForkEvent {
        header: header::<ForkEvent>(EventKind::Fork),
        parent_tgid,
        parent_pid,
        child_pid,
        _pad: 0,
        comm: current_comm(),
    });
    Ok(0)
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[raw_tracepoint]
pub fn raw_sched_process_exec(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_exec(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_sched_process_exec<C: LifecycleArgs>(_ctx: &C) -> Result<u32, u32> {
    // exec runs in the new image, after de_thread() and after begin_new_exec() set the new
    // comm: the current tgid is the process and its comm is the program's name.
    let (tgid, pid) = current_tgid_pid();
    let comm = current_comm();
    if !is_target(tgid) {
        // SAFETY: presence check only.
        if unsafe { COMMS.get(&comm) }.is_none() {
            return Ok(0);
        }
        // A process started under a watched name (--comm): a target from now on.
        let info = TargetInfo::new(tgid, ORIGIN_COMM);
        if add_target(tgid, &info).is_err() {
            bump(Counter::TargetsFull);
            return Ok(0);
        }
    }
    emit(|| ExecEvent {
        header: header::<ExecEvent>(EventKind::Exec),
        tgid,
        pid,
        comm,
    });
    Ok(0)
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[raw_tracepoint]
pub fn raw_sched_process_exit(ctx: RawTracePointContext) -> u32 {
    match try_sched_process_exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[inline(always)]
fn try_sched_process_exit<C: LifecycleArgs>(ctx: &C) -> Result<u32, u32> {
    // do_exit() fires this in the exiting task's own context (kernel/exit.c).
    let (tgid, pid) = current_tgid_pid();
    if !is_target(tgid) && !is_target(pid) {
        return Ok(0);
    }
    let cfg = config();
    let group_dead = group_dead(ctx, &cfg, tgid, pid)?;
    crate::sockets::pending::release_thread_slot(pid);
    crate::units_thread_exit(tgid, pid);
    if pid != tgid {
        // A followed thread (or a thread of a target) going away: forget its own entry.
        let _ = TARGETS.remove(&pid);
    }
    if !group_dead {
        return Ok(0);
    }
    // Removing the tgid's entry is also the once-only gate: where `live` stands in for
    // group_dead, two threads exiting together can both read 0, and only the one whose
    // delete succeeds reports the exit.
    let removed = TARGETS.remove(&tgid).is_ok();
    // After the entry: no counters can be made for it from here on.
    crate::sockets::forget_counters(tgid);
    if !removed && cfg.exit_group_dead_off == NO_OFFSET {
        return Ok(0);
    }
    let (exit_code, exit_code_known) = read_exit_code(cfg.task_exit_code_off);
    emit(|| ExitEvent {
        header: header::<ExitEvent>(EventKind::Exit),
        tgid,
        pid,
        exit_code,
        exit_code_known,
        comm: current_comm(),
    });
    Ok(0)
}

/// Whether the exiting thread is the last of its process. The tracepoint says so itself on
/// kernels after 6.12 (`group_dead`); before, do_exit() has already decremented
/// `current->signal->live` when the tracepoint fires, so 0 there means the same
/// (kernel/exit.c: `group_dead = atomic_dec_and_test(&tsk->signal->live)`). Without kernel
/// BTF for those offsets, the main thread's exit stands for the process's.
#[inline(always)]
fn group_dead<C: LifecycleArgs>(
    ctx: &C,
    cfg: &ProbeConfig,
    tgid: u32,
    pid: u32,
) -> Result<bool, u32> {
    if cfg.exit_group_dead_off != NO_OFFSET {
        return ctx.exit_group_dead(cfg);
    }
    if cfg.task_signal_off == NO_OFFSET || cfg.signal_live_off == NO_OFFSET {
        return Ok(pid == tgid);
    }
    // SAFETY: the current task_struct, read through bpf_probe_read_kernel, which fails
    // cleanly on a bad address; the offsets come from kernel BTF.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let signal = unsafe {
        bpf_probe_read_kernel(task.wrapping_add(cfg.task_signal_off as usize) as *const u64)
    }
    .map_err(|_| 0u32)? as *const u8;
    let live = unsafe {
        bpf_probe_read_kernel(signal.wrapping_add(cfg.signal_live_off as usize) as *const i32)
    }
    .map_err(|_| 0u32)?;
    Ok(live == 0)
}

/// `current->exit_code`, set by do_exit() before the tracepoint fires; the offset comes from
/// kernel BTF (0 when userspace could not find it).
#[inline(always)]
fn read_exit_code(offset: u32) -> (u32, u32) {
    if offset == 0 {
        return (0, 0);
    }
    // SAFETY: bpf_get_current_task returns the current task_struct; the read goes through
    // bpf_probe_read_kernel, which fails cleanly on a bad address.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    match unsafe { bpf_probe_read_kernel(task.wrapping_add(offset as usize) as *const i32) } {
        Ok(code) => (code as u32, 1),
        Err(_) => (0, 0),
    }
}
