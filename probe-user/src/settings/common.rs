//! What every subcommand shares: the shared flags ([`Common`]), the selectors of the targets
//! ([`TargetSet`]), `--settle` and `--db-url`.

use std::{net::SocketAddr, time::Duration};

use super::values::{
    parse_comm, parse_db_addr, parse_duration, parse_port, parse_quiet, parse_ring_size,
    validate_pids,
};
use crate::{
    cli::{SharedArgs, TargetArgs},
    host::launch::LaunchCommand,
    host::targets::{self, CgroupSelector},
    Error, Result,
};

/// `--settle D`, or `--settle-from REPORT` (docs/design.md, "drain tail").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settle {
    pub time: Duration,
    /// `--settle-from`: the report and the tail it measured.
    pub from: Option<(std::path::PathBuf, Duration)>,
}

impl Settle {
    pub(crate) fn from_args(args: &crate::cli::SettleArgs) -> Result<Option<Self>> {
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
    /// What the probe units' own flags ask for (lib.rs, `probe_units!`).
    pub units: UnitSettings,
}

/// [`UnitSettings`]: each probe unit's validated flags ([`super::unit::UnitFlags`]).
macro_rules! unit_settings {
    ($($module:ident: $unit:ident $(($args:ident))? $(+ $tracker:ident)?;)*) => {
        /// The probe units' settings, one field per unit that has flags, named as its module.
        #[derive(Clone, Debug, Default)]
        pub struct UnitSettings {
            $($(
                pub $module: <crate::kernel::$module::$args as super::unit::UnitFlags>::Setting,
            )?)*
        }

        impl UnitSettings {
            // `args` is unused in a tree where no unit has flags.
            #[allow(unused_variables)]
            fn from_args(args: &crate::cli::UnitArgs) -> Result<Self> {
                Ok(Self {
                    $($($module: <crate::kernel::$module::$args as super::unit::UnitFlags>::setting(
                        &args.$module,
                    )?,)?)*
                })
            }
        }
    };
}
probe_units!(unit_settings);

impl Common {
    pub fn from_args(args: &SharedArgs) -> Result<Self> {
        // The default ports of every protocol (docs/design.md), from the protocol registry.
        let mut db_ports = crate::model::protocol::registry::default_ports();
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
            follow_forks: !args.probe.no_follow,
            ring_bytes: args
                .probe
                .ring_size
                .as_deref()
                .map(parse_ring_size)
                .transpose()?
                .unwrap_or(probe_common::DEFAULT_RING_BYTES),
            units: UnitSettings::from_args(&args.probe.units)?,
        })
    }
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
        if crate::model::protocol::registry::of_url(&url).is_none() {
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
