//! `GET /v1/session/events`: each session's own events for its game
//! client. The real binary for the route's contract (first event, isolation
//! between sessions, the end after `unset`, 401s, shutdown); the server run
//! in process, on a store with a manual clock, for expiry, the race between
//! an `unset` and the open, and a slow client's `session.lagged`.

mod common;

use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sessiondb::UnsetReason;
use sessiondb_server::{AdminPolicy, Options};

fn next(rx: &Receiver<Sse>) -> Sse {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("an event within 20 s")
}

/// The stream ended (the server closed it) with nothing more.
#[track_caller]
fn assert_ended(rx: &Receiver<Sse>) {
    match rx.recv_timeout(Duration::from_secs(20)) {
        Err(RecvTimeoutError::Disconnected) => {}
        Ok(event) => panic!("the stream went on: {event:?}"),
        Err(RecvTimeoutError::Timeout) => panic!("the stream did not end within 20 s"),
    }
}

#[track_caller]
fn assert_unset(event: &Sse, session: &Value, actor: &str, reason: &str) {
    assert_eq!(event.event, "session.unset", "{event:?}");
    assert_eq!(
        event.data,
        json!({"actorId": actor, "id": session["id"], "reason": reason})
    );
}

#[track_caller]
fn assert_set(event: &Sse, session: &Value, actor: &str) {
    assert_eq!(event.event, "session.set", "{event:?}");
    assert_eq!(event.data["id"], session["id"], "{event:?}");
    assert_eq!(event.data["actorId"], actor, "{event:?}");
    assert!(event.data["expiresAt"].as_u64().is_some(), "{event:?}");
    assert!(event.data["language"].is_string(), "{event:?}");
}

