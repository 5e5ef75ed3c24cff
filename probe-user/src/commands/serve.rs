//! `drainwatch serve`: a Prometheus exporter. The probe follows the targets as `watch` does;
//! a small HTTP/1.1 server ([`crate::output::http`]) answers `GET /metrics` with the text
//! exposition format 0.0.4 ([`crate::output::metrics`]). Each scrape gets a picture read after
//! it arrived: the handler asks the session loop for one and waits for the next tick to draw it.
//!
//! Runs until Ctrl-C or SIGTERM, or until every target has exited (with `--comm`, only the
//! signals end it: a process of that name may start again).

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{
    output::{
        http::{accept_loop, Shared},
        metrics::Exporter,
    },
    session::Session,
    settings::ServeSettings,
    verdict::outcome::EndedBy,
};

/// How often the session loop drains the ring buffer and answers waiting scrapes.
const TICK: Duration = Duration::from_millis(100);

/// One scrape's text, read from the session now.
fn scrape(exporter: &mut Exporter, session: &Session) -> String {
    exporter.scrape(
        &session.state,
        session.lost(),
        session.probe.failures().len() as u64,
    )
}

/// Binds, attaches, and serves until the end. Exit code 0.
pub async fn run(settings: &ServeSettings) -> anyhow::Result<u8> {
    // Bound before the probe is loaded: a busy port costs one line, not an attach.
    let listener = TcpListener::bind(settings.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; choose another --listen ADDR:PORT",
            settings.listen
        )
    })?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    if !local.ip().is_loopback() {
        eprintln!(
            "drainwatch: warning: serving metrics on {local}, which is not loopback: anyone who \
             can reach it reads target pids, names and traffic; restrict it with a firewall or \
             NetworkPolicy"
        );
    }
    let mut session = Session::attach(&settings.targets, &settings.common)?;
    let mut exporter = Exporter::default();
    let shared = Arc::new(Shared::new(scrape(&mut exporter, &session)));
    let accepting = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
    let names = session.target_names();
    let targets = match (names.is_empty(), settings.comms.is_empty()) {
        (true, _) => format!("no process named {} yet", settings.comms.join(", ")),
        (false, _) => names,
    };
    let until = if settings.comms.is_empty() {
        "until the targets exit or Ctrl-C"
    } else {
        "until Ctrl-C or SIGTERM"
    };
    eprintln!("drainwatch: attached to {targets}; serving http://{local}/metrics {until}");
    let ended = session
        .follow(
            TICK,
            None,
            |_| false,
            |session| {
                if shared.wanted() {
                    shared.publish(scrape(&mut exporter, session));
                }
            },
        )
        .await?;
    accepting.abort();
    if ended == EndedBy::AllExited {
        eprintln!("drainwatch: every target exited; no more metrics to serve");
    }
    session.finish();
    Ok(0)
}
