//! The fentry backend (docs/hooks.md): fexit programs on the kernel's socket send and
//! receive functions (probe-ebpf/src/sockets/fexit.rs), handing the same `sk`, `ret` and
//! `flags` to the socket backend's code, with the socket backend's TCP lifecycle
//! tracepoints. For kernels without the sock length tracepoints where BPF trampolines work
//! (Debian 12's 6.1).

use aya::Ebpf;

use super::{descriptor::Backend, socket};
use crate::{
    kernel::{attach, btf, features::Features, links::Links},
    Result,
};

pub static FENTRY: Backend = Backend {
    word: "fentry",
    coverage: "fentry",
    describe: "fexit on tcp_sendmsg, tcp_recvmsg, unix_stream_sendmsg, unix_stream_recvmsg \
               and the TCP state tracepoints (inet_sock_set_state, tcp_destroy_sock; tp_btf): \
               processes drainwatch does not watch pay nothing on their system calls",
    by_socket: true,
    tracepoints: &socket::LIFECYCLE,
    missing,
    attach: attach_all,
};

/// Its fexit programs and the kernel function each one is an fexit of.
const FEXITS: [(&str, &str); 4] = [
    ("fx_tcp_send", "tcp_sendmsg"),
    ("fx_tcp_recv", "tcp_recvmsg"),
    ("fx_unix_send", "unix_stream_sendmsg"),
    ("fx_unix_recv", "unix_stream_recvmsg"),
];

/// What it needs and this kernel lacks, if anything: fentry/fexit attaching, the
/// task-register helpers, kernel BTF with the functions it hooks and the TCP lifecycle
/// tracepoints it shares with the socket backend.
fn missing(features: &Features) -> Option<String> {
    if !features.fentry.ok {
        return Some(format!("fentry ({})", features.fentry.detail));
    }
    if let Some(missing) = socket::task_regs_missing(features) {
        return Some(missing);
    }
    if let Some((category, name)) = socket::LIFECYCLE
        .iter()
        .find(|(c, n)| !features.has_tracepoint(c, n))
    {
        return Some(format!("the tracepoint {category}:{name}"));
    }
    for (_, function) in FEXITS {
        if btf::kernel_func_id(function).is_none() {
            return Some(format!("the function {function} in kernel BTF"));
        }
    }
    // fx_tcp_recv reads the flags and the return value where Linux 5.19+ has them
    // (`sk, msg, len, flags, addr_len`); before 5.19 a `nonblock` parameter came before the
    // flags (Ubuntu 22.04's 5.15), and the same slots would hold other values.
    match btf::kernel_func_params("tcp_recvmsg") {
        Some(5) => {}
        found => {
            return Some(format!(
                "tcp_recvmsg with the five parameters of Linux 5.19+ (kernel BTF: {})",
                found.map_or("none".into(), |n| n.to_string())
            ))
        }
    }
    socket::members_missing()
}

fn attach_all(ebpf: &mut Ebpf, links: &mut Links, failures: &mut Vec<String>) -> Result<()> {
    let lifecycle = socket::LIFECYCLE.map(|(_, name)| name);
    attach::btf_programs(ebpf, &lifecycle, &FEXITS, links, failures)
}
