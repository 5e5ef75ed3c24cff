//! The manual: examples shown by `drainwatch COMMAND --help`, and the man pages
//! (`drainwatch man [COMMAND]`) with SYNOPSIS, DESCRIPTION, OPTIONS, EXIT STATUS, EXAMPLES and
//! SEE ALSO, as man-pages(7) orders them. The README installs every page listed here.

use std::fmt::Write as _;

use clap::CommandFactory as _;

use crate::cli::Cli;

/// The commands that have a page, drainwatch-COMMAND(1), in `drainwatch --help` order.
pub const PAGES: [&str; 9] = [
    "check",
    "watch",
    "wait",
    "stop",
    "audit",
    "serve",
    "doctor",
    "completions",
    "man",
];

/// Examples: the command line and what it does.
fn examples(command: Option<&str>) -> &'static [(&'static str, &'static str)] {
    match command {
        None => &[
            (
                "drainwatch check --pid \"$(pgrep -o nginx)\" --signal QUIT",
                "can nginx be stopped gracefully now?",
            ),
            (
                "drainwatch watch --unit redis-server.service",
                "live view of redis's connections and requests",
            ),
            (
                "drainwatch stop --comm gunicorn --timeout 1m30s --report stop.json",
                "graceful stop, followed to the last exit",
            ),
            (
                "drainwatch audit --comm game-server --junit junit.xml -- ./deploy.sh",
                "fail CI when the deploy kills or cuts",
            ),
        ],
        Some("check") => &[
            (
                "drainwatch check --pid 4121",
                "can pid 4121 (with its workers) stop gracefully on SIGTERM?",
            ),
            (
                "drainwatch check --comm nginx --signal QUIT --json",
                "the same for nginx's graceful signal, as JSON",
            ),
        ],
        Some("watch") => &[
            (
                "drainwatch watch --pid \"$(pgrep -o redis-server)\"",
                "requests per second, latency, what is in flight",
            ),
            (
                "drainwatch watch --comm nginx --json --count 5 --interval 1s",
                "five JSON snapshots, one a second",
            ),
        ],
        Some("wait") => &[
            (
                "drainwatch wait --unit api.service --timeout 2m",
                "block until api is drained (exit 0) or 2 minutes pass (exit 4)",
            ),
            (
                "kill -TERM 4121 && drainwatch wait --pid 4121 --quiet 500ms",
                "another tool signals; drainwatch says when it is done",
            ),
        ],
        Some("stop") => &[
            (
                "drainwatch stop --pid \"$(pgrep -o nginx)\" --signal QUIT",
                "graceful nginx stop, waits for every worker",
            ),
            (
                "drainwatch stop --unit api.service --timeout 1m30s --kill-after",
                "SIGKILL at 90s, reported as a violation",
            ),
            (
                "drainwatch stop --comm gunicorn --report /var/log/drainwatch/stop.json",
                "keep the JSON report",
            ),
        ],
        Some("audit") => &[
            (
                "drainwatch audit --report audit.json -- ./release.sh",
                "audit a release script and every server it signals (kill -TERM, kill -9)",
            ),
            (
                "drainwatch audit --comm game-server -- ./rolling-restart.sh",
                "audit both servers of a restart script",
            ),
            (
                "drainwatch audit --pid 4121 --duration 10m --report audit.json",
                "ten minutes of watching, then the report",
            ),
            (
                "drainwatch audit --comm api --junit junit.xml --name api -- make restart",
                "a JUnit file for CI",
            ),
        ],
        Some("serve") => &[
            (
                "drainwatch serve --comm nginx --comm redis-server",
                "metrics for both, apart by their comm label",
            ),
            (
                "drainwatch serve --unit api.service --listen 0.0.0.0:9464",
                "for a Prometheus on another host",
            ),
        ],
        Some("doctor") => &[
            (
                "drainwatch doctor",
                "what this kernel offers and which hooks will be used",
            ),
            ("drainwatch doctor --json", "the same as one JSON object"),
        ],
        Some("completions") => &[
            (
                "drainwatch completions bash > /etc/bash_completion.d/drainwatch",
                "bash completion",
            ),
            (
                "drainwatch completions zsh > /usr/local/share/zsh/site-functions/_drainwatch",
                "zsh completion",
            ),
        ],
        Some("man") => &[
            (
                "drainwatch man stop | man -l -",
                "read drainwatch-stop(1) without installing it",
            ),
            (
                "drainwatch man > /usr/local/share/man/man1/drainwatch.1",
                "install drainwatch(1)",
            ),
        ],
        Some(_) => &[],
    }
}