#[test]
fn each_stream_hears_its_own_session_only_and_ends_after_its_unset() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-sessions-per-actor", "2"]);
    let a = register(&server, "p1");
    let b = register(&server, "p1");
    let c = register(&server, "p2");
    let open = |s: &Value| {
        let (status, rx) = session_events(&server, &key_of(s));
        assert_eq!(status, 200);
        rx
    };
    let (ra, rb, rc) = (open(&a), open(&b), open(&c));
    // First, each stream tells its session's current state.
    for (rx, s, actor) in [(&ra, &a, "p1"), (&rb, &b, "p1"), (&rc, &c, "p2")] {
        let first = next(rx);
        assert_set(&first, s, actor);
        assert!(first.data["expiresAt"].as_u64() >= s["expiresAt"].as_u64());
        assert_eq!(first.data["language"], "en");
    }

    // A restore that moves nothing (the expiry moves by at least a tenth of
    // the TTL) tells no stream anything; each end is heard by its own
    // session's stream only.
    let r = post(&server.url("/v1/session/restore"), Some(&key_of(&a)), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&server.url("/v1/session/logout"), Some(&key_of(&b)), "");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_unset(&next(&rb), &b, "p1", "loggedOut");
    assert_ended(&rb);
    let r = post(
        &server.url("/v1/actors/p2/expire"),
        None,
        r#"{"reason":"banned"}"#,
    );
    assert_eq!(r.json(), json!({"expired": 1}));
    assert_unset(&next(&rc), &c, "p2", "banned");
    assert_ended(&rc);

    // p1 holds A; D joins it, E replaces the oldest (A). A's stream hears
    // neither register, only its own end.
    let d = register(&server, "p1");
    let e = register(&server, "p1");
    assert_unset(&next(&ra), &a, "p1", "replaced");
    assert_ended(&ra);

    // Reassigning p1 to p3 ends both streams; the new key's is p3's.
    let rd = open(&d);
    let re = open(&e);
    assert_set(&next(&rd), &d, "p1");
    assert_set(&next(&re), &e, "p1");
    let moved = post(
        &server.url("/v1/actors/p1/reassign"),
        None,
        r#"{"to":"p3"}"#,
    );
    assert_eq!(moved.status, 200, "{}", moved.body);
    let moved = moved.json();
    // The newest moves (D and E may share a millisecond: either, then).
    assert!(moved["id"] == e["id"] || moved["id"] == d["id"], "{moved}");
    assert_unset(&next(&re), &e, "p1", "reassigned");
    assert_ended(&re);
    assert_unset(&next(&rd), &d, "p1", "reassigned");
    assert_ended(&rd);
    let rm = open(&moved);
    assert_set(&next(&rm), &moved, "p3");
    let r = post(
        &server.url("/v1/actors/p3/expire"),
        None,
        r#"{"reason":"expired"}"#,
    );
    assert_eq!(r.json(), json!({"expired": 1}));
    assert_unset(&next(&rm), &moved, "p3", "expired");
    assert_ended(&rm);

    // Ended streams are gone from the server.
    wait_until(Duration::from_secs(20), "no open session streams", || {
        metric(
            &get(&server.url("/metrics"), None).body,
            "sessiondb_session_streams",
        ) == 0.0
    });
    let text = get(&server.url("/metrics"), None).body;
    assert!(
        text.contains(r#"sessiondb_resolves_total{op="events",outcome="ok"} 6"#),
        "{text}"
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn an_invalid_key_gets_401_with_mages_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.url("/v1/session/events");
    let r = get(&url, None);
    r.assert_error(401, "invalidSessionKey");
    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
    get(&url, Some("no-colon-here")).assert_error(401, "invalidSessionKey");
    get(&url, Some("ghost:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).assert_error(401, "noSession");
    let key = key_of(&register(&server, "p1"));
    get(&url, Some("p1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).assert_error(401, "keyMismatch");
    assert_eq!(
        post(&server.url("/v1/session/logout"), Some(&key), "").status,
        204
    );
    get(&url, Some(&key)).assert_error(401, "noSession");
    let text = get(&server.url("/metrics"), None).body;
    assert!(
        text.contains(r#"sessiondb_resolves_total{op="events",outcome="keyMismatch"} 1"#),
        "{text}"
    );
    assert_eq!(metric(&text, "sessiondb_session_streams"), 0.0);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn graceful_shutdown_ends_the_session_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let s = register(&server, "p1");
    let (status, rx) = session_events(&server, &key_of(&s));
    assert_eq!(status, 200);
    assert_set(&next(&rx), &s, "p1");
    assert_eq!(server.terminate().code(), Some(0));
    // Ended without an unset: the session lives on, the client reconnects.
    assert_ended(&rx);
}

// ----- in process, with a manual clock -----

#[test]
fn expiry_reaches_the_stream_as_expired_and_an_expired_key_gets_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), Options::new(AdminPolicy::new(None)));
    let (s, key) = server.register("p1");
    let (_, late_key) = server.register("p2");
    let (status, rx) = events_at(&server.url("/v1/session/events"), Some(&key));
    assert_eq!(status, 200);
    assert_set(&next(&rx), &s, "p1");

    // Past the TTL: refused before the reaper runs, announced when it does.
    server.clock.advance(Duration::from_secs(601));
    get(&server.url("/v1/session/events"), Some(&late_key)).assert_error(401, "expired");
    assert_eq!(server.store.reap_expired().unwrap(), 2);
    assert_unset(&next(&rx), &s, "p1", "expired");
    assert_ended(&rx);
    get(&server.url("/v1/session/events"), Some(&late_key)).assert_error(401, "noSession");
}

#[test]
fn a_restore_that_moves_the_expiry_reaches_the_stream_and_one_that_does_not_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), Options::new(AdminPolicy::new(None)));
    let (s, key) = server.register("p1");
    let (status, rx) = events_at(&server.url("/v1/session/events"), Some(&key));
    assert_eq!(status, 200);
    let first = next(&rx);
    assert_set(&first, &s, "p1");
    assert_eq!(first.data["expiresAt"], s["expiresAt"]);
    server.store.restore(&key).unwrap(); // within the touch interval: no news
    server.clock.advance(Duration::from_secs(61));
    let restored = server.store.restore(&key).unwrap();
    assert_eq!(
        restored.expires_at_ms(),
        s["expiresAt"].as_u64().unwrap() + 61_000
    );
    let moved = next(&rx);
    assert_set(&moved, &s, "p1");
    assert_eq!(moved.data["expiresAt"], restored.expires_at_ms());
    server.store.logout(&key).unwrap();
    assert_unset(&next(&rx), &s, "p1", "loggedOut");
    assert_ended(&rx);
}

