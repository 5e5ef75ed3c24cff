//! MySQL / MariaDB client/server protocol, seen from the client.
//!
//! References:
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html>,
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_response_packets.html>,
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html>,
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html>.
//!
//! Rules:
//! - Packets (3-byte LE payload length, sequence id, payload) are followed in both
//!   directions. Server packets of one reply carry consecutive sequence ids; a break in them
//!   means the walker went astray and it is declared lost.
//! - **Startup**: the server greeting (sequence 0, protocol 10) is not a reply; the client's
//!   handshake response starts the in-flight, which ends at the server's OK (`0x00`) or ERR
//!   (`0xff`); `0xfe` (auth switch) and `0x01` (more auth data) in between do not end it.
//!   CLIENT_SSL in the handshake response makes the rest encrypted, CLIENT_COMPRESS makes it
//!   compressed after the OK: both make the connection opaque (see `opaque`).
//!   CLIENT_DEPRECATE_EOF is read from the same flags.
//! - **Commands** are client packets with sequence 0. COM_QUIT (`01 00 00 00 01`) is the
//!   goodbye; COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA get no reply and start nothing; every
//!   other command starts the in-flight. A command sent before any byte of the current reply
//!   arrived is pipelined (MariaDB Connector/J sends PREPARE and EXECUTE together) and its
//!   reply is awaited after the current one. Otherwise the server has finished its previous
//!   reply (it reads a command only then): the command is a point where the receive stream
//!   is at a packet boundary, and the receive walker resynchronises there.
//! - **End of a reply** (see `mysql_reply`): an OK packet (`0x00`, or `0xfe` with payload >= 7
//!   under CLIENT_DEPRECATE_EOF), an EOF packet (`0xfe`, payload < 7) or an ERR packet
//!   (`0xff`), in the place the command's response allows one (inside a result set `0x00`
//!   starts a binary row, not an OK). Status flags: SERVER_STATUS_IN_TRANS → [`Txn::Open`],
//!   else [`Txn::Idle`]; SERVER_MORE_RESULTS_EXISTS → another result follows. ERR carries no
//!   flags: the reply ends and the transaction state is unchanged.
//! - **ROLLBACK**: a COM_QUERY whose payload is 9 bytes (the command byte and the 8 of
//!   `ROLLBACK`, as every driver sends it: go-sql-driver/mysql, Connector/J, libmariadb's
//!   mysql_rollback, PyMySQL, mysql2), sent with a transaction open and answered by an OK
//!   whose status clears SERVER_STATUS_IN_TRANS, is the client's own rollback
//!   (`take_rollback`). Only the packet's length leaves the kernel, never its text; the
//!   statements of that length that end a transaction otherwise (`COMMIT  `, `commit ;`)
//!   are not what drivers write.
//! - Text and binary result sets without CLIENT_DEPRECATE_EOF have an EOF after the column
//!   definitions too. While every packet is seen the definitions are counted from the
//!   column-count packet at the head of the response. When some were not seen, an EOF whose
//!   sequence id is `column-count seq + columns + 1` and whose preceding bytes (when known)
//!   end like a column definition is taken for that EOF, any other EOF for the final one.
//! - When the walker is lost, the last packet of a recv is looked for in the last 64 known
//!   bytes of the stream (positions whose 3-byte length reaches exactly the end of the
//!   stream), or at the head when the whole recv is a single packet (ERR messages are longer
//!   than the tail).
//!
//! Known limits: the final EOF of a result set of `255 + 256k` rows carries the sequence id of
//! the column-definition EOF; when the walker is lost and the bytes before it are unknown or
//! end like a column definition, it is taken for that EOF (the reply then stays in flight
//! until the next command); a final packet longer than the known
//! tail bytes whose header fell into a gap (an OK with a long session-state block ending a
//! large result set) is not found, with the same effect; a COM_STMT_PREPARE reply under
//! CLIENT_DEPRECATE_EOF has no final marker and is taken as complete when the stream ends
//! after its last definition (or, if unseen, after anything that ends like a column
//! definition); CLIENT_DEPRECATE_EOF is unknown on connections opened before attach until
//! the first EOF or OK(0xfe); the pre-4.1 protocol and CLIENT_OPTIONAL_RESULTSET_METADATA
//! are not followed.

