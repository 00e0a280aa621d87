//! The server's life: graceful shutdown leaves a clean store, kill -9 in
//! immediate mode loses nothing acknowledged, and data written through the
//! HTTP API reads back equal through the library and the other way round.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde::Serialize;
use serde_json::{json, Value};
use sessiondb::{Config, Data, SessionStore};

fn open_store(dir: &std::path::Path) -> SessionStore {
    open_with(Config::new(dir).reaper_thread(false))
}

/// Registers sessions from several threads until told to stop or the
/// server goes away; returns the keys whose register was acknowledged.
fn load(base: &str, threads: usize, stop: &AtomicBool, with_data: bool) -> Vec<(String, u64)> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut acknowledged = Vec::new();
                    for i in 0..2_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let body = json!({ "actorId": format!("w{t}-{i}") }).to_string();
                        let Ok(r) = try_post(&format!("{base}/v1/sessions"), None, &body) else {
                            break;
                        };
                        assert_eq!(r.status, 201, "no answer but success: {}", r.body);
                        let key = key_of(&r.json());
                        if with_data {
                            let url = format!("{base}/v1/session/data/n");
                            match try_put(&url, Some(&key), &i.to_string()) {
                                Ok(r) => {
                                    assert_eq!(r.status, 204, "{}", r.body);
                                    acknowledged.push((key, i));
                                }
                                Err(_) => {
                                    // The register was acknowledged, the
                                    // data write was not.
                                    acknowledged.push((key, u64::MAX));
                                    break;
                                }
                            }
                        } else {
                            acknowledged.push((key, i));
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    })
}

#[test]
fn sigterm_finishes_requests_in_flight_and_leaves_a_clean_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // An open event stream must not hold shutdown up.
    let (_, events) = events(&server, None);
    let stop = AtomicBool::new(false);
    let base = server.url("");
    let data_dir = server.data_dir.clone();
    let (status, acknowledged) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&base, 3, &stop, false));
        std::thread::sleep(Duration::from_millis(700));
        let status = server.terminate();
        (status, loader.join().expect("loader"))
    });
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(!acknowledged.is_empty());
    // The stream ended with the server.
    let started = std::time::Instant::now();
    loop {
        match events.recv_timeout(Duration::from_secs(10)) {
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(30)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("the event stream did not end: {e}"),
        }
    }

    let store = open_store(&data_dir);
    assert!(
        store.recovery_report().clean_shutdown,
        "{:?}",
        store.recovery_report()
    );
    assert!(store.check().unwrap().is_healthy());
    for (key, _) in &acknowledged {
        store.is_valid(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    assert_eq!(store.stats().unwrap().sessions, acknowledged.len() as u64);
    store.close().unwrap();
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = key_of(&register(&server, "p1"));
    let data_dir = server.data_dir.clone();
    assert_eq!(server.interrupt().code(), Some(0));
    let store = open_store(&data_dir);
    assert!(store.recovery_report().clean_shutdown);
    store.is_valid(&key).unwrap();
}

#[test]
fn kill_9_in_immediate_mode_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--durability", "immediate"]);
    let stop = AtomicBool::new(false);
    let base = server.url("");
    let acknowledged = std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(&base, 3, &stop, true));
        std::thread::sleep(Duration::from_millis(1500));
        let pid = server.pid();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        loader.join().expect("loader")
    });
    drop(server);
    assert!(
        acknowledged.len() > 3,
        "too little load: {}",
        acknowledged.len()
    );

    // The restarted server knows every acknowledged session and value.
    let server = Server::start(dir.path(), &["--durability", "immediate"]);
    for (key, n) in &acknowledged {
        let r = post(&server.url("/v1/session/isValid"), Some(key), "");
        assert_eq!(r.json(), json!({"valid": true}), "{key} was acknowledged");
        if *n != u64::MAX {
            let r = get(&server.url("/v1/session/data/n"), Some(key));
            assert_eq!(r.json(), json!({ "value": n }), "{key}");
        }
    }
    let data_dir = server.data_dir.clone();
    assert_eq!(server.terminate().code(), Some(0));
    let store = open_store(&data_dir);
    assert!(store.recovery_report().clean_shutdown);
    assert!(store.check().unwrap().is_healthy());
    // A register in flight at the kill may have been stored unacknowledged.
    assert!(store.stats().unwrap().sessions >= acknowledged.len() as u64);
}

