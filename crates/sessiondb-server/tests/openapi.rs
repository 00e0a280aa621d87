//! The OpenAPI document of HTTP API v1: served at `/v1/openapi.json`,
//! committed as `docs/openapi.json`, and true to the routes the server
//! answers. (That the router has no route the document lacks is a unit
//! test in `src/api/mod.rs`, which sees the router itself.)

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

const ADMIN_TOKEN: &str = "openapi-test-token";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

fn served(server: &Server) -> String {
    let r = get(&server.url("/v1/openapi.json"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    r.body
}

#[test]
fn the_committed_document_is_what_the_server_generates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--admin-token", ADMIN_TOKEN]);
    let document = served(&server);
    let path = committed_path();
    if std::env::var_os("SESSIONDB_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{document}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == document.trim_end(),
        "{} is not what the server generates; regenerate it with \
         `SESSIONDB_UPDATE_OPENAPI=1 cargo test -p sessiondb-server --test openapi` and commit it",
        path.display()
    );
    let parsed: Value = serde_json::from_str(&document).unwrap();
    assert_eq!(parsed["openapi"], "3.1.0");
    // Every reference resolves.
    let mut refs = Vec::new();
    collect_refs(&parsed, &mut refs);
    assert!(refs.len() > 20, "{refs:?}");
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference}: not a local reference"));
        assert!(
            parsed.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, v) in map {
                match (name.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A value for a path parameter.
fn argument(name: &str) -> &'static str {
    match name {
        "actorId" => "p1",
        "name" => "gold",
        "sessionId" => "AAAAAAAAAAAAAAAA",
        other => panic!("no test value for the path parameter {other}"),
    }
}

#[test]
fn every_documented_operation_is_served_with_a_documented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--admin-token", ADMIN_TOKEN]);
    let doc: Value = serde_json::from_str(&served(&server)).unwrap();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(
        schemes.keys().collect::<Vec<_>>(),
        ["adminToken", "sessionKey"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(
                op["tags"].as_array().is_some_and(|t| t.len() == 1),
                "{id}: one tag"
            );
            let responses = op["responses"].as_object().unwrap();
            // Who may call it: public routes say so with an empty requirement.
            let security = op["security"].as_array();
            if !["health", "openapi"].contains(&id) {
                let security = security.unwrap_or_else(|| panic!("{id}: no security"));
                for requirement in security {
                    for scheme in requirement.as_object().unwrap().keys() {
                        assert!(
                            schemes.contains_key(scheme),
                            "{id}: unknown scheme {scheme}"
                        );
                    }
                }
            }
            // Every error answer is the JSON error shape.
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{id} {status}"
                    );
                }
            }
            // The server answers the route, without credentials, with a
            // documented status.
            let mut url_path = path.clone();
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] == "path" {
                    let name = param["name"].as_str().unwrap();
                    url_path = url_path.replace(&format!("{{{name}}}"), argument(name));
                }
            }
            let body = op.get("requestBody").map(|_| "{}");
            let r = call(&method.to_uppercase(), &server.url(&url_path), None, body);
            assert!(
                responses.contains_key(&r.status.to_string()),
                "{id}: {method} {url_path} answered {} {}, not a documented status ({:?})",
                r.status,
                r.body,
                responses.keys().collect::<Vec<_>>()
            );
        }
    }
    assert!(operations >= 19, "only {operations} operations");
}

#[test]
fn every_error_code_the_api_answers_with_is_in_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--admin-token", ADMIN_TOKEN]);
    let doc: Value = serde_json::from_str(&served(&server)).unwrap();
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for code in [
        "invalidSessionKey",
        "noSession",
        "keyMismatch",
        "badVersion",
        "expired",
        "unauthorized",
        "forbidden",
        "malformedJson",
        "badRequest",
        "noData",
        "notFound",
        "payloadTooLarge",
        "unavailable",
    ] {
        assert!(codes.contains(&code), "{code} is not in {codes:?}");
    }
    // And answers carry them: an unknown route, a bad key, no token.
    get(&server.url("/v1/nope"), None).assert_error(404, "notFound");
    post(&server.url("/v1/session/logout"), Some("p1:nope"), "").assert_error(401, "noSession");
    post(&server.url("/v1/sessions"), None, "{}").assert_error(401, "unauthorized");
}
