//! Where an outcome goes: stdout (the human summary, or the report as one JSON line with
//! `--json`) and the files named on the command line (`--report`, `--junit`).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use crate::{model::report::Report, output::summary, verdict::outcome::Outcome, Error, Result};

/// A report file, opened (and so proven writable) before the run starts.
#[derive(Debug)]
pub struct ReportFile {
    pub path: PathBuf,
    pub file: File,
    /// What it is, for errors: "report file", "junit file".
    pub what: &'static str,
}

impl ReportFile {
    /// `--report FILE`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_as(path, "report file")
    }

    /// `--junit FILE`.
    pub fn open_junit(path: &Path) -> Result<Self> {
        Self::open_as(path, "junit file")
    }

    fn open_as(path: &Path, what: &'static str) -> Result<Self> {
        // Opened now, not at the end: an unwritable path must fail before the run, not
        // after an hour of auditing. Truncated only when the report is written.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|cause| Error::ReportPath {
                what,
                path: path.to_path_buf(),
                cause,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            what,
        })
    }
}

/// Prints the outcome (human summary, or the report as one JSON line with `--json`) and
/// writes the report file.
pub fn publish(outcome: &Outcome, json: bool, report_file: Option<&ReportFile>) -> Result<()> {
    // The file first: a reader of stdout that is gone (EPIPE) must not cost the report.
    if let Some(file) = report_file {
        write_report(file, &outcome.report)?;
    }
    if json {
        crate::output::print_out(&format!(
            "{}\n",
            serde_json::to_string(&outcome.report).expect("report serializes")
        ));
    } else {
        crate::output::print_out(&summary::render(outcome));
    }
    Ok(())
}

pub fn write_report(file: &ReportFile, report: &Report) -> Result<()> {
    let mut text = serde_json::to_string_pretty(report).expect("report serializes");
    text.push('\n');
    write_text(file, &text)
}

/// Replaces the file's contents (it was opened, and so proven writable, before the run).
pub fn write_text(file: &ReportFile, text: &str) -> Result<()> {
    let io = |cause| Error::ReportPath {
        what: file.what,
        path: file.path.clone(),
        cause,
    };
    let mut handle = &file.file;
    handle.set_len(0).map_err(io)?;
    std::io::Seek::rewind(&mut handle).map_err(io)?;
    handle.write_all(text.as_bytes()).map_err(io)?;
    handle.sync_all().map_err(io)
}
