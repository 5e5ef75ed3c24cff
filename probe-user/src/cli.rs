//! The command line, as docs/design.md defines it. Values are kept as text here and validated in
//! [`crate::settings`], so every bad value gets drainwatch's own one-line message.

use clap::{ArgGroup, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "drainwatch",
    version,
    arg_required_else_help = true,
    about = "See what is still in flight inside a server before you stop it",
    long_about = "drainwatch attaches an eBPF probe to a running server (by pid, name, \
                  systemd unit or cgroup; with the workers it already forked) and watches \
                  its sockets, database conversations and the signals sent to it. It tells \
                  when the server is drained, stops it gracefully, and audits restarts: \
                  SIGKILLs, transactions cut in half, leaked database connections.\n\n\
                  A connection of the server is a client connection (accepted from its \
                  listening socket), a db connection (to a database: by its port, 5432, \
                  3306, 6379, 27017 or --db-port, or by its first bytes), an upstream \
                  connection (any other connection the server opened itself: a proxy's \
                  backend, another service's API), or a listener (a listening socket). A \
                  socket several processes share is one connection.\n\n\
                  Exit codes: 0 clean/drained, 1 violations found or an incomplete run \
                  (events lost, a probe failed, interrupted), 2 usage or environment error, \
                  4 timeout."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preflight, no waiting: can this process tree be stopped gracefully right now?
    #[command(
        long_about = "Reads /proc only (nothing is attached, nothing is sent): what \
        each process of the tree does with the stop signal (handled, ignored, blocked, or \
        the default action that kills it), which processes a stop would leave unwatched, \
        and the connections open now by role. Exit 0 when a graceful stop is possible, 1 \
        with the reasons when it is not."
    )]
    Check(CheckArgs),
    /// Live view of connections, requests, queries and signals until Ctrl-C or exit.
    #[command(
        long_about = "Attaches the probe and redraws, every --interval: connections \
        by role (client: accepted from the server's listener; db: to a database; upstream: \
        any other connection the server opened, e.g. to a proxied backend; listening), \
        requests answered per second and their latency, what is in flight (a line \
        per request with its age, each open transaction), and the latest signals. Piped or \
        with --json, one JSON object per view; a reader that is gone (`| head`) ends it. \
        Nothing is sent to the targets."
    )]
    Watch(WatchArgs),
    /// Block until the target is drained or has exited; sends no signal.
    #[command(
        long_about = "For a stop that something else sends (a service manager, an \
        orchestrator, kill): returns as soon as nothing has been in flight for --quiet (no \
        request, query or open transaction), or the targets have exited; exit 4 at \
        --timeout with what was still in flight."
    )]
    Wait(WaitArgs),
    /// Send a signal (to the top of each named tree), follow the drain, wait for every exit.
    #[command(
        long_about = "Opens a pidfd on each named process (so the signal cannot reach \
        a process that reused the pid), attaches, sends --signal, follows the drain and \
        waits until every process of the trees has exited. Never SIGKILL, unless \
        --kill-after at --timeout (a violation). Exit 0 stopped cleanly, 1 violations, 4 \
        timeout."
    )]
    Stop(StopArgs),
    /// Audit targets until they exit (or --duration, or Ctrl-C) and report violations.
    #[command(
        long_about = "Watches the targets through a restart (launched with -- CMD, \
        or named by selectors) and reports what a restart should never do: SIGKILL, a \
        transaction cut in half, a database connection leaked, requests in flight at exit. \
        With -- CMD, every process that CMD or what it starts sends a signal (kill -TERM, \
        kill -9) becomes a target from that moment, and a SIGKILL they send is a violation \
        whoever receives it; a restart that goes through a daemon (systemctl) is not \
        followed: name the servers with --pid, --comm or --unit. \
        Writes a JSON report (--report) and a JUnit file (--junit) for CI; --policy lets \
        some kinds only warn. Exit 0 clean, 1 violations or an incomplete audit."
    )]
    Audit(AuditArgs),
    /// Prometheus exporter (metrics prefixed drainwatch_).
    #[command(
        long_about = "Serves /metrics over HTTP on --listen: connections, requests \
        and queries in flight, open transactions, SIGKILLs and violations by the target's \
        name (the comm label), request and query latency histograms. Runs until SIGTERM or \
        Ctrl-C, or until the processes named by --pid have exited."
    )]
    Serve(ServeArgs),
    /// What this kernel offers (BTF, tracefs, tracepoints, uprobes, kprobes, fentry,
    /// cgroup v2, lockdown) and which hooks drainwatch will use; exit 2 if it cannot attach.
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout: drainwatch(1), or drainwatch-COMMAND(1).
    Man(ManArgs),
}