use std::collections::VecDeque;

use super::chunk::{le24, looks_like_tls, Chunk, Window};
use super::frame::{Event, Frame, Walker};
use super::io::{DbIo, Step, Txn};
use super::mysql_reply::{
    classify, Ctx, Kind, MyFraming, Reply, Stage, Verdict, SERVER_MORE_RESULTS_EXISTS,
    SERVER_STATUS_IN_TRANS,
};
use super::spec::{Conversation, DbProtocol, Said};
use crate::events::Direction;
use crate::events::Protocol;

/// MySQL and MariaDB in the registry (`registry::REGISTRY`).
pub(crate) struct MysqlProtocol;
pub(crate) static PROTOCOL: MysqlProtocol = MysqlProtocol;

impl DbProtocol for MysqlProtocol {
    fn id(&self) -> Protocol {
        Protocol::Mysql
    }
    fn title(&self) -> &'static str {
        "MySQL"
    }
    fn default_ports(&self) -> &'static [u16] {
        &[3306]
    }
    fn server_names(&self) -> &'static [&'static str] {
        &["mysqld", "mariadbd"]
    }
    /// The packages' default `socket` paths (/run/mysqld/mysqld.sock, ...).
    fn is_socket_file(&self, file: &str) -> bool {
        matches!(file, "mysqld.sock" | "mysql.sock" | "mariadb.sock")
    }
    fn recognize(&self, dir: Direction, head: &[u8]) -> bool {
        dir == Direction::Recv && is_greeting(head)
    }
    /// information_schema.innodb_trx and PROCESSLIST (host/my_view.rs).
    fn url_schemes(&self) -> &'static [&'static str] {
        &["mysql", "mariadb"]
    }
    fn txn_unknown_at_attach(&self) -> bool {
        true
    }
    fn conversation(&self, seen_from_start: bool) -> Option<Box<dyn Conversation>> {
        Some(Box::new(Mysql::new(seen_from_start)))
    }
    /// Inside TLS the client's full handshake response (sequence 2, after the SSL request
    /// packet of sequence 1) comes first.
    fn tls_opening(&self, first: &DbIo) -> bool {
        first.dir == Direction::Send && first.head.get(3) == Some(&2)
    }
    fn conversation_in_tls(&self, from_start: bool) -> Option<Box<dyn Conversation>> {
        Some(Box::new(Mysql::inside_tls(from_start)))
    }
}

const CLIENT_COMPRESS: u32 = 0x0000_0020;
const CLIENT_SSL: u32 = 0x0000_0800;
const CLIENT_DEPRECATE_EOF: u32 = 0x0100_0000;
const COM_QUIT: u8 = 0x01;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
const COM_STMT_CLOSE: u8 = 0x19;
const MAX_PIPELINED: usize = 256;
const COM_QUERY: u8 = 0x03;
/// COM_QUERY's payload for `ROLLBACK`: the command byte and 8 characters.
const ROLLBACK_PAYLOAD_LEN: u32 = 9;

/// A server greeting: 3-byte length, sequence 0, protocol version 10, a NUL-terminated
/// printable version string starting with a digit (cut off by the end of `head` if long).
pub(crate) fn is_greeting(head: &[u8]) -> bool {
    let (Some(len), [_, _, _, 0, 0x0a, version @ ..]) = (le24(head), head) else {
        return false;
    };
    let text = version.split(|&b| b == 0).next().unwrap_or_default();
    let terminated = text.len() < version.len();
    let length_fits = if head.len() < super::io::HEAD_BYTES {
        len as usize + 4 == head.len()
    } else {
        len as usize + 4 >= head.len()
    };
    text.first().is_some_and(u8::is_ascii_digit)
        && text.iter().all(|b| (0x20..0x7f).contains(b))
        && (terminated || head.len() >= super::io::HEAD_BYTES)
        && length_fits
        && len as usize >= text.len() + 16
        && len <= 0xffff
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Seen from the start, awaiting the server greeting.
    Greeting,
    /// Greeting seen: the client's next packet is its handshake response.
    Handshake,
    Command,
}

