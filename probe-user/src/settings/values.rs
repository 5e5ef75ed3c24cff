//! The values of single flags, each parsed and checked where it is read: durations, ports,
//! addresses, pids, names, signals. A bad one is one `Error::InvalidValue` line (exit 2).

use std::{net::SocketAddr, time::Duration};

use crate::{host::procfs, host::targets, Error, Result};

/// Parses a duration as systemd writes them (see [`crate::duration`]): `250ms`, `30s`,
/// `1m30s`, `1.5s`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    use crate::duration::Problem;
    crate::duration::parse(text).map_err(|problem| Error::InvalidValue {
        what: "duration",
        value: text.to_string(),
        hint: match problem {
            Problem::Negative => "a duration cannot be negative; give one like 30s",
            Problem::Malformed => {
                "use a number and a unit, like 250ms, 30s or 5m, several in a row as in 1m30s"
            }
            Problem::TooLong => "at most a year (366 days); like 250ms, 30s or 5m",
        },
    })
}

/// `--quiet`: 0s would call a server drained at the very instant its last request ended,
/// before a keep-alive client could send the next one.
pub(crate) fn parse_quiet(text: &str) -> Result<Duration> {
    let quiet = parse_duration(text)?;
    if quiet.is_zero() {
        return Err(Error::InvalidValue {
            what: "--quiet",
            value: text.to_string(),
            hint: "give a positive duration, like 100ms: drained means nothing in flight for \
                   that long, and 0s would call a server drained between two requests",
        });
    }
    Ok(quiet)
}

/// Parses a ring-buffer size: a power of two from 4096 (a page) to 1 GiB.
pub fn parse_ring_size(text: &str) -> Result<u32> {
    match text.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && (4096..=1 << 30).contains(&n) => Ok(n),
        _ => Err(Error::InvalidValue {
            what: "ring size",
            value: text.to_string(),
            hint: "use a power of two from 4096 to 1073741824 bytes, like 4194304",
        }),
    }
}

/// Parses a TCP port, 1 to 65535.
pub fn parse_port(text: &str) -> Result<u16> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(Error::InvalidValue {
            what: "port",
            value: text.to_string(),
            hint: "use a TCP port number from 1 to 65535",
        }),
    }
}

/// Parses `ADDR:PORT` (IPv6 as `[::1]:5432`).
pub fn parse_db_addr(text: &str) -> Result<SocketAddr> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(addr),
        _ => Err(Error::InvalidValue {
            what: "database address",
            value: text.to_string(),
            hint: "use IP:PORT, like 127.0.0.1:5432 or [::1]:5432",
        }),
    }
}

/// Parses a pid: a positive number.
pub fn parse_pid(text: &str) -> Result<u32> {
    match text.parse::<u32>() {
        Ok(pid) if pid > 0 && pid <= i32::MAX as u32 => Ok(pid),
        _ => Err(Error::InvalidValue {
            what: "pid",
            value: text.to_string(),
            hint: "use a process id, a positive number (e.g. from `pgrep NAME`)",
        }),
    }
}

/// The hint when `wait`, `stop`, `watch` or `check` name no process.
pub(crate) const NAME_A_PROCESS: &str =
    "name the server: --pid PID, --comm NAME, --unit NAME.service or --cgroup PATH";

/// A `--comm` name as the kernel keeps it: at most 15 bytes (TASK_COMM_LEN - 1).
pub fn parse_comm(text: &str) -> Result<String> {
    if text.is_empty() || text.len() > 15 || text.contains('/') {
        return Err(Error::InvalidValue {
            what: "process name",
            value: text.to_string(),
            hint: "use the name `ps -o comm` shows: 1 to 15 bytes, no `/` (longer names are cut to 15)",
        });
    }
    Ok(text.to_string())
}

/// A signal by name or number (`TERM`, `SIGQUIT`, `15`).
pub fn parse_signal(text: &str) -> Result<i32> {
    crate::events::signals::parse(text).ok_or_else(|| Error::InvalidValue {
        what: "signal",
        value: text.to_string(),
        hint: "use a signal name or number, like TERM, INT, QUIT or 15",
    })
}

pub(crate) fn parse_timeout(text: &str) -> Result<Duration> {
    let timeout = parse_duration(text)?;
    if timeout.is_zero() {
        return Err(Error::InvalidValue {
            what: "timeout",
            value: text.to_string(),
            hint: "give a positive duration, like 30s",
        });
    }
    Ok(timeout)
}

/// Parses `--listen`: `IP:PORT` (IPv6 as `[::1]:9464`), or `localhost:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr> {
    let invalid = || Error::InvalidValue {
        what: "listen address",
        value: text.to_string(),
        hint: "use IP:PORT, like 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464",
    };
    if let Some(port) = text.strip_prefix("localhost:") {
        let port = port.parse::<u16>().map_err(|_| invalid())?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>().map_err(|_| invalid())
}

/// Parses each `--pid`, refusing pids that do not exist, pid 1, kernel threads and
/// drainwatch's own pid.
pub fn validate_pids(texts: &[String]) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for text in texts {
        let pid = parse_pid(text)?;
        if pid == std::process::id() {
            return Err(Error::SelfTarget(pid));
        }
        if !procfs::process_exists(pid) || procfs::has_ended(pid) {
            return Err(Error::NoSuchProcess(pid));
        }
        if let Some(refused) = targets::refusal(pid) {
            return Err(refused);
        }
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    Ok(pids)
}
