//! `watch`'s live view: one frame of what is in flight inside the targets, the pace and
//! latency, drawn as text for a terminal or serialized as one JSON line (`--json`, or a
//! stdout that is no terminal).

use serde::Serialize;

use crate::{
    events::Protocol,
    model::state::SignalSeen,
    output::summary::{plural, protocol_name},
};

#[derive(Debug, Default, Serialize)]
pub struct RoleCounts {
    pub client: u64,
    /// Of the client connections, those the target sends unprompted on (docs/design.md,
    /// "request in flight": push-style): a send there does not show its work done.
    pub push_style: u64,
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

/// A database connection from before attach whose transaction state is still unknown.
#[derive(Debug, Serialize)]
pub struct TxnUnknown {
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

/// A client request in flight on one connection.
#[derive(Debug, Serialize)]
pub struct RequestLine {
    pub pid: u32,
    pub fd: u32,
    pub peer: Option<String>,
    /// `None`: in flight since before attach, its start unknown.
    pub age_ms: Option<u64>,
}

/// Requests answered by the targets of one name since attach, and their latency (µs).
#[derive(Debug, Serialize)]
pub struct CommLatency {
    pub comm: String,
    #[serde(flatten)]
    pub requests: crate::model::report::LatencySummary,
}

/// Operations (`--op`, docs/design.md "operation"): the report's section (returned since
/// attach, in flight now, latency), and what is in flight by SPEC.
#[derive(Debug, Serialize)]
pub struct OpsView {
    #[serde(flatten)]
    pub summary: crate::model::report::OperationsReport,
    pub by_function: Vec<OpLine>,
}

/// The operations of one SPEC in flight now.
#[derive(Debug, Serialize)]
pub struct OpLine {
    pub function: String,
    pub in_flight: u64,
    /// Age of the oldest one whose thread was seen inside it (`null`: none, or a Go
    /// goroutine's, whose start is counted but not kept per call).
    pub oldest_age_ms: Option<u64>,
}

/// Requests per second between two views.
#[derive(Debug, Default)]
pub struct Pace {
    last: Option<(u64, u64)>,
}

impl Pace {
    /// The rate of `ended` (a count that only grows) since the previous call, at `now_ns`.
    pub fn rate(&mut self, now_ns: u64, ended: u64) -> Option<f64> {
        let rate = self.last.and_then(|(at, before)| {
            let seconds = now_ns.saturating_sub(at) as f64 / 1e9;
            (seconds > 0.0).then(|| ended.saturating_sub(before) as f64 / seconds)
        });
        self.last = Some((now_ns, ended));
        rate
    }
}

/// How many request lines the screen shows (the JSON line has them all).
const REQUEST_LINES: usize = 10;

/// One frame of the live view (also the `--json` line).
#[derive(Debug, Serialize)]
pub struct Frame {
    pub at_ms: u64,
    pub targets: Vec<TargetLine>,
    pub connections: RoleCounts,
    /// Requests answered (or closed) per second since the previous view; `null` on the first.
    pub requests_per_second: Option<f64>,
    /// Requests answered since attach, and their latency (µs); `null` when none measured.
    pub requests: Option<crate::model::report::LatencySummary>,
    /// The same by target name (`comm`): each server watched its own line, never mixed.
    pub requests_by_comm: Vec<CommLatency>,
    pub requests_in_flight: u64,
    /// The requests in flight, oldest first.
    pub requests_in_flight_on: Vec<RequestLine>,
    pub queries_in_flight: u64,
    /// Upstream calls in flight (docs/design.md, "upstream call in flight"), and the calls
    /// ended (answered, closed, found one-way) since attach.
    pub upstream_calls_in_flight: u64,
    pub upstream_calls: u64,
    /// Upstream connections found one-way: sent to, never answered (a send there is no call).
    pub upstream_one_way: u64,
    /// Operations (`--op`); `null` without it.
    pub operations: Option<OpsView>,
    /// Connections whose state at attach is still unknown (a client connection may hold a
    /// request, a database connection a transaction).
    pub unknown_since_attach: u64,
    pub transactions_open: Vec<OpenTxn>,
    /// Database connections from before attach whose transaction state is still unknown
    /// (counted in `unknown_since_attach` too): they hold `wait` and `stop`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transactions_unknown: Vec<TxnUnknown>,
    /// Database connections whose conversation is encrypted and not read: their
    /// transactions and queries are unknown (docs/design.md, "encrypted conversation").
    pub encrypted: Vec<EncryptedConn>,
    pub signals: Vec<SignalSeen>,
    pub events: crate::model::report::EventCounts,
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
    let rate = frame
        .requests_per_second
        .map_or("-".to_string(), |r| format!("{r:.0}/s"));
    let latency = match &frame.requests {
        Some(r) => format!(
            "latency p50 {}, p99 {}, max {} ({} since attach)",
            micros(r.latency_us.p50),
            micros(r.latency_us.p99),
            micros(r.latency_us.max),
            r.count
        ),
        None => "latency: none measured yet".to_string(),
    };
    let mut out = format!(
        "drainwatch watch: {}   {:.1}s   events {} received, {} lost\n\
         connections: {} client{}, {} db, {} upstream, {} listening\n\
         requests:    {rate} answered, {latency}\n",
        targets.join(", "),
        frame.at_ms as f64 / 1000.0,
        frame.events.received,
        frame.events.lost,
        c.client,
        match c.push_style {
            0 => String::new(),
            n => format!(" ({n} push-style: a send there is no proof its work is done)"),
        },
        c.db,
        match frame.upstream_one_way {
            0 => c.upstream.to_string(),
            n => format!("{} ({n} one-way: sent to, never answered)", c.upstream),
        },
        c.listener,
    );
    // Several servers: each one's latency on its own line (the line above is all of them).
    if frame.requests_by_comm.len() > 1 {
        for c in &frame.requests_by_comm {
            out.push_str(&format!(
                "  {}: latency p50 {}, p99 {}, max {} ({} since attach)\n",
                c.comm,
                micros(c.requests.latency_us.p50),
                micros(c.requests.latency_us.p99),
                micros(c.requests.latency_us.max),
                c.requests.count
            ));
        }
    }
    if let Some(ops) = &frame.operations {
        out.push_str(&operations_line(ops));
    }
    out.push_str(&format!(
        "in flight:   {}, {}, {}, {}{}{}\n",
        plural(frame.requests_in_flight, "request"),
        plural(frame.queries_in_flight, "db query"),
        plural(frame.upstream_calls_in_flight, "upstream call"),
        match &frame.operations {
            Some(ops) => format!("{}, ", plural(ops.summary.in_flight, "operation")),
            None => String::new(),
        },
        plural(frame.transactions_open.len() as u64, "transaction open")
            .replace("transaction opens", "transactions open"),
        if frame.unknown_since_attach > 0 {
            format!(
                "; {} unknown since attach",
                plural(frame.unknown_since_attach, "connection")
            )
        } else {
            String::new()
        }
    ));
    for r in frame.requests_in_flight_on.iter().take(REQUEST_LINES) {
        let age = r.age_ms.map_or("since before attach".to_string(), |ms| {
            format!("{:.3}s", ms as f64 / 1000.0)
        });
        out.push_str(&format!(
            "  request in flight {age}: pid {} fd {} from {}\n",
            r.pid,
            r.fd,
            r.peer.as_deref().unwrap_or("?")
        ));
    }
    if frame.requests_in_flight_on.len() > REQUEST_LINES {
        out.push_str(&format!(
            "  ... and {} more\n",
            frame.requests_in_flight_on.len() - REQUEST_LINES
        ));
    }
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
    for conn in &frame.transactions_unknown {
        out.push_str(&format!(
            "  {} transaction state unknown since attach (until its next reply or close): pid {} \
             fd {} to {}\n",
            protocol_name(conn.protocol),
            conn.pid,
            conn.fd,
            conn.peer.as_deref().unwrap_or("?")
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

/// `operations: 3 in flight (purchase 3, oldest 0.250s), 120 returned, latency p50 ...`.
fn operations_line(ops: &OpsView) -> String {
    let functions: Vec<String> = ops
        .by_function
        .iter()
        .map(|f| match f.oldest_age_ms {
            Some(ms) if f.in_flight > 0 => format!(
                "{} {}, oldest {:.3}s",
                f.function,
                f.in_flight,
                ms as f64 / 1000.0
            ),
            _ => format!("{} {}", f.function, f.in_flight),
        })
        .collect();
    let s = &ops.summary;
    let latency = if s.count == 0 {
        "latency: none measured yet".to_string()
    } else {
        format!(
            "latency p50 {}, p99 {}, max {}",
            micros(s.latency_us.p50),
            micros(s.latency_us.p99),
            micros(s.latency_us.max)
        )
    };
    format!(
        "operations:  {} in flight ({}), {} returned, {latency}\n",
        s.in_flight,
        functions.join("; "),
        s.count
    )
}

/// µs as people read them: `850us`, `12.5ms`, `1.2s`.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}us"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.1}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_a_rate_between_two_views() {
        let mut pace = Pace::default();
        assert_eq!(pace.rate(1_000_000_000, 100), None, "no rate from one view");
        assert_eq!(pace.rate(1_500_000_000, 150), Some(100.0));
        assert_eq!(pace.rate(2_500_000_000, 150), Some(0.0));
    }

    #[test]
    fn latencies_read_like_people_write_them() {
        assert_eq!(micros(850), "850us");
        assert_eq!(micros(12_500), "12.5ms");
        assert_eq!(micros(1_200_000), "1.2s");
    }

    #[test]
    fn a_busy_screen_shows_the_pace_and_each_request_in_flight() {
        use crate::model::report::{LatencySummary, Percentiles};
        let frame = Frame {
            at_ms: 2_000,
            targets: vec![TargetLine {
                pid: 4121,
                comm: "redis-server".into(),
                exited: false,
            }],
            connections: RoleCounts {
                client: 50,
                listener: 1,
                ..RoleCounts::default()
            },
            requests_per_second: Some(55_012.4),
            requests: Some(LatencySummary {
                count: 110_000,
                latency_us: Percentiles {
                    p50: 180,
                    p90: 400,
                    p99: 1_250,
                    max: 9_000,
                },
            }),
            requests_by_comm: vec![
                CommLatency {
                    comm: "nginx".into(),
                    requests: LatencySummary {
                        count: 10_000,
                        latency_us: Percentiles {
                            p50: 2_000,
                            p90: 4_000,
                            p99: 8_000,
                            max: 9_000,
                        },
                    },
                },
                CommLatency {
                    comm: "redis-server".into(),
                    requests: LatencySummary {
                        count: 100_000,
                        latency_us: Percentiles {
                            p50: 150,
                            p90: 300,
                            p99: 900,
                            max: 1_000,
                        },
                    },
                },
            ],
            requests_in_flight: 2,
            requests_in_flight_on: vec![
                RequestLine {
                    pid: 4121,
                    fd: 9,
                    peer: Some("127.0.0.1:40100".into()),
                    age_ms: None,
                },
                RequestLine {
                    pid: 4121,
                    fd: 12,
                    peer: Some("127.0.0.1:40102".into()),
                    age_ms: Some(3),
                },
            ],
            queries_in_flight: 0,
            upstream_calls_in_flight: 0,
            upstream_calls: 0,
            upstream_one_way: 0,
            operations: None,
            unknown_since_attach: 0,
            transactions_open: vec![],
            transactions_unknown: vec![],
            encrypted: vec![],
            signals: vec![],
            events: crate::model::report::EventCounts {
                received: 9,
                lost: 0,
            },
        };
        let text = render(&frame);
        assert!(
            text.contains("requests:    55012/s answered, latency p50 180us, p99 1.2ms, max 9.0ms (110000 since attach)"),
            "{text}"
        );
        assert!(
            text.contains(
                "  nginx: latency p50 2.0ms, p99 8.0ms, max 9.0ms (10000 since attach)\n  \
                 redis-server: latency p50 150us, p99 900us, max 1.0ms (100000 since attach)\n\
                 in flight:"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "in flight:   2 requests, 0 db queries, 0 upstream calls, 0 transactions open"
            ),
            "{text}"
        );
        assert!(
            text.contains("  request in flight since before attach: pid 4121 fd 9 from 127.0.0.1:40100\n  request in flight 0.003s: pid 4121 fd 12"),
            "{text}"
        );
    }

    #[test]
    fn operations_show_in_flight_by_function_returned_and_latency() {
        use crate::model::report::{OperationsReport, Percentiles};
        let ops = OpsView {
            summary: OperationsReport {
                count: 120,
                in_flight: 3,
                latency_us: Percentiles {
                    p50: 300_100,
                    p90: 305_000,
                    p99: 310_000,
                    max: 320_000,
                },
            },
            by_function: vec![
                OpLine {
                    function: "purchase".into(),
                    in_flight: 3,
                    oldest_age_ms: Some(250),
                },
                OpLine {
                    function: "refund".into(),
                    in_flight: 0,
                    oldest_age_ms: None,
                },
            ],
        };
        assert_eq!(
            operations_line(&ops),
            "operations:  3 in flight (purchase 3, oldest 0.250s; refund 0), 120 returned, \
             latency p50 300.1ms, p99 310.0ms, max 320.0ms\n"
        );
        let json = serde_json::to_value(&ops).unwrap();
        assert_eq!(json["in_flight"], 3, "{json}");
        assert_eq!(json["count"], 120, "{json}");
        assert_eq!(json["latency_us"]["p99"], 310_000, "{json}");
        assert_eq!(json["by_function"][0]["oldest_age_ms"], 250, "{json}");
        let idle = OpsView {
            summary: OperationsReport::default(),
            by_function: vec![],
        };
        assert!(operations_line(&idle).ends_with("0 returned, latency: none measured yet\n"));
    }
}
