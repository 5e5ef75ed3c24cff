//! Whether a client connection that existed before attach has a request in flight, from
//! the evidence the kernel keeps (docs/how-it-sees.md, "Connections that existed before
//! attach"). Pure: the evidence comes in, a judgement and its reason come out.
//!
//! The hard case is a *tie*: `tcp_info` stamps the last data sent and received in jiffies,
//! so a request answered within one kernel tick (1-10 ms) and a request that arrived within
//! one tick after the previous answer look the same. Measured on loopback (HZ=250), an idle
//! redis client that sent one PING is a tie, and so is an nginx keep-alive connection; a
//! client that sends its next request the moment it has the previous answer makes a tie with
//! a request in flight. A tie is settled by other evidence, or left `unknown`.

use crate::{host::tcpinfo::SockInfo, model::conns::AtAttach};

/// What the threads and outbound connections of a process say, now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessNow {
    /// Threads running, or blocked in something other than waiting for input (a sleep, a
    /// write, a read of a database or upstream connection, a syscall not known to wait).
    pub threads_working: usize,
    /// Outbound (database, upstream) connections awaiting a reply: they sent after they
    /// last received, or hold bytes the process has not read yet.
    pub outbound_awaiting: usize,
    /// Client connections of the process with evidence of a request in flight.
    pub clients_busy: usize,
}

impl ProcessNow {
    /// Waiting for input with nothing pending: every thread waits (epoll, poll, a read of a
    /// client connection, a futex, a signal), no outbound connection awaits a reply, no
    /// client connection has a request in flight. Whatever request a tie connection had
    /// was answered, unless the process keeps it waiting on a timer alone (the residual
    /// case, documented).
    pub fn quiescent(&self) -> bool {
        self.threads_working == 0 && self.outbound_awaiting == 0 && self.clients_busy == 0
    }
}

/// Evidence of a request in flight on a client connection, or of its absence, without
/// looking at the rest of the process. `None` for a tie: see [`judge`]. `interactive`: the
/// socket's delayed-ACK pingpong mode (`netstat::TcpSocket::interactive`).
pub fn from_socket(
    info: Option<&SockInfo>,
    reader_blocked: bool,
    interactive: Option<bool>,
) -> Option<(AtAttach, &'static str)> {
    let Some(info) = info else {
        // Another network namespace, or sock_diag refused: nothing to go on.
        return Some(if reader_blocked {
            (AtAttach::Idle, "a thread is blocked reading it")
        } else {
            (AtAttach::Unknown, "not visible to sock_diag")
        });
    };
    Some(if info.unread > 0 {
        // Bytes the server has not read yet: a request it has not even started on.
        (AtAttach::Busy, "bytes waiting unread")
    } else if reader_blocked {
        (AtAttach::Idle, "a thread is blocked reading it")
    } else if info.data_segs_in == 0 {
        // Nothing ever received: no request (a kernel too old to count segments reads 0
        // for both; then the stamps below decide, and that older path is what ran first).
        if info.data_segs_out == 0 && info.recv_ago_ms == info.sent_ago_ms {
            (AtAttach::Idle, "no data yet")
        } else {
            return by_stamps(info);
        }
    } else if info.data_segs_out == 0 {
        // Received, never sent anything: not answered, whatever the stamps say (a new
        // connection's first request arrives in the tick it was set up).
        (AtAttach::Busy, "received data, never answered")
    } else {
        let tie = info.recv_ago_ms == info.sent_ago_ms;
        if tie && interactive == Some(false) {
            // A tie, and the socket is out of the kernel's interactive (pingpong) mode:
            // since it last answered at once it acknowledged data on its own instead of
            // with an answer (net/ipv4/tcp_timer.c, tcp_delack_timer_handler: "Delayed ACK
            // missed: leave pingpong mode"): a request came after the answer and was not
            // answered, or the history says nothing either way. Never settled by the
            // process being quiet.
            return Some((
                AtAttach::Unknown,
                "a tie, and it acknowledged data it did not answer",
            ));
        }
        return by_stamps(info);
    })
}

fn by_stamps(info: &SockInfo) -> Option<(AtAttach, &'static str)> {
    if info.recv_ago_ms < info.sent_ago_ms {
        Some((AtAttach::Busy, "received after it last sent"))
    } else if info.sent_ago_ms < info.recv_ago_ms {
        Some((AtAttach::Idle, "sent after it last received"))
    } else if info.ack_recv_ago_ms < info.recv_ago_ms && !info.peer_closed {
        // A tie, then an acknowledgement from the client in a later tick with no data: it
        // acknowledged data the server sent after the client's last request reached it (a
        // client that sends its next request on the answer carries the acknowledgement in
        // that request instead). Not so for a pipelining client, or TCP keepalive probes
        // answered long after (documented); nor for the ACK on a client's FIN (a client
        // that sent its request and shut its side down): a closed peer does not count.
        Some((AtAttach::Idle, "acknowledged by the client after a tie"))
    } else {
        None
    }
}

