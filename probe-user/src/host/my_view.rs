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
        .map_err(|e| format!("information_schema.innodb_trx: {e}"))?;
    let out = rows
        .into_iter()
        .filter_map(|(host, trx)| {
            let state = if trx.is_some() {
                SessionState::InTransaction
            } else {
                SessionState::Idle
            };
            Some((client_addr(&host)?, state))
        })
        .collect();
    // Dropping the connection sends COM_QUIT.
    drop(conn);
    Ok(out)
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
}
