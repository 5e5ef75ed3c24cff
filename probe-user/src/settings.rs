//! Validated settings, built once from parsed flags. Everything a run needs is checked here,
//! before anything is attached: a bad value costs one clear line and exit 2, never a
//! half-done run.

use std::{net::SocketAddr, time::Duration};

use crate::{
    cli::{AuditArgs, SharedArgs, TargetArgs},
    host::launch::LaunchCommand,
    host::procfs,
    host::targets::{self, CgroupSelector},
    output::publish::ReportFile,
    Error, Result,
};

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
fn parse_quiet(text: &str) -> Result<Duration> {
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

/// `--settle D`, or `--settle-from REPORT` (docs/design.md, "drain tail").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    pub time: Duration,
    /// `--settle-from`: the report and the tail it measured.
    pub from: Option<(std::path::PathBuf, Duration)>,
}

impl Settle {
    fn from_args(args: &crate::cli::SettleArgs) -> Result<Option<Self>> {
        if let Some(text) = &args.settle {
            return Ok(Some(Self {
                time: parse_duration(text)?,
                from: None,
            }));
        }
        let Some(path) = &args.settle_from else {
            return Ok(None);
        };
        let problem = |problem: String| Error::SettleFrom {
            path: path.clone(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            problem(format!(
                "cannot read it ({e}); give the --report FILE of an audit or stop"
            ))
        })?;
        let tail = crate::verdict::drain::tail_in_report(&text).map_err(problem)?;
        Ok(Some(Self {
            time: crate::verdict::drain::settle_for_tail(tail),
            from: Some((path.clone(), tail)),
        }))
    }

