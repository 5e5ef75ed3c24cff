//! Real clients' conversations replayed through the kernel's redaction: every syscall as
//! recorded (tests/measure/record_db.py, under strace) goes through
//! `probe_common::redact::redact`, the same code the eBPF probe runs, and only what it keeps
//! reaches the readers. A rule that works only on unredacted bytes cannot pass.
//!
//! Recordings: probe-user/tests/data/db/*.rec (their format is described in the recorder).

use std::collections::BTreeMap;

use probe_common::{DbIoEvent, EventHeader, EventKind, DIR_RECV, DIR_SEND};

use super::super::registry;
use super::*;

/// What the kernel reports of one syscall that moved `bytes`, redacted as the probe does.
pub(super) fn through_kernel(protocol: Protocol, dir: Direction, bytes: &[u8]) -> Kernel {
    let mut event = DbIoEvent {
        header: EventHeader::new(EventKind::DbIo, core::mem::size_of::<DbIoEvent>(), 0),
        tgid: 1,
        fd: 3,
        dir: match dir {
            Send => DIR_SEND,
            Recv => DIR_RECV,
        },
        proto: registry::of(protocol).map_or(probe_common::PROTO_UNKNOWN, |p| p.wire()),
        head_len: 0,
        tail_len: 0,
        len: bytes.len() as u32,
        tail_off: 0,
        tls: 0,
        _pad: [0; 6],
        head: [0; HEAD_BYTES],
        tail: [0; TAIL_BYTES],
    };
    let head = bytes.len().min(HEAD_BYTES);
    let tail = bytes.len().min(TAIL_BYTES);
    event.head[..head].copy_from_slice(&bytes[..head]);
    event.tail[TAIL_BYTES - tail..].copy_from_slice(&bytes[bytes.len() - tail..]);
    probe_common::redact::redact(&mut event, head as u8, tail as u8);
    // As events/mod.rs decodes it.
    let head_len = (event.head_len as usize).min(HEAD_BYTES);
    let tail_off = (event.tail_off as usize).min(TAIL_BYTES);
    let tail_end = (tail_off + event.tail_len as usize).min(TAIL_BYTES);
    Kernel {
        dir,
        len: event.len,
        head: event.head[..head_len].to_vec(),
        tail: event.tail[tail_off..tail_end].to_vec(),
    }
}

/// What of one syscall's bytes leaves the kernel: (head, tail).
pub(crate) fn kept(protocol: Protocol, dir: Direction, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let kernel = through_kernel(protocol, dir, bytes);
    (kernel.head, kernel.tail)
}

/// One syscall, redacted.
pub(super) fn redacted_io(conn: &mut DbConn, dir: Direction, bytes: &[u8]) {
    conn.on_io(&through_kernel(conn.protocol(), dir, bytes).io());
}

enum Line {
    Io(u32, Direction, Vec<u8>),
    Close(u32),
    Expect(String),
    Exit,
}

struct Recording {
    name: String,
    protocol: Protocol,
    lines: Vec<Line>,
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn parse(name: &str, text: &str) -> Recording {
    let mut protocol = None;
    let mut lines = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["protocol", p] => {
                protocol = Some(match p {
                    "postgres" => Protocol::Postgres,
                    "mysql" => Protocol::Mysql,
                    "redis" => Protocol::Redis,
                    other => panic!("{name}: protocol {other}?"),
                })
            }
            ["expect", ..] => lines.push(Line::Expect(line["expect ".len()..].to_string())),
            ["exit"] => lines.push(Line::Exit),
            [conn, "close"] => lines.push(Line::Close(conn.parse().expect("conn"))),
            [conn, dir, bytes] => lines.push(Line::Io(
                conn.parse().expect("conn"),
                if dir == "send" { Send } else { Recv },
                hex(bytes),
            )),
            _ => panic!("{name}: cannot read {line:?}"),
        }
    }
    Recording {
        name: name.to_string(),
        protocol: protocol.unwrap_or_else(|| panic!("{name}: no protocol line")),
        lines,
    }
}

fn recordings() -> Vec<Recording> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/db");
    let mut out: Vec<Recording> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rec"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("recording");
            parse(&p.file_name().unwrap().to_string_lossy(), &text)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        out.len() >= 8,
        "{dir}: {} recordings; run tests/measure/record_db.py",
        out.len()
    );
    out
}

/// Counts over every connection of the recording, closed ones as they were at their close.
fn counts(conns: &BTreeMap<u32, DbConn>) -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for conn in conns.values() {
        let txn = conn.txn();
        for (key, yes) in [
            (
                "open",
                matches!(txn, Txn::Open | Txn::Failed) && !conn.goodbye_sent(),
            ),
            ("failed", txn == Txn::Failed),
            ("unknown", txn == Txn::Unknown),
            ("inflight", conn.query_in_flight()),
            ("goodbye", conn.goodbye_sent()),
            ("clean", conn.close_is_clean()),
        ] {
            *out.entry(key).or_default() += yes as usize;
        }
    }
    out
}

fn check(rec: &Recording, at: usize, expect: &str, conns: &BTreeMap<u32, DbConn>) {
    let have = counts(conns);
    for pair in expect.split_whitespace() {
        let (key, want) = pair.split_once('=').expect("key=value");
        let want: usize = want.parse().expect("a count");
        assert_eq!(
            have.get(key).copied(),
            Some(want),
            "{}: line {at} `expect {expect}`: {key} is {:?} ({have:?})",
            rec.name,
            have.get(key)
        );
    }
}

