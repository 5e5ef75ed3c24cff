//! The kernel's sock_diag interface (NETLINK_SOCK_DIAG): one dump request, and every reply
//! message handed to the caller. [`tcpinfo`](super::tcpinfo) asks inet_diag for TCP sockets,
//! [`unixdiag`](super::unixdiag) asks unix_diag; the netlink framing is the same.
//! Layouts: include/uapi/linux/netlink.h and sock_diag.h
//! (<https://man7.org/linux/man-pages/man7/sock_diag.7.html>).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr`: len, type, flags, seq, pid.
const NLMSG_HDR: usize = 16;

pub fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

pub fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Sends one SOCK_DIAG_BY_FAMILY dump request whose body (after the netlink header) is
/// `request`, and calls `each` with the body of every reply message until the kernel says
/// done.
pub fn dump(request: &[u8], mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let total = NLMSG_HDR + request.len();
    let mut message = vec![0u8; total];
    message[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
    message[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    message[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
    message[NLMSG_HDR..].copy_from_slice(request);
    // SAFETY: send(2) of a buffer we own, on our socket (the kernel is the default peer).
    if unsafe { libc::send(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, at most its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (n, mut at) = (n as usize, 0);
        while at + NLMSG_HDR <= n {
            let len = u32_at(&buf, at).unwrap_or(0) as usize;
            if len < NLMSG_HDR || at + len > n {
                return Ok(());
            }
            match u16_at(&buf, at + 4).unwrap_or(0) {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = u32_at(&buf, at + NLMSG_HDR).map_or(0, |e| -(e as i32));
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                _ => each(&buf[at + NLMSG_HDR..at + len]),
            }
            at += (len + 3) & !3;
        }
    }
}
