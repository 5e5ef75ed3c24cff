//! Unix-domain stream sockets of the whole host, from the kernel's sock_diag interface
//! (NETLINK_SOCK_DIAG, unix_diag; include/uapi/linux/unix_diag.h, net/unix/diag.c): each
//! socket's peer (the other end's inode) and bound name. The server end of a connection
//! accepted on a listening socket carries the listener's path (`.s.PGSQL.5432`,
//! `mysqld.sock`), so a client's connection from before attach can be told for what it is.

use std::collections::HashMap;

use super::sockdiag::{self, u16_at, u32_at};

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

fn dump(out: &mut HashMap<u64, UnixSocket>) -> std::io::Result<()> {
    let mut request = [0u8; REQ_LEN];
    request[0] = libc::AF_UNIX as u8;
    let states = 1u32 << TCP_ESTABLISHED;
    request[4..8].copy_from_slice(&states.to_ne_bytes());
    let show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER;
    request[12..16].copy_from_slice(&show.to_ne_bytes());
    sockdiag::dump(&request, |msg| parse_message(msg, out))
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
