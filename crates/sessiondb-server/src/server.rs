//! `sessiondb serve`: opens the store, serves the API until SIGINT/SIGTERM,
//! then finishes the requests in flight and closes the store cleanly.

use std::io::IsTerminal;
use std::net::SocketAddr;
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
use tracing_subscriber::EnvFilter;

use crate::api::router;
use crate::auth::{is_loopback, AdminPolicy};
use crate::cli::ServeArgs;
use crate::error::{AnyResult, ApiError};
use crate::events::Streams;
use crate::metrics::{spawn_event_counter, Metrics};
use crate::settings::Settings;
use crate::state::AppState;

/// How long shutdown waits for requests in flight before closing the store
/// anyway.
const GRACE: Duration = Duration::from_secs(30);

fn init_logging(filter: &str) -> AnyResult<()> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("--log-level {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| format!("setting up logging: {e}"))?;
    Ok(())
}

pub fn main(args: ServeArgs) -> AnyResult<ExitCode> {
    let settings = Settings::resolve(args)?;
    init_logging(&settings.log_level)?;
    tracing::debug!(?settings, "settings");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sessiondb-http")
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let outcome = runtime.block_on(run(settings));
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome.map(|()| ExitCode::SUCCESS)
}

async fn run(settings: Settings) -> AnyResult<()> {
    let listener = TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener.local_addr()?;
    let config = settings.store_config();
    let store = tokio::task::spawn_blocking(move || SessionStore::open(config)).await??;
    let report = store.recovery_report();
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        created = report.created,
        clean_shutdown = report.clean_shutdown,
        recovered = ?report.check,
        millis = report.duration.as_millis() as u64,
        "store open"
    );
    if settings.admin_token.is_none() && !is_loopback(address.ip()) {
        tracing::warn!(
            %address,
            "no admin token configured: admin routes and /metrics answer loopback clients only"
        );
    }

    let metrics = Arc::new(Metrics::new());
    let stop_counting = Arc::new(AtomicBool::new(false));
    let counter = spawn_event_counter(store.subscribe(), metrics.clone(), stop_counting.clone())?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        store: store.clone(),
        admin: AdminPolicy::new(settings.admin_token.as_deref()),
        metrics,
        streams: Arc::new(Streams::default()),
        shutdown: shutdown_rx.clone(),
    };
    let app = router(state).layer(CatchPanicLayer::custom(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed inside the server (a bug in sessiondb); it has been logged",
        )
        .into_response()
    }));

    println!("listening on {address}");
    {
        use std::io::Write as _;
        std::io::stdout().flush()?;
    }
    tracing::info!(%address, durability = ?settings.durability, ttl = settings.ttl, "listening");

    let signalled = async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutting down: finishing requests in flight");
        let _ = shutdown_tx.send(true);
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signalled);
    let mut started = shutdown_rx;
    let deadline = async move {
        let _ = started.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!("requests still in flight after {GRACE:?}; closing the store anyway"),
    }

    stop_counting.store(true, Ordering::Relaxed);
    let closed = tokio::task::spawn_blocking(move || {
        let _ = counter.join();
        store.close()
    })
    .await?;
    closed?;
    tracing::info!("store closed cleanly");
    Ok(())
}

/// Waits for SIGINT or SIGTERM; returns the signal's name.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    Ok(()) = tokio::signal::ctrl_c() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