/// What the exit codes mean for a command (docs/design.md, "Exit codes").
fn exit_status(command: Option<&str>) -> &'static [(&'static str, &'static str)] {
    const USAGE: (&str, &str) = (
        "2",
        "usage or environment error (bad flag or value, no such process, no permission, no \
         BPF): one line on stderr says what and how to fix it; nothing is left attached",
    );
    match command {
        Some("check") => &[
            ("0", "a graceful stop is possible now"),
            ("1", "it is not; the reasons are listed"),
            USAGE,
        ],
        Some("watch") => &[
            ("0", "Ctrl-C, --count or --duration, or the targets exited"),
            USAGE,
        ],
        Some("wait") => &[
            ("0", "drained or exited"),
            (
                "1",
                "exited with violations, or incomplete (events lost, a probe failed, \
                 interrupted by Ctrl-C or SIGTERM)",
            ),
            USAGE,
            ("4", "timeout; what was still in flight is listed"),
        ],
        Some("stop") => &[
            ("0", "every target exited cleanly"),
            (
                "1",
                "violations (a SIGKILL, a cut request or transaction, a leaked connection), or \
                 incomplete (events lost, a probe failed, interrupted by Ctrl-C or SIGTERM)",
            ),
            USAGE,
            (
                "4",
                "timeout without --kill-after; what was still in flight is listed",
            ),
        ],
        Some("audit") => &[
            ("0", "clean"),
            (
                "1",
                "violations found, or the audit is incomplete (events lost, a probe failed, \
                 interrupted by Ctrl-C or SIGTERM: the launched command is stopped too)",
            ),
            USAGE,
        ],
        Some("serve") => &[("0", "SIGTERM, Ctrl-C, or the named targets exited"), USAGE],
        Some("doctor") => &[
            ("0", "drainwatch can attach on this kernel"),
            ("2", "it cannot; the missing essentials are listed"),
        ],
        Some(_) => &[("0", "the text was written to stdout"), USAGE],
        None => &[
            (
                "0",
                "clean, drained, exited cleanly (check: a graceful stop is possible)",
            ),
            (
                "1",
                "violations found, or the run is incomplete: events lost, a probe failed, \
                 interrupted by Ctrl-C or SIGTERM, a connection still unknown when its process \
                 exited; never clean about what was not seen (check: a graceful stop is not \
                 possible)",
            ),
            USAGE,
            ("4", "timeout (wait, stop)"),
        ],
    }
}

/// `Cli::command()` with each command's examples after its `--help`.
pub fn command() -> clap::Command {
    let mut cli = Cli::command().after_long_help(format!(
        "{}\n\nDurations: {}.",
        examples_text(None),
        crate::duration::LOOKS_LIKE
    ));
    for name in PAGES {
        cli = cli.mut_subcommand(name, |sub| {
            let takes_durations = sub.get_arguments().any(|a| {
                a.get_value_names()
                    .is_some_and(|v| v.iter().any(|n| n == "DURATION"))
            });
            let mut text = examples_text(Some(name));
            if takes_durations {
                text = format!("{text}\n\nDurations: {}.", crate::duration::LOOKS_LIKE);
            }
            sub.after_long_help(text)
        });
    }
    cli
}