/// Where databases listen: how a connection is told to be a database conversation.
#[derive(Debug, Args, Clone, Default)]
pub struct DbArgs {
    /// Another TCP port a database listens on, besides 5432, 3306, 6379 and 27017
    /// (repeatable), e.g. `--db-port 6432` for pgbouncer.
    #[arg(long = "db-port", value_name = "PORT")]
    pub db_port: Vec<String>,
    /// A database by address, IP:PORT (repeatable), e.g. `--db 10.0.0.5:5432`.
    #[arg(long = "db", value_name = "IP:PORT")]
    pub db: Vec<String>,
    /// Where to read a PostgreSQL URL (`env:VAR` or `file:PATH`, never the URL itself, so it
    /// shows in no process list or shell history; it is never printed), e.g.
    /// `--db-url env:DATABASE_URL`: drainwatch asks that database (pg_stat_activity for a
    /// postgres:// URL, information_schema.innodb_trx for mysql://) whether the target's
    /// connections from before attach are in a transaction. Without an answer, such a
    /// connection's state is unknown and holds `wait` and `stop` until its next reply or close.
    #[arg(long = "db-url", value_name = "env:VAR|file:PATH")]
    pub db_url: Option<String>,
}

/// How the probe follows the targets.
#[derive(Debug, Args, Clone, Default)]
pub struct ProbeArgs {
    /// Do not follow processes the targets fork after attach (a restart script's helpers,
    /// a server that forks per connection).
    #[arg(long = "no-follow")]
    pub no_follow: bool,
    /// Size of the kernel's event ring buffer in bytes, a power of two (default 1048576),
    /// e.g. `--ring-size 4194304`. Raise it when `events.lost` is not 0 under a high
    /// request rate.
    #[arg(long = "ring-size", value_name = "BYTES")]
    pub ring_size: Option<String>,
    #[command(flatten)]
    pub units: UnitArgs,
}

/// [`UnitArgs`]: the flags of every probe unit that has some (lib.rs, `probe_units!`), each
/// its own `#[derive(Args)]` type in its kernel module.
macro_rules! unit_args {
    ($($module:ident: $unit:ident $(($args:ident))? $(+ $tracker:ident)?;)*) => {
        /// The probe units' own flags, one field per unit that has flags, named as its module.
        #[derive(Debug, Args, Clone, Default)]
        pub struct UnitArgs {
            $($(
                #[command(flatten)]
                pub $module: crate::kernel::$module::$args,
            )?)*
        }
    };
}
probe_units!(unit_args);

/// Diagnostics on stderr.
#[derive(Debug, Args, Clone, Default)]
pub struct LogArgs {
    /// More diagnostics on stderr: -v the probe's log, -vv every event as a JSON line.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The flags of [`DbArgs`], [`ProbeArgs`] (whole: a flag added there reaches the settings
/// with no copy here) and [`LogArgs`] and the few others, as settings read them: a command
/// that does not take one leaves its default.
#[derive(Debug, Clone, Default)]
pub struct SharedArgs {
    pub db_port: Vec<String>,
    pub db: Vec<String>,
    pub db_url: Option<String>,
    pub quiet: Option<String>,
    pub settle: SettleArgs,
    pub json: bool,
    pub verbose: u8,
    pub probe: ProbeArgs,
}

/// `--settle`, `--settle-from` (wait, stop): the drain tail (docs/design.md).
#[derive(Debug, Args, Clone, Default)]
pub struct SettleArgs {
    /// Also hold `drained` until no database query has been sent for this long after the
    /// last client input: for work that goes on between two writes with nothing in flight
    /// (a timer, a queue, another thread), e.g. `--settle 1.5s`.
    #[arg(
        long,
        value_name = "DURATION",
        conflicts_with = "settle_from",
        allow_hyphen_values = true
    )]
    pub settle: Option<String>,
    /// The same, from the drain tail an earlier audit or stop of this server measured
    /// (`drain.tail_ms` of its --report, e.g. on staging), with a margin: 1.5 times the
    /// tail, and at least the tail plus 100ms, e.g. `--settle-from staging-audit.json`.
    #[arg(long = "settle-from", value_name = "REPORT")]
    pub settle_from: Option<std::path::PathBuf>,
}

impl SharedArgs {
    fn of(db: &DbArgs, probe: Option<&ProbeArgs>, log: &LogArgs) -> Self {
        Self {
            db_port: db.db_port.clone(),
            db: db.db.clone(),
            db_url: db.db_url.clone(),
            quiet: None,
            settle: SettleArgs::default(),
            json: false,
            verbose: log.verbose,
            probe: probe.cloned().unwrap_or_default(),
        }
    }
}

