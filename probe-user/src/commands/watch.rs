//! `drainwatch watch --pid PID`: what is in flight inside the target, live. On a terminal
//! the view is redrawn in place; piped or with `--json`, one JSON object per interval per
//! line, without control characters.
//!
//! Besides what is in flight it shows the pace: requests answered per second (from the
//! kernel's counters, between two views) and their latency since attach, so that a server
//! under load never looks like an idle one; and a line per request in flight, oldest first,
//! with its age (from the kernel's connection map; "since before attach" when it started
//! before the probe). `--count N` and `--duration D` end it on their own.

use std::{io::Write, time::Duration};

use crate::{
    events::Role,
    model::conns::InFlight,
    output::{
        live::{
            render, CommLatency, EncryptedConn, Frame, OpLine, OpenTxn, OpsView, Pace, RequestLine,
            RoleCounts, TargetLine, TxnUnknown,
        },
        stdout_is_tty,
        summary::plural,
    },
    session::Session,
    settings::WatchSettings,
    Result,
};

/// How often the view is redrawn on a terminal, and how often a JSON line is printed.
const TTY_INTERVAL: Duration = Duration::from_millis(250);
const JSON_INTERVAL: Duration = Duration::from_secs(1);

/// One frame of the live view, read from the session now.
pub fn frame(session: &Session, pace: &mut Pace) -> Frame {
    let state = &session.state;
    let now_ns = crate::host::procfs::monotonic_now().as_nanos() as u64;
    let mut connections = RoleCounts::default();
    let mut transactions_open = Vec::new();
    let mut encrypted = Vec::new();
    let mut transactions_unknown = Vec::new();
    let mut in_flight = InFlight::default();
    let mut requests_per_second = None;
    let mut requests = None;
    let mut request_lines = Vec::new();
    if let Some(conns) = state.conns() {
        in_flight = conns.in_flight(None);
        requests_per_second = pace.rate(now_ns, conns.requests_ended());
        requests = Some(conns.requests()).filter(|r| r.count > 0);
        let txn_unknown: Vec<(u32, u32)> = conns.unresolved_txns().collect();
        let mut sockets = std::collections::BTreeSet::new();
        for conn in conns.conns() {
            if conn.role == Role::Client {
                let key = probe_common::ConnKey {
                    tgid: conn.tgid,
                    fd: conn.fd,
                };
                if let Some(since) = session.probe.request_since(key) {
                    request_lines.push(RequestLine {
                        pid: conn.tgid,
                        fd: conn.fd,
                        peer: conn.peer_text(),
                        age_ms: since.map(|at| now_ns.saturating_sub(at) / 1_000_000),
                    });
                }
            }
            // One socket held by several processes is one connection (docs/design.md).
            if crate::output::socket_key(conn).is_none_or(|key| sockets.insert(key)) {
                match conn.role {
                    Role::Client => {
                        connections.client += 1;
                        connections.push_style += conns.facts().is_push(conn.tgid, conn.fd) as u64;
                    }
                    Role::Db => connections.db += 1,
                    Role::Upstream => connections.upstream += 1,
                    Role::Listener => connections.listener += 1,
                }
            }
            if conn.encrypted() {
                encrypted.push(EncryptedConn {
                    pid: conn.tgid,
                    fd: conn.fd,
                    peer: conn.peer_text(),
                    protocol: conn.protocol,
                });
            }
            if txn_unknown.contains(&(conn.tgid, conn.fd)) {
                transactions_unknown.push(TxnUnknown {
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
        requests_per_second,
        requests,
        requests_by_comm: state
            .request_histograms_by_comm()
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(comm, h)| CommLatency {
                comm: comm.clone(),
                requests: crate::model::conns::summary(h),
            })
            .collect(),
        // Counted from the same read of the kernel's connection table as the lines below, not
        // from the tick's counters: read moments apart, the two disagreed on screen under load
        // ("0 requests" above a "request in flight" line).
        requests_in_flight: if state.conns().is_some() {
            request_lines.len() as u64
        } else {
            in_flight.requests
        },
        requests_in_flight_on: {
            // Oldest first; unknown starts (before attach) are the oldest of all.
            request_lines.sort_by_key(|r| (r.age_ms.map_or(0, |a| u64::MAX - a), r.pid, r.fd));
            request_lines
        },
        queries_in_flight: in_flight.queries,
        upstream_calls_in_flight: in_flight.upstream_calls,
        upstream_calls: state.conns().map_or(0, |c| c.calls_ended()),
        upstream_one_way: state.conns().map_or(0, |c| c.calls(None).one_way),
        operations: state.operations().map(|ops| OpsView {
            summary: ops.summary(),
            by_function: ops
                .in_flight_by_function()
                .into_iter()
                .map(|(function, in_flight, oldest)| OpLine {
                    function,
                    in_flight,
                    oldest_age_ms: oldest.map(|since| now_ns.saturating_sub(since) / 1_000_000),
                })
                .collect(),
        }),
        unknown_since_attach: in_flight.unknown,
        transactions_open,
        transactions_unknown,
        encrypted,
        signals: state.recent_signals().cloned().collect(),
        events: crate::model::report::EventCounts {
            received: state.received(),
            lost: session.lost(),
        },
    }
}

/// Runs until Ctrl-C, the targets exit, `--count` views or `--duration`. Exit code 0.
pub async fn run(settings: &WatchSettings) -> Result<u8> {
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    let json = settings.common.json || !stdout_is_tty();
    let until = match (settings.count, settings.duration) {
        (Some(n), _) => format!("for {}", plural(n, "view")),
        (None, Some(d)) => format!("for {}", crate::duration::format(d)),
        (None, None) => "until it exits or Ctrl-C".to_string(),
    };
    eprintln!(
        "drainwatch: attached to {}; watching {until}",
        session.target_names()
    );
    let interval = settings
        .interval
        .unwrap_or(if json { JSON_INTERVAL } else { TTY_INTERVAL });
    let shown = std::cell::Cell::new(0u64);
    // Nobody reads stdout any more (`watch --json | head -n 3`: EPIPE): the view ends, the
    // probe is taken down (docs/design.md, "Command line").
    let reader_gone = std::cell::Cell::new(false);
    let pace = std::cell::RefCell::new(Pace::default());
    let show = |session: &Session| {
        if reader_gone.get() {
            return;
        }
        let frame = frame(session, &mut pace.borrow_mut());
        let mut out = std::io::stdout().lock();
        let written = if json {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&frame).expect("frame serializes")
            )
        } else {
            // Home, clear to the end of the screen, redraw.
            write!(out, "\x1b[H\x1b[J{}", render(&frame))
        };
        if written.and_then(|()| out.flush()).is_err() {
            reader_gone.set(true);
        }
        shown.set(shown.get() + 1);
    };
    let deadline = settings.duration.map(|d| tokio::time::Instant::now() + d);
    let enough = |_: &crate::model::state::AuditState| {
        reader_gone.get() || settings.count.is_some_and(|n| shown.get() >= n)
    };
    session.follow(interval, deadline, enough, show).await?;
    // The last picture: how it ended (unless --count said how many, or nobody reads).
    if !enough(&session.state) {
        show(&session);
    }
    session.finish();
    Ok(0)
}
