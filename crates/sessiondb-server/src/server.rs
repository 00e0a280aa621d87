//! The HTTP service. [`run`] serves a store on a bound listener until a
//! shutdown future completes, then finishes the requests in flight, ends
//! the event streams and closes the store cleanly. [`main`] is `sessiondb
//! serve`: it resolves the settings, binds `--listen`, opens the store and
//! calls `run` with a future that waits for SIGINT or SIGTERM.

use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use sessiondb::SessionStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::api::router;
use crate::auth::{is_loopback, AdminPolicy};
use crate::cli::ServeArgs;
use crate::connections::{self, Limits};
use crate::cors::CorsPolicy;
use crate::error::{AnyResult, ApiError, ErrorCode};
use crate::events::Streams;
use crate::location::{open_store, Redactor};
use crate::metrics::{spawn_event_counter, Metrics};
use crate::session_events::{spawn_dispatcher, SessionStreams, STREAM_CAPACITY};
use crate::settings::Settings;
use crate::state::AppState;

/// How long shutdown waits for requests in flight before closing the store
/// anyway.
const GRACE: Duration = Duration::from_secs(30);

/// How [`run_with`] serves: who may use the admin routes, which browser
/// origins may call the session routes, how many events a
/// `/v1/session/events` stream queues, and what a connection may hold.
#[derive(Clone)]
pub struct Options {
    admin: AdminPolicy,
    cors: CorsPolicy,
    session_stream_capacity: usize,
    limits: Limits,
}

impl Options {
    /// `admin` decides who may use the admin routes and `/metrics`; no
    /// browser origin is allowed (no CORS headers), each per-session
    /// stream queues 64 events, a request's head must arrive within 10 s
    /// and at most 10,000 connections are open at once.
    pub fn new(admin: AdminPolicy) -> Options {
        Options {
            admin,
            cors: CorsPolicy::default(),
            session_stream_capacity: STREAM_CAPACITY,
            limits: Limits::default(),
        }
    }

    /// How long a connection may take to send a request's head, counted
    /// from when the server is ready for it (so it also closes idle
    /// keep-alive connections), and then its body; at least 1 ms
    /// [default: 10 s]. Event streams in progress are not affected.
    #[must_use]
    pub fn header_timeout(mut self, timeout: Duration) -> Options {
        self.limits.header_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How many connections may be open at once (event streams included);
    /// beyond that new ones are answered `503 tooManyConnections` and
    /// closed; at least 1 [default: 10,000].
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Options {
        self.limits.max_connections = connections.max(1);
        self
    }

    /// The browser origins allowed to call the session routes (CORS).
    #[must_use]
    pub fn cors(mut self, cors: CorsPolicy) -> Options {
        self.cors = cors;
        self
    }

    /// How many events a `/v1/session/events` stream queues for a slow
    /// client before it counts them as missed (`session.lagged`) instead;
    /// at least 1 [default: 64].
    #[must_use]
    pub fn session_stream_capacity(mut self, events: usize) -> Options {
        self.session_stream_capacity = events.max(1);
        self
    }
}

/// Serves the HTTP API v1 for `store` on `listener` until `shutdown`
/// completes: [`run_with`] with `Options::new(admin)`.
///
/// # Errors
/// As [`run_with`].
pub async fn run(
    listener: TcpListener,
    store: SessionStore,
    admin: AdminPolicy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> AnyResult<()> {
    run_with(listener, store, Options::new(admin), shutdown).await
}

/// Serves the HTTP API v1 for `store` on `listener` until `shutdown`
/// completes.
///
/// Then it stops accepting connections, lets the requests in flight finish
/// (at most 30 s), ends open event streams and closes `store`, so that the
/// next open reports a clean shutdown. `options` decide who may use the
/// admin routes and `/metrics` and which browser origins may call the
/// session routes. The caller binds the listener (port 0 picks a free one;
/// `listener.local_addr()` tells which) and opens the store; `run_with`
/// owns both from then on. Call it inside a tokio runtime with its I/O and
/// time drivers enabled; store calls run on the runtime's blocking pool.
///
/// # Errors
/// A background thread (metrics, session events) could not be started,
/// serving failed, or closing the store failed (a background worker of the
/// store had panicked: the store is then not marked clean).
pub async fn run_with(
    listener: TcpListener,
    store: SessionStore,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> AnyResult<()> {
    let Options {
        admin,
        cors,
        session_stream_capacity,
        limits,
    } = options;
    let address = listener.local_addr()?;
    if !admin.has_token() && !is_loopback(address.ip()) {
        tracing::warn!(
            %address,
            "no admin token configured: admin routes and /metrics answer loopback clients only"
        );
    }

    let metrics = Arc::new(Metrics::new());
    let stop_counting = Arc::new(AtomicBool::new(false));
    let counter = spawn_event_counter(store.subscribe(), metrics.clone(), stop_counting.clone())?;
    let session_streams = Arc::new(SessionStreams::new(
        session_stream_capacity,
        metrics.clone(),
    ));
    let dispatcher = spawn_dispatcher(
        store.subscribe(),
        session_streams.clone(),
        stop_counting.clone(),
    )?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        store: store.clone(),
        admin,
        metrics: metrics.clone(),
        streams: Arc::new(Streams::default()),
        session_streams,
        cors,
        shutdown: shutdown_rx.clone(),
    };
    let app = router(state).layer(CatchPanicLayer::custom(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the request failed inside the server (a bug in sessiondb); it has been logged",
        )
        .into_response()
    }));

    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = shutdown_tx.send(true);
    });
    let server = connections::serve(listener, app, limits, metrics, shutdown_rx.clone());
    let mut started = shutdown_rx;
    let deadline = async move {
        let _ = started.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        () = server => {}
        () = deadline => {
            tracing::warn!("requests still in flight after {GRACE:?}; closing the store anyway");
        }
    }

    // The store is closed whatever happened above: a failed listener must
    // not leave it to be recovered at the next open.
    stop_counting.store(true, Ordering::Relaxed);
    let closed = tokio::task::spawn_blocking(move || {
        let _ = counter.join();
        let _ = dispatcher.join();
        store.close()
    })
    .await?;
    closed?;
    tracing::info!("store closed cleanly");
    Ok(())
}

