//! `check`'s report: the tree a stop would watch, what the signal does in each process it
//! goes to, what a stop would leave unwatched and the connections held now; as text, or as
//! one JSON object with `--json`.

use serde::Serialize;

use crate::{events::Role, host::pidfd::Disposition, output::summary::plural};

#[derive(Debug, Serialize)]
pub struct ConnLine {
    pub pid: u32,
    pub fd: u32,
    pub role: Role,
    pub protocol: Option<String>,
    pub local: String,
    pub peer: Option<String>,
}

/// A process of the tree a stop would watch.
#[derive(Debug, Serialize)]
pub struct ProcessLine {
    pub pid: u32,
    pub comm: String,
    /// Its parent, when that is in the tree too.
    pub parent_pid: Option<u32>,
    /// Whether `stop` sends it the signal (the others hear of it from their parent).
    pub signalled: bool,
    /// The signal's disposition, for the signalled ones.
    pub disposition: Option<Disposition>,
}

/// A process outside the tree that a stop would leave unwatched although it serves with it.
#[derive(Debug, Serialize)]
pub struct Unwatched {
    pub pid: u32,
    pub comm: String,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The first process the signal goes to.
    pub pid: u32,
    pub comm: String,
    pub signal: String,
    /// What the first signalled process does with the signal.
    pub disposition: Disposition,
    /// A server whose stop signals are known (see `verdict/shutdown.rs`), with the source.
    pub known_server: Option<String>,
    pub graceful_stop_possible: bool,
    pub reasons: Vec<String>,
    pub processes: Vec<ProcessLine>,
    pub unwatched: Vec<Unwatched>,
    pub listeners: usize,
    pub client_connections: usize,
    pub db_connections: usize,
    pub upstream_connections: usize,
    /// Threads blocked reading a database connection: queries waiting for an answer.
    pub db_queries_waiting: usize,
    pub connections: Vec<ConnLine>,
}

fn disposition_word(d: Disposition) -> &'static str {
    match d {
        Disposition::Handled => "handled",
        Disposition::Ignored => "ignored",
        Disposition::Blocked => "blocked",
        Disposition::Default => "not handled (default action)",
    }
}

pub fn render(r: &CheckReport) -> String {
    let verdict = if r.graceful_stop_possible {
        format!("a graceful stop is possible: {} is handled", r.signal)
    } else {
        "a graceful stop is NOT possible".to_string()
    };
    let mut out = format!("drainwatch check: {} ({}): {verdict}\n", r.comm, r.pid);
    for reason in &r.reasons {
        out.push_str(&format!("  x {reason}\n"));
    }
    out.push_str(&format!(
        "tree: {} process{}; stop sends {} to the ones marked *\n",
        r.processes.len(),
        if r.processes.len() == 1 { "" } else { "es" },
        r.signal
    ));
    for p in &r.processes {
        out.push_str(&format!(
            "  {} {} ({}){}{}\n",
            if p.signalled { "*" } else { " " },
            p.comm,
            p.pid,
            p.parent_pid
                .map(|parent| format!(", child of {parent}"))
                .unwrap_or_default(),
            p.disposition
                .map(|d| format!(": {} {}", r.signal, disposition_word(d)))
                .unwrap_or_default()
        ));
    }
    if r.unwatched.is_empty() {
        out.push_str("a stop would leave nothing of it unwatched\n");
    } else {
        out.push_str("a stop would leave these unwatched:\n");
        for u in &r.unwatched {
            out.push_str(&format!("  ! {} ({}): {}\n", u.comm, u.pid, u.why));
        }
    }
    out.push_str(&format!(
        "now: {} listening, {} client, {} database ({} waiting), {} upstream {}\n",
        r.listeners,
        r.client_connections,
        r.db_connections,
        plural(r.db_queries_waiting as u64, "query"),
        r.upstream_connections,
        if r.upstream_connections == 1 {
            "connection"
        } else {
            "connections"
        }
    ));
    for c in &r.connections {
        out.push_str(&format!(
            "  pid {:<7} fd {:<4} {:<9} {} -> {}{}\n",
            c.pid,
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
