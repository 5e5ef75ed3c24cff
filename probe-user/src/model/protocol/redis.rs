//! Redis (RESP2/RESP3), seen from the client.
//!
//! Reference: <https://redis.io/docs/latest/develop/reference/protocol-spec/>,
//! <https://redis.io/docs/latest/develop/interact/transactions/>.
//!
//! Rules:
//! - Clients send arrays of bulk strings (`*N\r\n$len\r\nCMD\r\n...`), several pipelined in
//!   one send, or inline commands (`PING\r\n`). A RESP reader follows the requests and reads
//!   each command's name (first bulk string, or first word); a send of at most 64 bytes is
//!   read whole. When a length line falls into the gap of a larger send, the commands seen
//!   are those before it (the first, at the head) and those read from the earliest array
//!   start in the tail from which the rest reads as requests (the last). Names compare
//!   case-insensitively.
//! - **Query in flight** from a send until the replies it asked for are complete. Requests and
//!   replies are both followed by a RESP reader (bulk strings carry lengths, so their data
//!   may fall into a gap): while every command sent and every reply received is counted, the
//!   in-flight ends when no reply is owed. When some commands of a send were hidden in its
//!   gap, the commands seen are a lower bound: the in-flight ends when that many replies
//!   completed and the receive stream ends between two top-level replies (and, when the
//!   pipeline ends with EXEC / DISCARD, the last reply is not a `+QUEUED`). When the reply
//!   reader itself is lost (a length line fell into a gap), it resumes at the earliest line
//!   start in the last 64 known bytes from which the rest reads as replies, and the in-flight
//!   ends if that reading ends between two replies; with no such line start, a receive stream
//!   ending in CRLF ends it.
//! - **Transaction**: MULTI sent → [`Txn::Open`] at once; EXEC, DISCARD (or RESET) sent → the
//!   transaction closes, [`Txn::Idle`], when their replies are complete. The replies also
//!   tell: a lone ordinary command answered `+QUEUED` runs inside MULTI ([`Txn::Open`]), one
//!   answered with anything but `+QUEUED` or an error does not ([`Txn::Idle`]). A connection
//!   seen from its start begins [`Txn::Idle`]; one opened before attach [`Txn::Unknown`] until
//!   one of the above is seen.
//! - **Goodbye**: QUIT sent. A send of QUIT alone is not a query. Redis 7.2 deprecates QUIT,
//!   so a close with no transaction open and no reply owed is clean too.
//!
//! Known limits: commands in the middle of a send longer than 64 bytes are unseen (a MULTI or
//! EXEC there is missed, and the reply count of such a pipeline is not exact); SUBSCRIBE to
//! several channels and RESP3 push messages produce more replies than commands, which is
//! harmless unless pipelined behind other commands (the in-flight may then end early);
//! `CLIENT REPLY OFF` produces none (the in-flight then lasts until a later reply); when the
//! reply reader is lost, the rest of a large reply is guessed from its last bytes: a bulk
//! string whose data holds lines that read as RESP (`\n+...\r\n`, `\n:1\r\n`) and is split
//! right after one of them ends the in-flight early, and a large array split between two
//! elements does too. TLS (Redis 6+) makes the connection opaque.

use super::chunk::{looks_like_tls, Chunk, Window};
use super::io::{Step, Txn};
use super::resp::{Name, RespReader};
use super::spec::{Conversation, DbProtocol, Said};
use crate::events::Direction;
use crate::events::Protocol;

/// Redis (and the servers that speak RESP: Valkey, KeyDB) in the registry
/// (`registry::REGISTRY`).
pub(crate) struct RedisProtocol;
pub(crate) static PROTOCOL: RedisProtocol = RedisProtocol;

impl DbProtocol for RedisProtocol {
    fn id(&self) -> Protocol {
        Protocol::Redis
    }
    fn title(&self) -> &'static str {
        "Redis"
    }
    fn default_ports(&self) -> &'static [u16] {
        &[6379]
    }
    fn server_names(&self) -> &'static [&'static str] {
        &["redis-server", "valkey-server", "keydb-server"]
    }
    /// `redis.sock`, `redis-server.sock`, ... (the `unixsocket` the packages suggest).
    fn is_socket_file(&self, file: &str) -> bool {
        file.starts_with("redis") && file.ends_with(".sock")
    }
    fn recognize(&self, dir: Direction, head: &[u8]) -> bool {
        dir == Direction::Send && is_resp_request(head)
    }
    /// Not listed: nothing queued after MULTI runs before EXEC, which the server runs at
    /// once, so a transaction from before attach that the exit cuts loses only commands that
    /// never ran; and Redis has no view of it to resolve it with.
    fn txn_unknown_at_attach(&self) -> bool {
        false
    }
    fn conversation(&self, seen_from_start: bool) -> Option<Box<dyn Conversation>> {
        Some(Box::new(Redis::new(seen_from_start)))
    }
}