/// Log lines to stderr, each with the Redis URL's password hidden, whoever
/// wrote it (the library's messages included).
struct RedactedStderr(Arc<Redactor>);

/// One log line, written to stderr (redacted) when dropped.
struct RedactedLine {
    redactor: Arc<Redactor>,
    line: Vec<u8>,
}

impl std::io::Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        let text = self.redactor.text(&String::from_utf8_lossy(&self.line));
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for RedactedStderr {
    type Writer = RedactedLine;

    fn make_writer(&'a self) -> RedactedLine {
        RedactedLine {
            redactor: self.0.clone(),
            line: Vec::new(),
        }
    }
}

fn init_logging(filter: &str, redactor: Redactor) -> AnyResult<()> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr(Arc::new(redactor)))
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| format!("setting up logging: {e}"))?;
    Ok(())
}

/// `sessiondb serve`: serves until SIGINT or SIGTERM.
pub fn main(args: ServeArgs) -> AnyResult<ExitCode> {
    let settings = Settings::resolve(args)?;
    // A Redis URL may carry a password: no message shows it.
    let redactor = Redactor::for_store(&settings.store);
    serve(settings, redactor.clone()).map_err(|e| redactor.error(e))
}

fn serve(settings: Settings, redactor: Redactor) -> AnyResult<ExitCode> {
    init_logging(&settings.log_level, redactor)?;
    tracing::debug!(?settings, "settings");
    for note in &settings.notes {
        tracing::warn!("{note}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sessiondb-http")
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let outcome = runtime.block_on(serve_until_signal(settings));
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome.map(|()| ExitCode::SUCCESS)
}

/// Binds `--listen`, opens the store, says `listening on <address>` on
/// stdout and runs the service until a signal.
async fn serve_until_signal(settings: Settings) -> AnyResult<()> {
    let listener = TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    // From here on a signal stops the server gracefully, even one that
    // arrives while the store is still opening.
    let signalled = shutdown_signal()?;
    let config = settings.store.clone();
    let store = tokio::task::spawn_blocking(move || open_store(config)).await??;
    let report = store.recovery_report();
    tracing::info!(
        engine = settings.store.location().engine(),
        store = settings.store.describe(),
        created = report.created,
        clean_shutdown = report.clean_shutdown,
        recovered = ?report.check,
        checking = report.checking,
        millis = report.duration.as_millis() as u64,
        "store open"
    );
    if report.checking {
        // Serving already; say what the check after the crash found when it ends.
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let report = store.wait_for_recovery();
            tracing::info!(
                check = ?report.check,
                error = ?report.check_error,
                "the check after an unclean shutdown finished"
            );
        });
    }

    println!("listening on {address}");
    {
        use std::io::Write as _;
        std::io::stdout().flush()?;
    }
    tracing::info!(%address, "listening");

    let options = Options::new(AdminPolicy::new(settings.admin_token.as_deref()))
        .cors(settings.cors.clone())
        .header_timeout(settings.header_timeout)
        .max_connections(settings.max_connections);
    run_with(listener, store, options, async move {
        let signal = signalled.await;
        tracing::info!(signal, "signal received");
    })
    .await
}

/// Starts listening for SIGINT and SIGTERM at once, so that a signal sent
/// right after the `listening on` line is not lost (or, before a handler is
/// installed, fatal); the future completes with the signal's name.
#[cfg(unix)]
fn shutdown_signal() -> AnyResult<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| format!("cannot listen for {name}: {e}"))
    };
    let mut interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> AnyResult<impl Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}
