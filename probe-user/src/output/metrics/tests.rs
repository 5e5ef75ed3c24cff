//! The exporter's unit tests: buckets, the hdrhistogram feed, the text, one series per
//! target name, and docs/observability.md against what is exported.

use super::*;
use hdrhistogram::Histogram;

fn hdr() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

#[test]
fn buckets_are_cumulative_and_end_with_inf() {
    let mut h = LatencyBuckets::default();
    h.observe(100, 1); // on the first bound: inside it
    h.observe(101, 2);
    h.observe(40_000_000, 1); // above every bound
    let cumulative = h.cumulative();
    assert_eq!(cumulative[0], ("0.0001".to_string(), 1));
    assert_eq!(cumulative[1], ("0.00025".to_string(), 3));
    assert_eq!(cumulative[12], ("1".to_string(), 3));
    assert_eq!(cumulative[16], ("30".to_string(), 3));
    assert_eq!(cumulative.last().unwrap(), &("+Inf".to_string(), 4));
    assert_eq!(h.count(), 4);
    assert!((h.sum_seconds() - (100.0 + 202.0 + 40e6) / 1e6).abs() < 1e-9);
}

#[test]
fn hdr_feed_adds_only_what_is_new() {
    let mut source = hdr();
    let mut feed = HdrFeed::default();
    let mut buckets = LatencyBuckets::default();
    source.record(150).unwrap();
    source.record(150).unwrap();
    feed.feed(&source, &mut buckets);
    feed.feed(&source, &mut buckets);
    assert_eq!(buckets.count(), 2);
    source.record(150).unwrap();
    source.record(3_000).unwrap();
    feed.feed(&source, &mut buckets);
    assert_eq!(buckets.count(), 4);
    let cumulative = buckets.cumulative();
    assert_eq!(cumulative[1].1, 3, "three of 150µs, within 250µs");
    assert_eq!(cumulative[5].1, 4, "3ms within 5ms");
    assert!((buckets.sum_seconds() - 3_450e-6).abs() < 1e-5);
    // A histogram that starts over (fewer values than fed) is new data, never a decrease.
    let mut fresh = hdr();
    fresh.record(150).unwrap();
    feed.feed(&fresh, &mut buckets);
    assert_eq!(buckets.count(), 5);
}

#[test]
fn text_has_help_type_and_escaped_labels() {
    let exporter = Exporter::default();
    let redis = CommSnapshot {
        connections: [2, 1, 0, 1],
        requests_in_flight: 1,
        violations: [1, 0, 0, 0, 0, 0, 0],
        ..CommSnapshot::default()
    };
    let snapshot = Snapshot {
        by_comm: [("redis-server".to_string(), redis)].into(),
        targets: vec![TargetUp {
            pid: 42,
            comm: "we\"ird\\name".into(),
            up: true,
        }],
        ..Snapshot::default()
    };
    let text = exporter.render(&snapshot);
    assert!(text.contains("# TYPE drainwatch_connections gauge\n"));
    assert!(text.contains("drainwatch_connections{role=\"client\",comm=\"redis-server\"} 2\n"));
    assert!(text.contains("drainwatch_requests_in_flight{comm=\"redis-server\"} 1\n"));
    assert!(text.contains("drainwatch_sigkills_total{comm=\"redis-server\"} 1\n"));
    assert!(
        text.contains("drainwatch_violations_total{kind=\"sigkill\",comm=\"redis-server\"} 1\n")
    );
    assert!(text.contains("drainwatch_target_up{pid=\"42\",comm=\"we\\\"ird\\\\name\"} 1\n"));
    // No request answered yet: the family, without a series.
    assert!(text.contains("# TYPE drainwatch_request_duration_seconds histogram\n"));
    assert!(!text.contains("drainwatch_request_duration_seconds_bucket"));
    assert!(text.contains("# TYPE drainwatch_db_query_duration_seconds histogram\n"));
    // Every sample belongs to a family announced just before it, with HELP and TYPE.
    let mut family = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap().to_string();
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(
            name.starts_with(&family),
            "{name} outside its family {family}"
        );
        assert!(name.starts_with("drainwatch_"), "{name}");
    }
    assert_eq!(
        text.matches("# HELP ").count(),
        text.matches("# TYPE ").count()
    );
}

