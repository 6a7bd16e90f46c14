//! The HTTP/1.1 server loop: hyper's connection, with the timeouts and the connection limit that
//! `axum::serve` does not offer, so slow or silent clients cannot hold file descriptors.
//!
//! * **Header-read timeout** ([`HttpConfig::header_read_timeout_ms`]): hyper's. Its clock starts
//!   when a connection opens and again each time a keep-alive connection goes idle after a
//!   response (hyper 1.x, `proto::h1::conn::State::idle`), and stops when a whole header block
//!   has been parsed: a client that trickles a header, or sends nothing, is closed when it runs
//!   out. It therefore also bounds the wait for the next request on a keep-alive connection.
//! * **Idle timeout** ([`HttpConfig::idle_timeout_ms`]): a connection on which no byte moves in
//!   either direction for this long while the server waits on it (to read a request or its body,
//!   or for the client to take the response) is closed. It must exceed the backend timeout and the
//!   live stream's keep-alive ([`crate::api::STREAM_KEEP_ALIVE`]), which the configuration checks.
//! * **Connection limit** ([`HttpConfig::max_connections`]): when that many connections are open,
//!   the loop stops accepting until one closes; new clients wait in the kernel's listen backlog
//!   (and are refused by the kernel once it is full), they are never accepted and dropped.
//! * **Graceful shutdown**, as `axum::serve` does it: on the token the listener closes, every
//!   connection is told to finish (idle ones close at once, requests in flight complete), and
//!   [`serve`] returns when the last one has closed; the caller bounds that wait.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::body::{BodyLimits, MAX_API_BODY_BYTES};

/// Pause after a failed `accept` (out of file descriptors, most likely) before the next one, so
/// the loop does not spin while connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// File descriptors kept for everything that is not a client connection (database pools, log
/// segments, the cache's sockets), when comparing the connection limit with the process's limit.
const RESERVED_FILE_DESCRIPTORS: u64 = 256;

/// The `[http]` section: how long and how many clients may hold the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest a client may take to send a request's header block, counted from the moment the
    /// connection opens or went idle after a response.
    pub header_read_timeout_ms: u64,
    /// Longest a request body may take to arrive (408 `request_timeout` past it).
    pub body_read_timeout_ms: u64,
    /// A connection on which nothing moves for this long is closed.
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; further clients wait until one closes.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 4_096,
        }
    }
}

impl HttpConfig {
    /// Checks the section; `backend_timeout` is the deadline of a request's backend work, which
    /// the idle timeout must outlast (a handler waiting on a backend moves no byte).
    pub fn validate(&self, backend_timeout: Duration) -> Result<(), String> {
        if self.header_read_timeout_ms == 0 || self.body_read_timeout_ms == 0 {
            return Err(
                "http.header_read_timeout_ms and http.body_read_timeout_ms must be > 0".into(),
            );
        }
        if self.max_connections == 0 {
            return Err("http.max_connections must be > 0".into());
        }
        let floor = backend_timeout
            .max(crate::api::STREAM_KEEP_ALIVE)
            .max(self.body_read_timeout());
        if self.idle_timeout() <= floor {
            return Err(format!(
                "http.idle_timeout_ms must exceed {} ms: the backend timeout, the live stream's \
                 keep-alive and http.body_read_timeout_ms",
                floor.as_millis()
            ));
        }
        Ok(())
    }

    /// [`HttpConfig::header_read_timeout_ms`].
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// [`HttpConfig::body_read_timeout_ms`].
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// [`HttpConfig::idle_timeout_ms`].
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The body limits of today's API routers ([`MAX_API_BODY_BYTES`], read within
    /// [`HttpConfig::body_read_timeout_ms`]).
    pub fn api_body_limits(&self) -> BodyLimits {
        BodyLimits::new(MAX_API_BODY_BYTES, self.body_read_timeout())
    }
}

/// Raises the process's open-file soft limit to its hard limit and returns the limit now in
/// force, warning when it leaves too little room for `max_connections`.
pub fn raise_open_file_limit(max_connections: usize) -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = (max_connections as u64).saturating_add(RESERVED_FILE_DESCRIPTORS);
            if limit < needed {
                tracing::warn!(
                    open_files = limit,
                    max_connections,
                    reserved = RESERVED_FILE_DESCRIPTORS,
                    "the open-file limit leaves less than `reserved` descriptors beside \
                     http.max_connections; accepting may fail before the connection limit"
                );
            } else {
                tracing::info!(open_files = limit, max_connections, "open-file limit");
            }
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
            None
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    raise_open_file_limit(config.max_connections);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let mut connections = JoinSet::new();
    let mut full = false;
    loop {
        if slots.available_permits() == 0 && !full {
            tracing::warn!(
                max_connections = config.max_connections,
                "connection limit reached; new clients wait until a connection closes"
            );
        }
        full = slots.available_permits() == 0;
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let router = router.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, router, &config, &shutdown).await;
            drop(slot);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    config: &HttpConfig,
    shutdown: &CancellationToken,
) {
    // Small JSON answers go out at once rather than waiting for Nagle.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let io = TokioIo::new(IdleTimeout::new(stream, config.idle_timeout()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .keep_alive(true);
    let connection = builder.serve_connection(io, TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let outcome = tokio::select! {
        outcome = connection.as_mut() => outcome,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = outcome {
        // A client that went away or ran out of time: its business, not an error of ours.
        tracing::debug!(error = %err, "connection ended");
    }
}

/// A stream that fails with `TimedOut` once no byte has moved in either direction for
/// `timeout` while it is waited on.
///
/// Bytes moving only record the time; the timer is touched when it fires (then re-armed at the
/// real deadline if bytes moved meanwhile), not on every read and write: resetting a Tokio timer
/// takes the timer driver's lock, which cost a tenth of the throughput of small requests.
struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    last_moved: Instant,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            last_moved: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn moved(&mut self) {
        self.last_moved = Instant::now();
    }

    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        loop {
            match self.deadline.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let idle_until = self.last_moved + self.timeout;
                    if idle_until <= Instant::now() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("nothing moved on the connection for {:?}", self.timeout),
                        )));
                    }
                    // Bytes moved since the timer was set: wait until the real deadline.
                    self.deadline.as_mut().reset(idle_until);
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(outcome) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => this.pending(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(outcome) => {
                if matches!(outcome, Ok(written) if written > 0) {
                    this.moved();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(outcome) => {
                if matches!(outcome, Ok(written) if written > 0) {
                    this.moved();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(outcome) => Poll::Ready(outcome),
            Poll::Pending => this.pending(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
