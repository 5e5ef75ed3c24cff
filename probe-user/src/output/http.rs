//! The small HTTP/1.1 server `drainwatch serve` answers scrapes with: `GET /metrics` (and
//! `HEAD`) get the text exposition format 0.0.4 ([`crate::output::metrics`]), anything else a
//! short error; one request per connection, a bounded head, a bounded number of connections.
//! Each scrape gets a picture read after it arrived: it marks itself waiting in [`Shared`]
//! and the session loop draws the next picture for it.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
};

use crate::output::metrics;

/// How long a scrape waits for a fresh picture before it takes the last one drawn.
const FRESH_WAIT: Duration = Duration::from_secs(2);
/// A connection that has not sent its request (and read the answer) by then is dropped.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests are a line and a few headers; anything longer is refused.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Scrapes served at once; connections beyond that are closed at once.
const MAX_CONNECTIONS: usize = 32;

/// The latest exposition text, and whether a scrape is waiting for a fresh one.
pub struct Shared {
    latest: watch::Sender<Arc<str>>,
    wanted: AtomicBool,
}

impl Shared {
    pub fn new(text: String) -> Self {
        Self {
            latest: watch::Sender::new(Arc::from(text)),
            wanted: AtomicBool::new(false),
        }
    }

    /// Whether a scrape waits for a fresh picture (and so that it gets one now).
    pub fn wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::SeqCst)
    }

    /// The picture for waiting and later scrapes.
    pub fn publish(&self, text: String) {
        self.latest.send_replace(Arc::from(text));
    }

    /// A picture read after this call.
    async fn fresh(&self) -> Arc<str> {
        let mut rx = self.latest.subscribe();
        self.wanted.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(FRESH_WAIT, rx.changed()).await;
        let text = rx.borrow_and_update().clone();
        text
    }
}

/// Answers scrapes on `listener` until aborted.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of fds, say: wait a little instead of spinning.
                log::warn!("accepting a metrics connection: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &shared)).await;
        });
    }
}

/// Reads one request and answers it; the connection is closed after the answer.
async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let route = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end_of_head(&head) {
            break route(&head[..end]);
        }
        if head.len() > MAX_REQUEST_HEAD {
            break Route::TooLarge;
        }
    };
    let response = match route {
        Route::Metrics { body } => {
            let text = shared.fresh().await;
            response(
                "200 OK",
                metrics::CONTENT_TYPE,
                &[],
                body.then_some(text.as_bytes()),
                text.len(),
            )
        }
        other => {
            let (status, extra, text): (&str, &[&str], &str) = match other {
                Route::NotFound => ("404 Not Found", &[], "not found: metrics are at /metrics\n"),
                Route::MethodNotAllowed => (
                    "405 Method Not Allowed",
                    &["Allow: GET, HEAD"],
                    "use GET /metrics\n",
                ),
                Route::TooLarge => (
                    "431 Request Header Fields Too Large",
                    &[],
                    "request head too large\n",
                ),
                Route::BadRequest | Route::Metrics { .. } => {
                    ("400 Bad Request", &[], "bad request\n")
                }
            };
            let body = text.as_bytes();
            response(
                status,
                "text/plain; charset=utf-8",
                extra,
                Some(body),
                body.len(),
            )
        }
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (body) or `HEAD /metrics` (headers only).
    Metrics {
        body: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// The length of the request head up to its blank line (CRLF or bare LF), if complete.
fn find_end_of_head(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// Routes a request by its request line: `METHOD TARGET HTTP/1.x`.
fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { body: true },
        "HEAD" => Route::Metrics { body: false },
        _ => Route::MethodNotAllowed,
    }
}

/// An HTTP/1.1 response that closes the connection.
fn response(
    status: &str,
    content_type: &str,
    extra: &[&str],
    body: Option<&[u8]>,
    length: usize,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         Connection: close\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        let r = |text: &str| route(text.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x"),
            Route::Metrics { body: true }
        );
        assert_eq!(
            r("GET /metrics?name[]=x HTTP/1.0"),
            Route::Metrics { body: true }
        );
        assert_eq!(r("HEAD /metrics HTTP/1.1"), Route::Metrics { body: false });
        assert_eq!(r("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        for bad in [
            "",
            "GET",
            "GET /metrics",
            "GET metrics HTTP/1.1",
            "GET /metrics SPDY/3",
        ] {
            assert_eq!(r(bad), Route::BadRequest, "{bad:?}");
        }
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(
            find_end_of_head(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"),
            Some(20)
        );
        assert_eq!(find_end_of_head(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_end_of_head(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let out = response("200 OK", metrics::CONTENT_TYPE, &[], Some(b"x 1\n"), 4);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("Content-Length: 4\r\nConnection: close\r\n\r\nx 1\n"));
        let head_only = response("200 OK", metrics::CONTENT_TYPE, &[], None, 4);
        assert!(String::from_utf8(head_only).unwrap().ends_with("\r\n\r\n"));
    }
}
