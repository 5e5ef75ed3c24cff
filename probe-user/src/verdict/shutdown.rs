//! What common servers do with their stop signals, for `check` and `stop`: a handled SIGTERM
//! is not always a graceful stop. A small table keyed by the executable's file name (or the
//! comm), each row from the server's own documentation:
//!
//! - nginx: TERM, INT = fast shutdown; QUIT = graceful shutdown
//!   (https://nginx.org/en/docs/control.html).
//! - Apache httpd (apache2, httpd): TERM = stop now, children killed at once; WINCH =
//!   graceful stop (https://httpd.apache.org/docs/2.4/stopping.html).
//! - php-fpm: INT, TERM = immediate termination; QUIT = graceful stop (php-fpm(8), "SIGNALS").
//! - HAProxy: TERM = hard stop, connections closed at once; USR1 = soft stop, finish then
//!   exit (doc/management.txt, "Stopping and restarting HAProxy"; `-st` vs `-sf`).
//!
//! `stop` and `check` without `--signal` use the row's graceful signal; servers not listed
//! here get SIGTERM and are judged by the signal masks alone.

/// A server whose stop signals are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownServer {
    pub name: &'static str,
    /// Signals that stop it at once, cutting what is in flight.
    pub fast: &'static [i32],
    /// The signal that stops it gracefully.
    pub graceful: i32,
    /// Where the row comes from.
    pub source: &'static str,
}

const KNOWN: &[KnownServer] = &[
    KnownServer {
        name: "nginx",
        fast: &[libc::SIGTERM, libc::SIGINT],
        graceful: libc::SIGQUIT,
        source: "https://nginx.org/en/docs/control.html",
    },
    KnownServer {
        name: "apache2",
        fast: &[libc::SIGTERM],
        graceful: libc::SIGWINCH,
        source: "https://httpd.apache.org/docs/2.4/stopping.html",
    },
    KnownServer {
        name: "httpd",
        fast: &[libc::SIGTERM],
        graceful: libc::SIGWINCH,
        source: "https://httpd.apache.org/docs/2.4/stopping.html",
    },
    KnownServer {
        name: "php-fpm",
        fast: &[libc::SIGTERM, libc::SIGINT],
        graceful: libc::SIGQUIT,
        source: "php-fpm(8), SIGNALS",
    },
    KnownServer {
        name: "haproxy",
        fast: &[libc::SIGTERM],
        graceful: libc::SIGUSR1,
        source: "HAProxy doc/management.txt, \"Stopping and restarting HAProxy\"",
    },
];

/// The row for a program, by its executable's file name or its comm. php-fpm's file is
/// named after its version (php-fpm8.2), so a name matches a row it starts with, followed
/// by a digit or nothing.
pub fn known(exe_name: Option<&str>, comm: &str) -> Option<&'static KnownServer> {
    let matches = |name: &str, row: &str| {
        name.strip_prefix(row)
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
    };
    KNOWN
        .iter()
        .find(|row| exe_name.is_some_and(|n| matches(n, row.name)) || matches(comm, row.name))
}

/// Why a stop sends the signal it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// `--signal` named it.
    Asked,
    /// Not asked: the server's own graceful signal (docs/design.md, "Command line").
    Graceful(&'static KnownServer),
    /// Not asked, a server not in the table: SIGTERM.
    Default,
}

/// The signal a stop sends to a process that is `server` (if known), and why. Never a
/// signal the table knows to cut work unless `--signal` asked for it.
pub fn stop_signal(asked: Option<i32>, server: Option<&'static KnownServer>) -> (i32, Chosen) {
    match (asked, server) {
        (Some(sig), _) => (sig, Chosen::Asked),
        (None, Some(row)) => (row.graceful, Chosen::Graceful(row)),
        (None, None) => (libc::SIGTERM, Chosen::Default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_nginx_by_its_file_and_php_fpm_by_its_versioned_file() {
        let nginx = known(Some("nginx"), "nginx").unwrap();
        assert!(nginx.fast.contains(&libc::SIGTERM));
        assert_eq!(nginx.graceful, libc::SIGQUIT);
        // The master's comm is "nginx" too, but a renamed binary is still nginx by comm.
        assert_eq!(known(None, "nginx").unwrap().name, "nginx");
        assert_eq!(
            known(Some("php-fpm8.2"), "php-fpm8.2").unwrap().name,
            "php-fpm"
        );
        assert_eq!(known(Some("nginx-debug"), "x"), None);
        assert_eq!(known(Some("dw-fixture"), "dw-fixture"), None);
    }

    #[test]
    fn a_stop_sends_the_graceful_signal_unless_asked_otherwise() {
        let nginx = known(Some("nginx"), "nginx");
        assert_eq!(stop_signal(None, nginx).0, libc::SIGQUIT);
        assert!(matches!(stop_signal(None, nginx).1, Chosen::Graceful(row) if row.name == "nginx"));
        assert_eq!(
            stop_signal(Some(libc::SIGTERM), nginx),
            (libc::SIGTERM, Chosen::Asked)
        );
        assert_eq!(stop_signal(None, None), (libc::SIGTERM, Chosen::Default));
    }
}
