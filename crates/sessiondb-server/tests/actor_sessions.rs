//! The routes of an actor's sessions, against the real binary: the game
//! server's `meta` at register, a new key for a session
//! (`POST /v1/sessions/rotate`), an actor's sessions
//! (`GET /v1/actors/{actorId}/sessions`), ending one by its id
//! (`POST /v1/actors/{actorId}/sessions/{sessionId}/expire`) and the
//! others of a key (`POST /v1/session/expireOthers`), with what each
//! announces and every refusal.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

fn register_with(server: &Server, body: Value) -> Value {
    let r = post(&server.url("/v1/sessions"), None, &body.to_string());
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn listed(server: &Server, actor: &str) -> Vec<Value> {
    let r = get(&server.url(&format!("/v1/actors/{actor}/sessions")), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["sessions"].as_array().unwrap().clone()
}

#[test]
fn meta_is_stored_with_the_session_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let meta = json!({"device": "Pixel 8", "platform": "android", "address": "203.0.113.7"});
    let session = register_with(&server, json!({"actorId": "p1", "meta": meta}));
    assert_eq!(session["meta"], meta);
    let key = key_of(&session);
    let resolved = post(
        &server.url("/v1/sessions/resolve"),
        None,
        &json!({ "sessionKey": key }).to_string(),
    );
    assert_eq!(resolved.json()["meta"], meta);
    let restored = post(&server.url("/v1/session/restore"), Some(&key), "");
    assert_eq!(restored.json()["meta"], meta);
    assert_eq!(
        get(&server.url("/v1/actors/p1/session"), None).json()["meta"],
        meta
    );
    // Without meta: an empty object, always present.
    assert_eq!(register(&server, "p2")["meta"], json!({}));

    let sessions = server.url("/v1/sessions");
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    for bad in [
        json!({"bad name": "x"}),
        json!({ "": "x" }),
        json!({ "n".repeat(65): "x" }),
        json!({ "device": "v".repeat(257) }),
        json!({ "device": "line\nbreak" }),
        Value::Object(many),
    ] {
        post(
            &sessions,
            None,
            &json!({"actorId": "p3", "meta": bad}).to_string(),
        )
        .assert_error(400, "invalidMeta");
    }
    post(
        &sessions,
        None,
        &json!({"actorId": "p3", "meta": {"device": 7}}).to_string(),
    )
    .assert_error(400, "badRequest");
    assert_eq!(listed(&server, "p3"), Vec::<Value>::new());
}

#[test]
fn rotate_answers_a_new_key_and_the_old_one_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (_, events) = events(&server, None);
    let old = register_with(
        &server,
        json!({"actorId": "p1", "language": "fr", "data": {"gold": 7}, "meta": {"device": "phone"}}),
    );
    let old_key = key_of(&old);
    assert_eq!(events.recv_timeout(WAIT).unwrap().event, "session.set");

    let r = post(
        &server.url("/v1/sessions/rotate"),
        None,
        &json!({ "sessionKey": old_key }).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.json();
    let new_key = key_of(&new);
    assert_ne!(new_key, old_key);
    assert!(new_key.starts_with("p1:"));
    for field in [
        "id",
        "actorId",
        "language",
        "createdAt",
        "expiresAt",
        "data",
        "meta",
    ] {
        assert_eq!(new[field], old[field], "{field}");
    }
    assert_eq!(new["revision"], 2);

    let unset = events.recv_timeout(WAIT).unwrap();
    assert_eq!(unset.event, "session.unset");
    assert_eq!(
        unset.data,
        json!({"actorId": "p1", "id": old["id"], "reason": "rotated"})
    );
    let set = events.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (set.event.as_str(), &set.data["id"]),
        ("session.set", &old["id"])
    );

    let r = post(&server.url("/v1/session/isValid"), Some(&old_key), "");
    assert_eq!(r.json(), json!({"valid": false, "reason": "keyMismatch"}));
    get(&server.url("/v1/session/data/gold"), Some(&old_key)).assert_error(401, "keyMismatch");
    let r = get(&server.url("/v1/session/data/gold"), Some(&new_key));
    assert_eq!(r.json(), json!({"value": 7}));

    // Counted by reason, as every end of a key is.
    wait_until(WAIT, "the rotation counted", || {
        get(&server.url("/metrics"), None)
            .body
            .contains(r#"sessiondb_expiries_total{reason="rotated"} 1"#)
    });

    // Refused keys, as every admin route that takes one.
    let rotate = server.url("/v1/sessions/rotate");
    post(&rotate, None, &json!({ "sessionKey": old_key }).to_string())
        .assert_error(401, "keyMismatch");
    post(&rotate, None, r#"{"sessionKey":"no-colon"}"#).assert_error(401, "invalidSessionKey");
    post(&rotate, None, "{}").assert_error(400, "badRequest");
    post(&rotate, None, "").assert_error(400, "malformedJson");
}

#[test]
fn an_actors_sessions_are_listed_newest_first_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-sessions-per-actor", "3"]);
    assert_eq!(listed(&server, "p1"), Vec::<Value>::new());
    let phone = register_with(
        &server,
        json!({"actorId": "p1", "meta": {"device": "phone"}}),
    );
    // Creation times are milliseconds: let them differ.
    std::thread::sleep(Duration::from_millis(5));
    let desktop = register_with(
        &server,
        json!({"actorId": "p1", "language": "de", "meta": {"device": "desktop"}}),
    );
    register(&server, "p2");

    let sessions = listed(&server, "p1");
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["id"], desktop["id"]);
    assert_eq!(sessions[1]["id"], phone["id"]);
    assert_eq!(
        sessions[0],
        json!({
            "id": desktop["id"],
            "actorId": "p1",
            "language": "de",
            "createdAt": desktop["createdAt"],
            "expiresAt": desktop["expiresAt"],
            "meta": {"device": "desktop"},
        })
    );
    let text = serde_json::to_string(&sessions).unwrap();
    for session in [&phone, &desktop] {
        let secret = key_of(session).rsplit_once(':').unwrap().1.to_owned();
        assert!(!text.contains(&secret), "a listing shows no key");
    }
    get(&server.url("/v1/actors/a%01b/sessions"), None).assert_error(400, "invalidActorId");
}