#[test]
fn restart_after_kill_9_reports_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--durability", "immediate"]);
    let key = key_of(&register(&server, "p1"));
    let data_dir = server.data_dir.clone();
    server.kill9();
    let store = open_store(&data_dir);
    let report = store.wait_for_recovery();
    assert!(!report.clean_shutdown);
    assert!(
        report.check.as_ref().is_some_and(|c| c.is_healthy()),
        "{report:?}"
    );
    store.is_valid(&key).unwrap();
}

/// Values of every JSON kind, as a client would send them.
const VALUES: [(&str, &str); 9] = [
    ("int", "42"),
    ("big", "18446744073709551615"),
    ("neg", "-7"),
    ("float", "0.1"),
    ("exp", "1.5e300"),
    ("text", r#""Zoë \"the\" ✓ \u0001 \\ /""#),
    ("null", "null"),
    ("bool", "false"),
    (
        "nested",
        r#"{"z": [1, {"b": null, "a": []}], "a": {"": ""}}"#,
    ),
];

#[test]
fn data_written_over_http_reads_back_equal_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let s = post(
        &server.url("/v1/sessions"),
        None,
        r#"{"actorId":"p1","data":{"from_register":{"y":2,"x":[true]}}}"#,
    )
    .json();
    let key = key_of(&s);
    for (name, value) in VALUES {
        let r = call(
            "PUT",
            &server.url(&format!("/v1/session/data/{name}")),
            Some(&key),
            Some(value),
        );
        assert_eq!(r.status, 204, "{name}: {}", r.body);
    }
    let restored = post(&server.url("/v1/session/restore"), Some(&key), "").json();
    let data_dir = server.data_dir.clone();
    assert_eq!(server.terminate().code(), Some(0));

    let store = open_store(&data_dir);
    let session = store.resolve(&key).unwrap();
    assert_eq!(session.id(), s["id"]);
    assert_eq!(
        session.expires_at_ms(),
        restored["expiresAt"].as_u64().unwrap()
    );
    let data = session.data();
    for (name, value) in VALUES {
        let sent: Value = serde_json::from_str(value).unwrap();
        let stored: Value = data.get(name).unwrap().unwrap();
        assert_eq!(stored, sent, "{name}");
        // And the HTTP API showed the same value.
        assert_eq!(restored["data"][name], sent, "{name}");
    }
    assert_eq!(store.get_data::<u64>(&key, "big").unwrap(), Some(u64::MAX));
    assert_eq!(store.get_data::<f64>(&key, "float").unwrap(), Some(0.1));
    assert_eq!(
        data.get::<Value>("from_register").unwrap(),
        Some(json!({"x": [true], "y": 2}))
    );
}

/// Fields in non-alphabetical order: a round trip through a sorted JSON map
/// would change the text.
#[derive(Serialize)]
struct Loadout {
    zweihander: u32,
    axe: f64,
    name: String,
}

#[test]
fn data_written_through_the_library_reads_back_exactly_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let store = open_with(Config::new(&data_dir));
    let mut data = Data::new();
    data.insert(
        "loadout",
        &Loadout {
            zweihander: 2,
            axe: 0.1,
            name: "Zoë ✓".into(),
        },
    )
    .unwrap();
    let key = store
        .register("p1", "de", data)
        .unwrap()
        .key()
        .unwrap()
        .to_owned();
    store
        .set_data(&key, "scores", &[1.5f32, -0.0, 1e-7])
        .unwrap();
    store.set_data(&key, "max", &i128::MAX).unwrap();
    store.set_data(&key, "unit", &()).unwrap();
    let texts: Vec<(String, String)> = store
        .data(&key)
        .unwrap()
        .iter()
        .map(|(n, j)| (n.to_owned(), j.to_owned()))
        .collect();
    let expires = store.resolve(&key).unwrap().expires_at_ms();
    store.close().unwrap();

    let server = Server::start(dir.path(), &[]);
    for (name, json) in &texts {
        let r = get(&server.url(&format!("/v1/session/data/{name}")), Some(&key));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(r.body, format!("{{\"value\":{json}}}"), "{name}");
    }
    let r = get(&server.url("/v1/actors/p1/session"), None).json();
    assert_eq!(r["language"], "de");
    assert_eq!(r["expiresAt"].as_u64(), Some(expires));
    assert_eq!(
        r["data"]["loadout"],
        json!({"zweihander": 2, "axe": 0.1, "name": "Zoë ✓"})
    );
}