/// A RESP array of bulk strings: `*<digits>\r\n$`.
pub(crate) fn is_resp_request(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"*") else {
        return false;
    };
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && rest[digits..].starts_with(b"\r\n$")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Multi,
    /// EXEC: the transaction ends with its reply.
    Close,
    /// DISCARD or RESET: the transaction ends with their reply, thrown away.
    Discard,
    Quit,
    Other,
}

fn command(name: &[u8]) -> Cmd {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("MULTI") {
        Cmd::Multi
    } else if is("EXEC") {
        Cmd::Close
    } else if is("DISCARD") || is("RESET") {
        Cmd::Discard
    } else if is("QUIT") {
        Cmd::Quit
    } else {
        Cmd::Other
    }
}

/// A request reader lost in a send finds its feet in the last known bytes: the earliest line
/// start (an array `*` in RESP mode) from which the rest reads as requests. Returns that
/// reader and the names of the requests it completed.
fn resync_in_tail(chunk: &Chunk, resp: bool) -> Option<(RespReader, Vec<Name>, u64)> {
    let tail = match chunk {
        Chunk::Split { tail, .. } => tail,
        Chunk::Whole { .. } => chunk.head(),
    };
    (1..tail.len())
        .filter(|&i| tail[i - 1] == b'\n' && (!resp || tail[i] == b'*'))
        .find_map(|i| {
            let mut reader = RespReader::new(true, true);
            let mut names = Vec::new();
            let n = reader.known(&tail[i..], &mut names);
            (!reader.is_lost()).then_some((reader, names, n))
        })
}

/// A reply reader lost in a recv finds its feet in the last known bytes: the earliest line
/// start from which the rest reads as replies.
fn resync_replies(window: &[u8]) -> Option<RespReader> {
    (1..window.len())
        .filter(|&i| window[i - 1] == b'\n')
        .find_map(|i| {
            let mut reader = RespReader::new(false, true);
            reader.known(&window[i..], &mut Vec::new());
            (!reader.is_lost()).then_some(reader)
        })
}

#[derive(Clone, Debug)]
pub(crate) struct Redis {
    send: RespReader,
    recv: RespReader,
    window: Window,
    said: Said,
    /// Replies owed for the commands sent.
    owed: u64,
    /// `owed` is exact for the current in-flight.
    exact: bool,
    /// EXEC / DISCARD / RESET sent: the transaction closes with the reply.
    closing: bool,
    /// The closing command was DISCARD (or RESET): the transaction is thrown away.
    discarding: bool,
    /// The first bytes of the reply to a lone ordinary command, while they tell something.
    capture: Option<([u8; 9], usize)>,
    /// Commands have been seen (or the connection was seen from its start).
    synced: bool,
    /// The client sends RESP arrays (not inline commands).
    resp: bool,
}

impl Redis {
    pub(crate) fn new(seen_from_start: bool) -> Self {
        Redis {
            send: RespReader::new(true, seen_from_start),
            recv: RespReader::new(false, seen_from_start),
            window: Window::default(),
            said: Said::new(seen_from_start),
            owed: 0,
            exact: true,
            closing: false,
            discarding: false,
            capture: None,
            synced: seen_from_start,
            resp: false,
        }
    }

    fn on_send(&mut self, chunk: &Chunk) {
        let head = chunk.head();
        let assumed = self.send.is_lost();
        if assumed && (!self.resp || head.first() == Some(&b'*')) {
            // Clients write whole commands: assume this send starts one (in RESP mode only if
            // it starts like one; otherwise it goes on with a command begun earlier).
            self.send.resync();
        }
        if self.send.at_boundary() && head.first() == Some(&b'*') {
            self.resp = true;
        }
        let was_lost = self.send.is_lost();
        let mut names = Vec::new();
        let mut completed = self.send.feed(chunk, &mut names);
        let mut cmds: Vec<Cmd> = names
            .iter()
            .map(|n| n.bytes().map_or(Cmd::Other, command))
            .collect();
        let lost = self.send.is_lost();
        if lost {
            if !was_lost {
                // The reader was inside a command (or at the start of one) when its framing
                // fell into the gap: that command counts too.
                completed += 1;
            }
            // Commands hidden in the gap are unseen; those read from the tail are not.
            if let Some((reader, tail_names, n)) = resync_in_tail(chunk, self.resp) {
                self.send = reader;
                cmds.extend(
                    tail_names
                        .iter()
                        .map(|n| n.bytes().map_or(Cmd::Other, command)),
                );
                completed += n;
            }
        }
        let lone = completed == 1 && cmds.len() == 1 && self.send.at_boundary();
        if lone && cmds[0] == Cmd::Quit {
            self.said.goodbye = true;
            return;
        }
        if !self.said.in_flight {
            self.said.in_flight = true;
            self.owed = 0;
            self.exact = true;
            self.capture = None;
            if self.recv.is_lost() {
                // Nothing is owed: the server's next byte starts a reply.
                self.recv.resync();
            }
            if lone && cmds[0] == Cmd::Other && self.recv.at_boundary() {
                self.capture = Some(([0; 9], 0));
            }
        } else {
            self.capture = None;
        }
        if assumed || lost {
            self.exact = false;
        }
        self.owed += completed;
        for cmd in cmds {
            match cmd {
                Cmd::Multi => {
                    self.said.txn = Txn::Open;
                    self.closing = false;
                    self.discarding = false;
                }
                Cmd::Close => {
                    self.closing = true;
                    self.discarding = false;
                }
                Cmd::Discard => {
                    self.closing = true;
                    self.discarding = true;
                }
                Cmd::Quit => self.said.goodbye = true,
                Cmd::Other => {}
            }
        }
    }

