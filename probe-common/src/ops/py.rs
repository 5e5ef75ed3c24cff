//! Operations in CPython 3.11 (`--op` on a Python target): what its programs
//! (probe-ebpf/src/ops/py.rs) and userspace (probe-user/src/kernel/ops/python.rs) share.
//!
//! A call is keyed in `OP_GO_CALLS` by its interpreter frame's address
//! ([`crate::ops::OpGoKey`], `g` holding the `_PyInterpreterFrame *`): a coroutine's frame
//! lives inside the coroutine object for its whole life, across every `await`, on whatever
//! thread resumes it.

/// Name of the map of the `--op` functions of Python targets ([`PyOpName`] by name).
pub const PY_OP_NAMES: &str = "PY_OP_NAMES";

/// Longest CPython function name (`co_name`) and file suffix `--op` compares, NUL
/// included: longer names are compared on their first 63 bytes.
pub const PY_NAME_LEN: usize = 64;
/// Bytes of a CPython code object's file name (`co_filename`) read to compare its end.
pub const PY_FILE_LEN: usize = 256;

/// CPython 3.11's layout, as the kernel reads it at the USDT markers `function__entry` and
/// `function__return` (probe-ebpf/src/ops/py.rs). Internal to CPython, so userspace checks
/// the interpreter is 3.11 and decodes its marker functions before using them
/// (probe-user/src/kernel/ops/python.rs).
pub mod py311 {
    /// `_PyInterpreterFrame.prev_instr` (Include/internal/pycore_frame.h: six pointers,
    /// then `previous`, then `prev_instr`).
    pub const FRAME_PREV_INSTR: u64 = 0x38;
    /// Opcodes (Include/opcode.h): a frame starts or resumes at RESUME (RESUME_QUICK once
    /// quickened); its oparg is 0 at the start of the code, 1-3 after a yield or an await.
    pub const RESUME: u16 = 151;
    pub const RESUME_QUICK: u16 = 150;
    /// A generator or coroutine suspends at YIELD_VALUE (each `await` that waits ends in
    /// one); its final return is RETURN_VALUE, or an exception unwinding out.
    pub const YIELD_VALUE: u16 = 86;
}

/// Value of `PY_OP_NAMES`, keyed by a CPython function's name (`co_name`, NUL-padded to
/// [`PY_NAME_LEN`]): which `--op` it is, and the end of the file name it must be in
/// (`FILE:FUNCTION`; none when `suffix_len` is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyOpName {
    pub function: u32,
    pub suffix_len: u32,
    pub suffix: [u8; PY_NAME_LEN],
}

const _: () = assert!(core::mem::size_of::<PyOpName>() == 8 + PY_NAME_LEN);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::PyOpName {}
}
