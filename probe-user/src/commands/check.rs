//! `drainwatch check --pid PID`: preflight, no waiting. Can this process be stopped
//! gracefully right now? Reads SIGTERM's disposition from /proc/PID/status (SigCgt, SigIgn,
//! SigBlk; proc(5)) and the connections it holds from /proc.

use serde::Serialize;

use crate::{
    events::Role,
    host::procfs,
    output::summary::protocol_name,
    session::existing::{self, Held},
    settings::CheckSettings,
    Error, Result,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// A handler is installed: SIGTERM starts the program's own shutdown.
    Handled,
    /// Ignored: SIGTERM does nothing.
    Ignored,
    /// Blocked: SIGTERM waits until the program unblocks it.
    Blocked,
    /// Default action: the kernel terminates it at once, like kill -9.
    Default,
}

/// SIGTERM's disposition from the hex signal masks of /proc/PID/status.
pub fn sigterm_disposition(status: &str) -> Option<Disposition> {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    };
    let bit = 1u64 << (libc::SIGTERM - 1);
    let (caught, ignored, blocked) = (mask("SigCgt:")?, mask("SigIgn:")?, mask("SigBlk:")?);
    Some(if ignored & bit != 0 {
        Disposition::Ignored
    } else if blocked & bit != 0 {
        Disposition::Blocked
    } else if caught & bit != 0 {
        Disposition::Handled
    } else {
        Disposition::Default
    })
}

#[derive(Debug, Serialize)]
pub struct ConnLine {
    pub fd: u32,
    pub role: Role,
    pub protocol: Option<String>,
    pub local: String,
    pub peer: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub pid: u32,
    pub comm: String,
    pub sigterm: Disposition,
    pub graceful_stop_possible: bool,
    pub reasons: Vec<String>,
    pub listeners: usize,
    pub client_connections: usize,
    pub db_connections: usize,
    pub upstream_connections: usize,
    /// Threads blocked reading a database connection: queries waiting for an answer.
    pub db_queries_waiting: usize,
    pub connections: Vec<ConnLine>,
}

pub fn run(settings: &CheckSettings) -> Result<u8> {
    let pid = settings.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| Error::NoSuchProcess(pid))?;
    let sigterm = sigterm_disposition(&status).ok_or(Error::NoSuchProcess(pid))?;
    let comm = procfs::comm(pid).unwrap_or_default();
    let held = existing::survey(pid, &settings.common);
    let count = |role: Role| held.iter().filter(|h| h.role == role).count();
    let db_fds: Vec<u32> = held
        .iter()
        .filter(|h| h.role == Role::Db)
        .flat_map(|h| h.fds.iter().copied())
        .collect();
    let waiting = existing::threads_blocked_reading(pid, &db_fds);
    let work = format!(
        "{} client connections, {} database connections ({} queries waiting for an answer)",
        count(Role::Client),
        count(Role::Db),
        waiting
    );
    let mut reasons = Vec::new();
    match sigterm {
        Disposition::Handled => {}
        Disposition::Default => reasons.push(format!(
            "{comm} ({pid}) has no SIGTERM handler: SIGTERM will kill it at once, like kill -9, with {work}"
        )),
        Disposition::Ignored => reasons.push(format!(
            "{comm} ({pid}) ignores SIGTERM: `drainwatch stop` would time out; use --signal with the signal it handles"
        )),
        Disposition::Blocked => reasons.push(format!(
            "{comm} ({pid}) blocks SIGTERM: it stays pending until the program unblocks it"
        )),
    }
    let report = CheckReport {
        pid,
        comm,
        sigterm,
        graceful_stop_possible: reasons.is_empty(),
        reasons,
        listeners: count(Role::Listener),
        client_connections: count(Role::Client),
        db_connections: count(Role::Db),
        upstream_connections: count(Role::Upstream),
        db_queries_waiting: waiting,
        connections: held.iter().map(conn_line).collect(),
    };
    if settings.common.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("check serializes")
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.graceful_stop_possible { 0 } else { 1 })
}

fn conn_line(held: &Held) -> ConnLine {
    ConnLine {
        fd: held.fds[0],
        role: held.role,
        protocol: (held.role == Role::Db).then(|| protocol_name(held.protocol()).to_string()),
        local: held.socket.local.to_string(),
        peer: (!held.socket.is_listener()).then(|| held.socket.remote.to_string()),
    }
}

fn render(r: &CheckReport) -> String {
    let verdict = if r.graceful_stop_possible {
        "a graceful stop is possible: SIGTERM is handled"
    } else {
        "a graceful stop is NOT possible"
    };
    let mut out = format!("drainwatch check: {} ({}): {verdict}\n", r.comm, r.pid);
    for reason in &r.reasons {
        out.push_str(&format!("  x {reason}\n"));
    }
    out.push_str(&format!(
        "now: {} listening, {} client, {} database ({} queries waiting), {} upstream connections\n",
        r.listeners,
        r.client_connections,
        r.db_connections,
        r.db_queries_waiting,
        r.upstream_connections
    ));
    for c in &r.connections {
        out.push_str(&format!(
            "  fd {:<4} {:<9} {} -> {}{}\n",
            c.fd,
            c.role.as_str(),
            c.local,
            c.peer.as_deref().unwrap_or("*"),
            c.protocol
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ));
    }
    if r.db_connections > 0 {
        out.push_str(
            "  transactions cannot be seen without watching traffic: `drainwatch watch`\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(cgt: &str, ign: &str, blk: &str) -> String {
        format!("Name:\tx\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t{cgt}\n")
    }

    #[test]
    fn reads_the_sigterm_bit() {
        // SIGTERM is signal 15: bit 14, 0x4000.
        let handled = status("0000000000004000", "0", "0");
        assert_eq!(sigterm_disposition(&handled), Some(Disposition::Handled));
        let default = status("0000000000000002", "0", "0");
        assert_eq!(sigterm_disposition(&default), Some(Disposition::Default));
        let ignored = status("0", "0000000000004000", "0");
        assert_eq!(sigterm_disposition(&ignored), Some(Disposition::Ignored));
        let blocked = status("0000000000004000", "0", "0000000000004000");
        assert_eq!(sigterm_disposition(&blocked), Some(Disposition::Blocked));
        assert_eq!(sigterm_disposition("Name:\tx\n"), None);
    }
}
