//! The socket-tracepoint backend (docs/hooks.md): `tp_btf` programs on the socket
//! tracepoints `sock_send_length`/`sock_recv_length` (the data path) and
//! `inet_sock_set_state`/`tcp_destroy_sock` (the TCP lifecycle), probe-ebpf/src/sockets/
//! sock_tp.rs. Processes drainwatch does not watch pay nothing on their system calls.

use aya::Ebpf;

use super::descriptor::Backend;
use crate::{
    kernel::{attach, btf, features::Features, links::Links},
    Result,
};

pub static SOCKET: Backend = Backend {
    word: "socket",
    coverage: "socket-tracepoints",
    describe: "socket tracepoints (sock_send_length, sock_recv_length, inet_sock_set_state, \
               tcp_destroy_sock; tp_btf): processes drainwatch does not watch pay nothing on \
               their system calls",
    by_socket: true,
    tracepoints: &TRACEPOINTS,
    missing,
    attach: attach_all,
};

/// Its tracepoints; each program of the object is named after the tracepoint it is a
/// `tp_btf` of.
const TRACEPOINTS: [(&str, &str); 4] = [
    ("sock", "sock_send_length"),
    ("sock", "sock_recv_length"),
    ("sock", "inet_sock_set_state"),
    ("tcp", "tcp_destroy_sock"),
];

/// The TCP lifecycle tracepoints, which the fentry backend shares (fentry.rs).
pub(super) const LIFECYCLE: [(&str, &str); 2] = [TRACEPOINTS[2], TRACEPOINTS[3]];

/// What it needs and this kernel lacks, if anything: the socket tracepoints, and kernel
/// BTF (its programs are `tp_btf`, typed by BTF, and read `struct sock` at offsets found
/// there).
fn missing(features: &Features) -> Option<String> {
    if let Some((category, name)) = TRACEPOINTS
        .iter()
        .find(|(c, n)| !features.has_tracepoint(c, n))
    {
        return Some(format!("the tracepoint {category}:{name}"));
    }
    if !std::path::Path::new(btf::KERNEL_BTF).exists() {
        return Some(format!("kernel BTF ({})", btf::KERNEL_BTF));
    }
    if let Some(missing) = task_regs_missing(features) {
        return Some(missing);
    }
    members_missing()
}

/// The helpers both socket-level backends call to find the syscall in progress (its fd and
/// buffer: probe-ebpf's sock_tp.rs `syscall_regs`), if the kernel lacks them: Linux 5.10
/// (Debian 11, Amazon Linux 2) has fentry but neither.
pub(super) fn task_regs_missing(features: &Features) -> Option<String> {
    (!features.task_regs.ok).then(|| {
        format!(
            "the BPF task-register helpers ({})",
            features.task_regs.detail
        )
    })
}

/// The struct members the socket-level backends read that not every BTF has: unix_sock
/// is in vmlinux's BTF only where AF_UNIX is built in (CONFIG_UNIX=y, as on Debian).
pub(super) fn members_missing() -> Option<String> {
    let wanted = [
        ("sock", "sk_type"),
        ("unix_sock", "addr"),
        ("unix_sock", "peer"),
        ("socket", "sk"),
    ];
    let found = btf::kernel_member_offsets(wanted);
    let ((name, member), _) = wanted.iter().zip(found).find(|(_, f)| f.is_none())?;
    Some(format!("{name}.{member} in kernel BTF"))
}

fn attach_all(ebpf: &mut Ebpf, links: &mut Links, failures: &mut Vec<String>) -> Result<()> {
    let programs = TRACEPOINTS.map(|(_, name)| name);
    attach::btf_programs(ebpf, &programs, &[], links, failures)
}
