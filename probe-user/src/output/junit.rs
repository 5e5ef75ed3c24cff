//! `--junit FILE`: the audit as JUnit XML, which CI systems render.
//!
//! - One test case per stable target name, never per pid, so CI history lines up from run
//!   to run: the process's name (`comm`), or `--name` for everything audited. A process a
//!   target forked is counted under the name of the target it descends from (a redis
//!   `redis-rdb-bgsave` child under `redis-server`), unless its own name was selected.
//! - With `audit --pid/--comm/--unit/--cgroup ... -- CMD`, CMD is the harness that restarts
//!   the real targets: CMD and what it forks (a script's `sh`, `sleep`, `kill`) are not test
//!   cases, except the processes that carry a selected name. A violation on a harness process
//!   is never dropped: it shows up in one case named `CMD (launched command)`. With `-- CMD`
//!   alone, CMD is the target and its case carries its name (or `--name`).
//! - One `<failure>` per violation kind in a case (its `type` is the kind, its message counts
//!   them: "2 sigkill: ..."), every violation's line in its text; warnings a policy let through
//!   in `<system-out>`. `tests` counts cases and `failures` the cases that failed.
//! - Valid against the Ant JUnit format as Jenkins, GitLab and GitHub reporters read it:
//!   `timestamp` and `hostname` on the suite. tests/fixtures/junit.xsd states it strictly
//!   (one case per name, one failure per kind in a case) and tests/tests/junit_schema.rs runs
//!   `xmllint --schema` on a real audit's file. Ant itself writes at most one failure per
//!   case, which cannot count kinds apart; the common format allows several.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    model::report::{Report, Verdict, Violation},
    output::summary,
};

/// What the renderer needs besides the report.
#[derive(Clone, Debug)]
pub struct JunitRun<'a> {
    /// When the audit started.
    pub started: SystemTime,
    pub elapsed_s: f64,
    /// This machine's name (the suite's `hostname`).
    pub hostname: String,
    /// The pid of `-- CMD`, if one was launched.
    pub launched: Option<u32>,
    /// Whether the audit was interrupted (SIGINT, SIGTERM) before it could tell.
    pub interrupted: bool,
    /// Whether targets were also named by selectors: CMD is then a harness, not a target.
    pub launched_is_harness: bool,
    /// The `--comm` names: a process carrying one is a test case wherever it came from.
    pub selected_comms: &'a [String],
    /// `--name`: one case under this name for everything audited.
    pub name: Option<&'a str>,
}

/// This machine's name, as `uname -n` shows it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to write other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ`: UTC, and saying so (xs:dateTime with its zone), so that a reader
/// in another zone does not take it for its local time.
fn timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to civil date: Howard Hinnant's algorithm,
    // https://howardhinnant.github.io/date_algorithms.html#civil_from_days
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The test case each target pid counts under; `None`: a harness process (see module doc).
fn case_names(report: &Report, run: &JunitRun) -> BTreeMap<u32, Option<String>> {
    let by_pid: BTreeMap<u32, _> = report.targets.iter().map(|t| (t.pid, t)).collect();
    let mut names = BTreeMap::new();
    for target in &report.targets {
        // Walk up to the process that makes this one a target; a fork chain is short, and
        // the step limit guards against a pid reused inside the chain.
        let mut at = target;
        let mut steps = 0;
        let case = loop {
            if run.selected_comms.contains(&at.comm) {
                break Some(at.comm.clone());
            }
            match at.parent_pid.and_then(|p| by_pid.get(&p)) {
                Some(parent) if steps < 64 => {
                    at = parent;
                    steps += 1;
                }
                _ if run.launched == Some(at.pid) && run.launched_is_harness => break None,
                _ => break Some(at.comm.clone()),
            }
        };
        let case = match (case, run.name) {
            (Some(_), Some(name)) => Some(name.to_string()),
            (case, _) => case,
        };
        names.insert(target.pid, case);
    }
    names
}

