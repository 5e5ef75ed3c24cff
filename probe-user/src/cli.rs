//! The command line, as DESIGN.md defines it. Values are kept as text here and validated in
//! [`crate::settings`], so every bad value gets drainwatch's own one-line message.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "drainwatch",
    version,
    about = "See what is still in flight inside a server before you stop it",
    long_about = "drainwatch attaches an eBPF probe to a running server (by pid, name, \
                  systemd unit or cgroup; with the workers it already forked) and watches \
                  its sockets, database conversations and the signals sent to it. It tells \
                  when the server is drained, stops it gracefully, and audits restarts: \
                  SIGKILLs, transactions cut in half, leaked database connections.\n\n\
                  Exit codes: 0 clean/drained, 1 violations found (or an incomplete audit), \
                  2 usage or environment error, 4 timeout."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Preflight, no waiting: can this process tree be stopped gracefully right now?
    Check(CheckArgs),
    /// Live view of connections, requests, queries and signals until Ctrl-C or exit.
    Watch(WatchArgs),
    /// Block until the target is drained or has exited; sends no signal.
    Wait(WaitArgs),
    /// Send a signal (to the top of each named tree), follow the drain, wait for every exit.
    Stop(StopArgs),
    /// Audit targets until they exit (or --duration, or Ctrl-C) and report violations.
    Audit(AuditArgs),
    /// Prometheus exporter (metrics prefixed drainwatch_).
    Serve(ServeArgs),
    /// What this kernel offers (BTF, tracefs, tracepoints, uprobes, kprobes, fentry,
    /// cgroup v2, lockdown) and which hooks drainwatch will use; exit 2 if it cannot attach.
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) to stdout: drainwatch(1), or drainwatch-COMMAND(1).
    Man(ManArgs),
}

/// Flags every subcommand takes.
#[derive(Debug, Args, Clone, Default)]
pub struct SharedArgs {
    /// Another TCP port that a database listens on (repeatable).
    #[arg(long = "db-port", value_name = "PORT")]
    pub db_port: Vec<String>,
    /// A database address, IP:PORT (repeatable).
    #[arg(long = "db", value_name = "ADDR:PORT")]
    pub db: Vec<String>,
    /// Where to read a PostgreSQL URL (`env:VAR` or `file:PATH`, never the URL itself, so it
    /// shows in no process list or shell history; it is never printed): drainwatch asks that
    /// database's pg_stat_activity whether the target's connections from before attach are
    /// in a transaction.
    #[arg(long = "db-url", value_name = "env:VAR|file:PATH")]
    pub db_url: Option<String>,
    /// How long "nothing in flight" must hold to count as drained.
    #[arg(long, value_name = "DURATION")]
    pub quiet: Option<String>,
    /// JSON output (one object per line) instead of the human view.
    #[arg(long)]
    pub json: bool,
    /// More diagnostics on stderr (-v: probe log, -vv: every event).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Do not follow processes the targets fork after attach.
    #[arg(long = "no-follow")]
    pub no_follow: bool,
    /// Size of the kernel's event ring buffer in bytes (a power of two; default 1048576).
    /// Raise it when `events.lost` is not 0 under a high request rate.
    #[arg(long = "ring-size", value_name = "BYTES")]
    pub ring_size: Option<String>,
}

/// What to watch: any mix, any number. A process brings its descendants that exist at
/// attach (an nginx master brings its workers) and, unless --no-follow, what they fork later.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetArgs {
    /// A running process (repeatable), with its descendants.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<String>,
    /// Processes by name, as `ps -o comm` shows it (repeatable); audit and serve also take
    /// in processes started under the name later.
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// The processes of a systemd unit (its cgroup v2 cgroup), e.g. nginx.service (repeatable).
    #[arg(long, value_name = "NAME.service")]
    pub unit: Vec<String>,
    /// The processes of a cgroup v2 directory and the cgroups below it, e.g. a container's
    /// (repeatable).
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

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// The signal a stop would send, e.g. QUIT for nginx's graceful shutdown.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    pub signal: String,
    #[command(flatten)]
    pub shared: SharedArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// How often the view is redrawn (default 250ms on a terminal, 1s for JSON lines).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    #[command(flatten)]
    pub shared: SharedArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Give up after this long (exit 4).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: String,
    #[command(flatten)]
    pub shared: SharedArgs,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// The signal to send, e.g. TERM, INT, QUIT.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    pub signal: String,
    /// Give up after this long (exit 4), or escalate with --kill-after.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub timeout: String,
    /// Send SIGKILL at the timeout (reported as a violation).
    #[arg(long = "kill-after")]
    pub kill_after: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub shared: SharedArgs,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// End the audit after this long (default: when every target has exited).
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
    /// Write a JUnit XML file here (one test case per target, a failure per violation).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// The JUnit test case name for everything audited, e.g. `--name checkout-api`
    /// (default: one test case per process name, as `ps -o comm` shows it).
    #[arg(long, value_name = "NAME", requires = "junit")]
    pub name: Option<String>,
    /// TOML file saying which violations fail the run and which only warn.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub shared: SharedArgs,
    /// Launch this command and audit it until it exits.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    // With --comm, serve runs until Ctrl-C or SIGTERM: processes may come later.
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Where to serve /metrics (IP:PORT). Not loopback: anyone who reaches it reads the metrics.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: String,
    #[command(flatten)]
    pub shared: SharedArgs,
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
