//! Event streams that resume: every event of `/v1/events` and
//! `/v1/session/events` carries an SSE id, and a client that reconnects
//! with the last one (`Last-Event-ID`, or `lastEventId` in the query)
//! hears every event after it, once, in order, then the live ones; an id
//! older than the history kept, or from another server process, is told
//! (`session.lagged`, `session.reset`), never a silent gap. The connection
//! is cut by a relay between client and server (the network, or a load
//! balancer, closing it), while changes go on.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sessiondb_server::{AdminPolicy, Options};

const WAIT: Duration = Duration::from_secs(20);

/// The stream was closed by the other side.
#[track_caller]
fn wait_ended(stream: &Follow) {
    wait_until(WAIT, "the stream ends", || {
        stream.ended.load(Ordering::SeqCst)
    });
}

/// The stream has nothing more for now.
#[track_caller]
fn assert_quiet(stream: &Follow) {
    if let Ok(event) = stream.events.recv_timeout(Duration::from_millis(300)) {
        panic!("an event more: {event:?}");
    }
}

/// `(name, data)` of the next `n` events.
fn take(stream: &Follow, n: usize) -> Vec<(String, Value)> {
    (0..n)
        .map(|_| {
            let e = stream.next(WAIT);
            (e.event, e.data)
        })
        .collect()
}

/// The event number in an id `<epoch>-<n>` or `<epoch>-<n>.<tag>`.
fn number(id: &str) -> u64 {
    let (_, rest) = id.split_once('-').expect("an id <epoch>-<n>");
    rest.split('.').next().unwrap().parse().expect("a number")
}

fn admin_post(server: &Server, path: &str, body: Value) -> Value {
    let r = post(&server.url(path), None, &body.to_string());
    assert!(r.status < 300, "{path}: {} {}", r.status, r.body);
    if r.body.is_empty() {
        Value::Null
    } else {
        r.json()
    }
}

#[test]
fn the_admin_stream_resumes_after_a_cut_with_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let relay = Relay::start(&server.addr);
    // A stream that stays connected, to compare with.
    let reference = follow(&server.url("/v1/events"), None, None);
    let first = follow(&relay.url("/v1/events"), None, None);
    assert_eq!(first.status, 200);
    // A new stream gives its position first (an id-only message), so that
    // even a client that hears no event before a cut can resume.
    wait_until(WAIT, "the stream's position", || {
        first.last_id.lock().unwrap().is_some()
    });
    let p1 = register(&server, "p1");
    let heard = first.next(WAIT);
    assert_eq!(
        (heard.event.as_str(), &heard.data["id"]),
        ("session.set", &p1["id"])
    );
    assert_eq!(reference.next(WAIT).data, heard.data);
    assert_eq!(heard.id.as_deref(), Some(first.last_id().as_str()));

    relay.cut();
    wait_ended(&first);
    // Changes while the stream is away.
    let p2 = register(&server, "p2");
    admin_post(
        &server,
        "/v1/sessions/extend",
        json!({"sessionKey": key_of(&p1)}),
    );
    post(&server.url("/v1/session/restore"), Some(&key_of(&p1)), "");
    post(&server.url("/v1/session/logout"), Some(&key_of(&p2)), "");
    admin_post(&server, "/v1/actors/p1/expire", json!({"reason": "banned"}));
    register(&server, "p3");
    let missed = take(&reference, 5);
    assert_eq!(
        missed.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        [
            "session.set",
            "session.set",
            "session.unset",
            "session.unset",
            "session.set"
        ]
    );

    let resumed = follow(&relay.url("/v1/events"), None, Some(&first.last_id()));
    assert_eq!(resumed.status, 200);
    let mut ids = Vec::new();
    let mut again = Vec::new();
    for _ in 0..5 {
        let e = resumed.next(WAIT);
        ids.push(number(e.id.as_deref().expect("an id")));
        again.push((e.event, e.data));
    }
    assert_eq!(again, missed, "every change once, in order");
    let from = number(&first.last_id());
    assert_eq!(ids, (from + 1..=from + 5).collect::<Vec<_>>());
    // Then the live ones, and nothing twice.
    let p4 = register(&server, "p4");
    let live = resumed.next(WAIT);
    assert_eq!(
        (live.event.as_str(), &live.data["id"]),
        ("session.set", &p4["id"])
    );
    assert_quiet(&resumed);

    // The same from the query parameter (a browser's first connection).
    let id = first.last_id();
    let by_query = follow(
        &server.url(&format!("/v1/events?lastEventId={id}")),
        None,
        None,
    );
    assert_eq!(take(&by_query, 6)[..5], missed[..]);
}