    /// How it was chosen, for the attach line.
    pub fn describe(&self) -> String {
        let time = crate::duration::format(self.time);
        match &self.from {
            None => format!("settle {time}"),
            Some((path, tail)) => format!(
                "settle {time} (the {} drain tail {} measured, times 1.5, at least +100ms)",
                crate::duration::format(*tail),
                path.display()
            ),
        }
    }
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

/// Flags every subcommand shares.
#[derive(Clone, Debug)]
pub struct Common {
    pub db_ports: Vec<u16>,
    pub db_addrs: Vec<SocketAddr>,
    /// `--db-url`, read from where it pointed.
    pub db_url: Option<DbUrl>,
    pub quiet: Duration,
    /// `--settle` / `--settle-from`.
    pub settle: Option<Settle>,
    pub json: bool,
    pub verbose: u8,
    pub follow_forks: bool,
    pub ring_bytes: u32,
    /// `--op`: the functions whose calls are operations (kernel/ops.rs).
    pub ops: Vec<crate::kernel::ops::OpSpec>,
}

impl Common {
    pub fn from_args(args: &SharedArgs) -> Result<Self> {
        // The default ports of every protocol (docs/design.md), from the protocol registry.
        let mut db_ports = crate::model::protocol::spec::default_ports();
        for port in &args.db_port {
            let port = parse_port(port)?;
            if !db_ports.contains(&port) {
                db_ports.push(port);
            }
        }
        let db_addrs = args
            .db
            .iter()
            .map(|addr| parse_db_addr(addr))
            .collect::<Result<_>>()?;
        let quiet = args
            .quiet
            .as_deref()
            .map(parse_quiet)
            .transpose()?
            .unwrap_or(Duration::from_millis(100));
        let db_url = args.db_url.as_deref().map(DbUrl::read).transpose()?;
        Ok(Self {
            db_ports,
            db_addrs,
            db_url,
            quiet,
            settle: Settle::from_args(&args.settle)?,
            json: args.json,
            verbose: args.verbose,
            follow_forks: !args.no_follow,
            ring_bytes: args
                .ring_size
                .as_deref()
                .map(parse_ring_size)
                .transpose()?
                .unwrap_or(probe_common::DEFAULT_RING_BYTES),
            ops: parse_ops(&args.op)?,
        })
    }
}

/// `--op SPEC`s, each `FUNCTION` or `LIB:FUNCTION`; at most `MAX_OP_FUNCTIONS`.
fn parse_ops(specs: &[String]) -> Result<Vec<crate::kernel::ops::OpSpec>> {
    let max = probe_common::ops::MAX_OP_FUNCTIONS as usize;
    if specs.len() > max {
        return Err(Error::Ops(format!(
            "--op is given {} times: drainwatch follows at most {max} functions",
            specs.len()
        )));
    }
    let mut out: Vec<crate::kernel::ops::OpSpec> = Vec::new();
    for text in specs {
        let spec = crate::kernel::ops::OpSpec::parse(text).map_err(Error::Ops)?;
        if !out.contains(&spec) {
            out.push(spec);
        }
    }
    Ok(out)
}

/// What a session watches: any mix of selectors (docs/design.md, "target").
#[derive(Debug, Default)]
pub struct TargetSet {
    /// `--pid`: running now (checked when the flags are read).
    pub pids: Vec<u32>,
    /// Process names: running now, or started (exec) during an audit.
    pub comms: Vec<String>,
    /// `--unit` and `--cgroup`, resolved to their cgroup directories.
    pub cgroups: Vec<CgroupSelector>,
    /// A command drainwatch launches (`audit -- CMD`).
    pub launch: Option<LaunchCommand>,
    /// `audit` and `serve`: a process that starts under a `--comm` name during the run
    /// joins it, so a name may match nothing yet and the run does not end when the running
    /// ones have exited. `wait`, `stop` and `watch` are about what runs now.
    pub await_comms: bool,
}

impl TargetSet {
    /// Reads and checks the selectors; `none` is the hint when there are none.
    pub fn from_args(args: &TargetArgs, none: &'static str) -> Result<Self> {
        if args.is_empty() {
            return Err(Error::InvalidValue {
                what: "targets",
                value: "none".into(),
                hint: none,
            });
        }
        let mut cgroups = Vec::new();
        for unit in &args.unit {
            cgroups.push(targets::unit_selector(unit)?);
        }
        for path in &args.cgroup {
            cgroups.push(targets::cgroup_selector(path)?);
        }
        Ok(Self {
            pids: validate_pids(&args.pid)?,
            comms: args
                .comm
                .iter()
                .map(|c| parse_comm(c))
                .collect::<Result<Vec<_>>>()?,
            cgroups,
            launch: None,
            await_comms: false,
        })
    }
}

/// The hint when `wait`, `stop`, `watch` or `check` name no process.
const NAME_A_PROCESS: &str =
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

#[derive(Debug)]
pub struct AuditSettings {
    pub common: Common,
    pub targets: TargetSet,
    pub duration: Option<Duration>,
    pub report: Option<ReportFile>,
    pub junit: Option<ReportFile>,
    /// `--name`: the JUnit test case name for everything audited.
    pub junit_name: Option<String>,
    pub policy: crate::verdict::policy::Policy,
}

impl AuditSettings {
    pub fn from_args(args: &AuditArgs) -> Result<Self> {
        let common = Common::from_args(&args.shared())?;
        let duration = args.duration.as_deref().map(parse_duration).transpose()?;
        if duration == Some(Duration::ZERO) {
            return Err(Error::InvalidValue {
                what: "duration",
                value: "0".into(),
                hint: "give a positive duration, like 30s, or leave it out to run until exit",
            });
        }
        let launch = (!args.command.is_empty())
            .then(|| LaunchCommand::resolve(&args.command))
            .transpose()?;
        let mut targets = if args.targets.is_empty() && launch.is_some() {
            TargetSet::default()
        } else {
            TargetSet::from_args(
                &args.targets,
                "name what to audit: --pid PID, --comm NAME, --unit NAME.service, --cgroup PATH, \
                 or -- CMD ARGS to launch one",
            )?
        };
        targets.launch = launch;
        targets.await_comms = true;
        let report = args.report.as_deref().map(ReportFile::open).transpose()?;
        let junit = args
            .junit
            .as_deref()
            .map(ReportFile::open_junit)
            .transpose()?;
        let policy = match &args.policy {
            Some(path) => crate::verdict::policy::Policy::load(path)?,
            None => crate::verdict::policy::Policy::default(),
        };
        Ok(Self {
            common,
            targets,
            duration,
            report,
            junit,
            junit_name: args.name.clone(),
            policy,
        })
    }
}

/// `check`: one running process, no waiting.
#[derive(Debug)]
pub struct CheckSettings {
    pub common: Common,
    pub targets: TargetSet,
    /// The signal a stop would send, when `--signal` names one (else as `stop` chooses).
    pub signal: Option<i32>,
}

impl CheckSettings {
    pub fn from_args(args: &crate::cli::CheckArgs) -> Result<Self> {
        Ok(Self {
            common: Common::from_args(&args.shared())?,
            targets: TargetSet::from_args(&args.targets, NAME_A_PROCESS)?,
            signal: args.signal.as_deref().map(parse_signal).transpose()?,
        })
    }
}

/// A signal by name or number (`TERM`, `SIGQUIT`, `15`).
pub fn parse_signal(text: &str) -> Result<i32> {
    crate::events::signals::parse(text).ok_or_else(|| Error::InvalidValue {
        what: "signal",
        value: text.to_string(),
        hint: "use a signal name or number, like TERM, INT, QUIT or 15",
    })
}

fn parse_timeout(text: &str) -> Result<Duration> {
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

/// `wait`: block until drained or exited.
#[derive(Debug)]
pub struct WaitSettings {
    pub common: Common,
    pub targets: TargetSet,
    pub timeout: Duration,
}

impl WaitSettings {
    pub fn from_args(args: &crate::cli::WaitArgs) -> Result<Self> {
        Ok(Self {
            common: Common::from_args(&args.shared())?,
            targets: TargetSet::from_args(&args.targets, NAME_A_PROCESS)?,
            timeout: parse_timeout(&args.timeout)?,
        })
    }
}

/// `stop`: signal, follow the drain, wait for the exit.
#[derive(Debug)]
pub struct StopSettings {
    pub common: Common,
    pub targets: TargetSet,
    /// `--signal`; without it, each server's own graceful signal where it is known
    /// (verdict/shutdown.rs), else SIGTERM.
    pub signal: Option<i32>,
    pub timeout: Duration,
    pub kill_after: bool,
    pub report: Option<ReportFile>,
}

impl StopSettings {
    pub fn from_args(args: &crate::cli::StopArgs) -> Result<Self> {
        let common = Common::from_args(&args.shared())?;
        let targets = TargetSet::from_args(&args.targets, NAME_A_PROCESS)?;
        let signal = args.signal.as_deref().map(parse_signal).transpose()?;
        if signal == Some(libc::SIGKILL) {
            return Err(Error::InvalidValue {
                what: "signal",
                value: args.signal.clone().unwrap_or_default(),
                hint: "SIGKILL is not a graceful stop; use --kill-after to escalate at the timeout",
            });
        }
        Ok(Self {
            common,
            targets,
            signal,
            timeout: parse_timeout(&args.timeout)?,
            kill_after: args.kill_after,
            report: args.report.as_deref().map(ReportFile::open).transpose()?,
        })
    }
}

/// `watch`: one running process.
#[derive(Debug)]
pub struct WatchSettings {
    pub common: Common,
    pub targets: TargetSet,
    pub interval: Option<Duration>,
    /// `--count`: how many views, then exit.
    pub count: Option<u64>,
    /// `--duration`: how long, then exit.
    pub duration: Option<Duration>,
}

impl WatchSettings {
    pub fn from_args(args: &crate::cli::WatchArgs) -> Result<Self> {
        let common = Common::from_args(&args.shared())?;
        let targets = TargetSet::from_args(&args.targets, NAME_A_PROCESS)?;
        let interval = args.interval.as_deref().map(parse_duration).transpose()?;
        if interval.is_some_and(|i| i < Duration::from_millis(10)) {
            return Err(Error::InvalidValue {
                what: "interval",
                value: args.interval.clone().unwrap_or_default(),
                hint: "use 10ms or more, like 250ms or 1s",
            });
        }
        let count = match args.count.as_deref() {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(Error::InvalidValue {
                        what: "--count",
                        value: text.to_string(),
                        hint: "give how many views to show, a positive number like 1 or 10",
                    })
                }
            },
        };
        let duration = args.duration.as_deref().map(parse_duration).transpose()?;
        if duration.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidValue {
                what: "--duration",
                value: args.duration.clone().unwrap_or_default(),
                hint: "give a positive duration, like 30s, or leave it out to watch until Ctrl-C",
            });
        }
        Ok(Self {
            common,
            targets,
            interval,
            count,
            duration,
        })
    }
}

