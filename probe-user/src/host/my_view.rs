//! A MySQL / MariaDB server's own view of its sessions, asked with the URL given by
//! `--db-url`: whether each client connection has an InnoDB transaction open, for
//! connections that existed before attach (their bytes cannot tell until the next OK
//! packet's status flags).
//!
//! `information_schema.PROCESSLIST` gives each session's client end (`HOST` is `ip:port`
//! for TCP clients), `information_schema.INNODB_TRX` the sessions with a transaction started
//! in InnoDB (`trx_mysql_thread_id` = the PROCESSLIST `ID`). See
//! <https://mariadb.com/kb/en/information-schema-innodb_trx-table/> and
//! <https://dev.mysql.com/doc/refman/8.0/en/information-schema-innodb-trx-table.html>.
//! A `BEGIN` that has not touched an InnoDB table yet is not listed there: it has no work
//! to lose, and it is taken as idle.

use std::{net::SocketAddr, time::Duration};

use mysql::prelude::Queryable;

use super::db_session::{SessionState, Sessions};

/// Client address (as the server sees it) -> session state, for every TCP session the URL's
/// user may see. Errors are one line, without the URL.
pub fn sessions(url: &str) -> Result<Sessions, String> {
    // The crate knows the mysql:// scheme only.
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_string(),
    };
    // The crate's parse error may quote the URL: say only what is wrong.
    let opts = mysql::Opts::from_url(&url)
        .map_err(|_| "--db-url does not parse as a mysql:// URL".to_string())?;
    let opts = mysql::OptsBuilder::from_opts(opts)
        // The crate would otherwise switch to the server's unix socket when it is local.
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(3)))
        .read_timeout(Some(Duration::from_secs(3)));
    let mut conn =
        mysql::Conn::new(opts).map_err(|e| format!("cannot connect with --db-url: {e}"))?;
    let rows: Vec<(String, Option<String>)> = conn
        .query(
            "SELECT p.HOST, CAST(t.trx_id AS CHAR) FROM information_schema.PROCESSLIST p \
             LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID \
             WHERE p.ID <> CONNECTION_ID()",
        )
        .map_err(|e| query_error(&e, &opts_user(&url)))?;
    let mut out = Sessions::new();
    for (host, trx) in rows {
        let state = if trx.is_some() {
            SessionState::InTransaction
        } else {
            SessionState::Idle
        };
        for addr in client_addrs(&host, resolve) {
            out.insert(addr, state);
        }
    }
    // Dropping the connection sends COM_QUIT.
    drop(conn);
    Ok(out)
}

/// MySQL's ER_SPECIFIC_ACCESS_DENIED_ERROR: INNODB_TRX needs the PROCESS privilege
/// (<https://mariadb.com/kb/en/information-schema-innodb_trx-table/>; without it PROCESSLIST
/// lists only the account's own sessions).
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;

/// One line for a failed query, naming the grant when that is what is missing.
fn query_error(e: &mysql::Error, user: &str) -> String {
    match e {
        mysql::Error::MySqlError(e) if e.code == ER_SPECIFIC_ACCESS_DENIED => format!(
            "--db-url's account cannot see other sessions' transactions: it needs the PROCESS \
             privilege: GRANT PROCESS ON *.* TO {user}"
        ),
        e => format!("information_schema.innodb_trx: {e}"),
    }
}

/// The URL's account as a GRANT names it (`'watch'@'%'` when the host part is unknown: the
/// account's host is the server's to say).
fn opts_user(url: &str) -> String {
    let user = mysql::Opts::from_url(url)
        .ok()
        .and_then(|o| o.get_user().map(str::to_string))
        .unwrap_or_else(|| "USER".into());
    format!("'{user}'@'%' (or the host part of that account)")
}

/// A host name of PROCESSLIST resolved, as the system resolves it (/etc/hosts first).
fn resolve(name: &str, port: u16) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    (name, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default()
}