#[test]
fn an_unset_racing_with_the_open_is_either_refused_or_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), Options::new(AdminPolicy::new(None)));
    let (mut refused, mut delivered) = (0, 0);
    for round in 0..40 {
        let (s, key) = server.register("racer");
        let store = server.store.clone();
        let k = key.clone();
        let ending = std::thread::spawn(move || {
            // A different head start each round, so that the unset lands
            // before, during and after the open's check.
            for _ in 0..(round % 10) * 3_000 {
                std::hint::spin_loop();
            }
            if round % 2 == 0 {
                store.logout(&k).unwrap();
            } else {
                store
                    .expire(&k, UnsetReason::parse("banned").unwrap())
                    .unwrap();
            }
        });
        let (status, rx) = events_at(&server.url("/v1/session/events"), Some(&key));
        ending.join().unwrap();
        let reason = if round % 2 == 0 {
            "loggedOut"
        } else {
            "banned"
        };
        if status == 401 {
            refused += 1;
        } else {
            assert_eq!(status, 200);
            assert_set(&next(&rx), &s, "racer");
            assert_unset(&next(&rx), &s, "racer", reason);
            assert_ended(&rx);
            delivered += 1;
        }
    }
    println!("{refused} opens refused, {delivered} delivered the unset");
}

/// Reads from `stream` until `text` holds `wanted`; returns what was read.
fn read_until(stream: &mut std::net::TcpStream, text: &mut String, wanted: &str) {
    let mut buf = [0u8; 4096];
    while !text.contains(wanted) {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the connection closed before {wanted:?}: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Server-sent events in a raw HTTP/1.0 answer: (event, data) pairs.
fn parse_sse(answer: &str) -> Vec<(String, Value)> {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            Some((event?, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}

#[test]
fn a_client_that_falls_behind_hears_how_many_events_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(
        dir.path(),
        Options::new(AdminPolicy::new(None)).session_stream_capacity(4),
    );
    let (s, key) = server.register("p1");
    // A client that stops reading after the first event: HTTP/1.0, so the
    // body is the bare stream until the server closes it, and a small
    // receive buffer, so that the server's writes soon wait.
    let socket = server.runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(server.addr).await.unwrap()
    });
    let mut client = socket.into_std().unwrap();
    client.set_nonblocking(false).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        client,
        "GET /v1/session/events HTTP/1.0\r\nAuthorization: Bearer {key}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    read_until(&mut client, &mut answer, "event: session.set\n");
    read_until(&mut client, &mut answer, "\n\n");

    // Restores (a session.set each) until the server reports misses: the
    // stream's queue of 4 fills when the client's and the server's socket
    // buffers are full, or sooner when restores outpace the stream.
    let dropped = || {
        metric(
            &get(&server.url("/metrics"), None).body,
            "sessiondb_session_events_dropped_total",
        )
    };
    let mut restores = 0u64;
    while dropped() == 0.0 {
        for _ in 0..500 {
            // Each restore moves the expiry, so each tells a new state.
            server.clock.advance(Duration::from_secs(61));
            server.store.restore(&key).unwrap();
        }
        restores += 500;
        assert!(
            restores < 400_000,
            "no event missed after {restores} restores"
        );
    }
    server.store.logout(&key).unwrap();

    client.read_to_string(&mut answer).expect("the rest");
    assert!(answer.starts_with("HTTP/1.0 200"), "{}", &answer[..80]);
    let events = parse_sse(&answer);
    let (first, rest) = events.split_first().unwrap();
    assert_eq!(first.0, "session.set");
    assert_eq!(first.1["id"], s["id"]);
    let (last, middle) = rest.split_last().unwrap();
    assert_eq!(last.0, "session.unset");
    assert_eq!(
        last.1,
        json!({"actorId": "p1", "id": s["id"], "reason": "loggedOut"})
    );
    let (mut sets, mut missed, mut lags) = (0u64, 0u64, 0);
    for (event, data) in middle {
        match event.as_str() {
            "session.set" => {
                assert_eq!(data["id"], s["id"]);
                sets += 1;
            }
            "session.lagged" => {
                let n = data["missed"].as_u64().unwrap();
                assert!(n > 0, "{data}");
                missed += n;
                lags += 1;
            }
            other => panic!("unexpected {other}: {data}"),
        }
    }
    assert!(lags > 0);
    assert_eq!(
        sets + missed,
        restores,
        "every restore was either delivered or counted as missed"
    );
    assert_eq!(dropped(), missed as f64);
    println!("{restores} restores: {sets} delivered, {missed} missed ({lags} lags)");
}
