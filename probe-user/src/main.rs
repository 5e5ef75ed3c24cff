//! The `drainwatch` command line: parse, validate, run, print, exit with the contract's
//! code. Errors are printed as one line, `drainwatch: {err:#}`, with exit code 2.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use drainwatch::{
    audit, check,
    cli::{Cli, Command},
    drain,
    settings::{AuditSettings, CheckSettings, StopSettings, WaitSettings, WatchSettings},
    watch,
};

/// Exit code for usage and environment errors (DESIGN.md).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // clap's message is several lines (usage, tip); the contract wants one.
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("drainwatch: {first} (see `drainwatch --help`)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("drainwatch: {err:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
}

fn not_built(command: &str, issue: &str) -> anyhow::Result<u8> {
    anyhow::bail!(
        "`drainwatch {command}` is not built yet ({issue}); `drainwatch audit` works today"
    )
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Audit(args) => {
            init_logging(args.shared.verbose);
            let settings = AuditSettings::from_args(&args)?;
            if args.junit.is_some() {
                anyhow::bail!("--junit is not built yet (CI audit mode); use --report FILE");
            }
            let outcome = runtime()?.block_on(audit::run(&settings))?;
            Ok(outcome.exit_code() as u8)
        }
        Command::Check(args) => {
            init_logging(args.shared.verbose);
            Ok(check::run(&CheckSettings::from_args(&args)?)?)
        }
        Command::Watch(args) => {
            init_logging(args.shared.verbose);
            let settings = WatchSettings::from_args(&args)?;
            runtime()?
                .block_on(watch::run(&settings))
                .map_err(Into::into)
        }
        Command::Wait(args) => {
            init_logging(args.shared.verbose);
            let settings = WaitSettings::from_args(&args)?;
            Ok(runtime()?.block_on(drain::wait(&settings))?)
        }
        Command::Stop(args) => {
            init_logging(args.shared.verbose);
            let settings = StopSettings::from_args(&args)?;
            Ok(runtime()?.block_on(drain::stop(&settings))?)
        }
        Command::Serve(_) => not_built("serve", "Prometheus exporter"),
    }
}
