//! The HTTP server the simulators share (the Cloud API, the Robot API, the download mirror):
//! one accept loop, and the bounds that keep a simulator's memory flat whatever its clients do.
//!
//! - **Headers in time**: a connection that has not sent a request's headers within
//!   [`Limits::header_timeout`] is closed, so half-open connections do not pile up.
//! - **Connections bounded**: at most [`Limits::max_connections`] are served at once; more wait
//!   in the kernel's backlog until one ends.
//! - **Bodies bounded, and read last**: a handler checks its client before it reads a body, and
//!   [`read_body`] refuses one past [`Limits::max_body_bytes`] (by `Content-Length`, before
//!   reading, or while reading) so the handler answers 413.
//! - **A bounded request log** ([`RequestLog`]): a ring of the latest requests, each record
//!   bounded too.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// What one client may make a simulator hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body read; a larger one is answered 413. Default 1 MiB: the largest
    /// real requests (a server with cloud-init user data, at most 32 KiB) are far smaller.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers. Default 10 s, far more than a
    /// client on loopback needs.
    pub header_timeout: Duration,
    /// Connections served at once. Default 512: a build opens a handful, a test a few dozen.
    pub max_connections: usize,
    /// Requests kept in the request log, the latest ones. Default 10,000: a whole build makes a
    /// few hundred.
    pub request_log: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            header_timeout: Duration::from_secs(10),
            max_connections: 512,
            request_log: 10_000,
        }
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until the returned task is aborted (which
/// ends its connections too). A handler's `Err` drops the connection without an answer.
pub fn serve<H, F, E>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
) -> tokio::task::JoinHandle<()>
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        // Connections end with the acceptor: dropping the set aborts them.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let Ok((stream, peer)) = listener.accept().await else {
                // Out of file descriptors or similar: wait a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            while connections.try_join_next().is_some() {}
            let handler = handler.clone();
            connections.spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| handler(peer, request));
                // A client going away mid-request is not the simulator's problem.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Returned by a handler to make hyper close the connection without an answer (an injected
/// fault, or a client that broke off its body).
#[derive(Debug)]
pub(crate) struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("connection dropped")
    }
}

impl std::error::Error for DropConnection {}

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the limit: answer 413.
    TooLarge,
    /// The client went away or sent garbage: drop the connection.
    Failed,
}

/// Reads a request's body, at most `limit` bytes. Call it only after the client is known.
pub async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Failed),
    }
}

/// The most of a path, or of a form value, a request log record keeps.
pub const LOGGED_TEXT_BYTES: usize = 512;

/// `text` cut to [`LOGGED_TEXT_BYTES`] at a character boundary, marked with `…` when cut.
pub fn for_log(text: &str) -> String {
    if text.len() <= LOGGED_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = LOGGED_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The latest requests, at most a fixed number: older ones are dropped and counted.
#[derive(Debug, Clone)]
pub struct RequestLog<T> {
    records: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T: Clone> RequestLog<T> {
    /// An empty log that keeps the latest `capacity` records.
    pub fn new(capacity: usize) -> RequestLog<T> {
        RequestLog {
            records: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Adds a record, dropping the oldest when full.
    pub fn push(&mut self, record: T) {
        if self.capacity == 0 {
            self.dropped += 1;
            return;
        }
        if self.records.len() == self.capacity {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(record);
    }

    /// The records kept, oldest first.
    pub fn to_vec(&self) -> Vec<T> {
        self.records.iter().cloned().collect()
    }

    /// How many records were dropped to stay within the capacity.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_latest() {
        let mut log = RequestLog::new(2);
        for number in 1..=5 {
            log.push(number);
        }
        assert_eq!(log.to_vec(), vec![4, 5]);
        assert_eq!(log.dropped(), 3);
        assert_eq!(for_log(&"é".repeat(400)).len(), 512 + "…".len());
    }
}
