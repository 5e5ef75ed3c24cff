//! drainwatch's kernel side.
//!
//! Every program filters by target first: a test of the current task (or the task the
//! tracepoint is about) in the target bitmaps, then a hash lookup in `TARGETS`, and returns at
//! once for everything else. Only then does it reserve a ring-buffer slot, write the whole
//! event into it (reservations are not zeroed) and submit it.
//!
//! Naming follows the kernel: a **tgid** is a process id, a **pid** is a thread id.
//!
//! Modules: [`shared`] (the maps and helpers every program uses: target filter, ring buffer,
//! counters), [`lifecycle`] (signals, fork, exec, exit), [`sockets`] (the syscall hooks, one
//! module per hook), and the probe units' kernel halves, one line each of [`units!`]'s list
//! ([`ops`]: operations, uprobes on the target's own functions, `--op`; each runtime's own
//! operation programs are a module of their own under it, `ops/<runtime>.rs`).
#![no_std]
#![no_main]
// The bpf target has no compare-and-swap, so `AtomicU64::fetch_add` is not offered; the
// intrinsic lowers to the BPF atomic add instruction (`BPF_ATOMIC | BPF_ADD`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod lifecycle;
mod shared;
mod sockets;

/// The probe units' kernel halves: each line a module, which has `thread_exit(tgid, pid)`
/// (called by `sched_process_exit` for every exiting thread of a target, before its process's
/// exit event). A new unit is its module and one line.
macro_rules! units {
    ($($module:ident),* $(,)?) => {
        $(mod $module;)*

        /// Every unit's `thread_exit` (its arguments unused in a tree without units).
        #[inline(always)]
        #[allow(unused_variables)]
        fn units_thread_exit(tgid: u32, pid: u32) {
            $($module::thread_exit(tgid, pid);)*
        }
    };
}

units! {
    ops,
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this is only for the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