    fn on_recv(&mut self, chunk: &Chunk) {
        self.window.push(chunk);
        self.read_capture(chunk);
        let completed = self.recv.feed(chunk, &mut Vec::new());
        self.owed = self.owed.saturating_sub(completed);
        if self.recv.is_lost() {
            // Replies went by uncounted: nothing is known to be owed any more.
            self.exact = false;
            self.owed = 0;
            // Find a line start in the last known bytes from which the rest reads as replies;
            // failing that, take a stream ending in CRLF as the end of a reply.
            match resync_replies(self.window.bytes()) {
                Some(reader) => self.recv = reader,
                None if self.window.bytes().ends_with(b"\r\n") => self.recv.resync(),
                None => {}
            }
            if self.said.in_flight && self.recv.at_boundary() {
                self.end();
            }
            return;
        }
        if !self.said.in_flight {
            return;
        }
        if completed > 0
            && self.owed == 0
            && (self.exact || self.recv.at_boundary() && !self.awaits_close())
        {
            self.end();
        }
    }

    /// The reply to a lone ordinary command: `+QUEUED` means inside MULTI.
    fn read_capture(&mut self, chunk: &Chunk) {
        const QUEUED: &[u8] = b"+QUEUED\r\n";
        let Some((mut buf, mut len)) = self.capture.take() else {
            return;
        };
        let head = chunk.head();
        let n = head.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&head[..n]);
        len += n;
        let seen = &buf[..len];
        match seen.first() {
            Some(b'-' | b'!' | b'>' | b'|') => {}
            _ if seen == QUEUED => self.said.txn = Txn::Open,
            _ if !QUEUED.starts_with(seen) => self.said.txn = Txn::Idle,
            _ if matches!(chunk, Chunk::Whole { .. }) => self.capture = Some((buf, len)),
            _ => {}
        }
    }

    /// Commands of the pipeline were not seen, the last one closes a transaction, and the
    /// last reply is still a `+QUEUED`: the EXEC / DISCARD reply is yet to come.
    fn awaits_close(&self) -> bool {
        self.closing && self.recv.last_reply_starts_with(b"+QUEUED")
    }

    fn end(&mut self) {
        self.said.in_flight = false;
        self.owed = 0;
        self.exact = true;
        self.capture = None;
        if self.closing {
            self.closing = false;
            self.said.rolled_back = self.discarding && self.said.txn == Txn::Open;
            self.discarding = false;
            self.said.txn = Txn::Idle;
        }
    }
}

impl Conversation for Redis {
    /// Redis has no view of its clients' transactions that drainwatch asks.
    fn assume_txn(&mut self, _txn: Txn) {}

    /// Redis 7.2 deprecates QUIT ("clients should simply close the connection", and
    /// go-redis never sends it): a close with no transaction open and no reply owed loses
    /// nothing, and is clean (docs/design.md, "clean close"). A transaction state unknown
    /// since attach is not open as far as this rule goes: nothing queued after a MULTI runs
    /// before its EXEC (see `RedisProtocol::txn_unknown_at_attach`).
    fn close_is_clean(&self) -> bool {
        self.said.goodbye || (!self.said.in_flight && self.said.txn != Txn::Open)
    }

    fn said(&self) -> &Said {
        &self.said
    }

    fn said_mut(&mut self) -> &mut Said {
        &mut self.said
    }

    fn on_io(&mut self, dir: Direction, chunk: &Chunk) -> Step {
        match dir {
            Direction::Send => {
                if !self.synced && looks_like_tls(chunk.head(), chunk.len()) {
                    return Step::Opaque { in_flight: true };
                }
                self.synced = true;
                self.on_send(chunk);
            }
            Direction::Recv => self.on_recv(chunk),
        }
        Step::Go
    }
}