/// Every recording, from its start: each expectation holds.
#[test]
fn real_clients_through_the_kernel_s_redaction() {
    for rec in recordings() {
        let mut conns: BTreeMap<u32, DbConn> = BTreeMap::new();
        let mut closed = Vec::new();
        let mut expectations = 0;
        for (at, line) in rec.lines.iter().enumerate() {
            match line {
                Line::Io(id, dir, bytes) => {
                    assert!(
                        !closed.contains(id),
                        "{}: line {at}: I/O after close",
                        rec.name
                    );
                    redacted_io(
                        conns
                            .entry(*id)
                            .or_insert_with(|| DbConn::new(rec.protocol, true)),
                        *dir,
                        bytes,
                    )
                }
                Line::Close(id) => closed.push(*id),
                Line::Expect(expect) => {
                    check(&rec, at, expect, &conns);
                    expectations += 1;
                }
                Line::Exit => {}
            }
        }
        assert!(expectations > 0, "{}: nothing checked", rec.name);
    }
}

/// Every recording joined in the middle, as for a connection from before attach, at every
/// syscall: the readers resynchronise without ever claiming a transaction state the
/// database did not report (unknown is allowed, a wrong word is not).
#[test]
fn real_clients_joined_midway_never_claim_a_wrong_transaction_state() {
    for rec in recordings() {
        let ios = rec
            .lines
            .iter()
            .filter(|l| matches!(l, Line::Io(..)))
            .count();
        for start in 0..ios {
            let mut conns: BTreeMap<u32, DbConn> = BTreeMap::new();
            let mut seen = 0;
            for (at, line) in rec.lines.iter().enumerate() {
                match line {
                    Line::Io(id, dir, bytes) => {
                        seen += 1;
                        if seen > start {
                            redacted_io(
                                conns
                                    .entry(*id)
                                    .or_insert_with(|| DbConn::new(rec.protocol, false)),
                                *dir,
                                bytes,
                            );
                        }
                    }
                    Line::Expect(expect) => {
                        let have = counts(&conns);
                        for pair in expect.split_whitespace() {
                            let (key, want) = pair.split_once('=').expect("key=value");
                            let want: usize = want.parse().expect("a count");
                            // A transaction state the database reported is never contradicted.
                            let have_of = |k: &str| have.get(k).copied().unwrap_or(0);
                            let idle = conns.values().filter(|c| c.txn() == Txn::Idle).count();
                            let wrong = match key {
                                "open" => {
                                    have_of(key) > want
                                        || idle > conns.len() - want.min(conns.len())
                                }
                                "failed" => have_of(key) > want,
                                _ => false,
                            };
                            assert!(
                                !wrong,
                                "{}: joined at syscall {start}, line {at} `expect {expect}`: \
                                 {have:?}",
                                rec.name
                            );
                        }
                    }
                    Line::Close(_) | Line::Exit => {}
                }
            }
        }
    }
}

/// go-redis's TxPipelined writes MULTI, its commands and EXEC in one write; the kernel keeps
/// the MULTI at the head and the EXEC at the tail with its array header, and the reader
/// finds EXEC there: the transaction closes with its reply.
#[test]
fn a_transaction_pipelined_in_one_write_closes_at_its_exec() {
    let mut conn = DbConn::new(Protocol::Redis, true);
    let mut send = redis::cmd(&["MULTI"]);
    send.extend(redis::cmd(&["INCR", "n"]));
    send.extend(redis::cmd(&["SET", "k2", &"s".repeat(100)]));
    send.extend(redis::cmd(&["EXEC"]));
    redacted_io(&mut conn, Send, &send);
    assert_eq!(conn.txn(), Txn::Open);
    assert!(conn.query_in_flight());
    redacted_io(
        &mut conn,
        Recv,
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n+OK\r\n",
    );
    assert!(!conn.query_in_flight());
    assert_eq!(conn.txn(), Txn::Idle);
    assert!(conn.close_is_clean());
}

/// A PostgreSQL or MySQL connection joined midway learns its transaction state from its next
/// complete exchange (ReadyForQuery's status; the OK packet's SERVER_STATUS_IN_TRANS): by the
/// last expectation of a recording, two sends after the join leave nothing unknown.
#[test]
fn real_clients_joined_midway_learn_the_transaction_state_from_the_next_exchange() {
    for rec in recordings()
        .into_iter()
        .filter(|r| r.protocol != Protocol::Redis)
    {
        let ios: Vec<(usize, Direction)> = rec
            .lines
            .iter()
            .enumerate()
            .filter_map(|(at, l)| match l {
                Line::Io(_, dir, _) => Some((at, *dir)),
                _ => None,
            })
            .collect();
        let last_expect = rec
            .lines
            .iter()
            .rposition(|l| matches!(l, Line::Expect(_)))
            .expect("an expectation");
        for start in 0..ios.len() {
            let sends = ios[start..]
                .iter()
                .filter(|(at, dir)| *dir == Send && *at < last_expect)
                .count();
            if sends < 2 {
                continue;
            }
            let mut conns: BTreeMap<u32, DbConn> = BTreeMap::new();
            for (at, line) in rec.lines.iter().enumerate().take(last_expect) {
                if let (Line::Io(id, dir, bytes), true) = (line, at >= ios[start].0) {
                    redacted_io(
                        conns
                            .entry(*id)
                            .or_insert_with(|| DbConn::new(rec.protocol, false)),
                        *dir,
                        bytes,
                    );
                }
            }
            let unknown: Vec<_> = conns
                .iter()
                .filter(|(_, c)| c.txn() == Txn::Unknown && !c.goodbye_sent())
                .map(|(id, _)| *id)
                .collect();
            assert!(
                unknown.is_empty(),
                "{}: joined at syscall {start}: connections {unknown:?} still unknown",
                rec.name
            );
        }
    }
}
