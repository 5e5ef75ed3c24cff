//! `dw-load`: the load generator behind `dw-bench` (threads, blocking loopback sockets).
//!
//! - `dw-load pingpong --port P [--conns 8] [--secs 5] [--size 64]`: each connection sends
//!   `size` bytes and reads the echo back, as fast as it can, for `secs` seconds (timed from
//!   the moment every connection is open). Prints one JSON line:
//!   `{"round_trips":N,"secs":S,"rps":R,"conns":C,"errors":E}`.
//! - `dw-load hold --port P [--conns 10000] [--secs 120]`: raises RLIMIT_NOFILE, opens up to
//!   `conns` connections one after the other (one round trip each, so the server has accepted
//!   and served every one), prints `open N` (N: how many it managed), then holds them until
//!   its stdin closes or `secs` pass, and exits (the kernel closes them all).
//!
//! Only 127.0.0.1. Every loop is bounded by a deadline.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

fn flag(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

fn round_trip(stream: &mut TcpStream, out: &[u8], back: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(out)?;
    stream.read_exact(back)
}

fn pingpong(args: &[String], port: u16) -> ExitCode {
    let conns = flag(args, "--conns").unwrap_or(8).clamp(1, 1024) as usize;
    let secs = flag(args, "--secs").unwrap_or(5).clamp(1, 600);
    let size = flag(args, "--size").unwrap_or(64).clamp(1, 4096) as usize;
    let total = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Every connection opens first; the clock starts when all are ready.
    let ready = Arc::new(Barrier::new(conns + 1));
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (total, errors, ready) = (total.clone(), errors.clone(), ready.clone());
        workers.push(thread::spawn(move || {
            let stream = connect(port);
            ready.wait();
            let deadline = Instant::now() + Duration::from_secs(secs);
            let Ok(mut stream) = stream else {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let out = vec![b'x'; size];
            let mut back = vec![0u8; size];
            let mut done = 0u64;
            while Instant::now() < deadline {
                if round_trip(&mut stream, &out, &mut back).is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                done += 1;
            }
            total.fetch_add(done, Ordering::Relaxed);
        }));
    }
    ready.wait();
    let started = Instant::now();
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let round_trips = total.load(Ordering::Relaxed);
    println!(
        "{{\"round_trips\":{round_trips},\"secs\":{elapsed:.3},\"rps\":{:.1},\"conns\":{conns},\"errors\":{}}}",
        round_trips as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
    ExitCode::SUCCESS
}

fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

fn hold(args: &[String], port: u16) -> ExitCode {
    let want = flag(args, "--conns").unwrap_or(10_000).min(100_000) as usize;
    let secs = flag(args, "--secs").unwrap_or(120).clamp(1, 600);
    let nofile = raise_nofile();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut streams = Vec::with_capacity(want);
    let mut failure = None;
    while streams.len() < want && Instant::now() < deadline {
        match connect(port).and_then(|mut s| round_trip(&mut s, b"h", &mut [0u8; 1]).map(|_| s)) {
            Ok(stream) => streams.push(stream),
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    if let Some(err) = failure {
        eprintln!(
            "dw-load: stopped at {} connections (RLIMIT_NOFILE {nofile}): {err}",
            streams.len()
        );
    }
    println!("open {}", streams.len());
    let _ = std::io::stdout().flush();
    // Hold until stdin closes (the bench is done) or the deadline passes.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sink = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    drop(streams);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(port) = flag(&args, "--port").and_then(|p| u16::try_from(p).ok()) else {
        eprintln!("usage: dw-load pingpong|hold --port PORT ... (see the source's header)");
        return ExitCode::from(2);
    };
    match args.first().map(String::as_str) {
        Some("pingpong") => pingpong(&args[1..], port),
        Some("hold") => hold(&args[1..], port),
        _ => {
            eprintln!("usage: dw-load pingpong|hold --port PORT ... (see the source's header)");
            ExitCode::from(2)
        }
    }
}