/// The judgement on one client connection: the socket's own evidence, else, for a tie,
/// the process's (`quiescent`).
pub fn judge(
    info: Option<&SockInfo>,
    reader_blocked: bool,
    interactive: Option<bool>,
    process: ProcessNow,
) -> (AtAttach, &'static str) {
    if let Some(judged) = from_socket(info, reader_blocked, interactive) {
        return judged;
    }
    if process.quiescent() {
        (AtAttach::Idle, "a tie, and the process waits for input")
    } else {
        (AtAttach::Unknown, "a tie, and the process is busy")
    }
}

/// Whether a thread blocked in syscall `nr` (x86_64 numbers,
/// arch/x86/entry/syscalls/syscall_64.tbl) is waiting for input. `reads_outbound`: for a
/// read, the fd is a database or upstream connection (then it awaits a reply: working).
pub fn waits_for_input(nr: u64, reads_outbound: bool) -> bool {
    match nr {
        // read, readv, recvfrom, recvmsg
        0 | 19 | 45 | 47 => !reads_outbound,
        // poll, select, pselect6, ppoll, epoll_wait, epoll_pwait, epoll_pwait2
        7 | 23 | 270 | 271 | 232 | 281 | 441 => true,
        // accept, accept4
        43 | 288 => true,
        // futex, futex_waitv: a thread pool's idle workers, a condition variable
        202 | 449 => true,
        // pause, rt_sigsuspend, rt_sigtimedwait, wait4, waitid (an nginx master)
        34 | 130 | 128 | 61 | 247 => true,
        // io_uring_enter waiting for completions
        426 => true,
        // nanosleep, clock_nanosleep, restart_syscall, writes, fsync, ...: may be work
        _ => false,
    }
}

/// An outbound connection awaits a reply: it sent after it last received (a tie counts as
/// answered: a connection pool's idle connections are ties), or bytes wait unread.
pub fn awaits_reply(info: &SockInfo) -> bool {
    info.unread > 0 || info.sent_ago_ms < info.recv_ago_ms
}

