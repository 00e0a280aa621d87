//! Prometheus metrics (OpenMetrics text, via the Prometheus project's
//! `prometheus-client` crate).
//!
//! Counted as things happen: registers, resolves by outcome, request
//! latency, requests that failed because the engine's server was
//! unavailable, and session ends by reason (from a store subscription of
//! its own, so reaper expiries are counted too). Read from the store at
//! scrape time: sessions stored, reaper lag, event backlog and misses. The
//! engine's round trip (`SessionStore::ping`) is measured by every
//! `/healthz` and every scrape.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sessiondb::{Event, SessionStore, UnsetReason};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResolveLabels {
    /// `isValid`, `restore`, `logout` or `data`.
    pub op: &'static str,
    /// `ok` or MAGE's reason string.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

/// 50 µs .. ~1.6 s, for request latencies and the engine's round trip.
fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    registers: Counter,
    resolves: Family<ResolveLabels, Counter>,
    ends: Family<ReasonLabels, Counter>,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    sessions: Gauge,
    reaper_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    event_streams: Gauge,
    event_backlog: Gauge,
    event_history: Gauge,
    events_missed: Counter,
    session_streams: Gauge,
    session_events_dropped: Counter,
    engine_ping: Histogram,
    engine_up: Gauge,
    engine_unavailable: Counter,
    connections: Gauge,
    connections_refused: Counter,
    connections_timed_out: Counter,
    accept_failures: Counter,
    /// Serialises scrapes, which turn store totals into counter increments.
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sessiondb");
        let m = Metrics {
            registers: Counter::default(),
            resolves: Family::default(),
            ends: Family::default(),
            requests: Family::new_with_constructor(latency_histogram),
            sessions: Gauge::default(),
            reaper_lag: Gauge::default(),
            event_streams: Gauge::default(),
            event_backlog: Gauge::default(),
            event_history: Gauge::default(),
            events_missed: Counter::default(),
            session_streams: Gauge::default(),
            session_events_dropped: Counter::default(),
            engine_ping: latency_histogram(),
            engine_up: Gauge::default(),
            engine_unavailable: Counter::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            connections_timed_out: Counter::default(),
            accept_failures: Counter::default(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "active_sessions",
            "Sessions stored (expired ones not yet reaped included)",
            m.sessions.clone(),
        );
        registry.register("registers", "Sessions registered", m.registers.clone());
        registry.register(
            "resolves",
            "Session keys checked, by operation and outcome (ok or MAGE's reason)",
            m.resolves.clone(),
        );
        registry.register(
            "expiries",
            "Sessions (or, for `rotated`, session keys) ended, by unset reason (custom reasons counted as `custom`)",
            m.ends.clone(),
        );
        registry.register(
            "reaper_lag_seconds",
            "How far past due the earliest unreaped session is (0 when none is due)",
            m.reaper_lag.clone(),
        );
        registry.register(
            "event_streams",
            "Open /v1/events streams",
            m.event_streams.clone(),
        );
        registry.register(
            "event_backlog",
            "Events in the server's history that open /v1/events streams have not sent yet",
            m.event_backlog.clone(),
        );
        registry.register(
            "event_history",
            "Events the server keeps for streams that resume with Last-Event-ID (--event-history, --event-history-age)",
            m.event_history.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not delivered to full subscriber channels (announced as session.lagged)",
            m.events_missed.clone(),
        );
        registry.register(
            "session_streams",
            "Open /v1/session/events streams (one per connected game client)",
            m.session_streams.clone(),
        );
        registry.register(
            "session_events_dropped",
            "Events not queued for /v1/session/events streams whose queue was full \
             (announced to them as session.lagged)",
            m.session_events_dropped.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency until the response head, by method, route and status",
            m.requests.clone(),
        );
        registry.register(
            "engine_ping_seconds",
            "Round trip to the storage engine (one PING on Redis, an open check on sled), \
             measured by each /healthz and each scrape",
            m.engine_ping.clone(),
        );
        registry.register(
            "engine_up",
            "Whether the storage engine answered the last ping (1) or not (0)",
            m.engine_up.clone(),
        );
        registry.register(
            "engine_unavailable",
            "Requests that failed because the storage engine's server (Redis / Valkey) could \
             not be reached or did not answer in time (503 unavailable)",
            m.engine_unavailable.clone(),
        );
        registry.register(
            "connections",
            "Open HTTP connections (event streams included)",
            m.connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 tooManyConnections and closed: the server was at \
             --max-connections",
            m.connections_refused.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed because a request's head did not arrive within --header-timeout \
             (slow clients, and idle keep-alive connections)",
            m.connections_timed_out.clone(),
        );
        registry.register(
            "accept_failures",
            "Connections the server could not accept (such as at the open-file limit)",
            m.accept_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Open HTTP connections.
    pub fn connections(&self) -> &Gauge {
        &self.connections
    }

    /// A connection was refused at the connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A connection was closed for not sending a request in time.
    pub fn connection_timed_out(&self) {
        self.connections_timed_out.inc();
    }

    /// Accepting a connection failed.
    pub fn accept_failed(&self) {
        self.accept_failures.inc();
    }

    pub fn registered(&self) {
        self.registers.inc();
    }

    pub fn resolved(&self, op: &'static str, outcome: &'static str) {
        self.resolves
            .get_or_create(&ResolveLabels { op, outcome })
            .inc();
    }

    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .observe(seconds);
    }

    /// A request failed with `Error::Unavailable`.
    pub fn engine_unavailable(&self) {
        self.engine_unavailable.inc();
    }

    /// Records the outcome of a `SessionStore::ping`.
    pub fn pinged(&self, outcome: &sessiondb::Result<Duration>) {
        match outcome {
            Ok(took) => {
                self.engine_ping.observe(took.as_secs_f64());
                self.engine_up.set(1);
            }
            Err(_) => {
                self.engine_up.set(0);
            }
        }
    }

    pub fn event_streams(&self) -> &Gauge {
        &self.event_streams
    }

    pub fn session_streams(&self) -> &Gauge {
        &self.session_streams
    }

    /// `n` events were not queued for a full per-session stream.
    pub fn session_events_dropped(&self, n: u64) {
        self.session_events_dropped.inc_by(n);
    }

    fn ended(&self, reason: &UnsetReason) {
        let reason = match reason {
            UnsetReason::Expired => "expired",
            UnsetReason::LoggedOut => "loggedOut",
            UnsetReason::Replaced => "replaced",
            UnsetReason::Reassigned => "reassigned",
            UnsetReason::Rotated => "rotated",
            _ => "custom",
        };
        self.ends.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many events the server's history holds now.
    pub fn history_size(&self, events: usize) {
        self.event_history
            .set(i64::try_from(events).unwrap_or(i64::MAX));
    }

    /// Reads the store's figures and renders every metric. Blocks on the
    /// store: call it off the async runtime.
    pub fn render(&self, store: &SessionStore, backlog: i64, now_ms: u64) -> String {
        let _one_at_a_time = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pinged = store.ping();
        self.pinged(&pinged);
        if let Err(e) = pinged {
            // The figures below would each wait out the engine's timeout.
            tracing::warn!(error = %e, "metrics: the store does not answer; store figures left as they were");
            self.event_backlog.set(backlog);
            return self.encode();
        }
        match store.stats() {
            Ok(stats) => {
                self.sessions
                    .set(i64::try_from(stats.sessions).unwrap_or(i64::MAX));
                let missed = stats.events_missed;
                let counted = self.events_missed.get();
                if missed > counted {
                    self.events_missed.inc_by(missed - counted);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: reading store stats failed"),
        }
        match store.earliest_expiry() {
            Ok(earliest) => {
                let lag_ms = earliest.map_or(0, |at| now_ms.saturating_sub(at));
                self.reaper_lag.set(lag_ms as f64 / 1000.0);
            }
            Err(e) => tracing::warn!(error = %e, "metrics: reading the earliest expiry failed"),
        }
        self.event_backlog.set(backlog);
        self.encode()
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// Counts session ends by reason from a subscription of its own, until
/// `stop` is set. The thread is named `sessiondb-metrics`.
pub fn spawn_event_counter(
    events: Receiver<Event>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sessiondb-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match events.recv_timeout(Duration::from_millis(200)) {
                    Ok(Event::Unset { reason, .. }) => metrics.ended(&reason),
                    Ok(Event::Lagged { missed }) => {
                        tracing::warn!(missed, "metrics missed session events; counts are low");
                    }
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
}