#[derive(Clone, Debug)]
pub(crate) struct Mysql {
    phase: Phase,
    send: Walker<MyFraming>,
    recv: Walker<MyFraming>,
    window: Window,
    reply: Reply,
    said: Said,
    /// The sequence id the next server packet must carry, when known.
    expect_seq: Option<u8>,
    compress_after_auth: bool,
    /// Read inside TLS (the kernel's TLS hooks): the handshake response there repeats
    /// CLIENT_SSL, which then means nothing more.
    inside_tls: bool,
    /// A command has been seen (or the connection was seen from its start).
    synced: bool,
    /// Commands pipelined behind the current reply.
    queue: VecDeque<Stage>,
    /// Bytes arrived since the last command started.
    recv_since_cmd: bool,
    /// The command in flight is a ROLLBACK sent inside an open transaction (module doc).
    rollback_asked: bool,
    events: Vec<Event>,
}

impl Mysql {
    pub(crate) fn new(seen_from_start: bool) -> Self {
        Mysql {
            phase: if seen_from_start {
                Phase::Greeting
            } else {
                Phase::Command
            },
            send: Walker::new(seen_from_start),
            recv: Walker::new(seen_from_start),
            window: Window::default(),
            reply: Reply {
                stage: Stage::Idle,
                deprecate_eof: None,
            },
            said: Said::new(seen_from_start),
            expect_seq: seen_from_start.then_some(0),
            compress_after_auth: false,
            inside_tls: false,
            synced: seen_from_start,
            queue: VecDeque::new(),
            recv_since_cmd: false,
            rollback_asked: false,
            events: Vec::new(),
        }
    }

    /// The conversation from where TLS began, in plaintext: seen from its opening, the
    /// client's next packet is its full handshake response (sequence 2, after the SSL
    /// request packet of sequence 1), answered by the server's OK
    /// (https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase.html).
    pub(crate) fn inside_tls(seen_from_start: bool) -> Self {
        let mut parser = Mysql::new(seen_from_start);
        parser.inside_tls = true;
        if seen_from_start {
            parser.phase = Phase::Handshake;
            parser.expect_seq = None;
        }
        parser
    }