/// Every client address a PROCESSLIST `HOST` may stand for. With name resolution on
/// (MariaDB's default, without --skip-name-resolve) a TCP client shows as `NAME:PORT`, the
/// name its address resolved to: `localhost:43428` for loopback clients, which may be
/// 127.0.0.1 or ::1; another name is resolved back with `resolve`. An IPv4-mapped IPv6
/// address also stands for its IPv4 form, which is how /proc shows an IPv4 socket.
fn client_addrs(host: &str, resolve: impl Fn(&str, u16) -> Vec<SocketAddr>) -> Vec<SocketAddr> {
    if let Some(addr) = client_addr(host) {
        let mut out = vec![addr];
        if let std::net::IpAddr::V6(v6) = addr.ip() {
            if let Some(v4) = v6.to_ipv4_mapped() {
                out.push(SocketAddr::new(v4.into(), addr.port()));
            }
        }
        return out;
    }
    let Some((name, port)) = host.rsplit_once(':') else {
        return Vec::new(); // a unix-socket client: no address
    };
    let Ok(port) = port.parse::<u16>() else {
        return Vec::new();
    };
    if name.eq_ignore_ascii_case("localhost") {
        return vec![
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
        ];
    }
    resolve(name, port)
}

/// PROCESSLIST's `HOST` of a TCP client: `127.0.0.1:43428`, `[::1]:43428` or `::1:43428`
/// (unix-socket clients say `localhost`: no address).
fn client_addr(host: &str) -> Option<SocketAddr> {
    if let Ok(addr) = host.parse() {
        return Some(addr);
    }
    let (ip, port) = host.rsplit_once(':')?;
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processlist_hosts() {
        let a = |s: &str| client_addr(s).map(|a| a.to_string());
        assert_eq!(a("127.0.0.1:43428").as_deref(), Some("127.0.0.1:43428"));
        assert_eq!(a("[::1]:43428").as_deref(), Some("[::1]:43428"));
        assert_eq!(a("::1:43428").as_deref(), Some("[::1]:43428"));
        assert_eq!(a("localhost"), None);
        assert_eq!(a("db.example:3306"), None);
    }

    #[test]
    fn processlist_hosts_with_name_resolution_on() {
        let names = |host: &str| -> Vec<String> {
            client_addrs(host, |name, port| match name {
                "app1.lan" => vec![SocketAddr::new([10, 0, 0, 7].into(), port)],
                _ => Vec::new(),
            })
            .iter()
            .map(|a| a.to_string())
            .collect()
        };
        assert_eq!(names("localhost:43428"), ["127.0.0.1:43428", "[::1]:43428"]);
        assert_eq!(names("LOCALHOST:1"), ["127.0.0.1:1", "[::1]:1"]);
        assert_eq!(names("app1.lan:5000"), ["10.0.0.7:5000"]);
        assert_eq!(names("[::1]:43428"), ["[::1]:43428"]);
        assert_eq!(
            names("[::ffff:127.0.0.1]:43428"),
            ["[::ffff:127.0.0.1]:43428", "127.0.0.1:43428"]
        );
        assert!(names("localhost").is_empty(), "a unix-socket client");
        assert!(names("unknown.lan:1").is_empty());
        assert!(names("localhost:port").is_empty());
    }

    #[test]
    fn a_missing_process_grant_is_named() {
        let denied = mysql::Error::MySqlError(mysql::MySqlError {
            state: "42000".into(),
            message: "Access denied; you need (at least one of) the PROCESS privilege(s) \
                      for this operation"
                .into(),
            code: 1227,
        });
        let line = query_error(&denied, &opts_user("mysql://watch:pw@127.0.0.1:3306/"));
        assert!(
            line.contains("needs the PROCESS privilege: GRANT PROCESS ON *.* TO 'watch'@"),
            "{line}"
        );
        assert!(!line.contains("pw"), "{line}");
    }
}
