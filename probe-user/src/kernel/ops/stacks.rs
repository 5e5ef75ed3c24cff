//! Operations already in flight at attach. A call entered before its uprobe was planted has
//! no return probe either: the kernel never sees it end. Left out, `wait` would say drained
//! while such a call is between its writes (docs/design.md: what cannot be known at attach is
//! never silently assumed idle). So each thread of a newly hooked process is looked at: a
//! thread blocked in a system call (`/proc/PID/task/TID/syscall` gives its user stack pointer
//! and program counter, see proc(5)) whose program counter, or a word of its live stack, is
//! an address inside a hooked function, is inside that function. The stack is read with
//! process_vm_readv(2): the process is not stopped or traced.
//!
//! A thread found inside is marked in the kernel's `OP_CALLS` (kernel/ops/mod.rs, `mark`):
//! its exit inside the operation is then the kernel's to report, in order with its
//! process's exit; a look after the thread is gone could not tell.
//!
//! A stale word in a live frame (an uninitialised local that once held such an address) can
//! make a thread look inside when it is not: that errs towards holding the drain, and ends at
//! the thread's next look that finds no such word, or its next hooked call.

use std::io::IoSliceMut;

/// What a look at one thread found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Look {
    /// Inside the hooked function with this index.
    Inside(u32),
    Outside,
    /// Running on a CPU (its registers cannot be read without stopping it), or its stack
    /// could not be read: look again later.
    Unknown,
    /// The thread is gone.
    Gone,
}

/// Most bytes of a stack read above the stack pointer: deep enough for any server's
/// worker frames, small enough to read every tick while a look is unsettled.
const MAX_STACK: u64 = 1 << 20;

/// Looks at thread `tid` of `tgid`; `ranges` are the hooked functions in its memory:
/// (start, end, function index).
pub(super) fn look(tgid: u32, tid: u32, ranges: &[(u64, u64, u32)]) -> Look {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/syscall")) else {
        return Look::Gone;
    };
    let Some((sp, pc)) = sp_pc(&text) else {
        return Look::Unknown;
    };
    if let Some(function) = inside(pc, ranges, false) {
        return Look::Inside(function);
    }
    let Some(end) = mapping_end(tgid, sp) else {
        return Look::Unknown;
    };
    let Some(stack) = read_memory(tgid, sp, end.saturating_sub(sp).min(MAX_STACK)) else {
        return Look::Unknown;
    };
    for word in stack.chunks_exact(8) {
        let word = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
        if let Some(function) = inside(word, ranges, true) {
            return Look::Inside(function);
        }
    }
    Look::Outside
}

/// The user stack pointer and program counter of a thread blocked in a system call (or
/// otherwise not running): the last two fields of its `syscall` file; `None` for `running`.
fn sp_pc(text: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    Some((
        hex(fields[fields.len() - 2])?,
        hex(fields[fields.len() - 1])?,
    ))
}

/// The function whose code holds `addr`. A return address follows its call instruction, so
/// it may equal the end of a function whose last instruction is a call (`ret_addr`).
fn inside(addr: u64, ranges: &[(u64, u64, u32)], ret_addr: bool) -> Option<u32> {
    ranges
        .iter()
        .find(|(start, end, _)| {
            if ret_addr {
                *start < addr && addr <= *end
            } else {
                *start <= addr && addr < *end
            }
        })
        .map(|(_, _, function)| *function)
}

/// The end of the mapping of `tgid` that holds `addr` (its stack).
fn mapping_end(tgid: u32, addr: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let range = line.split_whitespace().next()?;
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then_some(end)
    })
}

fn read_memory(tgid: u32, addr: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let mut local = [IoSliceMut::new(&mut buf)];
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len as usize,
    };
    // SAFETY: one local iovec over `buf`, which lives to the end of the call; the remote one
    // names memory of another process, which the kernel checks (it fails, never faults us).
    let read = unsafe {
        libc::process_vm_readv(
            tgid as libc::pid_t,
            local.as_mut_ptr().cast(),
            1,
            &remote,
            1,
            0,
        )
    };
    (read > 0).then(|| {
        buf.truncate(read as usize);
        buf
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_file_gives_sp_and_pc_unless_running() {
        let blocked =
            "230 0x1 0x0 0x7f0012345e60 0x7f0012345e60 0x0 0x0 0x7f00123459f8 0x7f0012abc27f\n";
        assert_eq!(sp_pc(blocked), Some((0x7f00123459f8, 0x7f0012abc27f)));
        assert_eq!(
            sp_pc("-1 0x7ffd1000 0x401000\n"),
            Some((0x7ffd1000, 0x401000))
        );
        assert_eq!(sp_pc("running\n"), None);
    }

    #[test]
    fn a_return_address_may_sit_at_the_very_end_of_a_function() {
        let ranges = [(0x1000, 0x1080, 0), (0x2000, 0x2010, 1)];
        assert_eq!(inside(0x1080, &ranges, true), Some(0));
        assert_eq!(inside(0x1080, &ranges, false), None);
        assert_eq!(inside(0x1000, &ranges, true), None);
        assert_eq!(inside(0x1000, &ranges, false), Some(0));
        assert_eq!(inside(0x2008, &ranges, true), Some(1));
        assert_eq!(inside(0x3000, &ranges, true), None);
    }

    #[test]
    fn a_thread_of_this_process_is_seen_inside_a_function_on_its_stack() {
        // This test's own thread, blocked in a read of a pipe from a known function: its
        // stack holds a return address into that function.
        let (mut read_end, mut write_end) = std::io::pipe().expect("pipe");
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).expect("send tid");
            blocked_read(&mut read_end);
        });
        let tid = rx.recv().expect("tid");
        let start = blocked_read as *const () as u64;
        let ranges = [(start, start + 4096, 7)];
        let tgid = std::process::id();
        let mut found = Look::Unknown;
        for _ in 0..200 {
            found = look(tgid, tid, &ranges);
            if found != Look::Unknown && found != Look::Outside {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        use std::io::Write;
        write_end.write_all(b"x").expect("wake the reader");
        worker.join().expect("join");
        assert_eq!(found, Look::Inside(7));
        assert_eq!(look(tgid, u32::MAX - 1, &ranges), Look::Gone);
    }

    #[inline(never)]
    fn blocked_read(pipe: &mut std::io::PipeReader) {
        use std::io::Read;
        let mut byte = [0u8; 1];
        let _ = std::hint::black_box(pipe.read(&mut byte));
    }
}