fn examples_text(command: Option<&str>) -> String {
    let mut out = String::from("Examples:\n");
    for (line, what) in examples(command) {
        let _ = writeln!(out, "  {line}\n      {what}");
    }
    let page = command.map_or("drainwatch(1)".to_string(), |c| {
        format!("drainwatch-{c}(1)")
    });
    let _ = write!(
        out,
        "\nMore in {page}: `drainwatch man{}`.",
        command.map_or(String::new(), |c| format!(" {c}"))
    );
    out
}

/// Completion that clap's static bash script cannot do: running pids and process names,
/// signal names, systemd units, and `drainwatch man COMMAND`. Appended to the generated
/// script; its `complete` line replaces the generated one and falls back to it.
pub fn bash_dynamic_completion() -> String {
    let signals: Vec<&str> = crate::events::signals::names()
        .filter(|name| *name != "KILL" && *name != "STOP")
        .collect();
    format!(
        r#"
# drainwatch: values only a running system knows.
_drainwatch_dynamic() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
        --pid)
            COMPREPLY=($(compgen -W "$(ps -eo pid= 2>/dev/null)" -- "$cur")); return 0;;
        --comm)
            COMPREPLY=($(compgen -W "$(ps -eo comm= 2>/dev/null | sort -u)" -- "$cur")); return 0;;
        --signal)
            COMPREPLY=($(compgen -W "{signals}" -- "$cur")); return 0;;
        --unit)
            COMPREPLY=($(compgen -W "$(systemctl list-units --type=service --all --no-legend --plain 2>/dev/null | awk '{{print $1}}')" -- "$cur")); return 0;;
    esac
    if [[ $COMP_CWORD -eq 2 && ${{COMP_WORDS[1]}} == man ]]; then
        COMPREPLY=($(compgen -W "{pages}" -- "$cur")); return 0
    fi
    _drainwatch "$@"
}}
complete -F _drainwatch_dynamic -o bashdefault -o default drainwatch
"#,
        signals = signals.join(" "),
        pages = PAGES.join(" "),
    )
}

/// Text for roff: hyphens as `\-` (so they stay ASCII in copy-paste), backslashes as `\e`,
/// and a line that would start a request (`.` or `'`) prefixed with `\&`.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// SYNOPSIS with every value named: `[--signal SIGNAL]`, `(--pid PID | ...)...`.
fn synopsis(cmd: &clap::Command, full_name: &str) -> String {
    let mut out = format!("\\fB{}\\fR", roff(full_name));
    let value = |arg: &clap::Arg| {
        if !arg.get_action().takes_values() {
            return String::new();
        }
        arg.get_value_names()
            .and_then(|v| v.first())
            .map(|v| format!(" \\fI{}\\fR", roff(v)))
            .unwrap_or_default()
    };
    let flag = |arg: &clap::Arg| match (arg.get_short(), arg.get_long()) {
        (Some(s), None) => format!("\\fB\\-{s}\\fR"),
        (Some(s), Some(_)) if matches!(arg.get_action(), clap::ArgAction::Count) => {
            format!("\\fB\\-{s}\\fR")
        }
        (_, Some(l)) => format!("\\fB\\-\\-{}\\fR", roff(l)),
        (None, None) => String::new(),
    };
    let selectors: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| crate::cli::SELECTORS.contains(&a.get_id().as_str()))
        .collect();
    if !selectors.is_empty() {
        let alternatives: Vec<String> = selectors
            .iter()
            .map(|a| format!("{}{}", flag(a), value(a)))
            .collect();
        let _ = write!(out, " ({})...", alternatives.join(" | "));
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if crate::cli::SELECTORS.contains(&id) || matches!(id, "help" | "version") {
            continue;
        }
        if arg.is_positional() {
            let name = roff(
                arg.get_value_names()
                    .and_then(|v| v.first())
                    .map_or(id, |v| v.as_str()),
            );
            let dots = if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
                "..."
            } else {
                ""
            };
            let item = if arg.is_last_set() {
                format!("\\fB\\-\\-\\fR \\fI{name}\\fR{dots}")
            } else {
                format!("\\fI{name}\\fR{dots}")
            };
            if arg.is_required_set() {
                let _ = write!(out, " {item}");
            } else {
                let _ = write!(out, " [{item}]");
            }
            continue;
        }
        let repeat = match arg.get_action() {
            clap::ArgAction::Count | clap::ArgAction::Append => "...",
            _ => "",
        };
        let _ = write!(out, " [{}{}]{repeat}", flag(arg), value(arg));
    }
    out
}