/// What to watch: any mix, any number. A process brings its descendants that exist at
/// attach (an nginx master brings its workers) and, unless --no-follow, what they fork later.
#[derive(Debug, Args, Clone, Default)]
#[group(skip)]
pub struct TargetArgs {
    /// A running process with its descendants (repeatable), e.g. `--pid 4121` or
    /// `--pid "$(pgrep -o nginx)"`.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<String>,
    /// Processes by name, as `ps -o comm` shows it (repeatable), e.g. `--comm redis-server`;
    /// audit and serve also take in processes started under the name later.
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// The processes of a systemd unit (its cgroup v2 cgroup) (repeatable), e.g.
    /// `--unit nginx.service`.
    #[arg(long, value_name = "NAME.service")]
    pub unit: Vec<String>,
    /// The processes of a cgroup v2 directory and the cgroups below it (repeatable), e.g. a
    /// container's: `--cgroup /sys/fs/cgroup/system.slice/docker-ID.scope`.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<String>,
}

impl TargetArgs {
    pub fn is_empty(&self) -> bool {
        self.pid.is_empty()
            && self.comm.is_empty()
            && self.unit.is_empty()
            && self.cgroup.is_empty()
    }
}

/// `--quiet`: what "drained" means.
const QUIET_HELP: &str = "How long nothing may be in flight (no request, query or open \
                          transaction) to count as drained (default 100ms), e.g. `--quiet 500ms`";

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").required(true).multiple(true).args(SELECTORS))]
pub struct CheckArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// The signal a stop would send (default: as `stop`, the server's own graceful signal
    /// where drainwatch knows it, e.g. QUIT for nginx, else TERM), e.g. `--signal TERM`.
    #[arg(long, value_name = "SIGNAL")]
    pub signal: Option<String>,
    /// The verdict as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").required(true).multiple(true).args(SELECTORS))]
pub struct WatchArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// How often the view is redrawn (default 250ms on a terminal, 1s for JSON lines), e.g.
    /// `--interval 2s`.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub interval: Option<String>,
    /// Stop after this many views, e.g. `--count 1` for one snapshot in a script.
    #[arg(long, value_name = "N")]
    pub count: Option<String>,
    /// Stop after this long, e.g. `--duration 1m`.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub duration: Option<String>,
    /// One JSON object per view (a line each) instead of the screen.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").required(true).multiple(true).args(SELECTORS))]
pub struct WaitArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Give up after this long (exit 4), e.g. `--timeout 2m`.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        allow_hyphen_values = true
    )]
    pub timeout: String,
    #[arg(long, value_name = "DURATION", help = QUIET_HELP, allow_hyphen_values = true)]
    pub quiet: Option<String>,
    #[command(flatten)]
    pub settle: SettleArgs,
    /// The verdict as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").required(true).multiple(true).args(SELECTORS))]
pub struct StopArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// The signal to send, by name or number, e.g. `--signal INT`. Default: the server's own
    /// graceful signal where drainwatch knows it (QUIT for nginx and php-fpm, WINCH for
    /// Apache httpd, USR1 for HAProxy), else TERM. A signal known to cut work (TERM for
    /// nginx) is sent only when asked for here.
    #[arg(long, value_name = "SIGNAL")]
    pub signal: Option<String>,
    /// Give up after this long (exit 4), or escalate with --kill-after, e.g. `--timeout 1m30s`.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        allow_hyphen_values = true
    )]
    pub timeout: String,
    /// Send SIGKILL at the timeout (reported as a violation).
    #[arg(long = "kill-after")]
    pub kill_after: bool,
    #[arg(long, value_name = "DURATION", help = QUIET_HELP, allow_hyphen_values = true)]
    pub quiet: Option<String>,
    #[command(flatten)]
    pub settle: SettleArgs,
    /// Write the JSON report here, e.g. `--report /var/log/drainwatch/stop.json`.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    /// The report as one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").required(true).multiple(true)
    .args(SELECTORS).arg("command"))]
pub struct AuditArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// End the audit after this long (default: when every target has exited), e.g.
    /// `--duration 10m`.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub duration: Option<String>,
    /// Write the JSON report here, e.g. `--report audit.json`.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    /// Write a JUnit XML file here (one test case per process name, a failure per violation
    /// kind), e.g. `--junit target/drainwatch.xml`.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// The JUnit test case name for everything audited, e.g. `--name checkout-api`
    /// (default: one test case per process name, as `ps -o comm` shows it).
    #[arg(long, value_name = "NAME", requires = "junit")]
    pub name: Option<String>,
    /// TOML file saying which violations fail the run and which only warn, e.g.
    /// `--policy drainwatch-policy.toml` (docs/policy.md).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    /// The report as one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Launch this command and audit it until it exits, e.g. `-- ./restart.sh`; what it
    /// signals is followed; with selectors, it is the harness that restarts them.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