/// An upstream connection at attach, from `tcp_info`: (it has answered in its life, a
/// call awaits its reply). On a connection that has answered, a call awaits when data was
/// sent after data last came, or bytes wait unread (`attach_rule::awaits_reply`); a tie
/// (both stamps in one kernel tick: a reply, then the next call sent at once, or a call
/// answered at once) is a call when a thread is blocked reading the connection (`reader`:
/// waiting for its reply), else idle. On one that never answered, when it sent data at
/// all (its stamps say nothing: a request sent right after the connect has the connect's
/// tick): a first call, held like one from attach (model/conns/calls.rs).
pub fn upstream(info: Option<&SockInfo>, reader: bool) -> (bool, bool) {
    let Some(info) = info else {
        return (false, false);
    };
    let answered = info.data_segs_in > 0;
    let busy = if answered {
        let tie = info.sent_ago_ms == info.recv_ago_ms;
        awaits_reply(info) || (tie && reader)
    } else {
        info.data_segs_out > 0
    };
    (answered, busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values measured with `ss -ti` on the server side of loopback connections to a
    /// Python asyncio server and redis-server 7.0 (HZ=250), 0.3 s after the last exchange.
    fn measured(sent: u32, recv: u32, ack: u32, segs_in: u32, segs_out: u32) -> SockInfo {
        SockInfo {
            sent_ago_ms: sent,
            recv_ago_ms: recv,
            ack_recv_ago_ms: ack,
            unread: 0,
            data_segs_in: segs_in,
            data_segs_out: segs_out,
            peer_closed: false,
        }
    }

    const QUIESCENT: ProcessNow = ProcessNow {
        threads_working: 0,
        outbound_awaiting: 0,
        clients_busy: 0,
    };
    const WORKING: ProcessNow = ProcessNow {
        threads_working: 1,
        outbound_awaiting: 0,
        clients_busy: 0,
    };

    #[test]
    fn idle_clients_measured_on_redis_and_asyncio_are_idle() {
        // One PING, PONG in the same tick (the redis case): a tie.
        let one_ping = measured(756, 756, 756, 1, 1);
        assert_eq!(from_socket(Some(&one_ping), false, Some(true)), None);
        assert_eq!(
            judge(Some(&one_ping), false, Some(true), QUIESCENT).0,
            AtAttach::Idle
        );
        assert_eq!(
            judge(Some(&one_ping), false, Some(true), WORKING).0,
            AtAttach::Unknown
        );
        // 50 back-to-back PINGs: the client's delayed ACK came 44 ms after the tie.
        let many = measured(528, 528, 484, 50, 50);
        assert_eq!(
            judge(Some(&many), false, Some(true), WORKING).0,
            AtAttach::Idle
        );
        // Answered after 20 ms of work: a later tick.
        let slow_answer = measured(300, 320, 300, 1, 1);
        assert_eq!(
            judge(Some(&slow_answer), false, Some(true), WORKING).0,
            AtAttach::Idle
        );
    }

    #[test]
    fn requests_in_flight_measured_are_busy_or_unknown_never_idle_while_working() {
        // Asked 100 ms after the previous answer: received after sent.
        let later = measured(412, 308, 308, 2, 1);
        assert_eq!(
            judge(Some(&later), false, Some(true), QUIESCENT).0,
            AtAttach::Busy
        );
        // First request on a new connection (a BLPOP, a slow endpoint): never answered.
        let first = measured(532, 532, 532, 1, 0);
        assert_eq!(
            judge(Some(&first), false, Some(true), QUIESCENT).0,
            AtAttach::Busy
        );
        // Asked in the tick of the previous answer: a tie, busy process -> unknown.
        let back_to_back = measured(304, 304, 304, 51, 50);
        assert_eq!(
            judge(Some(&back_to_back), false, Some(true), WORKING).0,
            AtAttach::Unknown
        );
        let unread = SockInfo {
            unread: 14,
            ..measured(900, 900, 900, 3, 2)
        };
        assert_eq!(
            judge(Some(&unread), true, Some(true), QUIESCENT).0,
            AtAttach::Busy
        );
    }

    /// Measured with /proc/net/tcp on the same servers: after an answer at once the socket
    /// is interactive; a request that came in the tick of the answer and was left
    /// unanswered (an asyncio handler sleeping) made it leave that mode within 2 ms.
    #[test]
    fn a_tie_on_a_socket_that_left_interactive_mode_stays_unknown() {
        let back_to_back_slow = measured(304, 304, 304, 2, 1);
        let judged = judge(Some(&back_to_back_slow), false, Some(false), QUIESCENT);
        assert_eq!(judged.0, AtAttach::Unknown, "{judged:?}");
        // Even with a later ACK from the client: it acknowledged the answer, then asked.
        let acked = measured(304, 304, 260, 51, 50);
        assert_eq!(
            judge(Some(&acked), false, Some(false), QUIESCENT).0,
            AtAttach::Unknown
        );
        // Not a tie: the stamps decide, whatever the mode.
        let answered = measured(300, 320, 300, 1, 1);
        assert_eq!(
            judge(Some(&answered), false, Some(false), WORKING).0,
            AtAttach::Idle
        );
        // A client that shut its side after its request: the ACK of its FIN is no answer.
        let half_closed = SockInfo {
            peer_closed: true,
            ..measured(304, 304, 100, 2, 1)
        };
        assert_eq!(
            judge(Some(&half_closed), false, Some(true), WORKING).0,
            AtAttach::Unknown
        );
    }

    #[test]
    fn a_blocked_reader_or_a_fresh_connection_is_idle() {
        let tie = measured(40, 40, 40, 3, 3);
        assert_eq!(
            judge(Some(&tie), true, Some(true), WORKING).0,
            AtAttach::Idle
        );
        let fresh = measured(10, 10, 10, 0, 0);
        assert_eq!(
            judge(Some(&fresh), false, Some(true), WORKING).0,
            AtAttach::Idle
        );
        assert_eq!(
            judge(None, false, Some(true), QUIESCENT).0,
            AtAttach::Unknown
        );
    }

    #[test]
    fn event_loop_threads_wait_for_input_sleepers_work() {
        assert!(waits_for_input(232, false)); // epoll_wait
        assert!(waits_for_input(202, false)); // futex
        assert!(waits_for_input(0, false)); // read of a client connection
        assert!(!waits_for_input(0, true)); // read of a database connection
        assert!(!waits_for_input(35, false)); // nanosleep (redis DEBUG SLEEP)
        assert!(!waits_for_input(1, false)); // write
    }

    #[test]
    fn an_outbound_connection_awaits_a_reply_only_on_evidence() {
        assert!(awaits_reply(&measured(10, 50, 10, 4, 4)));
        assert!(!awaits_reply(&measured(50, 10, 10, 4, 4)));
        assert!(!awaits_reply(&measured(50, 50, 50, 4, 4)));
    }

    #[test]
    fn an_upstream_connection_awaits_a_reply_when_it_sent_last() {
        // Answered before, sent since: a call in flight; received last: idle.
        assert_eq!(
            upstream(Some(&measured(3, 40, 3, 9, 9)), false),
            (true, true)
        );
        assert_eq!(
            upstream(Some(&measured(40, 3, 3, 9, 9)), false),
            (true, false)
        );
        // A tie: a call only when a thread waits for its reply.
        assert_eq!(
            upstream(Some(&measured(8, 8, 8, 9, 9)), false),
            (true, false)
        );
        assert_eq!(upstream(Some(&measured(8, 8, 8, 9, 9)), true), (true, true));
        // Never answered: a first call as soon as it sent anything (the request right after
        // the connect shares its tick); nothing sent, nothing in flight.
        assert_eq!(
            upstream(Some(&measured(5, 5, 5, 0, 1)), false),
            (false, true)
        );
        assert_eq!(
            upstream(Some(&measured(5, 5, 5, 0, 0)), false),
            (false, false)
        );
        assert_eq!(
            upstream(None, true),
            (false, false),
            "not visible: judged by traffic"
        );
    }
}