/// Validated `serve` flags.
#[derive(Debug)]
pub struct ServeSettings {
    pub common: Common,
    pub targets: TargetSet,
    /// Process names given with `--comm` (serve then ends only on a signal).
    pub comms: Vec<String>,
    pub listen: SocketAddr,
}

impl ServeSettings {
    pub fn from_args(args: &crate::cli::ServeArgs) -> Result<Self> {
        let common = Common::from_args(&args.shared())?;
        let listen = parse_listen(&args.listen)?;
        let mut targets = TargetSet::from_args(
            &args.targets,
            "name what to export metrics about: --pid PID, --comm NAME, --unit NAME.service or \
             --cgroup PATH",
        )?;
        targets.await_comms = true;
        let comms = targets.comms.clone();
        Ok(Self {
            common,
            targets,
            comms,
            listen,
        })
    }
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

/// A database URL (it may hold a password): its Debug and Display never show it.
#[derive(Clone)]
pub struct DbUrl(String);

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbUrl(<not shown>)")
    }
}

impl DbUrl {
    /// `env:VAR` or `file:PATH` (first line of the file).
    pub fn read(source: &str) -> Result<Self> {
        let bad = |hint| Error::InvalidValue {
            what: "--db-url",
            value: source.to_string(),
            hint,
        };
        let url = if let Some(var) = source.strip_prefix("env:") {
            std::env::var(var).map_err(|_| bad("that environment variable is not set"))?
        } else if let Some(path) = source.strip_prefix("file:") {
            let text = std::fs::read_to_string(path)
                .map_err(|_| bad("cannot read that file; give a readable file"))?;
            text.lines().next().unwrap_or_default().trim().to_string()
        } else {
            return Err(bad(
                "give env:VAR or file:PATH holding the URL (never the URL itself: it would show in ps)",
            ));
        };
        if crate::model::protocol::spec::of_url(&url).is_none() {
            return Err(bad(
                "it does not hold a postgres://, postgresql:// or mysql:// URL (PostgreSQL \
                 and MySQL/MariaDB are asked)",
            ));
        }
        Ok(Self(url))
    }

    /// The URL itself, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests;
