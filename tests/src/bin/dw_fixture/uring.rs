//! `dw-fixture uring-echo --port P`: accepts one client on 127.0.0.1:P and echoes what it
//! sends through io_uring (IORING_OP_RECV / IORING_OP_SEND), never read(2)/write(2) on the
//! socket: what a server built on io_uring looks like to the syscall hooks (nothing) and to
//! the socket-level ones (every send and recv, docs/hooks.md). Exits when the client closes.

use std::{io, net::TcpListener, os::fd::AsRawFd, process::ExitCode};

use io_uring::{opcode, squeue, types, IoUring};

/// Submits one operation and waits for its result (bytes moved, or -errno).
fn one(ring: &mut IoUring, sqe: squeue::Entry) -> io::Result<i32> {
    // SAFETY: the buffers the entry points at outlive the wait below, which reaps it.
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("no completion"))?;
    Ok(cqe.result())
}

fn echo(port: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let (conn, _) = listener.accept()?;
    let fd = types::Fd(conn.as_raw_fd());
    let mut ring = IoUring::new(8)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let recv = opcode::Recv::new(fd, buf.as_mut_ptr(), buf.len() as u32).build();
        let n = one(&mut ring, recv)?;
        if n <= 0 {
            return if n < 0 {
                Err(io::Error::from_raw_os_error(-n))
            } else {
                Ok(())
            };
        }
        let mut sent = 0usize;
        while sent < n as usize {
            let rest = &buf[sent..n as usize];
            let send = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32).build();
            let m = one(&mut ring, send)?;
            if m <= 0 {
                return Err(io::Error::from_raw_os_error(-m.min(-1)));
            }
            sent += m as usize;
        }
    }
}

pub fn uring_echo(port: Option<u16>) -> ExitCode {
    let Some(port) = port else {
        eprintln!("dw-fixture uring-echo: --port P is required");
        return ExitCode::from(2);
    };
    match echo(port) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dw-fixture uring-echo: {err}");
            ExitCode::FAILURE
        }
    }
}
