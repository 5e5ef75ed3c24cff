//! The `drainwatch` command line: parse, validate, run, print, exit with the contract's
//! code. Errors are printed as one line, `drainwatch: {err:#}`, with exit code 2; a command
//! line clap cannot parse gets clap's whole message after that first line (see `usage`).

use std::process::ExitCode;

use anyhow::Context as _;
use drainwatch::{
    cli::{Cli, Command},
    commands::audit,
    commands::check,
    commands::drain,
    commands::watch,
    settings::{AuditSettings, CheckSettings, StopSettings, WaitSettings, WatchSettings},
};

/// Exit code for usage and environment errors (docs/design.md).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // Loading reads the kernel's BTF (5.5 MB on 6.18) several times: aya's loader parses all
    // of it (aya 0.14's `EbpfLoader::new`, about 18 MB at its peak), our own reader
    // (kernel/btf.rs) looks up members and attach ids: megabytes that are freed at once.
    // glibc would raise its mmap threshold after the first such free and keep the next ones
    // on the heap for good; a fixed threshold gives big buffers back to the kernel when they
    // are freed.
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    if cfg!(feature = "bench-floor") {
        eprintln!(
            "drainwatch: a benchmark floor build (docs/bench.md): its socket programs return at \
             once, so it sees no connection and its verdicts mean nothing"
        );
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if drainwatch::usage::is_help_of_help(&argv) {
        let _ = drainwatch::manual::command().print_long_help();
        return ExitCode::SUCCESS;
    }
    // Built from the command tree with each command's examples after its --help.
    let parsed = drainwatch::manual::command()
        .try_get_matches_from(&argv)
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err)
            if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // Bare `drainwatch`: the help, as git and systemctl show it; still a usage error.
            let _ = err.print();
            return ExitCode::from(EXIT_USAGE);
        }
        Err(err) => {
            // clap's whole message (tip, valid values, the subcommand's usage), its first
            // line prefixed `drainwatch: ` like every other error.
            eprint!("{}", drainwatch::usage::parse_error_text(&err, &argv));
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

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Audit(args) => {
            init_logging(args.log.verbose);
            let settings = AuditSettings::from_args(&args)?;
            let outcome = runtime()?.block_on(audit::run(&settings))?;
            Ok(outcome.exit_code() as u8)
        }
        Command::Check(args) => {
            init_logging(args.log.verbose);
            Ok(check::run(&CheckSettings::from_args(&args)?)?)
        }
        Command::Watch(args) => {
            init_logging(args.log.verbose);
            let settings = WatchSettings::from_args(&args)?;
            runtime()?
                .block_on(watch::run(&settings))
                .map_err(Into::into)
        }
        Command::Wait(args) => {
            init_logging(args.log.verbose);
            let settings = WaitSettings::from_args(&args)?;
            Ok(runtime()?.block_on(drain::wait(&settings))?)
        }
        Command::Stop(args) => {
            init_logging(args.log.verbose);
            let settings = StopSettings::from_args(&args)?;
            Ok(runtime()?.block_on(drain::stop(&settings))?)
        }
        Command::Serve(args) => {
            init_logging(args.log.verbose);
            let settings = drainwatch::settings::ServeSettings::from_args(&args)?;
            runtime()?.block_on(drainwatch::commands::serve::run(&settings))
        }
        Command::Doctor(args) => {
            init_logging(0);
            Ok(drainwatch::commands::doctor::run(args.json))
        }
        Command::Completions(args) => {
            let mut script = Vec::new();
            let mut cli = drainwatch::manual::command();
            clap_complete::generate(args.shell, &mut cli, "drainwatch", &mut script);
            if args.shell == clap_complete::Shell::Bash {
                script.extend(drainwatch::manual::bash_dynamic_completion().into_bytes());
            }
            drainwatch::output::print_out(&String::from_utf8_lossy(&script));
            Ok(0)
        }
        Command::Man(args) => {
            let page = drainwatch::manual::render(args.command.as_deref())
                .map_err(anyhow::Error::msg)
                .context("rendering the man page")?;
            // `drainwatch man | head`: a reader gone is no error (output/mod.rs).
            drainwatch::output::print_out(&page);
            Ok(0)
        }
    }
}