    fn on_send(&mut self, chunk: &Chunk) -> Step {
        if !self.synced && looks_like_tls(chunk.head(), chunk.len()) {
            return Step::Opaque { in_flight: true };
        }
        if self.send.is_lost() {
            // Clients write whole packets: assume this send starts one.
            self.send.resync();
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.send.feed(chunk, &mut events);
        let mut step = Step::Go;
        for ev in &events {
            if let Event::Begin(frame) = ev {
                step = self.client_packet(frame);
                if step != Step::Go {
                    break;
                }
            }
        }
        self.events = events;
        step
    }

    fn client_packet(&mut self, f: &Frame) -> Step {
        let seq = f.hdr[3];
        if seq != 0 {
            self.expect_seq = Some(seq.wrapping_add(1));
        }
        if self.phase != Phase::Command {
            // The handshake response: capability flags first.
            let caps = f
                .first()
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if !self.inside_tls && caps.is_some_and(|c| c & CLIENT_SSL != 0) {
                return Step::Opaque { in_flight: true };
            }
            self.compress_after_auth = caps.is_some_and(|c| c & CLIENT_COMPRESS != 0);
            self.reply.deprecate_eof = caps.map(|c| c & CLIENT_DEPRECATE_EOF != 0);
            self.phase = Phase::Command;
            self.reply.stage = Stage::Auth;
            self.said.in_flight = true;
            return Step::Go;
        }
        if seq != 0 {
            // A continuation, LOCAL INFILE data or auth data: part of the current exchange.
            if self.reply.stage != Stage::Idle {
                self.said.in_flight = true;
            }
            return Step::Go;
        }
        self.synced = true;
        // Any later command (pipelined too) takes the claim back: only a ROLLBACK answered
        // as the last command counts.
        self.rollback_asked = f.first_byte() == Some(COM_QUERY)
            && f.body_len == ROLLBACK_PAYLOAD_LEN
            && self.said.txn == Txn::Open;
        match f.first_byte() {
            Some(COM_QUIT) => self.said.goodbye = true,
            Some(COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA) => {}
            Some(COM_CHANGE_USER) => self.start(Stage::Auth),
            cmd => self.start(Stage::First(cmd)),
        }
        Step::Go
    }

    /// A command. Sent before any byte of the previous reply arrived, it is pipelined and
    /// waits its turn. Otherwise the server has finished its previous reply (it reads a
    /// command only then), so its next byte starts a packet.
    fn start(&mut self, stage: Stage) {
        self.said.in_flight = true;
        if self.reply.stage != Stage::Idle && !self.recv_since_cmd {
            if self.queue.len() < MAX_PIPELINED {
                self.queue.push_back(stage);
            }
            return;
        }
        self.queue.clear();
        self.reply.stage = stage;
        self.recv.resync();
        self.expect_seq = Some(1);
        self.recv_since_cmd = false;
    }

    fn on_recv(&mut self, chunk: &Chunk) -> Step {
        self.window.push(chunk);
        self.recv_since_cmd = true;
        if self.recv.is_lost()
            && single_packet(chunk).is_some_and(|f| self.reply.plausible_end(classify(&f)))
        {
            self.recv.resync();
        }
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.recv.feed(chunk, &mut events);
        let last_end = events.iter().rposition(|e| matches!(e, Event::End(_)));
        let mut step = Step::Go;
        for (i, ev) in events.iter().enumerate() {
            let Event::End(frame) = ev else { continue };
            let seq = frame.hdr[3];
            if self.expect_seq.is_some_and(|e| e != seq) {
                self.recv.lose();
                break;
            }
            self.expect_seq = Some(seq.wrapping_add(1));
            let stream_end = Some(i) == last_end && self.recv.at_boundary();
            // The known bytes before a packet that ends the stream.
            let mut before = [0u8; Window::CAP];
            let w = self.window.bytes();
            let keep = match w.len().checked_sub(4 + frame.body_len as usize) {
                Some(n) if stream_end => n,
                _ => 0,
            };
            before[..keep].copy_from_slice(&w[..keep]);
            let ctx = Ctx {
                exact: true,
                stream_end,
                before: &before[..keep],
            };
            step = self.server_packet(frame, ctx);
            if step != Step::Go {
                break;
            }
        }
        self.events = events;
        if step == Step::Go && self.recv.is_lost() {
            self.expect_seq = None;
            self.reply.lost();
            step = self.find_end_in_tail();
        }
        step
    }

    fn server_packet(&mut self, f: &Frame, ctx: Ctx) -> Step {
        match self.phase {
            Phase::Greeting => {
                self.phase = if f.first_byte() == Some(0x0a) {
                    Phase::Handshake
                } else {
                    Phase::Command
                };
                Step::Go
            }
            Phase::Handshake => Step::Go,
            Phase::Command => {
                let was_auth = self.reply.stage == Stage::Auth;
                let verdict = self.reply.packet(f, ctx);
                self.apply(verdict);
                if was_auth && verdict.done && self.compress_after_auth && verdict.status.is_some()
                {
                    return Step::Opaque { in_flight: false };
                }
                Step::Go
            }
        }
    }

    /// The walker is lost: look for the last packet of the stream in its last known bytes
    /// (the latest-starting one that can end the reply). An OK that cannot end the current
    /// result set still ends the reply when the packet before it is an EOF/OK saying more
    /// results follow (the final OK of a CALL).
    fn find_end_in_tail(&mut self) -> Step {
        let w = self.window.bytes();
        let mut found = None;
        for (at, f) in packets_ending_at(w, w.len()) {
            let kind = classify(&f);
            if self.reply.plausible_end(kind) {
                found = Some((at, f, None));
                break;
            }
            if let Kind::Ok(_) = kind {
                let prev = packets_ending_at(w, at)
                    .find(|(_, p)| says_more_results(p) && p.hdr[3].wrapping_add(1) == f.hdr[3]);
                if prev.is_some() {
                    found = Some((at, f, prev));
                    break;
                }
            }
        }
        let Some((at, f, prev)) = found else {
            if self.reply.ends_after_definitions(w) {
                self.apply(Verdict {
                    done: true,
                    status: None,
                });
                self.recv.resync();
            }
            return Step::Go;
        };
        let mut before = [0u8; Window::CAP];
        before[..at].copy_from_slice(&w[..at]);
        self.recv.resync();
        self.expect_seq = Some(f.hdr[3].wrapping_add(1));
        if let Some((prev_at, p)) = prev {
            let ctx = Ctx {
                exact: false,
                stream_end: false,
                before: &before[..prev_at],
            };
            let step = self.server_packet(&p, ctx);
            if step != Step::Go {
                return step;
            }
        }
        let ctx = Ctx {
            exact: false,
            stream_end: true,
            before: &before[..at],
        };
        self.server_packet(&f, ctx)
    }

    fn apply(&mut self, v: Verdict) {
        if let Some(status) = v.status {
            let was_open = self.said.txn == Txn::Open;
            self.said.txn = if status & SERVER_STATUS_IN_TRANS != 0 {
                Txn::Open
            } else {
                Txn::Idle
            };
            if v.done && self.rollback_asked && was_open && self.said.txn == Txn::Idle {
                self.said.rolled_back = true;
            }
        }
        if v.done {
            self.rollback_asked = false;
        }
        if v.done {
            match self.queue.pop_front() {
                Some(next) => {
                    self.reply.stage = next;
                    self.expect_seq = Some(1);
                }
                None => {
                    self.said.in_flight = false;
                    self.reply.stage = Stage::Idle;
                }
            }
        }
    }
}

/// The packets in `w` that end exactly at `end`, latest-starting first.
fn packets_ending_at(w: &[u8], end: usize) -> impl Iterator<Item = (usize, Frame)> + '_ {
    (0..end.saturating_sub(3)).rev().filter_map(move |at| {
        let body_len = le24(&w[at..])?;
        (at + 4 + body_len as usize == end)
            .then(|| (at, Frame::new(&w[at..at + 4], body_len, &w[at + 4..end])))
    })
}

fn says_more_results(f: &Frame) -> bool {
    matches!(classify(f), Kind::Eof(Some(s)) | Kind::OkFe(Some(s)) if s & SERVER_MORE_RESULTS_EXISTS != 0)
}

/// The recv is exactly one packet, by the length at its head: that packet.
fn single_packet(chunk: &Chunk) -> Option<Frame> {
    let head = chunk.head();
    let len = le24(head)?;
    let hdr = head.get(..4)?;
    (len > 0 && u64::from(len) + 4 == chunk.len()).then(|| Frame::new(hdr, len, &head[4..]))
}

impl Conversation for Mysql {
    fn said(&self) -> &Said {
        &self.said
    }

    fn said_mut(&mut self) -> &mut Said {
        &mut self.said
    }

    fn on_io(&mut self, dir: Direction, chunk: &Chunk) -> Step {
        match dir {
            Direction::Send => self.on_send(chunk),
            Direction::Recv => self.on_recv(chunk),
        }
    }
}
