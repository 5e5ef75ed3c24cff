//! A local PostgreSQL backend's own view of its session, from its process title.
//!
//! Each backend sets its title to `postgres: [CLUSTER: ]USER DATABASE HOST(PORT) STATE`
//! (`update_process_title`, on by default; see
//! <https://www.postgresql.org/docs/current/runtime-config-logging.html#GUC-UPDATE-PROCESS-TITLE>
//! and src/backend/utils/misc/ps_status.c), where HOST(PORT) is the client's end: the
//! target's local address. STATE is `idle`, `idle in transaction`, `idle in transaction
//! (aborted)`, or the command running. That tells whether a connection found at attach has a
//! transaction open, which its bytes cannot tell until its next ReadyForQuery.

use std::net::SocketAddr;

use super::db_session::SessionState;

/// The state of the backend serving the client end `local`, when that backend runs on this
/// host (found among /proc/*/cmdline). `None` when no title names it, or the backend is
/// running a command (its transaction state is then not in the title).
pub fn backend_state(local: SocketAddr) -> Option<SessionState> {
    let needle = format!("{}({})", local.ip(), local.port());
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.parse::<u32>().ok()?;
            std::fs::read(format!("/proc/{}/cmdline", name.to_str()?)).ok()
        })
        .find_map(|cmdline| parse_title(&String::from_utf8_lossy(&cmdline), &needle))
}

/// The state of backend `pid` serving a unix-socket client (its title says `[local]` for
/// the client's end), found as the owner of the connection's other end.
pub fn unix_backend_state(pid: u32) -> Option<SessionState> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    parse_title(&String::from_utf8_lossy(&cmdline), "[local]")
}

/// The state in one title, if the title is a backend's serving `needle` ("IP(PORT)").
fn parse_title(title: &str, needle: &str) -> Option<SessionState> {
    let title = title.trim_end_matches(['\0', ' ']);
    let rest = title.strip_prefix("postgres: ")?;
    let at = rest.find(&format!(" {needle} "))?;
    let state = &rest[at + needle.len() + 2..];
    match state {
        "idle" => Some(SessionState::Idle),
        "idle in transaction" => Some(SessionState::InTransaction),
        "idle in transaction (aborted)" => Some(SessionState::Aborted),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_of_backends() {
        let n = "127.0.0.1(43428)";
        let t = |s: &str| parse_title(s, n);
        assert_eq!(
            t("postgres: postgres postgres 127.0.0.1(43428) idle in transaction"),
            Some(SessionState::InTransaction)
        );
        assert_eq!(
            t("postgres: main: app shop 127.0.0.1(43428) idle in transaction (aborted)\0"),
            Some(SessionState::Aborted)
        );
        assert_eq!(
            t("postgres: postgres postgres 127.0.0.1(43428) idle"),
            Some(SessionState::Idle)
        );
        // Another client's backend, a running command, not a backend at all.
        assert_eq!(
            t("postgres: postgres postgres 127.0.0.1(434281) idle"),
            None
        );
        assert_eq!(
            t("postgres: postgres postgres 127.0.0.1(43428) INSERT"),
            None
        );
        assert_eq!(t("python pg_shop.py 127.0.0.1(43428) idle"), None);
        assert_eq!(
            parse_title(
                "postgres: postgres postgres [local] idle in transaction",
                "[local]"
            ),
            Some(SessionState::InTransaction)
        );
    }
}
