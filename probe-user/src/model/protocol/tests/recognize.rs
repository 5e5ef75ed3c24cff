//! Recognising the protocol from the first bytes of a connection.

use super::mysql::greeting;
use super::postgres::startup;
use super::redis::cmd;
use super::*;
use crate::model::protocol::recognize;

fn head(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(HEAD_BYTES)]
}

#[test]
fn postgres_openings() {
    assert_eq!(recognize(Send, head(&startup())), Some(Protocol::Postgres));
    for code in [0x04d2_162f_u32, 0x04d2_1630] {
        let req = cat(&[&8u32.to_be_bytes(), &code.to_be_bytes()]);
        assert_eq!(recognize(Send, &req), Some(Protocol::Postgres));
    }
    let cancel = cat(&[
        &16u32.to_be_bytes(),
        &0x04d2_162e_u32.to_be_bytes(),
        &[0; 8],
    ]);
    assert_eq!(recognize(Send, &cancel), Some(Protocol::Postgres));
    // An SSLRequest code with the wrong length is not one.
    let bad = cat(&[&9u32.to_be_bytes(), &0x04d2_162f_u32.to_be_bytes()]);
    assert_eq!(recognize(Send, &bad), None);
    assert_eq!(recognize(Recv, head(&startup())), None);
}

#[test]
fn redis_arrays() {
    assert_eq!(
        recognize(Send, head(&cmd(&["PING"]))),
        Some(Protocol::Redis)
    );
    assert_eq!(
        recognize(Send, head(&cmd(&["SET", "k", "v"]))),
        Some(Protocol::Redis)
    );
    assert_eq!(recognize(Send, b"*\r\n$"), None);
    assert_eq!(recognize(Send, b"*1\r\n:1\r\n"), None);
    assert_eq!(recognize(Send, b"PING\r\n"), None);
}

#[test]
fn mysql_greetings() {
    assert_eq!(recognize(Recv, head(&greeting())), Some(Protocol::Mysql));
    let mariadb = super::mysql::pkt(
        0,
        &cat(&[
            b"\x0a5.5.5-10.11.6-MariaDB-1:10.11.6+maria~ubu2204\0",
            &[0; 60],
        ]),
    );
    assert_eq!(recognize(Recv, head(&mariadb)), Some(Protocol::Mysql));
    assert_eq!(recognize(Send, head(&greeting())), None);
    // Sequence id must be 0, protocol 10, version printable.
    let mut g = greeting();
    g[3] = 1;
    assert_eq!(recognize(Recv, head(&g)), None);
    let mut g = greeting();
    g[4] = 9;
    assert_eq!(recognize(Recv, head(&g)), None);
    let mut g = greeting();
    g[6] = 0x07;
    assert_eq!(recognize(Recv, head(&g)), None);
    // A short recv must be exactly one packet.
    let short = super::mysql::pkt(0, b"\x0a8.0\0aaaaaaaaaaaaaaaaaaa");
    assert_eq!(recognize(Recv, &short), Some(Protocol::Mysql));
    assert_eq!(recognize(Recv, &short[..short.len() - 1]), None);
}

#[test]
fn nothing_from_nothing() {
    for dir in [Send, Recv] {
        assert_eq!(recognize(dir, b""), None);
        assert_eq!(recognize(dir, b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(recognize(dir, &[0x16, 3, 1, 2, 0, 1]), None);
    }
}
