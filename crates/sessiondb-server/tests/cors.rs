//! Browsers and the real binary: `--cors-origin` lets named origins call
//! the session routes (preflight included), every other origin gets no
//! CORS headers, admin routes refuse web pages whatever is configured, and
//! a bad origin stops the server with a message naming it.

mod common;

use common::*;
use serde_json::json;

const GAME: &str = "http://game.test:8080";

fn origin(o: &str) -> [(&str, &str); 1] {
    [("Origin", o)]
}

/// A preflight for `method` on `path` from `origin`.
fn preflight(server: &Server, path: &str, origin: &str, method: &str) -> Resp {
    call_with(
        "OPTIONS",
        &server.url(path),
        None,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", method),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        None,
    )
}

#[track_caller]
fn assert_allowed(r: &Resp, origin: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(origin),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("vary"), Some("Origin"), "{:?}", r.headers);
}

#[test]
fn an_allowed_origin_calls_the_session_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--cors-origin",
            GAME,
            "--cors-origin",
            "https://Other.Example:443",
        ],
    );
    let key = key_of(&register(&server, "p1"));

    // Preflights for every session route and method are allowed.
    for (path, method) in [
        ("/v1/session/isValid", "POST"),
        ("/v1/session/restore", "POST"),
        ("/v1/session/logout", "POST"),
        ("/v1/session/data/gold", "PUT"),
        ("/v1/session/data/gold", "GET"),
        ("/v1/session/data/gold", "DELETE"),
        ("/v1/session/events", "GET"),
        ("/v1/session/expireOthers", "POST"),
    ] {
        let r = preflight(&server, path, GAME, method);
        assert_eq!(r.status, 204, "{path}: {}", r.body);
        assert_allowed(&r, GAME);
        let methods = r.header("access-control-allow-methods").unwrap();
        assert!(methods.contains(method), "{methods}");
        let headers = r.header("access-control-allow-headers").unwrap();
        assert!(headers.contains("Authorization"), "{headers}");
        assert!(headers.contains("Content-Type"), "{headers}");
        // What a resuming event stream sends.
        assert!(headers.contains("Last-Event-ID"), "{headers}");
        assert!(r.header("access-control-max-age").is_some());
    }

    // The calls themselves carry the origin back, errors included.
    let r = call_with(
        "PUT",
        &server.url("/v1/session/data/gold"),
        Some(&key),
        &origin(GAME),
        Some("5"),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_allowed(&r, GAME);
    let r = call_with(
        "GET",
        &server.url("/v1/session/data/gold"),
        Some(&key),
        &origin(GAME),
        None,
    );
    assert_eq!(r.json(), json!({"value": 5}));
    assert_allowed(&r, GAME);
    let r = call_with(
        "POST",
        &server.url("/v1/session/isValid"),
        None,
        &origin("https://other.example"),
        Some(&json!({ "sessionKey": key }).to_string()),
    );
    assert_eq!(r.json(), json!({"valid": true}));
    assert_allowed(&r, "https://other.example");
    let r = call_with(
        "GET",
        &server.url("/v1/session/data/gold"),
        Some("p1:wrong"),
        &origin(GAME),
        None,
    );
    r.assert_error(401, "keyMismatch");
    assert_allowed(&r, GAME);
    let exposed = r.header("access-control-expose-headers").unwrap();
    assert!(exposed.contains("WWW-Authenticate"), "{exposed}");

    // The event stream too.
    let agent = agent(std::time::Duration::from_secs(30));
    let resp = agent
        .run(
            ureq::http::Request::get(server.url("/v1/session/events"))
                .header("Authorization", format!("Bearer {key}"))
                .header("Origin", GAME)
                .body(())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], GAME);
    drop(resp);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn other_origins_get_no_cors_headers_and_their_preflights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--cors-origin", GAME]);
    let key = key_of(&register(&server, "p1"));
    for other in [
        "http://evil.test:8080",
        "https://game.test:8080",
        "http://game.test:8081",
        "null",
    ] {
        let r = preflight(&server, "/v1/session/data/gold", other, "PUT");
        r.assert_error(403, "originNotAllowed");
        assert!(!r.has_cors_headers(), "{other}: {:?}", r.headers);
        // A request the browser sends without a preflight is answered, but
        // without CORS headers the page cannot read the answer.
        let r = call_with(
            "POST",
            &server.url("/v1/session/isValid"),
            None,
            &origin(other),
            Some(&json!({ "sessionKey": key }).to_string()),
        );
        assert_eq!(r.status, 200);
        assert!(!r.has_cors_headers(), "{other}: {:?}", r.headers);
        assert_eq!(r.header("vary"), Some("Origin"));
    }
    // Not from a browser: no CORS headers either.
    let r = post(&server.url("/v1/session/isValid"), Some(&key), "");
    assert_eq!(r.json(), json!({"valid": true}));
    assert!(!r.has_cors_headers(), "{:?}", r.headers);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn without_cors_origins_no_cors_header_is_ever_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = key_of(&register(&server, "p1"));
    let r = preflight(&server, "/v1/session/isValid", GAME, "POST");
    r.assert_error(403, "originNotAllowed");
    assert!(!r.has_cors_headers(), "{:?}", r.headers);
    assert_eq!(r.header("vary"), None);
    let r = call_with(
        "GET",
        &server.url("/v1/session/data/gold"),
        Some(&key),
        &origin(GAME),
        None,
    );
    r.assert_error(404, "noData");
    assert!(!r.has_cors_headers(), "{:?}", r.headers);
    assert_eq!(r.header("vary"), None);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn admin_routes_never_answer_web_pages() {
    let dir = tempfile::tempdir().unwrap();
    let token = "admin-token-for-cors-tests";
    for extra in [vec!["--cors-origin", GAME], vec![]] {
        let mut args = vec!["--admin-token", token];
        args.extend(extra);
        let server = Server::start(dir.path(), &args);
        let admin_calls: [(&str, &str, Option<&str>); 7] = [
            ("POST", "/v1/sessions", Some(r#"{"actorId":"p1"}"#)),
            ("GET", "/v1/actors/p1/session", None),
            (
                "POST",
                "/v1/actors/addresses",
                Some(r#"{"actorIds":["p1"]}"#),
            ),
            ("POST", "/v1/actors/p1/expire", Some(r#"{"reason":"x"}"#)),
            ("POST", "/v1/actors/p1/reassign", Some(r#"{"to":"p2"}"#)),
            ("GET", "/v1/events", None),
            ("GET", "/metrics", None),
        ];
        for (method, path, body) in admin_calls {
            let url = server.url(path);
            // Even the configured origin, even with the admin token.
            let r = call_with(method, &url, Some(token), &origin(GAME), body);
            r.assert_error(403, "crossOrigin");
            assert!(!r.has_cors_headers(), "{path}: {:?}", r.headers);
            let r = preflight(&server, path, GAME, method);
            r.assert_error(403, "crossOrigin");
            assert!(!r.has_cors_headers(), "{path}: {:?}", r.headers);
            // A browser's no-cors request from another site has no Origin
            // on a GET, but says where it comes from.
            let r = call_with(
                method,
                &url,
                Some(token),
                &[("Sec-Fetch-Site", "cross-site")],
                body,
            );
            r.assert_error(403, "crossOrigin");
        }
        // A game server's requests (no Origin) work as before.
        let r = post(
            &server.url("/v1/sessions"),
            Some(token),
            r#"{"actorId":"p1"}"#,
        );
        assert_eq!(r.status, 201, "{}", r.body);
        assert!(!r.has_cors_headers());
        let r = call_with(
            "GET",
            &server.url("/metrics"),
            None,
            &[("Sec-Fetch-Site", "none")],
            None,
        );
        assert_eq!(r.status, 200, "typed into the address bar");
        // /healthz is for anyone, without CORS headers.
        let r = call_with("GET", &server.url("/healthz"), None, &origin(GAME), None);
        assert_eq!(r.status, 200);
        assert!(!r.has_cors_headers());
        assert_eq!(server.terminate().code(), Some(0));
    }
}

#[test]
fn cors_origins_come_from_flags_then_environment_then_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessiondb.toml");
    std::fs::write(&config, "cors_origin = [\"http://file.test\"]\n").unwrap();
    let allowed = |server: &Server, o: &str| {
        preflight(server, "/v1/session/isValid", o, "POST").status == 204
    };
    let with_config = ["--config", config.to_str().unwrap()];

    let server = Server::start(dir.path(), &with_config);
    assert!(allowed(&server, "http://file.test"));
    assert!(!allowed(&server, GAME));
    drop(server);

    let server = Server::start_with(dir.path(), &with_config, |cmd| {
        cmd.env(
            "SESSIONDB_CORS_ORIGIN",
            "http://env-a.test,http://env-b.test:81",
        );
    });
    assert!(allowed(&server, "http://env-a.test"));
    assert!(allowed(&server, "http://env-b.test:81"));
    assert!(
        !allowed(&server, "http://file.test"),
        "the environment's list replaces the file's"
    );
    drop(server);

    let mut args = with_config.to_vec();
    args.extend(["--cors-origin", GAME]);
    let server = Server::start_with(dir.path(), &args, |cmd| {
        cmd.env("SESSIONDB_CORS_ORIGIN", "http://env-a.test");
    });
    assert!(allowed(&server, GAME));
    assert!(
        !allowed(&server, "http://env-a.test"),
        "the flag's list replaces the environment's"
    );
    drop(server);
}

#[test]
fn a_bad_origin_stops_the_server_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (bad, problem) in [
        ("http://game.test/", "no path"),
        ("game.test:8080", "no scheme"),
        ("*", "list each origin"),
        ("ftp://game.test", "http or https"),
    ] {
        let out = tool(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--cors-origin",
            GAME,
            "--cors-origin",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("--cors-origin"), "{stderr}");
        assert!(stderr.contains(&format!("{bad:?}")), "{stderr}");
        assert!(stderr.contains(problem), "{stderr}");
        assert!(text(&out.stdout).is_empty(), "it never listened");
    }
    // From the environment and from the config file too.
    let out = command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
        .env("SESSIONDB_CORS_ORIGIN", "http://ok.test,http://bad.test/x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("\"http://bad.test/x\""),
        "{}",
        text(&out.stderr)
    );
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "cors_origin = [\"null\"]\n").unwrap();
    let out = tool(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("forge"), "{}", text(&out.stderr));
    assert!(!std::path::Path::new(data).exists(), "nothing was created");
}
