//! What leaves the kernel for real protocol bytes: never the query, row or value bytes.

extern crate std;
use std::vec::Vec;

use super::*;
use crate::{EventHeader, EventKind, DIR_RECV, PROTO_MYSQL, PROTO_POSTGRES, PROTO_REDIS};

/// Builds the event the kernel would, from the whole data of one syscall, and redacts it.
fn through_kernel(proto: u8, dir: u8, data: &[u8]) -> DbIoEvent {
    let mut event = DbIoEvent {
        header: EventHeader::new(EventKind::DbIo, core::mem::size_of::<DbIoEvent>(), 0),
        tgid: 1,
        fd: 3,
        dir,
        proto,
        head_len: 0,
        tail_len: 0,
        len: data.len() as u32,
        tail_off: 0,
        tls: 0,
        _pad: [0; 6],
        head: [0; HEAD_BYTES],
        tail: [0; TAIL_BYTES],
    };
    let head = data.len().min(HEAD_BYTES);
    let tail = data.len().min(TAIL_BYTES);
    event.head[..head].copy_from_slice(&data[..head]);
    event.tail[TAIL_BYTES - tail..].copy_from_slice(&data[data.len() - tail..]);
    redact(&mut event, head as u8, tail as u8);
    event
}

fn kept(event: &DbIoEvent) -> (Vec<u8>, Vec<u8>) {
    let off = event.tail_off as usize;
    (
        event.head[..event.head_len as usize].to_vec(),
        event.tail[off..off + event.tail_len as usize].to_vec(),
    )
}

/// No byte of `secret` appears anywhere in what the event carries.
fn assert_no_secret(event: &DbIoEvent, secret: &[u8]) {
    for window in [&event.head[..], &event.tail[..]] {
        assert!(
            !window.windows(3).any(|w| secret.windows(3).any(|s| s == w)),
            "secret bytes left the kernel: {:?}",
            window
        );
    }
}

fn pg_query(sql: &str) -> Vec<u8> {
    let mut out = vec![b'Q'];
    out.extend(((sql.len() + 5) as u32).to_be_bytes());
    out.extend(sql.as_bytes());
    out.push(0);
    out
}

use std::vec;

#[test]
fn postgres_query_keeps_type_and_length_only() {
    let event = through_kernel(
        PROTO_POSTGRES,
        DIR_SEND,
        &pg_query("SELECT 'hunter2-secret'"),
    );
    let (head, tail) = kept(&event);
    assert_eq!(head, [b'Q', 0, 0, 0, 28]);
    assert!(tail.is_empty());
    assert_no_secret(&event, b"hunter2-secret");
}

#[test]
fn postgres_startup_keeps_length_and_protocol() {
    let mut startup = vec![0, 0, 0, 41, 0, 3, 0, 0];
    startup.extend(b"user\0secret-user\0database\0db\0\0");
    let event = through_kernel(PROTO_POSTGRES, DIR_SEND, &startup);
    assert_eq!(kept(&event).0, [0, 0, 0, 41, 0, 3, 0, 0]);
    assert_no_secret(&event, b"secret-user");
}

#[test]
fn postgres_response_keeps_ready_for_query_and_drops_rows() {
    let mut response = b"T\0\0\0\x1e\0\x01secret-col".to_vec();
    response.extend(b"D\0\0\0\x13\0\x01\0\0\0\x09secretrow");
    response.extend(b"C\0\0\0\x0dSELECT 1\0");
    response.extend(b"Z\0\0\0\x05T");
    let event = through_kernel(PROTO_POSTGRES, DIR_RECV, &response);
    let (head, tail) = kept(&event);
    assert_eq!(head, b"T\0\0\0\x1e");
    assert_eq!(tail, b"Z\0\0\0\x05T");
    assert_no_secret(&event, b"secretrow");
    assert_no_secret(&event, b"secret-col");
}

#[test]
fn postgres_ready_for_query_split_across_reads_is_kept_on_both_sides() {
    let mut first = b"C\0\0\0\x0dSELECT 1\0".to_vec();
    first.extend(b"Z\0\0");
    let event = through_kernel(PROTO_POSTGRES, DIR_RECV, &first);
    assert_eq!(kept(&event).1, b"Z\0\0");
    let event = through_kernel(PROTO_POSTGRES, DIR_RECV, b"\0\x05I");
    assert_eq!(kept(&event).1, b"\0\x05I");
    let event = through_kernel(PROTO_POSTGRES, DIR_RECV, b"I");
    assert_eq!(kept(&event).1, b"I");
    // Not a piece of ReadyForQuery: nothing kept.
    let event = through_kernel(PROTO_POSTGRES, DIR_RECV, b"ab\x05I");
    assert!(kept(&event).1.is_empty());
    let event = through_kernel(PROTO_POSTGRES, DIR_RECV, b"D\0\0\0\x0bsecretrow!!");
    assert!(kept(&event).1.is_empty());
    assert_no_secret(&event, b"secretrow");
}

