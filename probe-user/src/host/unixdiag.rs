//! Unix-domain stream sockets of the whole host, from the kernel's sock_diag interface
//! (NETLINK_SOCK_DIAG, unix_diag; include/uapi/linux/unix_diag.h, net/unix/diag.c): each
//! socket's peer (the other end's inode) and bound name. The server end of a connection
//! accepted on a listening socket carries the listener's path (`.s.PGSQL.5432`,
//! `mysqld.sock`), so a client's connection from before attach can be told for what it is.

use std::collections::HashMap;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
/// `struct unix_diag_req`: family, protocol, pad, states, ino, show, cookie[2].
const REQ_LEN: usize = 24;
/// `struct unix_diag_msg`: family, type, state, pad, ino, cookie[2].
const MSG_LEN: usize = 16;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const SOCK_STREAM: u8 = 1;
/// Unix sockets use TCP's state numbers: connected is TCP_ESTABLISHED.
const TCP_ESTABLISHED: u8 = 1;

/// One connected unix stream socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    /// The other end's inode.
    pub peer: Option<u64>,
    /// The bound path (abstract names start with '@'); `None` for an unbound client end.
    pub name: Option<String>,
}

/// Connected unix stream sockets by inode; empty if sock_diag is not available.
pub fn connected_streams() -> HashMap<u64, UnixSocket> {
    let mut out = HashMap::new();
    if let Err(err) = dump(&mut out) {
        log::debug!("unix sock_diag dump failed: {err}");
    }
    out
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn dump(out: &mut HashMap<u64, UnixSocket>) -> std::io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut request = [0u8; NLMSG_HDR + REQ_LEN];
    request[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[NLMSG_HDR] = libc::AF_UNIX as u8;
    let states = 1u32 << TCP_ESTABLISHED;
    request[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&states.to_ne_bytes());
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER;
    request[NLMSG_HDR + 12..NLMSG_HDR + 16].copy_from_slice(&show.to_ne_bytes());
    // SAFETY: send(2) of a buffer we own, on our socket (the kernel is the default peer).
    if unsafe { libc::send(raw, request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv(2) into a buffer we own, at most its length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
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
                _ => parse_message(&buf[at + NLMSG_HDR..at + len], out),
            }
            at += (len + 3) & !3;
        }
    }
}

/// One `unix_diag_msg` and its attributes.
fn parse_message(msg: &[u8], out: &mut HashMap<u64, UnixSocket>) {
    if msg.len() < MSG_LEN || msg[1] != SOCK_STREAM {
        return;
    }
    let Some(inode) = u32_at(msg, 4) else {
        return;
    };
    let mut socket = UnixSocket::default();
    let mut at = MSG_LEN;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at).unwrap_or(0) as usize;
        if len < 4 || at + len > msg.len() {
            break;
        }
        let body = &msg[at + 4..at + len];
        match u16_at(msg, at + 2).unwrap_or(u16::MAX) {
            UNIX_DIAG_PEER => socket.peer = u32_at(body, 0).map(u64::from),
            UNIX_DIAG_NAME if !body.is_empty() => {
                // Abstract names start with a NUL byte; paths are NUL-terminated or not.
                let text = match body.split_first() {
                    Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
                    _ => String::from_utf8_lossy(body)
                        .trim_end_matches('\0')
                        .to_string(),
                };
                socket.name = Some(text);
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    out.insert(inode as u64, socket);
}

#[cfg(test)]
mod tests {
    use std::os::unix::{fs::MetadataExt, net::UnixListener, net::UnixStream};

    use super::*;

    fn inode_of(stream: &UnixStream) -> u64 {
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    }

    /// A real connection on a real socket file: the client end's peer is the accepted end,
    /// whose name is the listener's path.
    #[test]
    fn the_client_end_leads_to_the_listeners_path() {
        let dir = std::env::temp_dir().join(format!("dw-unixdiag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".s.PGSQL.5432");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let all = connected_streams();
        let _ = std::fs::remove_dir_all(&dir);
        let mine = all
            .get(&inode_of(&client))
            .expect("the client end is listed");
        assert_eq!(mine.peer, Some(inode_of(&server)));
        assert_eq!(mine.name, None);
        let theirs = &all[&inode_of(&server)];
        assert_eq!(theirs.name.as_deref(), Some(path.to_str().unwrap()));
    }
}