#[test]
fn one_session_ends_by_its_id_and_its_holder_hears_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-sessions-per-actor", "2"]);
    let phone = register(&server, "p1");
    let desktop = register(&server, "p1");
    let (status, heard) = session_events(&server, &key_of(&phone));
    assert_eq!(status, 200);
    assert_eq!(heard.recv_timeout(WAIT).unwrap().event, "session.set");

    let url = |actor: &str, id: &Value| {
        server.url(&format!(
            "/v1/actors/{actor}/sessions/{}/expire",
            id.as_str().unwrap()
        ))
    };
    let r = post(&url("p1", &phone["id"]), None, r#"{"reason":"stolen"}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    let unset = heard.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (unset.event.as_str(), &unset.data["reason"]),
        ("session.unset", &json!("stolen"))
    );
    let r = post(
        &server.url("/v1/session/isValid"),
        Some(&key_of(&desktop)),
        "",
    );
    assert_eq!(r.json(), json!({"valid": true}));

    // No such session: 404 with MAGE's reason.
    post(&url("p1", &phone["id"]), None, "").assert_error(404, "noSession");
    post(&url("p2", &desktop["id"]), None, "").assert_error(404, "noSession");
    post(&url("p1", &json!("AAAAAAAAAAAAAAAA")), None, "").assert_error(404, "noSession");
    // Bad input.
    post(&url("p1", &json!("not%20an%20id")), None, "").assert_error(400, "invalidSessionId");
    post(
        &url("p1", &desktop["id"]),
        None,
        r#"{"reason":"has space"}"#,
    )
    .assert_error(400, "invalidReason");
    post(&url("a%01b", &desktop["id"]), None, "").assert_error(400, "invalidActorId");
    // An empty body, and `null`, mean `expired`.
    let r = post(&url("p1", &desktop["id"]), None, "null");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(listed(&server, "p1"), Vec::<Value>::new());
}

#[test]
fn expire_others_ends_every_other_session_and_keeps_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-sessions-per-actor", "3"]);
    let phone = register(&server, "p1");
    let tablet = register(&server, "p1");
    let mine = register(&server, "p1");
    let (_, heard_phone) = session_events(&server, &key_of(&phone));
    let (_, heard_tablet) = session_events(&server, &key_of(&tablet));
    let (_, heard_mine) = session_events(&server, &key_of(&mine));
    for heard in [&heard_phone, &heard_tablet, &heard_mine] {
        assert_eq!(heard.recv_timeout(WAIT).unwrap().event, "session.set");
    }

    let others = server.url("/v1/session/expireOthers");
    let r = post(&others, Some(&key_of(&mine)), "");
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"expired": 2})),
        "{}",
        r.body
    );
    for heard in [&heard_phone, &heard_tablet] {
        let unset = heard.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (unset.event.as_str(), &unset.data["reason"]),
            ("session.unset", &json!("loggedOut"))
        );
    }
    assert!(
        heard_mine.recv_timeout(Duration::from_millis(300)).is_err(),
        "the caller's own stream hears nothing"
    );
    let sessions = listed(&server, "p1");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], mine["id"]);

    // Again, with a reason: nothing left to end.
    let r = post(&others, Some(&key_of(&mine)), r#"{"reason":"banned"}"#);
    assert_eq!(r.json(), json!({"expired": 0}));
    // Refusals.
    post(&others, Some(&key_of(&phone)), "").assert_error(401, "keyMismatch");
    post(&others, None, "").assert_error(401, "invalidSessionKey");
    post(&others, Some(&key_of(&mine)), r#"{"reason":""}"#).assert_error(400, "invalidReason");
    post(&others, Some(&key_of(&mine)), "[").assert_error(400, "malformedJson");
}
