//! The few bpf(2) commands drainwatch issues itself rather than through aya: the feature
//! probes (kernel/features.rs) and the programs aya 0.14 cannot load for the link they need
//! (kernel/uprobe_multi.rs). Each `*Attr` is the leading part of `union bpf_attr` for one
//! command, laid out as include/uapi/linux/bpf.h declares it; the kernel accepts an attr
//! shorter than its own and reads the rest as zero (`bpf_check_uarg_tail_zero`).

use std::os::fd::{FromRawFd, OwnedFd};

pub const BPF_MAP_CREATE: libc::c_long = 0;
pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
pub const BPF_BTF_LOAD: libc::c_long = 18;
pub const BPF_LINK_CREATE: libc::c_long = 28;

pub const PROG_TYPE_KPROBE: u32 = 2;
pub const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
pub const PROG_TYPE_TRACING: u32 = 26;
pub const TRACE_FENTRY: u32 = 24;
pub const TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_F_UPROBE_MULTI_RETURN`: the link's uprobes are uretprobes.
pub const F_UPROBE_MULTI_RETURN: u32 = 1;

/// BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
pub struct ProgLoadAttr {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
    pub prog_btf_fd: u32,
    pub func_info_rec_size: u32,
    pub func_info: u64,
    pub func_info_cnt: u32,
    pub line_info_rec_size: u32,
    pub line_info: u64,
    pub line_info_cnt: u32,
    pub attach_btf_id: u32,
    pub attach_prog_fd: u32,
    pub _pad: u32,
}

/// BPF_BTF_LOAD.
#[repr(C)]
#[derive(Default)]
pub struct BtfLoadAttr {
    pub btf: u64,
    pub btf_log_buf: u64,
    pub btf_size: u32,
    pub btf_log_size: u32,
    pub btf_log_level: u32,
    pub _pad: u32,
}

/// BPF_LINK_CREATE with its `uprobe_multi` member (Linux 6.6).
#[repr(C)]
#[derive(Default)]
pub struct UprobeMultiLinkAttr {
    pub prog_fd: u32,
    pub target_fd: u32,
    pub attach_type: u32,
    pub flags: u32,
    pub path: u64,
    pub offsets: u64,
    pub ref_ctr_offsets: u64,
    pub cookies: u64,
    pub cnt: u32,
    pub multi_flags: u32,
    pub pid: u32,
    pub _pad: u32,
}

/// Issues bpf(2) command `cmd` with `attr`; the new fd it returns is ours.
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a live, initialised bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a successful bpf() command returns a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn attr_fields_sit_where_the_kernel_reads_them() {
        // Offsets from include/uapi/linux/bpf.h, union bpf_attr.
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(ProgLoadAttr, prog_btf_fd), 72);
        assert_eq!(offset_of!(ProgLoadAttr, func_info), 80);
        assert_eq!(offset_of!(ProgLoadAttr, line_info), 96);
        assert_eq!(offset_of!(ProgLoadAttr, attach_btf_id), 108);
        assert_eq!(offset_of!(BtfLoadAttr, btf_size), 16);
        assert_eq!(offset_of!(BtfLoadAttr, btf_log_level), 24);
        // link_create: the per-kind union starts at 16, aligned to 8.
        assert_eq!(offset_of!(UprobeMultiLinkAttr, attach_type), 8);
        assert_eq!(offset_of!(UprobeMultiLinkAttr, path), 16);
        assert_eq!(offset_of!(UprobeMultiLinkAttr, cookies), 40);
        assert_eq!(offset_of!(UprobeMultiLinkAttr, cnt), 48);
        assert_eq!(offset_of!(UprobeMultiLinkAttr, multi_flags), 52);
        assert_eq!(offset_of!(UprobeMultiLinkAttr, pid), 56);
    }
}