#[command(group = ArgGroup::new("target").required(true).multiple(true).args(SELECTORS))]
pub struct ServeArgs {
    // With --comm, serve runs until Ctrl-C or SIGTERM: processes may come later.
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Where to serve /metrics, IP:PORT, e.g. `--listen 0.0.0.0:9464`. Not loopback: anyone
    /// who reaches it reads the metrics.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9464")]
    pub listen: String,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The selector flags, one of which (or more) every target-taking command needs.
pub const SELECTORS: [&str; 4] = ["pid", "comm", "unit", "cgroup"];

impl CheckArgs {
    pub fn shared(&self) -> SharedArgs {
        SharedArgs {
            json: self.json,
            ..SharedArgs::of(&self.db, None, &self.log)
        }
    }
}

impl WatchArgs {
    pub fn shared(&self) -> SharedArgs {
        SharedArgs {
            json: self.json,
            ..SharedArgs::of(&self.db, Some(&self.probe), &self.log)
        }
    }
}

impl WaitArgs {
    pub fn shared(&self) -> SharedArgs {
        SharedArgs {
            json: self.json,
            quiet: self.quiet.clone(),
            settle: self.settle.clone(),
            ..SharedArgs::of(&self.db, Some(&self.probe), &self.log)
        }
    }
}

impl StopArgs {
    pub fn shared(&self) -> SharedArgs {
        SharedArgs {
            json: self.json,
            quiet: self.quiet.clone(),
            settle: self.settle.clone(),
            ..SharedArgs::of(&self.db, Some(&self.probe), &self.log)
        }
    }
}

impl AuditArgs {
    pub fn shared(&self) -> SharedArgs {
        SharedArgs {
            json: self.json,
            ..SharedArgs::of(&self.db, Some(&self.probe), &self.log)
        }
    }
}

impl ServeArgs {
    pub fn shared(&self) -> SharedArgs {
        SharedArgs::of(&self.db, Some(&self.probe), &self.log)
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// One JSON object instead of one line per finding.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. `drainwatch completions bash > /etc/bash_completion.d/drainwatch`.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The subcommand whose page to print (drainwatch-stop(1), ...); none: drainwatch(1).
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Each command shows only the flags that mean something for it.
    #[test]
    fn each_command_shows_only_its_flags() {
        let cli = Cli::command();
        let flags = |name: &str| -> Vec<String> {
            cli.find_subcommand(name)
                .unwrap()
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        };
        let check = flags("check");
        for absent in ["quiet", "no-follow", "ring-size", "timeout"] {
            assert!(!check.iter().any(|f| f == absent), "check --{absent}");
        }
        let serve = flags("serve");
        for absent in ["quiet", "json"] {
            assert!(!serve.iter().any(|f| f == absent), "serve --{absent}");
        }
        assert!(flags("stop").iter().any(|f| f == "quiet"));
        assert!(!flags("audit").iter().any(|f| f == "quiet"));
        assert!(!flags("watch").iter().any(|f| f == "quiet"));
    }

    /// Every flag says what it is for, and every one that takes a value shows an example.
    #[test]
    fn every_flag_is_documented_with_an_example() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(!help.is_empty(), "{} {id} has no help", sub.get_name());
                let takes_value = arg.get_action().takes_values();
                if takes_value && arg.get_long().is_some() {
                    assert!(
                        help.contains("e.g.") || help.contains("like "),
                        "{} --{id}: no example in {help:?}",
                        sub.get_name()
                    );
                }
            }
        }
    }

    #[test]
    fn a_negative_duration_reaches_the_duration_parser() {
        let cli =
            Cli::try_parse_from(["drainwatch", "wait", "--pid", "5", "--timeout", "-1s"]).unwrap();
        let Command::Wait(args) = cli.command else {
            panic!("not wait")
        };
        assert_eq!(args.timeout, "-1s");
    }

    #[test]
    fn a_selector_is_required() {
        for command in ["check", "watch", "wait", "stop", "audit", "serve"] {
            let err = Cli::try_parse_from(["drainwatch", command]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{command}"
            );
            assert!(err.to_string().contains("--pid <PID>"), "{command}: {err}");
        }
    }

    #[test]
    fn audit_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "drainwatch",
            "audit",
            "--report",
            "r.json",
            "--",
            "sleep",
            "1",
        ])
        .unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("not audit")
        };
        assert_eq!(args.command, ["sleep", "1"]);
        assert_eq!(args.report.unwrap().to_str(), Some("r.json"));
    }
}
