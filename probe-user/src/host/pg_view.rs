//! A PostgreSQL server's own view of its sessions (`pg_stat_activity`), asked with the URL
//! given by `--db-url`: whether each client connection is in a transaction, for connections
//! that existed before attach (their bytes cannot tell until the next ReadyForQuery).
//! See <https://www.postgresql.org/docs/current/monitoring-stats.html#MONITORING-PG-STAT-ACTIVITY-VIEW>.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use super::db_session::{SessionState, Sessions};

/// Client address (as the server sees it) -> session state, for every client backend the
/// URL's user may see. Errors are one line, without the URL.
pub fn sessions(url: &str) -> Result<Sessions, String> {
    // The sync client runs its own runtime: on a thread of its own, since the caller may be
    // on tokio's.
    let url = url.to_string();
    std::thread::spawn(move || ask(&url))
        .join()
        .unwrap_or_else(|_| Err("the pg_stat_activity query panicked".into()))
}

fn ask(url: &str) -> Result<Sessions, String> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| format!("--db-url does not parse: {e}"))?;
    config.connect_timeout(Duration::from_secs(3));
    config.application_name("drainwatch");
    let mut client = config
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect with --db-url: {e}"))?;
    let rows = client
        .query(
            "SELECT host(client_addr), client_port, state FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND client_port > 0 \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .map_err(|e| format!("pg_stat_activity: {e}"))?;
    let mut out = HashMap::new();
    for row in rows {
        let (Ok(Some(ip)), Ok(Some(port)), Ok(Some(state))) = (
            row.try_get::<_, Option<String>>(0),
            row.try_get::<_, Option<i32>>(1),
            row.try_get::<_, Option<String>>(2),
        ) else {
            continue;
        };
        let state = match state.as_str() {
            "idle" => SessionState::Idle,
            "idle in transaction" => SessionState::InTransaction,
            "idle in transaction (aborted)" => SessionState::Aborted,
            _ => continue,
        };
        if let (Ok(ip), Ok(port)) = (ip.parse(), u16::try_from(port)) {
            out.insert(SocketAddr::new(ip, port), state);
        }
    }
    let _ = client.close();
    Ok(out)
}
