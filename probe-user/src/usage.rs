//! How a command line that clap cannot parse is shown: clap's own message (what is wrong,
//! the "similar argument" tip, the valid values, the subcommand's usage), with drainwatch's
//! `drainwatch: ` prefix on its first line (the line scripts and tests match) and the closing
//! hint pointing at the subcommand's own `--help` (`drainwatch stop --help`), as kubectl and
//! systemctl do. The exit code stays 2 (docs/design.md).

use std::ffi::OsString;

use clap::CommandFactory as _;

use crate::cli::Cli;

/// The text to print on stderr for `err`, raised while parsing `argv` (argv[0] included).
pub fn parse_error_text(err: &clap::Error, argv: &[OsString]) -> String {
    let text = err.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let sub = subcommand_named(argv);
    let help = match &sub {
        Some(name) => format!("drainwatch {name} --help"),
        None => "drainwatch --help".to_string(),
    };
    let mut out = String::with_capacity(text.len() + 32);
    out.push_str("drainwatch: ");
    let mut hinted = false;
    let tip = swapped_letters_tip(err, sub.as_deref()).filter(|_| !text.contains("tip:"));
    // "the following required arguments were not provided:" names them on the next lines;
    // the first line (the one scripts and tests read) names them too.
    let text = match err.kind() {
        clap::error::ErrorKind::MissingRequiredArgument => {
            let mut lines = text.lines();
            let head = lines.next().unwrap_or_default();
            let missing: Vec<&str> = lines
                .clone()
                .take_while(|l| l.starts_with("  "))
                .map(str::trim)
                .collect();
            let rest: Vec<&str> = lines.skip(missing.len()).collect();
            format!("{head} {}\n{}", missing.join(", "), rest.join("\n"))
        }
        _ => text.to_string(),
    };
    for (index, line) in text.trim_end().lines().enumerate() {
        if index == 1 {
            if let Some(tip) = &tip {
                out.push_str(&format!("\n  tip: a similar argument exists: '{tip}'\n"));
            }
        }
        // clap ends with "For more information, try '--help'." whichever subcommand failed.
        if line.starts_with("For more information, try ") {
            out.push_str(&format!("For more information, try `{help}`."));
            hinted = true;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !hinted {
        out.push_str(&format!("\nFor more information, try `{help}`.\n"));
    }
    out
}

/// clap's own tip compares spellings by Jaro similarity, which misses two swapped letters in
/// a short flag (`--pdi` for `--pid`); this finds the flag one edit away (optimal string
/// alignment distance: insert, delete, replace or swap two neighbours).
fn swapped_letters_tip(err: &clap::Error, sub: Option<&str>) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if err.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(given)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let given = given.strip_prefix("--")?.split('=').next()?;
    let cli = Cli::command();
    let command = match sub {
        Some(name) => cli.find_subcommand(name)?.clone(),
        None => cli,
    };
    let similar = command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .find(|long| edit_distance(given, long) == 1)
        .map(|long| format!("--{long}"));
    similar
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The subcommand the user named: the first argument that is one (before `--`).
fn subcommand_named(argv: &[OsString]) -> Option<String> {
    let cli = Cli::command();
    argv.iter()
        .skip(1)
        .take_while(|arg| *arg != "--")
        .filter_map(|arg| arg.to_str())
        .find(|arg| cli.find_subcommand(arg).is_some() && *arg != "help")
        .map(str::to_string)
}

/// `drainwatch help --help` (clap's generated `help` takes no flags): the top-level help.
pub fn is_help_of_help(argv: &[OsString]) -> bool {
    argv.len() == 3 && argv[1] == "help" && (argv[2] == "--help" || argv[2] == "-h")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn error_of(args: &[&str]) -> String {
        let argv: Vec<OsString> = std::iter::once("drainwatch")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let err = Cli::try_parse_from(&argv).expect_err("a parse error");
        parse_error_text(&err, &argv)
    }

    #[test]
    fn a_misspelt_flag_gets_a_tip_the_usage_and_the_subcommand_help() {
        let text = error_of(&["stop", "--pdi", "5"]);
        let first = text.lines().next().unwrap();
        assert_eq!(
            first, "drainwatch: unexpected argument '--pdi' found",
            "{text}"
        );
        assert!(
            text.contains("tip: a similar argument exists: '--pid'"),
            "{text}"
        );
        assert!(text.contains("Usage: drainwatch stop"), "{text}");
        assert!(
            text.trim_end().ends_with("try `drainwatch stop --help`."),
            "{text}"
        );
    }

    #[test]
    fn clap_s_own_tips_are_kept() {
        let text = error_of(&["stop", "--signl", "QUIT"]);
        assert_eq!(text.matches("tip:").count(), 1, "{text}");
        assert!(text.contains("'--signal'"), "{text}");
    }

    #[test]
    fn edit_distance_counts_a_swap_as_one() {
        assert_eq!(edit_distance("pdi", "pid"), 1);
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("json", "pid"), 4);
    }

    #[test]
    fn a_missing_selector_is_named_on_the_first_line() {
        let text = error_of(&["check"]);
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("drainwatch: the following required arguments were not provided: <--pid <PID>|--comm <NAME>"),
            "{text}"
        );
        assert!(text.contains("Usage: drainwatch check"), "{text}");
        assert!(
            text.trim_end().ends_with("try `drainwatch check --help`."),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_shell_lists_the_valid_ones() {
        let text = error_of(&["completions", "tcsh"]);
        assert!(
            text.starts_with("drainwatch: invalid value 'tcsh'"),
            "{text}"
        );
        assert!(text.contains("[possible values: bash"), "{text}");
        assert!(text.contains("zsh"), "{text}");
    }

    #[test]
    fn an_unknown_subcommand_points_at_the_top_level_help() {
        let text = error_of(&["stpo"]);
        assert!(
            text.starts_with("drainwatch: unrecognized subcommand 'stpo'"),
            "{text}"
        );
        assert!(
            text.contains("tip: a similar subcommand exists: 'stop'"),
            "{text}"
        );
        assert!(
            text.trim_end().ends_with("try `drainwatch --help`."),
            "{text}"
        );
    }

    #[test]
    fn help_of_help_is_recognised() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(is_help_of_help(&argv(&["drainwatch", "help", "--help"])));
        assert!(is_help_of_help(&argv(&["drainwatch", "help", "-h"])));
        assert!(!is_help_of_help(&argv(&["drainwatch", "help", "stop"])));
    }
}