#[test]
fn mysql_query_keeps_header_and_command() {
    let mut packet = vec![27, 0, 0, 0, 0x03];
    packet.extend(b"SELECT 'hunter2-secret'!!!");
    let event = through_kernel(PROTO_MYSQL, DIR_SEND, &packet);
    assert_eq!(kept(&event).0, [27, 0, 0, 0, 0x03]);
    assert_no_secret(&event, b"hunter2-secret");
}

#[test]
fn mysql_ok_keeps_status_but_not_info_text() {
    // OK: affected 1, insert id 0, status 0x0003 (in trans), warnings 0, info text.
    let mut ok = vec![0, 0, 0, 2, 0x00, 1, 0, 0x03, 0x00, 0, 0];
    ok.extend(b"Rows matched: 1 secret-info");
    let len = ok.len() - 4;
    ok[0] = len as u8;
    let event = through_kernel(PROTO_MYSQL, DIR_RECV, &ok);
    let (head, tail) = kept(&event);
    assert_eq!(head, &ok[..11]);
    assert!(tail.is_empty(), "an OK with info text is not small");
    assert_no_secret(&event, b"secret-info");
}

#[test]
fn mysql_result_set_keeps_only_the_final_eof() {
    let mut rs = vec![1, 0, 0, 1, 1]; // column count
    rs.extend([14, 0, 0, 2, 3]);
    rs.extend(b"secret-values");
    rs.extend([5, 0, 0, 3, 0xfe, 0, 0, 0x02, 0x00]); // EOF, status autocommit
    let event = through_kernel(PROTO_MYSQL, DIR_RECV, &rs);
    assert_eq!(kept(&event).1, [5, 0, 0, 3, 0xfe, 0, 0, 0x02, 0x00]);
    assert_no_secret(&event, b"secret-values");
}

#[test]
fn mysql_err_never_carries_its_message() {
    let mut err = vec![0, 0, 0, 1, 0xff, 0x26, 0x04, b'#'];
    err.extend(b"23000Duplicate entry 'secret-key' for key");
    err[0] = (err.len() - 4) as u8;
    let event = through_kernel(PROTO_MYSQL, DIR_RECV, &err);
    assert_eq!(kept(&event).0, &err[..5]);
    assert!(kept(&event).1.is_empty());
    assert_no_secret(&event, b"secret-key");
}

#[test]
fn redis_keeps_transaction_words_and_drops_keys_and_values() {
    let event = through_kernel(PROTO_REDIS, DIR_SEND, b"*1\r\n$5\r\nMULTI\r\n");
    assert_eq!(kept(&event).0, b"*1\r\n$5\r\nMULTI\r\n");
    let set = b"*3\r\n$3\r\nSET\r\n$10\r\nsecret-key\r\n$12\r\nsecret-value\r\n";
    let event = through_kernel(PROTO_REDIS, DIR_SEND, set);
    assert_eq!(kept(&event), (b"*3\r\n".to_vec(), Vec::new()));
    assert_no_secret(&event, b"secret-key");
    assert_no_secret(&event, b"secret-value");
    let mut pipeline = set.to_vec();
    pipeline.extend(b"*1\r\n$4\r\nexec\r\n");
    let event = through_kernel(PROTO_REDIS, DIR_SEND, &pipeline);
    // With its array header and the CRLF before it: what the parser resynchronises on.
    assert_eq!(kept(&event).1, b"\r\n*1\r\n$4\r\nexec\r\n");
    assert_no_secret(&event, b"secret-value");
    // A value that ends with a transaction word is a value: nothing of it is kept.
    let event = through_kernel(
        PROTO_REDIS,
        DIR_SEND,
        b"*3\r\n$3\r\nSET\r\n$10\r\nsecret-key\r\n$4\r\nEXEC\r\n",
    );
    assert_eq!(kept(&event), (b"*3\r\n".to_vec(), Vec::new()));
    let event = through_kernel(PROTO_REDIS, DIR_RECV, b"$12\r\nsecret-value\r\n");
    assert_eq!(kept(&event), (b"$".to_vec(), b"\r\n".to_vec()));
    let event = through_kernel(PROTO_REDIS, DIR_RECV, b"$20\r\nsecret-value-spli");
    assert_eq!(kept(&event), (b"$".to_vec(), Vec::new()));
}

#[test]
fn unknown_protocols_keep_nothing() {
    let event = through_kernel(crate::PROTO_UNKNOWN, DIR_SEND, b"anything at all, secret");
    assert_eq!(kept(&event), (Vec::new(), Vec::new()));
    assert!(event.head.iter().chain(event.tail.iter()).all(|b| *b == 0));
}
