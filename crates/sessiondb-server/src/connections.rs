//! Accepting connections, and what a connection may hold.
//!
//! `axum::serve` accepts every connection and keeps it as long as the
//! client likes: 200 connections that sent half a request's head and
//! stopped were all still open after 40 s. Here each connection is served
//! by hyper's HTTP/1 connection with a timer, so that:
//!
//! - **a request's head must arrive within the header timeout**, counted
//!   from when the server is ready to read it. hyper starts that clock as
//!   soon as a connection waits for a request, the next one on a kept-alive
//!   connection included, so the same limit closes **idle keep-alive
//!   connections** and connections that never send anything. (A body must
//!   arrive within it too: the `Body` extractor's deadline.) A response in
//!   progress is not waiting for a head, so the event streams of
//!   `/v1/events` and `/v1/session/events` stay open as long as the client
//!   reads them.
//! - **at most `max_connections` are open at once**. Beyond that a new
//!   connection is answered `503 tooManyConnections` (with `Retry-After`)
//!   and closed, counted in `sessiondb_connections_refused_total`, and a
//!   warning is logged (at most every 10 s, with the count since the last).
//!
//! On shutdown the loop stops accepting, every connection finishes the
//! request in flight and closes, and [`serve`] returns once all are closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tower::ServiceExt;

use crate::error::{ErrorBody, ErrorCode};
use crate::metrics::Metrics;

/// How long a request's head (and then its body) may take [default].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How many connections may be open at once [default].
pub const MAX_CONNECTIONS: usize = 10_000;

/// How often the "connection limit reached" warning may be logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Refusals being written at once; past this a refused connection is
/// closed without an answer.
const MAX_REFUSING: usize = 64;

/// What a connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: HEADER_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// A request extension: how long the request's body may take to arrive
/// (the `Body` extractor answers `408 requestTimeout` after that).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// The open connections, for shutdown.
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// Serves `app` on `listener` within `limits` until `stopping` turns true,
/// then waits for the open connections to close.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = Arc::new(Open {
        count: AtomicUsize::new(0),
        closed: Notify::new(),
    });
    let refusing = Arc::new(AtomicUsize::new(0));
    let refusals = Refusals::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(e) => {
                // Out of file descriptors, typically: wait for some to close.
                tracing::error!(error = %e, "accepting a connection failed (at the open-file limit, raise `ulimit -n` or lower --max-connections)");
                metrics.accept_failed();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_refused();
            refusals.note(limits.max_connections);
            if refusing.fetch_add(1, Ordering::Relaxed) < MAX_REFUSING {
                let refusing = refusing.clone();
                tokio::spawn(async move {
                    refuse(stream).await;
                    refusing.fetch_sub(1, Ordering::Relaxed);
                });
            } else {
                refusing.fetch_sub(1, Ordering::Relaxed);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        open.count.fetch_add(1, Ordering::AcqRel);
        metrics.connections().inc();
        let (app, metrics, open, stopping) =
            (app.clone(), metrics.clone(), open.clone(), stopping.clone());
        tokio::spawn(async move {
            connection(stream, peer, app, limits, &metrics, stopping).await;
            metrics.connections().dec();
            drop(permit);
            if open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                open.closed.notify_waiters();
            }
        });
    }
    drop(listener);
    loop {
        let closed = open.closed.notified();
        if open.count.load(Ordering::Acquire) == 0 {
            return;
        }
        closed.await;
    }
}

/// Serves one connection until it closes, or until shutdown lets its
/// request in flight finish.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    metrics: &Metrics,
    mut stopping: watch::Receiver<bool>,
) {
    let body_timeout = BodyTimeout(limits.header_timeout);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(body_timeout);
        let app = app.clone();
        async move {
            // The router answers every request (errors included) itself.
            let response = match app.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let outcome = tokio::select! {
        outcome = conn.as_mut() => outcome,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = outcome {
        if e.is_timeout() {
            metrics.connection_timed_out();
            tracing::debug!(%peer, "closed a connection that did not send a request in time");
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Answers a connection over the limit `503 tooManyConnections` and closes
/// it, reading (and dropping) what the client sent meanwhile for a moment,
/// so that the client gets to read the answer.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::to_string(&ErrorBody {
        error: ErrorCode::TooManyConnections,
        message: "the server is at its connection limit (--max-connections); retry shortly"
            .to_owned(),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(250), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// Logs the connection limit biting, at most every [`WARN_EVERY`].
#[derive(Default)]
struct Refusals {
    since_last_warning: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Refusals {
    fn note(&self, limit: usize) {
        let count = self.since_last_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            self.since_last_warning.store(0, Ordering::Relaxed);
            tracing::warn!(
                limit,
                refused = count,
                "connection limit reached: refusing new connections with 503 tooManyConnections \
                 (raise --max-connections, or look for clients that hold connections open)"
            );
        }
    }
}