/// Why a report is `incomplete`, each reason a short phrase.
fn incomplete_reasons(report: &Report, interrupted: bool) -> Vec<String> {
    let mut why = Vec::new();
    if interrupted {
        why.push("interrupted (SIGINT or SIGTERM) before the audit could tell".to_string());
    }
    if report.events.lost > 0 {
        why.push(format!("{} events lost", report.events.lost));
    }
    if !report.probe_failures.is_empty() {
        why.push(format!(
            "probes failed: {}",
            report.probe_failures.join(", ")
        ));
    }
    let unverified = report.coverage.as_ref().map_or(0, |c| c.unverified.len());
    if unverified > 0 {
        why.push(format!(
            "{unverified} encrypted database connections not read"
        ));
    }
    if why.is_empty() {
        why.push(
            "a target exited while the state of one of its connections was unknown (see the \
             report's coverage)"
                .to_string(),
        );
    }
    why
}

pub fn render(report: &Report, run: &JunitRun) -> String {
    let names = case_names(report, run);
    let harness_case = run
        .launched
        .and_then(|pid| report.targets.iter().find(|t| t.pid == pid))
        .map(|t| format!("{} (launched command)", t.comm))
        .unwrap_or_else(|| "launched command".into());
    let case_of = |pid: u32| match names.get(&pid) {
        Some(Some(name)) => Some(name.clone()),
        Some(None) => Some(harness_case.clone()),
        None => None,
    };
    // Every named case, failing or not; the harness case only when it has something to say.
    let mut cases: BTreeMap<String, (Vec<&Violation>, Vec<&Violation>)> = names
        .values()
        .flatten()
        .map(|name| (name.clone(), Default::default()))
        .collect();
    for violation in &report.violations {
        let name = case_of(violation.pid()).unwrap_or_else(|| harness_case.clone());
        cases.entry(name).or_default().0.push(violation);
    }
    for warning in &report.warnings {
        let name = case_of(warning.pid()).unwrap_or_else(|| harness_case.clone());
        cases.entry(name).or_default().1.push(warning);
    }
    let classname = format!("drainwatch.{}", format!("{:?}", report.mode).to_lowercase());
    let elapsed_s = run.elapsed_s;
    let mut body = String::new();
    let mut failed_cases = 0;
    for (name, (violations, warnings)) in &cases {
        let _ = writeln!(
            body,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"{elapsed_s:.3}\">",
            escape(&classname),
            escape(name)
        );
        let mut by_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for violation in violations {
            by_kind
                .entry(violation.kind())
                .or_default()
                .push(summary::violation_line(report, violation));
        }
        if !by_kind.is_empty() {
            failed_cases += 1;
        }
        for (kind, lines) in &by_kind {
            let more = match lines.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            let message = format!("{} {kind}: {}{more}", lines.len(), lines[0]);
            let _ = writeln!(
                body,
                "      <failure type=\"{kind}\" message=\"{}\">{}</failure>",
                escape(&message),
                escape(&lines.join("\n"))
            );
        }
        if !warnings.is_empty() {
            let lines: Vec<String> = warnings
                .iter()
                .map(|v| format!("warning: {}", summary::violation_line(report, v)))
                .collect();
            let _ = writeln!(
                body,
                "      <system-out>{}</system-out>",
                escape(&lines.join("\n"))
            );
        }
        let _ = writeln!(body, "    </testcase>");
    }
    // Incomplete is a failure too (exit 1): a case of its own says why, so that a CI
    // reporter never shows green for what was not seen (docs/design.md, "Exit codes").
    let mut tests = cases.len();
    if report.verdict == Verdict::Incomplete {
        let why = incomplete_reasons(report, run.interrupted).join("; ");
        let _ = writeln!(
            body,
            "    <testcase classname=\"{}\" name=\"drainwatch (incomplete)\" time=\"{elapsed_s:.3}\">\n      \
             <failure type=\"incomplete\" message=\"{}\">{}</failure>\n    </testcase>",
            escape(&classname),
            escape(&format!("incomplete: {why}")),
            escape(&why)
        );
        tests += 1;
        failed_cases += 1;
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"drainwatch\" tests=\"{tests}\" failures=\"{failed_cases}\" errors=\"0\" time=\"{elapsed_s:.3}\">\n  \
         <testsuite name=\"drainwatch {mode}\" tests=\"{tests}\" failures=\"{failed_cases}\" errors=\"0\" skipped=\"0\" \
         time=\"{elapsed_s:.3}\" timestamp=\"{stamp}\" hostname=\"{host}\">\n\
         {body}  </testsuite>\n</testsuites>\n",
        mode = format!("{:?}", report.mode).to_lowercase(),
        stamp = timestamp(run.started),
        host = escape(&run.hostname),
    )
}

#[cfg(test)]
mod tests;
