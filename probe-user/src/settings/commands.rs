//! Each subcommand's settings: its shared flags and targets, and what only it takes.

use std::{net::SocketAddr, time::Duration};

use super::{
    common::{Common, TargetSet},
    values::{parse_duration, parse_listen, parse_signal, parse_timeout, NAME_A_PROCESS},
};
use crate::{
    cli::AuditArgs, host::launch::LaunchCommand, output::publish::ReportFile, Error, Result,
};

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
