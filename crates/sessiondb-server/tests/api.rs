//! The HTTP API v1 of the real binary: every route, every MAGE reason
//! string, the admin token rules, and the JSON error shape for bad input.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Sends raw bytes and returns everything the server answers.
fn raw_http(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn every_route_does_what_design_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--node-id", "node-a"]);

    let health = get(&server.url("/healthz"), None);
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));

    // register
    let r = post(
        &server.url("/v1/sessions"),
        None,
        r#"{"actorId":"p1","language":"fr","data":{"gold":5,"bag":["sword"]}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let s = r.json();
    let key = key_of(&s);
    assert!(key.starts_with("p1:"));
    assert_eq!(s["actorId"], "p1");
    assert_eq!(s["language"], "fr");
    assert_eq!(s["data"], json!({"gold": 5, "bag": ["sword"]}));
    assert!(s["id"].as_str().is_some_and(|id| !id.is_empty()));
    let expires = s["expiresAt"].as_u64().unwrap();
    let created = s["createdAt"].as_u64().unwrap();
    assert_eq!(expires - created, 600_000, "default TTL 10m");
    // language defaults to en, data to {}
    let d = register(&server, "p2");
    assert_eq!(
        (d["language"].clone(), d["data"].clone()),
        (json!("en"), json!({}))
    );

    // isValid: body key, bearer key
    let valid = post(
        &server.url("/v1/session/isValid"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!((valid.status, valid.json()), (200, json!({"valid": true})));
    let valid = post(&server.url("/v1/session/isValid"), Some(&key), "");
    assert_eq!(valid.json(), json!({"valid": true}));

    // restore: the session, key echoed, expiry as stored
    let r = post(
        &server.url("/v1/session/restore"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let restored = r.json();
    assert_eq!(restored["key"], key.as_str());
    assert_eq!(restored["id"], s["id"]);
    assert_eq!(restored["nodeId"], "node-a");
    assert!(restored["expiresAt"].as_u64().unwrap() >= expires);

    // data
    let data_url = server.url("/v1/session/data/level");
    let r = get(&data_url, Some(&key));
    r.assert_error(404, "noData");
    let r = call(
        "PUT",
        &data_url,
        Some(&key),
        Some(r#"{"n": 3, "tags": ["a"]}"#),
    );
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = get(&data_url, Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"value": {"n": 3, "tags": ["a"]}}));
    let r = get(&server.url("/v1/session/data/gold"), Some(&key));
    assert_eq!(r.json(), json!({"value": 5}));
    let r = call("DELETE", &data_url, Some(&key), None);
    assert_eq!(r.status, 204);
    get(&data_url, Some(&key)).assert_error(404, "noData");
    // Deleting what is not there is still 204.
    assert_eq!(call("DELETE", &data_url, Some(&key), None).status, 204);

    // actor session
    let r = get(&server.url("/v1/actors/p1/session"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["id"], s["id"]);
    assert!(
        a.get("key").is_none(),
        "the actor route must not show a key"
    );
    assert_eq!(a["data"]["gold"], 5);
    get(&server.url("/v1/actors/nobody/session"), None).assert_error(404, "noSession");

    // addresses
    let r = post(
        &server.url("/v1/actors/addresses"),
        None,
        r#"{"actorIds":["p1","nobody","p2"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let addrs = r.json()["addresses"].as_array().unwrap().clone();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0]["actorId"], "p1");
    assert_eq!(addrs[0]["sessionId"], s["id"]);
    assert_eq!(addrs[0]["nodeId"], "node-a");
    assert_eq!(addrs[0]["language"], "fr");
    assert_eq!(addrs[1]["actorId"], "p2");

    // reassign p1 -> p9: a new key for p9, same id and data
    let r = post(
        &server.url("/v1/actors/p1/reassign"),
        None,
        r#"{"to":"p9"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let moved = r.json();
    assert_eq!(moved["actorId"], "p9");
    assert_eq!(moved["id"], s["id"]);
    assert_eq!(moved["data"]["gold"], 5);
    let new_key = key_of(&moved);
    assert!(new_key.starts_with("p9:"));
    let r = post(&server.url("/v1/session/isValid"), Some(&key), "");
    assert_eq!(r.json(), json!({"valid": false, "reason": "noSession"}));
    let r = post(&server.url("/v1/session/isValid"), Some(&new_key), "");
    assert_eq!(r.json(), json!({"valid": true}));
    post(
        &server.url("/v1/actors/p1/reassign"),
        None,
        r#"{"to":"p8"}"#,
    )
    .assert_error(404, "noSession");
    // to the actor that holds it: a conflict with the session's state (a
    // valid request: the document allows the answer), the session untouched
    post(
        &server.url("/v1/actors/p9/reassign"),
        None,
        r#"{"to":"p9"}"#,
    )
    .assert_error(409, "reassignToSelf");
    let r = post(&server.url("/v1/session/isValid"), Some(&new_key), "");
    assert_eq!(r.json(), json!({"valid": true}));

    // expire an actor with a reason
    let r = post(
        &server.url("/v1/actors/p9/expire"),
        None,
        r#"{"reason":"banned"}"#,
    );
    assert_eq!((r.status, r.json()), (200, json!({"expired": 1})));
    let r = post(&server.url("/v1/actors/p9/expire"), None, "");
    assert_eq!(r.json(), json!({"expired": 0}));
    let r = post(&server.url("/v1/session/isValid"), Some(&new_key), "");
    assert_eq!(r.json()["reason"], "noSession");

    // Keys of actors whose ids are not ASCII work as bearer credentials.
    // (Sent over a raw socket: ureq refuses non-ASCII header values.)
    let zoe = key_of(&register(&server, "Zoë ✓"));
    let answer = raw_http(
        &server.addr,
        format!(
            "PUT /v1/session/data/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {zoe}\r\n\
             Content-Length: 1\r\nConnection: close\r\n\r\n1"
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    let r = post(
        &server.url("/v1/session/logout"),
        None,
        &json!({ "sessionKey": zoe }).to_string(),
    );
    r.assert_error(401, "invalidSessionKey");
    let r = post(
        &server.url("/v1/session/restore"),
        None,
        &json!({ "sessionKey": zoe }).to_string(),
    );
    assert_eq!(r.json()["data"]["x"], 1);
    let answer = raw_http(
        &server.addr,
        format!(
            "POST /v1/session/logout HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {zoe}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");

    // logout
    let key2 = key_of(&d);
    let r = post(&server.url("/v1/session/logout"), Some(&key2), "");
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    post(&server.url("/v1/session/logout"), Some(&key2), "").assert_error(401, "noSession");

    // metrics. Session ends are counted from a store subscription of the
    // server's own, a moment after the calls that caused them returned:
    // scrape until the last of them is counted.
    let mut scrapes = 0;
    let mut r = get(&server.url("/metrics"), None);
    wait_until(Duration::from_secs(20), "the last logout counted", || {
        r = get(&server.url("/metrics"), None);
        scrapes += 1;
        r.body
            .contains(r#"sessiondb_expiries_total{reason="loggedOut"} 2"#)
    });
    assert_eq!(r.status, 200);
    assert!(r.content_type.contains("text"), "{}", r.content_type);
    // One /healthz and every scrape pinged the engine.
    let pings = format!("sessiondb_engine_ping_seconds_count {}", 2 + scrapes);
    for name in [
        "sessiondb_active_sessions 0",
        "sessiondb_registers_total 3",
        r#"sessiondb_resolves_total{op="isValid",outcome="ok"} 4"#,
        r#"sessiondb_resolves_total{op="isValid",outcome="noSession"}"#,
        r#"sessiondb_expiries_total{reason="reassigned"} 1"#,
        r#"sessiondb_expiries_total{reason="custom"} 1"#,
        r#"sessiondb_expiries_total{reason="loggedOut"} 2"#,
        "sessiondb_reaper_lag_seconds",
        "sessiondb_event_backlog",
        "sessiondb_events_dropped_total",
        r#"sessiondb_http_request_duration_seconds_count{method="POST",route="/v1/sessions",status="201"} 3"#,
        pings.as_str(),
        "sessiondb_engine_up 1",
        "sessiondb_engine_unavailable_total 0",
    ] {
        assert!(r.body.contains(name), "metrics lack {name:?}:\n{}", r.body);
    }
    assert_eq!(server.terminate().code(), Some(0));
}

/// Checks every session-key route's answer for a key rejected with `reason`.
#[track_caller]
fn assert_rejected(server: &Server, key: &str, reason: &str) {
    let r = post(
        &server.url("/v1/session/isValid"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"valid": false, "reason": reason}), "{key}");
    post(
        &server.url("/v1/session/restore"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    )
    .assert_error(401, reason);
    let r = post(&server.url("/v1/session/restore"), Some(key), "");
    r.assert_error(401, reason);
    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
    let data = server.url("/v1/session/data/x");
    get(&data, Some(key)).assert_error(401, reason);
    call("PUT", &data, Some(key), Some("1")).assert_error(401, reason);
    call("DELETE", &data, Some(key), None).assert_error(401, reason);
    post(&server.url("/v1/session/logout"), Some(key), "").assert_error(401, reason);
}

#[test]
fn every_mage_reason_string_reaches_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--app-version", "1.0.0"]);

    assert_rejected(&server, "no-colon-here", "invalidSessionKey");
    assert_rejected(&server, "p1:", "invalidSessionKey");
    assert_rejected(&server, "p1:not a secret!", "invalidSessionKey");
    let r = post(&server.url("/v1/session/isValid"), None, "{}");
    assert_eq!(
        r.json(),
        json!({"valid": false, "reason": "invalidSessionKey"})
    );
    post(&server.url("/v1/session/logout"), None, "").assert_error(401, "invalidSessionKey");

    assert_rejected(
        &server,
        "ghost:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "noSession",
    );

    let first = key_of(&register(&server, "p1"));
    let _second = register(&server, "p1");
    assert_rejected(&server, &first, "keyMismatch");

    let old_version = key_of(&register(&server, "p3"));
    assert_eq!(server.terminate().code(), Some(0));

    // A new minor version refuses keys of sessions made by the old one.
    let server = Server::start(dir.path(), &["--app-version", "1.1.0"]);
    assert_rejected(&server, &old_version, "badVersion");
    assert_eq!(server.terminate().code(), Some(0));

    // Without the reaper, a session past its expiry is refused as expired.
    let server = Server::start(dir.path(), &["--ttl", "1s", "--no-reaper"]);
    let short = key_of(&register(&server, "p5"));
    std::thread::sleep(Duration::from_millis(1300));
    assert_rejected(&server, &short, "expired");
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn admin_routes_need_the_configured_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "a-long-admin-token-for-tests";
    let server = Server::start(dir.path(), &["--admin-token", token]);
    let admin_calls: Vec<(&str, String, Option<&str>)> = vec![
        (
            "POST",
            server.url("/v1/sessions"),
            Some(r#"{"actorId":"p1"}"#),
        ),
        ("GET", server.url("/v1/actors/p1/session"), None),
        (
            "POST",
            server.url("/v1/actors/addresses"),
            Some(r#"{"actorIds":["p1"]}"#),
        ),
        (
            "POST",
            server.url("/v1/actors/p1/expire"),
            Some(r#"{"reason":"kicked"}"#),
        ),
        (
            "POST",
            server.url("/v1/actors/p1/reassign"),
            Some(r#"{"to":"p2"}"#),
        ),
        ("GET", server.url("/v1/events"), None),
        (
            "POST",
            server.url("/v1/sessions/resolve"),
            Some(r#"{"sessionKey":"p1:abc"}"#),
        ),
        (
            "POST",
            server.url("/v1/sessions/extend"),
            Some(r#"{"sessionKey":"p1:abc"}"#),
        ),
        (
            "POST",
            server.url("/v1/sessions/expire"),
            Some(r#"{"sessionKey":"p1:abc"}"#),
        ),
    ];
    for (method, url, body) in &admin_calls {
        let r = call(method, url, None, *body);
        r.assert_error(401, "unauthorized");
        assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"), "{url}");
        call(method, url, Some("wrong-token"), *body).assert_error(403, "forbidden");
        call(method, url, Some(&token[..10]), *body).assert_error(403, "forbidden");
        let r = call(method, url, Some(&format!("{token}x")), *body);
        r.assert_error(403, "forbidden");
    }
    // A session key is no admin token.
    let r = post(
        &server.url("/v1/sessions"),
        Some(token),
        r#"{"actorId":"p1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let key = key_of(&r.json());
    post(
        &server.url("/v1/sessions"),
        Some(&key),
        r#"{"actorId":"p2"}"#,
    )
    .assert_error(403, "forbidden");
    // With the token, each admin route works.
    let r = get(&server.url("/v1/actors/p1/session"), Some(token));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &server.url("/v1/actors/addresses"),
        Some(token),
        r#"{"actorIds":["p1"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &server.url("/v1/actors/p1/reassign"),
        Some(token),
        r#"{"to":"p2"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &server.url("/v1/actors/p2/expire"),
        Some(token),
        r#"{"reason":"kicked"}"#,
    );
    assert_eq!(r.json(), json!({"expired": 1}));
    let (status, _events) = events(&server, Some(token));
    assert_eq!(status, 200);
    // Routes for anyone stay open; /metrics answers loopback clients.
    assert_eq!(get(&server.url("/healthz"), None).status, 200);
    assert_eq!(get(&server.url("/metrics"), None).status, 200);
    let r = post(
        &server.url("/v1/session/isValid"),
        None,
        r#"{"sessionKey":"a:b"}"#,
    );
    assert_eq!(r.status, 200);
    drop(server);

    // The token can come from the environment.
    let server = Server::start_with(dir.path(), &[], |cmd| {
        cmd.env("SESSIONDB_ADMIN_TOKEN", "from-the-environment");
    });
    post(&server.url("/v1/sessions"), None, r#"{"actorId":"p1"}"#)
        .assert_error(401, "unauthorized");
    let r = post(
        &server.url("/v1/sessions"),
        Some("from-the-environment"),
        r#"{"actorId":"p1"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn bad_input_gets_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let sessions = server.url("/v1/sessions");

    // malformed JSON, wrong shapes
    post(&sessions, None, r#"{"actorId":"#).assert_error(400, "malformedJson");
    post(&sessions, None, "not json").assert_error(400, "malformedJson");
    post(&sessions, None, "").assert_error(400, "malformedJson");
    post(&sessions, None, r#"{"actorId":5}"#).assert_error(400, "badRequest");
    post(&sessions, None, r#"{"language":"en"}"#).assert_error(400, "badRequest");
    post(&sessions, None, r#"{"actorId":"p","data":[1]}"#).assert_error(400, "badRequest");
    post(&server.url("/v1/session/isValid"), None, "{nope").assert_error(400, "malformedJson");
    post(
        &server.url("/v1/actors/addresses"),
        None,
        r#"{"actorIds":"p1"}"#,
    )
    .assert_error(400, "badRequest");

    // bad actor ids, in bodies and paths
    post(&sessions, None, r#"{"actorId":""}"#).assert_error(400, "invalidActorId");
    post(&sessions, None, r#"{"actorId":"a\u0001b"}"#).assert_error(400, "invalidActorId");
    let long = "x".repeat(300);
    post(&sessions, None, &json!({ "actorId": long }).to_string())
        .assert_error(400, "invalidActorId");
    get(&server.url("/v1/actors/a%01b/session"), None).assert_error(400, "invalidActorId");
    get(&server.url(&format!("/v1/actors/{long}/session")), None)
        .assert_error(400, "invalidActorId");
    post(
        &server.url("/v1/actors/addresses"),
        None,
        r#"{"actorIds":["ok",""]}"#,
    )
    .assert_error(400, "invalidActorId");
    post(
        &server.url("/v1/actors/p1/reassign"),
        None,
        r#"{"to":"p1"}"#,
    )
    .assert_error(409, "reassignToSelf");

    // other invalid values
    post(&sessions, None, r#"{"actorId":"p","language":"e n"}"#)
        .assert_error(400, "invalidLanguage");
    post(
        &server.url("/v1/actors/p/expire"),
        None,
        r#"{"reason":"no spaces"}"#,
    )
    .assert_error(400, "invalidReason");
    let key = key_of(&register(&server, "p1"));
    let data = server.url("/v1/session/data/x");
    call("PUT", &data, Some(&key), Some("{unquoted: 1}")).assert_error(400, "malformedJson");
    call("PUT", &data, Some(&key), Some("")).assert_error(400, "malformedJson");
    let name = "n".repeat(300);
    call(
        "PUT",
        &server.url(&format!("/v1/session/data/{name}")),
        Some(&key),
        Some("1"),
    )
    .assert_error(400, "invalidDataName");
    let big = json!("v".repeat(100 * 1024)).to_string();
    call("PUT", &data, Some(&key), Some(&big)).assert_error(413, "dataTooLarge");

    // oversized bodies
    let huge = json!({ "actorId": "p", "pad": "x".repeat(2 * 1024 * 1024) }).to_string();
    post(&sessions, None, &huge).assert_error(413, "payloadTooLarge");
    call("PUT", &data, Some(&key), Some(&huge)).assert_error(413, "payloadTooLarge");

    // unknown routes and wrong methods
    get(&server.url("/"), None).assert_error(404, "notFound");
    get(&server.url("/v2/sessions"), None).assert_error(404, "notFound");
    post(&server.url("/v1/session/nothing"), None, "{}").assert_error(404, "notFound");
    get(&sessions, None).assert_error(405, "methodNotAllowed");
    call("DELETE", &server.url("/healthz"), None, None).assert_error(405, "methodNotAllowed");
    call("PATCH", &data, Some(&key), Some("1")).assert_error(405, "methodNotAllowed");
    get(&server.url("/v1/session/isValid"), None).assert_error(405, "methodNotAllowed");

    // Nothing stored was harmed, and the server still answers.
    let r = get(&data, Some(&key));
    r.assert_error(404, "noData");
    let r = post(&server.url("/v1/session/isValid"), Some(&key), "");
    assert_eq!(r.json(), json!({"valid": true}));
    assert_eq!(server.terminate().code(), Some(0));
}

fn next(rx: &std::sync::mpsc::Receiver<Sse>) -> Sse {
    rx.recv_timeout(Duration::from_secs(20))
        .expect("an event within 20 s")
}

#[test]
fn events_arrive_in_order_as_server_sent_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (status, rx) = events(&server, None);
    assert_eq!(status, 200);
    let (status2, rx2) = events(&server, None);
    assert_eq!(status2, 200);

    let s1 = register(&server, "p1");
    let k1 = key_of(&s1);
    assert_eq!(
        post(&server.url("/v1/session/restore"), Some(&k1), "").status,
        200
    );
    call(
        "PUT",
        &server.url("/v1/session/data/x"),
        Some(&k1),
        Some("1"),
    );
    assert_eq!(
        post(&server.url("/v1/session/logout"), Some(&k1), "").status,
        204
    );
    let s2 = register(&server, "p2");
    let s3 = register(&server, "p2"); // replaces s2
    let moved = post(
        &server.url("/v1/actors/p2/reassign"),
        None,
        r#"{"to":"p3"}"#,
    )
    .json();
    post(
        &server.url("/v1/actors/p3/expire"),
        None,
        r#"{"reason":"kicked"}"#,
    );

    let expected: Vec<(&str, &Value, &str, Option<&str>)> = vec![
        ("session.set", &s1["id"], "p1", None),
        ("session.set", &s1["id"], "p1", None),
        ("session.unset", &s1["id"], "p1", Some("loggedOut")),
        ("session.set", &s2["id"], "p2", None),
        ("session.unset", &s2["id"], "p2", Some("replaced")),
        ("session.set", &s3["id"], "p2", None),
        ("session.unset", &s3["id"], "p2", Some("reassigned")),
        ("session.set", &moved["id"], "p3", None),
        ("session.unset", &moved["id"], "p3", Some("kicked")),
    ];
    for stream in [&rx, &rx2] {
        for (i, (event, id, actor, reason)) in expected.iter().enumerate() {
            let got = next(stream);
            assert_eq!(got.event, *event, "event {i}: {got:?}");
            assert_eq!(&got.data["id"], *id, "event {i}: {got:?}");
            assert_eq!(got.data["actorId"], *actor, "event {i}: {got:?}");
            match reason {
                Some(r) => assert_eq!(got.data["reason"], *r, "event {i}: {got:?}"),
                None => {
                    assert!(got.data["expiresAt"].as_u64().is_some(), "{got:?}");
                    assert!(got.data["language"].is_string(), "{got:?}");
                }
            }
        }
    }
    let metrics = get(&server.url("/metrics"), None).body;
    assert!(metrics.contains("sessiondb_event_streams 2"), "{metrics}");
    // Every event is in the server's history, and both streams sent them all.
    let kept = format!("sessiondb_event_history {}", expected.len());
    assert!(metrics.contains(&kept), "{metrics}");
    assert!(metrics.contains("sessiondb_event_backlog 0"), "{metrics}");
    drop(rx2);
    // Shutdown ends open streams, so it is not held up by them.
    assert_eq!(server.terminate().code(), Some(0));
    assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
}

#[test]
fn reaped_sessions_are_announced_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--ttl", "1s"]);
    let (_, rx) = events(&server, None);
    let s = register(&server, "p1");
    assert_eq!(next(&rx).event, "session.set");
    let unset = next(&rx);
    assert_eq!(unset.event, "session.unset");
    assert_eq!(
        unset.data,
        json!({"actorId": "p1", "id": s["id"], "reason": "expired"})
    );
    let r = post(&server.url("/v1/session/isValid"), Some(&key_of(&s)), "");
    assert_eq!(r.json()["reason"], "noSession");
    let metrics = get(&server.url("/metrics"), None).body;
    assert!(
        metrics.contains(r#"sessiondb_expiries_total{reason="expired"} 1"#),
        "{metrics}"
    );
}

#[test]
fn settings_come_from_flags_then_environment_then_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessiondb.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nttl = \"1h\"\nnode_id = \"from-file\"\nlog_level = \"warn\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let ttl_of = |server: &Server| {
        let s = register(server, "p1");
        s["expiresAt"].as_u64().unwrap() - s["createdAt"].as_u64().unwrap()
    };
    let start = |args: &[&str], env: Option<&str>| {
        let mut cmd = command();
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(ttl) = env {
            cmd.env("SESSIONDB_TTL", ttl);
        }
        Server::spawn(cmd, dir.path().join("data"), dir.path().join("none.log"))
    };
    let server = start(&[], None);
    assert_eq!(ttl_of(&server), 3_600_000, "file");
    let a = get(&server.url("/v1/actors/p1/session"), None).json();
    assert_eq!(a["nodeId"], "from-file");
    assert_eq!(server.terminate().code(), Some(0));
    assert!(
        dir.path().join("data").join("db").exists(),
        "data_dir from the file"
    );

    let server = start(&[], Some("30m"));
    assert_eq!(ttl_of(&server), 1_800_000, "environment over file");
    drop(server);
    let server = start(&["--ttl", "20m"], Some("30m"));
    assert_eq!(ttl_of(&server), 1_200_000, "flag over environment");
    drop(server);

    // Bad settings stop the server before it listens, with a clear message.
    std::fs::write(&config, "ttl = \"10m\"\nlisten_on = \"x\"\n").unwrap();
    let out = tool(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("listen_on"),
        "{}",
        text(&out.stderr)
    );
    let out = tool(&["serve", "--ttl", "ten minutes", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--ttl"), "{}", text(&out.stderr));
    let out = tool(&["serve", "--durability", "sometimes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("periodic"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_and_version_cover_every_command_and_flag() {
    let out = tool(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("sessiondb {}", env!("CARGO_PKG_VERSION"))
    );
    let help = text(&tool(&["--help"]).stdout);
    for command in [
        "serve", "stats", "list", "show", "expire", "check", "export", "import", "compact",
    ] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
        let out = tool(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help");
        assert!(text(&out.stdout).contains("Usage: sessiondb"), "{command}");
    }
    let serve = text(&tool(&["serve", "--help"]).stdout);
    for flag in [
        "--data-dir",
        "--listen",
        "--ttl",
        "--durability",
        "--admin-token",
        "--log-level",
        "--config",
        "SESSIONDB_DATA_DIR",
        "SESSIONDB_ADMIN_TOKEN",
        "./sessiondb-data",
        "127.0.0.1:7420",
        "10m",
        "--redis-url",
        "--redis-prefix",
        "SESSIONDB_REDIS_URL",
        "SESSIONDB_REDIS_PREFIX",
        "rediss://",
        "--cors-origin",
        "SESSIONDB_CORS_ORIGIN",
        "--min-replicas",
        "SESSIONDB_MIN_REPLICAS",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}:\n{serve}");
    }
    for command in [
        "stats", "list", "show", "expire", "check", "export", "import", "compact",
    ] {
        let help = text(&tool(&[command, "--help"]).stdout);
        for flag in ["--data-dir", "--redis-url", "--redis-prefix"] {
            assert!(
                help.contains(flag),
                "{command} --help lacks {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn game_servers_resolve_extend_and_expire_one_session_by_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-sessions-per-actor", "2"]);
    let (status, rx) = events(&server, None);
    assert_eq!(status, 200);
    let phone = register(&server, "p1");
    let desktop = register(&server, "p1");
    let (kp, kd) = (key_of(&phone), key_of(&desktop));
    assert_eq!(next(&rx).data["id"], phone["id"]);
    assert_eq!(next(&rx).data["id"], desktop["id"]);
    let body = |key: &str| json!({ "sessionKey": key }).to_string();

    // resolve: the session with its key, announcing nothing.
    let r = post(&server.url("/v1/sessions/resolve"), None, &body(&kp));
    assert_eq!(r.status, 200, "{}", r.body);
    let resolved = r.json();
    assert_eq!(resolved["key"], kp.as_str());
    assert_eq!(resolved["id"], phone["id"]);
    assert_eq!(resolved["actorId"], "p1");

    // extend: a new expiry, written.
    let r = post(&server.url("/v1/sessions/extend"), None, &body(&kp));
    assert_eq!(r.status, 200, "{}", r.body);
    let extended = r.json();
    assert!(extended["expiresAt"].as_u64() >= phone["expiresAt"].as_u64());
    assert!(extended["revision"].as_u64() > phone["revision"].as_u64());

    // expire one session with the game's reason: the other one stays.
    let r = post(
        &server.url("/v1/sessions/expire"),
        None,
        &json!({ "sessionKey": kp, "reason": "banned" }).to_string(),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let ended = next(&rx);
    assert_eq!(ended.event, "session.unset");
    assert_eq!(ended.data["id"], phone["id"]);
    assert_eq!(ended.data["reason"], "banned");
    // The actor still has the other session: this key no longer matches.
    assert_rejected(&server, &kp, "keyMismatch");
    let r = post(&server.url("/v1/sessions/resolve"), None, &body(&kd));
    assert_eq!(r.status, 200, "{}", r.body);
    // The default reason is `expired`.
    let r = post(&server.url("/v1/sessions/expire"), None, &body(&kd));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(next(&rx).data["reason"], "expired");

    // Refused keys get MAGE's reasons; bad bodies the JSON error shape.
    for route in ["resolve", "extend", "expire"] {
        let url = server.url(&format!("/v1/sessions/{route}"));
        post(&url, None, &body(&kp)).assert_error(401, "noSession");
        post(&url, None, &body("no-colon")).assert_error(401, "invalidSessionKey");
        post(&url, None, "{}").assert_error(400, "badRequest");
        post(&url, None, "{").assert_error(400, "malformedJson");
    }
    post(
        &server.url("/v1/sessions/expire"),
        None,
        &json!({ "sessionKey": kd, "reason": "not a reason!" }).to_string(),
    )
    .assert_error(400, "invalidReason");
    let metrics = get(&server.url("/metrics"), None).body;
    for line in [
        r#"sessiondb_resolves_total{op="resolve",outcome="ok"} 2"#,
        r#"sessiondb_resolves_total{op="extend",outcome="ok"} 1"#,
        r#"sessiondb_resolves_total{op="expire",outcome="ok"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}