/// drainwatch(1), or drainwatch-COMMAND(1).
pub fn render(command: Option<&str>) -> Result<String, String> {
    let mut cli = command_for_pages();
    cli.build();
    let page = match command {
        None => cli.clone(),
        Some(name) => cli
            .find_subcommand(name)
            .filter(|_| PAGES.contains(&name))
            .cloned()
            .ok_or_else(|| format!("no page for `{name}`: use one of {}", PAGES.join(", ")))?,
    };
    let full_name = command.map_or("drainwatch".to_string(), |c| format!("drainwatch {c}"));
    let man = clap_mangen::Man::new(page.clone())
        .source(concat!("drainwatch ", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    man.render_title(&mut out).map_err(io)?;
    man.render_name_section(&mut out).map_err(io)?;
    let mut text = String::from_utf8(out).map_err(|e| e.to_string())?;
    let synopses = match command {
        Some(_) => synopsis(&page, &full_name),
        // drainwatch(1): each command's line, as its own page has it.
        None => PAGES
            .iter()
            .filter_map(|name| page.find_subcommand(name))
            .map(|sub| synopsis(sub, &format!("drainwatch {}", sub.get_name())))
            .collect::<Vec<_>>()
            .join("\n.br\n"),
    };
    let _ = writeln!(text, ".SH SYNOPSIS\n{synopses}");
    if let Some(long) = page.get_long_about() {
        let _ = writeln!(
            text,
            ".SH DESCRIPTION\n{}",
            roff(&long.to_string()).replace("\n\n", "\n.PP\n")
        );
    }
    let mut rest = Vec::new();
    man.render_options_section(&mut rest).map_err(io)?;
    if command.is_none() {
        man.render_subcommands_section(&mut rest).map_err(io)?;
    }
    text.push_str(&String::from_utf8(rest).map_err(|e| e.to_string())?);
    text.push_str(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in exit_status(command) {
        let _ = writeln!(text, ".TP\n\\fB{code}\\fR\n{}", roff(meaning));
    }
    text.push_str(".SH EXAMPLES\n");
    for (line, what) in examples(command) {
        let _ = writeln!(text, ".TP\n\\fB{}\\fR\n{}", roff(line), roff(what));
    }
    text.push_str(".SH \"SEE ALSO\"\n");
    let mut see: Vec<String> = PAGES
        .iter()
        .filter(|p| Some(**p) != command)
        .map(|p| format!("\\fBdrainwatch\\-{}\\fR(1)", roff(p)))
        .collect();
    if command.is_some() {
        see.insert(0, "\\fBdrainwatch\\fR(1)".into());
    }
    see.push("\\fBsystemctl\\fR(1)".into());
    see.push("\\fBkill\\fR(1)".into());
    let _ = writeln!(text, "{}", see.join(", "));
    let _ = writeln!(text, ".SH VERSION\nv{}", env!("CARGO_PKG_VERSION"));
    Ok(text)
}

/// The command tree as pages describe it: no generated `help` subcommand.
fn command_for_pages() -> clap::Command {
    Cli::command().disable_help_subcommand(true)
}

#[cfg(test)]
mod tests;
