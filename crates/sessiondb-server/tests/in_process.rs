//! The server run in process through `sessiondb_server::run`, as an
//! embedding program or a test would: a listener bound to 127.0.0.1:0, a
//! store opened by the caller, real HTTP requests, then the caller's
//! shutdown future: `run` returns Ok, open event streams end, the port stops
//! answering and the store reopens clean.

mod common;

use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sessiondb::Config;
use sessiondb_server::{run, AdminPolicy};
use tokio::sync::oneshot;

const TOKEN: &str = "in-process-admin-token";

/// Waits for the stream behind `rx` to end, failing after `limit`.
fn wait_until_ended(rx: &std::sync::mpsc::Receiver<Sse>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => panic!("the event stream did not end in {limit:?}"),
        }
    }
}

#[test]
fn run_serves_until_its_shutdown_future_then_closes_the_store_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (runtime, listener, addr) = loopback_runtime();
    assert_ne!(addr.port(), 0);
    let base = format!("http://{addr}");
    let url = |path: &str| format!("{base}{path}");

    let store = open_with(Config::new(&data_dir));
    assert!(store.recovery_report().created);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = runtime.spawn(run(
        listener,
        store,
        AdminPolicy::new(Some(TOKEN)),
        async move {
            // A dropped sender (a failed test) also stops the server.
            let _ = stopped.await;
        },
    ));

    assert_eq!(get(&url("/healthz"), None).json(), json!({"status": "ok"}));
    // The admin policy given to `run` applies.
    post(&url("/v1/sessions"), None, r#"{"actorId":"p1"}"#).assert_error(401, "unauthorized");
    let (status, events) = events_at(&url("/v1/events"), Some(TOKEN));
    assert_eq!(status, 200);

    // Register, then restore with the key: the same session comes back.
    let registered = post(
        &url("/v1/sessions"),
        Some(TOKEN),
        r#"{"actorId":"p1","language":"de","data":{"gold":5}}"#,
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    let registered = registered.json();
    let key = key_of(&registered);
    assert!(key.starts_with("p1:"), "{key}");
    let restored = post(
        &url("/v1/session/restore"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(restored.status, 200, "{}", restored.body);
    let restored = restored.json();
    assert_eq!(restored["key"], key.as_str());
    assert_eq!(restored["id"], registered["id"]);
    assert_eq!(restored["actorId"], "p1");
    assert_eq!(restored["language"], "de");
    assert_eq!(restored["data"], json!({"gold": 5}));
    let first = events.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first.event, "session.set");
    assert_eq!(first.data["id"], registered["id"]);

    stop.send(()).unwrap();
    let outcome = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), server).await })
        .expect("run did not return within 60 s of the shutdown future completing")
        .expect("the run task panicked");
    if let Err(e) = outcome {
        panic!("run failed: {e}");
    }
    // The open event stream ended with the server, and the port is closed.
    wait_until_ended(&events, Duration::from_secs(30));
    assert!(
        try_post(&url("/v1/session/isValid"), Some(&key), "").is_err(),
        "the server still answers after run returned"
    );
    runtime.shutdown_timeout(Duration::from_secs(10));

    let store = open_with(Config::new(&data_dir).reaper_thread(false));
    assert!(
        store.recovery_report().clean_shutdown,
        "{:?}",
        store.recovery_report()
    );
    let session = store.resolve(&key).unwrap();
    assert_eq!(session.id(), registered["id"]);
    store.close().unwrap();
}
