//! `drainwatch watch --pid PID`: what is in flight inside the target, live. On a terminal
//! the view is redrawn in place; piped or with `--json`, one JSON object per interval per
//! line, without control characters.

use std::{io::Write, time::Duration};

use serde::Serialize;

use crate::{
    events::Protocol, events::Role, model::conns::InFlight, model::state::SignalSeen,
    output::summary::protocol_name, session::Session, settings::WatchSettings, Result,
};

/// How often the view is redrawn on a terminal, and how often a JSON line is printed.
const TTY_INTERVAL: Duration = Duration::from_millis(250);
const JSON_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Serialize)]
pub struct RoleCounts {
    pub client: u64,
    pub db: u64,
    pub upstream: u64,
    pub listener: u64,
}

#[derive(Debug, Serialize)]
pub struct OpenTxn {
    pub pid: u32,
    pub fd: u32,
    pub peer: Option<String>,
    pub protocol: Protocol,
    pub age_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct EncryptedConn {
    pub pid: u32,
    pub fd: u32,
    pub peer: Option<String>,
    pub protocol: Protocol,
}

#[derive(Debug, Serialize)]
pub struct TargetLine {
    pub pid: u32,
    pub comm: String,
    pub exited: bool,
}

/// One frame of the live view (also the `--json` line).
#[derive(Debug, Serialize)]
pub struct Frame {
    pub at_ms: u64,
    pub targets: Vec<TargetLine>,
    pub connections: RoleCounts,
    pub requests_in_flight: u64,
    pub queries_in_flight: u64,
    /// Client connections whose state at attach is still unknown (may hold a request).
    pub unknown_since_attach: u64,
    pub transactions_open: Vec<OpenTxn>,
    /// Database connections whose conversation is encrypted and not read: their
    /// transactions and queries are unknown (DESIGN.md, "encrypted conversation").
    pub encrypted: Vec<EncryptedConn>,
    pub signals: Vec<SignalSeen>,
    pub events: crate::model::report::EventCounts,
}

pub fn frame(session: &Session) -> Frame {
    let state = &session.state;
    let now_ns = crate::host::procfs::monotonic_now().as_nanos() as u64;
    let mut connections = RoleCounts::default();
    let mut transactions_open = Vec::new();
    let mut encrypted = Vec::new();
    let mut in_flight = InFlight::default();
    if let Some(conns) = state.conns() {
        in_flight = conns.in_flight(None);
        for conn in conns.conns() {
            match conn.role {
                Role::Client => connections.client += 1,
                Role::Db => connections.db += 1,
                Role::Upstream => connections.upstream += 1,
                Role::Listener => connections.listener += 1,
            }
            if conn.encrypted() {
                encrypted.push(EncryptedConn {
                    pid: conn.tgid,
                    fd: conn.fd,
                    peer: conn.peer_text(),
                    protocol: conn.protocol,
                });
            }
            if conn.txn_open() {
                transactions_open.push(OpenTxn {
                    pid: conn.tgid,
                    fd: conn.fd,
                    peer: conn.peer_text(),
                    protocol: conn.protocol,
                    age_ms: conn
                        .txn_since
                        .map(|since| now_ns.saturating_sub(since) / 1_000_000)
                        .unwrap_or(0),
                });
            }
        }
    }
    Frame {
        at_ms: state.ms_since_attach(now_ns),
        targets: state
            .targets()
            .map(|t| TargetLine {
                pid: t.tgid,
                comm: t.comm.clone(),
                exited: t.exit.is_some(),
            })
            .collect(),
        connections,
        requests_in_flight: in_flight.requests,
        queries_in_flight: in_flight.queries,
        unknown_since_attach: in_flight.unknown,
        transactions_open,
        encrypted,
        signals: state.recent_signals().cloned().collect(),
        events: crate::model::report::EventCounts {
            received: state.received(),
            lost: session.lost(),
        },
    }
}

/// The frame as text for a terminal.
pub fn render(frame: &Frame) -> String {
    let targets: Vec<String> = frame
        .targets
        .iter()
        .map(|t| {
            let state = if t.exited { " exited" } else { "" };
            format!("{} ({}){state}", t.comm, t.pid)
        })
        .collect();
    let c = &frame.connections;
    let mut out = format!(
        "drainwatch watch: {}   {:.1}s   events {} received, {} lost\n\
         connections: {} client, {} db, {} upstream, {} listening\n\
         in flight:   {} requests, {} db queries, {} transactions open{}\n",
        targets.join(", "),
        frame.at_ms as f64 / 1000.0,
        frame.events.received,
        frame.events.lost,
        c.client,
        c.db,
        c.upstream,
        c.listener,
        frame.requests_in_flight,
        frame.queries_in_flight,
        frame.transactions_open.len(),
        if frame.unknown_since_attach > 0 {
            format!(
                "; {} connections unknown since attach",
                frame.unknown_since_attach
            )
        } else {
            String::new()
        }
    );
    for txn in &frame.transactions_open {
        out.push_str(&format!(
            "  {} transaction open {:.3}s: pid {} fd {} to {}\n",
            protocol_name(txn.protocol),
            txn.age_ms as f64 / 1000.0,
            txn.pid,
            txn.fd,
            txn.peer.as_deref().unwrap_or("?")
        ));
    }
    for conn in &frame.encrypted {
        out.push_str(&format!(
            "  {} encrypted (not read; transactions unknown): pid {} fd {} to {}\n",
            protocol_name(conn.protocol),
            conn.pid,
            conn.fd,
            conn.peer.as_deref().unwrap_or("?")
        ));
    }
    if !frame.signals.is_empty() {
        out.push_str("signals:\n");
        for s in frame.signals.iter().rev().take(5) {
            out.push_str(&format!(
                "  {:.3}s {} to {} from {} ({})\n",
                s.at_ms as f64 / 1000.0,
                s.signal,
                s.pid,
                s.sender_comm,
                s.sender_tgid
            ));
        }
    }
    out
}

fn stdout_is_tty() -> bool {
    // SAFETY: isatty on a standard fd.
    unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 }
}

/// Runs until Ctrl-C or the target exits. Exit code 0.
pub async fn run(settings: &WatchSettings) -> Result<u8> {
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    let json = settings.common.json || !stdout_is_tty();
    eprintln!(
        "drainwatch: attached to {}; watching until it exits or Ctrl-C",
        session.target_names()
    );
    let interval = settings
        .interval
        .unwrap_or(if json { JSON_INTERVAL } else { TTY_INTERVAL });
    let show = |session: &Session| {
        let frame = frame(session);
        let mut out = std::io::stdout().lock();
        let _ = if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&frame).expect("frame serializes")
            )
        } else {
            // Home, clear to the end of the screen, redraw.
            write!(out, "\x1b[H\x1b[J{}", render(&frame))
        };
        let _ = out.flush();
    };
    session.follow(interval, None, |_| false, show).await?;
    // The last picture: how it ended.
    show(&session);
    session.finish();
    Ok(0)
}