#[test]
fn an_id_older_than_the_history_is_told_with_the_exact_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--event-history", "3"]);
    let stream = follow(&server.url("/v1/events"), None, None);
    wait_until(WAIT, "the stream's position", || {
        stream.last_id.lock().unwrap().is_some()
    });
    let start = stream.last_id();
    let sessions: Vec<Value> = (0..5)
        .map(|i| register(&server, &format!("p{i}")))
        .collect();
    let all = take(&stream, 5);

    let resumed = follow(&server.url("/v1/events"), None, Some(&start));
    let lagged = resumed.next(WAIT);
    assert_eq!(
        (lagged.event.as_str(), lagged.data.clone()),
        ("session.lagged", json!({"missed": 2}))
    );
    assert_eq!(number(lagged.id.as_deref().unwrap()), number(&start) + 2);
    assert_eq!(take(&resumed, 3), all[2..]);
    assert_quiet(&resumed);

    // A session's own stream resuming from there hears the same, then its
    // session's state (it cannot tell which of its events were dropped).
    let key = key_of(&sessions[4]);
    let own = follow(&server.url("/v1/session/events"), Some(&key), Some(&start));
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.next(WAIT).event, "session.lagged");
    let state = own.next(WAIT);
    assert_eq!(
        (state.event.as_str(), &state.data["id"]),
        ("session.set", &sessions[4]["id"])
    );
}

#[test]
fn an_id_of_another_server_process_is_told_with_session_reset() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let stream = follow(&server.url("/v1/events"), None, None);
    register(&server, "p1");
    let old_id = stream.next(WAIT).id.unwrap();
    drop(stream);
    // The server restarts on the same store: a new process, a new history.
    server.terminate();
    let server = Server::start(dir.path(), &[]);
    let resumed = follow(&server.url("/v1/events"), None, Some(&old_id));
    let reset = resumed.next(WAIT);
    assert_eq!(
        (reset.event.as_str(), reset.data.clone()),
        ("session.reset", json!({"reason": "otherServer"}))
    );
    // Then it goes on from now.
    let p2 = register(&server, "p2");
    assert_eq!(resumed.next(WAIT).data["id"], p2["id"]);

    // Not an id this server issues: malformed, or past its last event.
    let epoch = resumed.last_id().split_once('-').unwrap().0.to_owned();
    for bad in ["nonsense".to_owned(), format!("{epoch}-99999")] {
        let stream = follow(&server.url("/v1/events"), None, Some(&bad));
        let reset = stream.next(WAIT);
        assert_eq!(
            (reset.event.as_str(), reset.data.clone()),
            ("session.reset", json!({"reason": "unknownId"})),
            "{bad}"
        );
    }
    // A session's own stream: the reset, then the state.
    let p3 = register(&server, "p3");
    let own = follow(
        &server.url("/v1/session/events"),
        Some(&key_of(&p3)),
        Some(&old_id),
    );
    assert_eq!(own.next(WAIT).event, "session.reset");
    assert_eq!(own.next(WAIT).data["id"], p3["id"]);
}

#[test]
fn the_event_history_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, problem) in [
        ("--event-history", "0", "must be at least 1"),
        ("--event-history-age", "soon", "--event-history-age"),
    ] {
        let out = tool(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            flag,
            value,
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(problem), "{stderr}");
    }
}

/// A session's stream on the in-process server, through the relay.
fn session_stream(relay: &Relay, key: &str, last: Option<&str>) -> Follow {
    follow(&relay.url("/v1/session/events"), Some(key), last)
}

#[test]
fn a_session_stream_resumes_after_a_cut_with_its_events_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start_with(dir.path(), Options::new(AdminPolicy::new(None)), |c| {
        c.max_sessions_per_actor(2)
    });
    let relay = Relay::start(&server.addr.to_string());
    let admin = follow(&server.url("/v1/events"), None, None);
    let (session, key) = server.register("p1");
    // In the history before the stream opens (as in the tests below).
    assert_eq!(admin.next(WAIT).event, "session.set");
    let stream = session_stream(&relay, &key, None);
    let first = stream.next(WAIT);
    assert_eq!(
        (first.event.as_str(), &first.data["id"]),
        ("session.set", &session["id"])
    );
    assert!(first.id.as_deref().unwrap().contains('.'), "a tagged id");

    relay.cut();
    wait_ended(&stream);
    // While away: two restores that move the expiry, a data write (no
    // event), another session of the same actor (not this stream's).
    let mut expiries = Vec::new();
    for _ in 0..2 {
        server.clock.advance(Duration::from_secs(120));
        expiries.push(server.store.restore(&key).unwrap().expires_at_ms());
        server.store.set_data(&key, "gold", &1).unwrap();
    }
    server.register("p1");

    let resumed = session_stream(&relay, &key, Some(&stream.last_id()));
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    for expiry in &expiries {
        let e = resumed.next(WAIT);
        assert_eq!(
            (e.event.as_str(), &e.data["expiresAt"]),
            ("session.set", &json!(expiry))
        );
    }
    assert_quiet(&resumed);
    // Then the live ones, to the end.
    server.store.logout(&key).unwrap();
    let end = resumed.next(WAIT);
    assert_eq!(
        (end.event.as_str(), &end.data["reason"]),
        ("session.unset", &json!("loggedOut"))
    );
    wait_ended(&resumed);
}