/// `serve --pid <game> --comm nginx`: the game's database queries and nginx's requests
/// in flight stay apart, each under its own `comm`.
#[test]
fn two_servers_keep_two_series() {
    use crate::events::{Event, RequestSample, TargetRequests};
    let recorded = include_str!("../../../testdata/pg_kill9_mid_transaction.jsonl");
    let mut state = AuditState::new(1_000_000_000, 5000).with_sockets();
    let Ok(Event::Exec(exec)) = serde_json::from_str::<Event>(recorded.lines().next().unwrap())
    else {
        panic!("the recording starts with the launched command's exec")
    };
    state.add_target(exec.tgid, "dw-game".into(), Origin::Launched);
    state.add_target(77, "nginx".into(), Origin::Named);
    for line in recorded.lines() {
        state.apply(&serde_json::from_str::<Event>(line).unwrap());
    }
    state.apply(&Event::Requests(RequestSample {
        ktime_ns: 9_000_000_000,
        targets: vec![TargetRequests {
            tgid: 77,
            started: 3,
            ended: 2,
            existing_ended: 0,
            last_edge_ns: 8_000_000_000,
            ..Default::default()
        }],
        // nginx answered two requests in ~5 ms, the game one in ~100 µs; a process the
        // kernel had no room for (tgid 0) one more.
        latency_us: vec![(100, 1), (5000, 2), (900, 1)],
        latency_by_tgid: vec![
            (exec.tgid, vec![(100, 1)]),
            (77, vec![(5000, 2)]),
            (0, vec![(900, 1)]),
        ],
    }));
    let text = Exporter::default().scrape(&state, 0, 0);
    let value = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };
    assert_eq!(value("drainwatch_requests_in_flight{comm=\"nginx\"}"), 1.0);
    assert_eq!(
        value("drainwatch_requests_in_flight{comm=\"dw-game\"}"),
        0.0
    );
    assert!(value("drainwatch_db_query_duration_seconds_count{comm=\"dw-game\"}") >= 3.0);
    // Request latencies: one series per name, never summed together.
    assert_eq!(
        value("drainwatch_request_duration_seconds_count{comm=\"nginx\"}"),
        2.0
    );
    assert_eq!(
        value("drainwatch_request_duration_seconds_count{comm=\"dw-game\"}"),
        1.0
    );
    assert_eq!(
        value("drainwatch_request_duration_seconds_count{comm=\"unknown\"}"),
        1.0
    );
    let nginx_sum = value("drainwatch_request_duration_seconds_sum{comm=\"nginx\"}");
    let game_sum = value("drainwatch_request_duration_seconds_sum{comm=\"dw-game\"}");
    assert!((0.0099..0.0101).contains(&nginx_sum), "{nginx_sum}");
    assert!((0.000099..0.000101).contains(&game_sum), "{game_sum}");
    assert!(
        !text.contains("drainwatch_db_query_duration_seconds_count{comm=\"nginx\"}"),
        "nginx sent no query"
    );
    assert_eq!(
        value("drainwatch_violations_total{kind=\"sigkill\",comm=\"dw-game\"}"),
        1.0
    );
    assert_eq!(
        value("drainwatch_violations_total{kind=\"sigkill\",comm=\"nginx\"}"),
        0.0
    );
}

/// Without --op: the operations' families (documented, always there), no series (with it:
/// model/ops/tests.rs).
#[test]
fn operations_families_are_there_without_op() {
    let plain = Exporter::default().render(&Snapshot::default());
    assert!(plain.contains("# TYPE drainwatch_operation_duration_seconds histogram\n"));
    assert!(!plain.contains("drainwatch_operations_in_flight{"));
}

/// docs/observability.md's table lists exactly what is exported, with the same types.
#[test]
fn every_family_is_documented_with_its_type() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let text = Exporter::default().render(&Snapshot::default());
    let exported: std::collections::BTreeSet<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_string(), kind.to_string())
        })
        .collect();
    let documented: std::collections::BTreeSet<(String, String)> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `drainwatch_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[0].trim_end_matches('`');
            (format!("drainwatch_{name}"), cells[1].to_string())
        })
        .collect();
    assert_eq!(exported, documented);
}
