//! Hostile and lazy connections: a request's head (and body) must arrive
//! within `--header-timeout`, idle keep-alive connections close after it,
//! at most `--max-connections` are open at once, and the event streams
//! are not cut by any of it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Half of a request's head: no blank line yet.
const HALF_A_HEAD: &[u8] = b"POST /v1/sessions HTTP/1.1\r\nHost: sessiondb\r\nContent-Type: app";

fn connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(&server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Whether the server closed `stream`: a read sees the end (or a reset)
/// instead of waiting.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            // An answer to what was sent (none is expected), then the end.
            Ok(_) => continue,
        }
    }
}

fn metrics_text(server: &Server) -> String {
    let r = get(&server.url("/metrics"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[test]
fn slow_and_idle_connections_are_shed_while_the_server_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--header-timeout", "3s"]);
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(HALF_A_HEAD).unwrap();
            s
        })
        .collect();
    // Connections that never send a byte.
    slow.extend((0..10).map(|_| connect(&server)));
    // A kept-alive connection that made one request and then idles.
    let mut idle = connect(&server);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: sessiondb\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 512];
    let n = idle.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    slow.push(idle);

    // Meanwhile the server answers everyone else, while it holds them all.
    for i in 0..20 {
        let r = post(
            &server.url("/v1/sessions"),
            None,
            &json!({ "actorId": format!("p{i}") }).to_string(),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let text = metrics_text(&server);
    assert!(
        metric(&text, "sessiondb_connections") >= 51.0,
        "after {:?} (the timeout is 3 s): {text}",
        started.elapsed()
    );
    // Then every slow and idle connection is closed by the server.
    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(stream), "connection {i} is still open");
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let text = metrics_text(&server);
    assert!(
        metric(&text, "sessiondb_connections_timed_out_total") >= 51.0,
        "{text}"
    );
    // Only the scrape's own connection (and the agent's, perhaps) is open.
    assert!(metric(&text, "sessiondb_connections") <= 2.0, "{text}");
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--header-timeout", "1s"]);
    let mut s = connect(&server);
    s.write_all(
        b"POST /v1/sessions HTTP/1.1\r\nHost: sessiondb\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"actorId\":",
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"requestTimeout""#), "{answer}");
}

#[test]
fn past_the_connection_limit_new_connections_get_503_and_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--header-timeout", "2s", "--max-connections", "4"],
    );
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect(&server);
            s.write_all(HALF_A_HEAD).unwrap();
            s
        })
        .collect();
    // The server accepts in its own time: the fifth is refused once the
    // four are in.
    let mut refused = String::new();
    wait_until(Duration::from_secs(10), "a 503 at the limit", || {
        let mut s = connect(&server);
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: sessiondb\r\n\r\n");
        refused.clear();
        let _ = s.read_to_string(&mut refused);
        refused.starts_with("HTTP/1.1 503")
    });
    assert!(refused.contains("retry-after: 1"), "{refused}");
    let body = refused.split("\r\n\r\n").nth(1).unwrap_or_default();
    let error: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(error["error"], "tooManyConnections", "{refused}");
    wait_until(Duration::from_secs(10), "the warning in the log", || {
        server.log_text().contains("connection limit reached")
    });
    // Once the held connections time out, the server answers again, and
    // its metrics tell what happened.
    drop(held);
    let mut text = String::new();
    wait_until(
        Duration::from_secs(10),
        "answers after the limit",
        || match try_get_metrics(&server) {
            Some(t) => {
                text = t;
                true
            }
            None => false,
        },
    );
    assert!(
        metric(&text, "sessiondb_connections_refused_total") >= 1.0,
        "{text}"
    );
}

fn try_get_metrics(server: &Server) -> Option<String> {
    let agent = agent(Duration::from_secs(5));
    let mut r = agent.get(&server.url("/metrics")).call().ok()?;
    (r.status() == 200).then(|| r.body_mut().read_to_string().ok())?
}

#[test]
fn event_streams_stay_open_past_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--header-timeout", "300ms"]);
    let key = key_of(&register(&server, "p1"));
    let (status, admin) = events(&server, None);
    assert_eq!(status, 200);
    let (status, own) = session_events(&server, &key);
    assert_eq!(status, 200);
    assert_eq!(
        own.recv_timeout(Duration::from_secs(10)).unwrap().event,
        "session.set"
    );
    // Quiet for several header timeouts: both streams stay open.
    std::thread::sleep(Duration::from_millis(1500));
    let r = post(&server.url("/v1/session/logout"), Some(&key), "");
    assert_eq!(r.status, 204, "{}", r.body);
    let unset = own.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        (unset.event.as_str(), &unset.data["reason"]),
        ("session.unset", &json!("loggedOut"))
    );
    let heard = admin.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(heard.event, "session.unset");
    let text = metrics_text(&server);
    assert_eq!(
        metric(&text, "sessiondb_connections_timed_out_total"),
        0.0,
        "{text}"
    );
}

#[test]
fn bad_limits_are_refused_before_the_server_starts() {
    for (args, problem) in [
        (["--header-timeout", "0s"], "--header-timeout"),
        (["--header-timeout", "soon"], "--header-timeout"),
        (["--max-connections", "0"], "--max-connections"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = tool(
            &[
                &[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                    data.to_str().unwrap(),
                ][..],
                &args[..],
            ]
            .concat(),
        );
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(problem), "{args:?}: {stderr}");
    }
}