#[test]
fn a_key_that_ended_while_away_hears_how_its_session_ended() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), Options::new(AdminPolicy::new(None)));
    let relay = Relay::start(&server.addr.to_string());
    let admin = follow(&server.url("/v1/events"), None, None);
    let (session, key) = server.register("p1");
    assert_eq!(admin.next(WAIT).event, "session.set");
    let stream = session_stream(&relay, &key, None);
    stream.next(WAIT);
    let last = stream.last_id();

    relay.cut();
    wait_ended(&stream);
    server.clock.advance(Duration::from_secs(120));
    server.store.restore(&key).unwrap();
    server
        .store
        .expire(&key, sessiondb::UnsetReason::parse("banned").unwrap())
        .unwrap();
    // The server has heard the end (its history holds it).
    assert_eq!(take(&admin, 2)[1].0, "session.unset");

    let resumed = session_stream(&relay, &key, Some(&last));
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.next(WAIT).event, "session.set");
    let end = resumed.next(WAIT);
    assert_eq!(
        end.data,
        json!({"actorId": "p1", "id": session["id"], "reason": "banned"})
    );
    wait_ended(&resumed);
    assert!(
        resumed.events.recv_timeout(WAIT).is_err(),
        "nothing after the end"
    );

    // Only with the tag of that key: a plain id, or another key's tag, is
    // refused as any dead key is.
    let plain = last.split_once('.').unwrap().0;
    for id in [plain.to_owned(), format!("{plain}.{}", "0".repeat(32))] {
        let refused = session_stream(&relay, &key, Some(&id));
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert_eq!(
            serde_json::from_str::<Value>(&refused.body).unwrap()["error"],
            "noSession"
        );
    }
}

#[test]
fn a_rotation_ends_the_old_keys_stream_and_the_new_key_streams_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), Options::new(AdminPolicy::new(None)));
    let relay = Relay::start(&server.addr.to_string());
    let (session, old_key) = server.register("p1");
    let old = session_stream(&relay, &old_key, None);
    old.next(WAIT);
    let rotated = server.store.rotate(&old_key).unwrap();
    let new_key = rotated.key().unwrap().to_owned();
    let end = old.next(WAIT);
    assert_eq!(
        end.data,
        json!({"actorId": "p1", "id": session["id"], "reason": "rotated"})
    );
    wait_ended(&old);

    // The new key's stream: the same session id, and it goes on.
    let new = session_stream(&relay, &new_key, None);
    let state = new.next(WAIT);
    assert_eq!(
        (state.event.as_str(), &state.data["id"]),
        ("session.set", &session["id"])
    );
    server.clock.advance(Duration::from_secs(120));
    server.store.restore(&new_key).unwrap();
    assert_eq!(new.next(WAIT).event, "session.set");

    // The old key, resuming from its last id, hears how it ended.
    let late = session_stream(&relay, &old_key, Some(&old.last_id()));
    assert_eq!(late.status, 401, "its last id is the rotation's itself");
    let last = old.last_id();
    let (position, tag) = last.split_once('.').unwrap();
    let (epoch, n) = position.split_once('-').unwrap();
    let before = format!("{epoch}-{}.{tag}", n.parse::<u64>().unwrap() - 1);
    let late = session_stream(&relay, &old_key, Some(&before));
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(late.next(WAIT).data["reason"], "rotated");
    wait_ended(&late);
    assert!(
        !new.ended.load(Ordering::SeqCst),
        "the new key's stream goes on"
    );
}

#[test]
fn a_stream_that_missed_nothing_says_where_it_is_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = follow(&server.url("/v1/events"), None, None);
    wait_until(WAIT, "the stream's position", || {
        admin.last_id.lock().unwrap().is_some()
    });
    let p1 = register(&server, "p1");
    let key = key_of(&p1);
    // The history holds the register's event before the session stream
    // opens: opened earlier, the stream's first event would state the
    // session at the position before that event, and a resume from there
    // would hear its `session.set` (docs/events.md).
    assert_eq!(admin.next(WAIT).event, "session.set");
    let own = follow(&server.url("/v1/session/events"), Some(&key), None);
    own.next(WAIT);
    for (url, bearer, last) in [
        ("/v1/events", None, admin.last_id()),
        ("/v1/session/events", Some(key.as_str()), own.last_id()),
    ] {
        let again = follow(&server.url(url), bearer, Some(&last));
        assert_eq!(again.status, 200, "{}", again.body);
        // An id-only message first: connected, and at the same position.
        wait_until(WAIT, "the resumed stream's position", || {
            again.last_id.lock().unwrap().is_some()
        });
        assert_eq!(again.last_id(), last);
        assert_quiet(&again);
    }
}
