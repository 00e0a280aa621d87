//! The offline tools of the real binary, on stopped stores.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use sessiondb::{Config, Data, ManualClock, SessionStore};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

struct Populated {
    dir: tempfile::TempDir,
    keys: Vec<String>,
    /// Public ids, in the order of `keys`.
    ids: Vec<String>,
}

impl Populated {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn arg(&self) -> String {
        self.data_dir().display().to_string()
    }
}

/// A stopped store with p1 (data), p2, guild:7, and one session of `old`
/// that expired an hour ago and was never reaped.
fn populate() -> Populated {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    {
        let clock = ManualClock::new(now_ms() - 3_600_000);
        let store = open_with(
            Config::new(&data_dir)
                .clock(Arc::new(clock))
                .reaper_thread(false),
        );
        let s = store.register("old", "en", Data::new()).unwrap();
        keys.push(s.key().unwrap().to_owned());
        ids.push(s.id().to_owned());
        store.close().unwrap();
    }
    let store = open(&data_dir);
    let mut data = Data::new();
    data.insert("gold", &5).unwrap();
    data.insert("name", "Zoë").unwrap();
    for (actor, d) in [("p1", data), ("p2", Data::new()), ("guild:7", Data::new())] {
        let s = store.register(actor, "en", d).unwrap();
        keys.push(s.key().unwrap().to_owned());
        ids.push(s.id().to_owned());
    }
    store.close().unwrap();
    Populated { dir, keys, ids }
}

fn open(dir: &Path) -> SessionStore {
    open_with(Config::new(dir).reaper_thread(false))
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = tool(args);
    assert!(
        out.status.success(),
        "{args:?} failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn stats_list_and_show_describe_the_store() {
    let p = populate();
    let dir = p.arg();
    let stats = ok(&["stats", "--data-dir", &dir]);
    assert!(
        stats.contains("4 (3 live, 1 expired awaiting the reaper)"),
        "{stats}"
    );
    assert!(stats.contains("last shutdown    clean"), "{stats}");
    let stats: Value = serde_json::from_str(&ok(&["stats", "--data-dir", &dir, "--json"])).unwrap();
    assert_eq!(stats["sessions"], 4);
    assert_eq!(stats["live"], 3);
    assert_eq!(stats["actors"], 4);
    assert_eq!(stats["corrupt"], 0);

    let list = ok(&["list", "--data-dir", &dir]);
    assert!(list.contains("4 session(s)"), "{list}");
    for id in &p.ids {
        assert!(list.contains(id.as_str()), "{list}");
    }
    assert!(list.contains("(expired)"), "{list}");
    assert!(list.contains("gold,name"), "{list}");
    let live = ok(&["list", "--data-dir", &dir, "--live"]);
    assert!(live.contains("3 session(s)") && !live.contains(p.ids[0].as_str()));
    let one = ok(&["list", "--data-dir", &dir, "--actor", "guild:7", "--json"]);
    let lines: Vec<Value> = one
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["actorId"], "guild:7");
    assert_eq!(lines[0]["id"], p.ids[3].as_str());
    assert!(lines[0].get("key").is_none());
    let all = ok(&["list", "--data-dir", &dir, "--json"]);
    assert_eq!(all.lines().count(), 4);

    let show = ok(&["show", "--data-dir", &dir, &p.ids[1]]);
    assert!(show.contains("actor       p1"), "{show}");
    assert!(show.contains(r#"name = "Zoë""#), "{show}");
    assert!(show.contains("gold = 5"), "{show}");
    let show: Value =
        serde_json::from_str(&ok(&["show", "--data-dir", &dir, &p.ids[1], "--json"])).unwrap();
    assert_eq!(show["data"]["gold"], 5);
    let out = tool(&["show", "--data-dir", &dir, "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no session with id"),
        "{}",
        text(&out.stderr)
    );

    // A directory without a store is an error, and is not created.
    let missing = p.dir.path().join("missing");
    let out = tool(&["stats", "--data-dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no store at"),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
}

#[test]
fn expire_ends_an_actors_sessions() {
    let p = populate();
    let dir = p.arg();
    let out = ok(&["expire", "--data-dir", &dir, "p1", "--reason", "banned"]);
    assert!(out.contains("ended 1 session(s)"), "{out}");
    assert!(out.contains("banned"), "{out}");
    let out = ok(&["expire", "--data-dir", &dir, "p1"]);
    assert!(out.contains("no sessions"), "{out}");
    let out = tool(&["expire", "--data-dir", &dir, "p2", "--reason", "no spaces"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid reason"),
        "{}",
        text(&out.stderr)
    );
    let store = open(&p.data_dir());
    assert!(store.is_valid(&p.keys[1]).is_err());
    store.is_valid(&p.keys[2]).unwrap();
}

#[test]
fn check_reports_problems_and_repair_fixes_them() {
    let p = populate();
    let dir = p.arg();
    let out = tool(&["check", "--data-dir", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("healthy"));

    // Break an invariant behind the store's back: a stale expiry entry.
    sessiondb::test_hooks::file_stale_expiry(&p.data_dir()).unwrap();
    let out = tool(&["check", "--data-dir", &dir]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("stale expiries    1"), "{report}");
    assert!(report.contains("sessiondb check --repair"), "{report}");

    let out = tool(&["check", "--data-dir", &dir, "--repair"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("1 problem(s) found and repaired"),
        "{report}"
    );
    let out = tool(&["check", "--data-dir", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let store = open(&p.data_dir());
    for key in &p.keys[1..] {
        store.is_valid(key).unwrap();
    }
}

#[test]
fn export_import_round_trip_is_exact_and_keys_keep_working() {
    let p = populate();
    let dir = p.arg();
    let file = p.dir.path().join("export.jsonl");
    let out = tool(&[
        "export",
        "--data-dir",
        &dir,
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exported 4 session(s)"),
        "{}",
        text(&out.stderr)
    );
    let exported = read(&file);
    assert_eq!(exported.lines().count(), 5);
    // To stdout too, identically.
    assert_eq!(ok(&["export", "--data-dir", &dir]), exported);

    let copy = p.dir.path().join("copy");
    let out = tool(&[
        "import",
        "--data-dir",
        copy.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("imported 4 session(s)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        ok(&["export", "--data-dir", copy.to_str().unwrap()]),
        exported
    );
    let store = open(&copy);
    for key in &p.keys[1..] {
        store.is_valid(key).unwrap();
    }
    assert_eq!(
        store.is_valid(&p.keys[0]).unwrap_err().reason(),
        Some(sessiondb::Reason::Expired)
    );
    assert_eq!(store.get_data::<u32>(&p.keys[1], "gold").unwrap(), Some(5));
    drop(store);

    // From stdin, into a store that has them: each replaces its twin.
    let out = command()
        .args(["import", "--data-dir", copy.to_str().unwrap()])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert!(
        text(&out.stderr).contains("(4 replaced"),
        "{}",
        text(&out.stderr)
    );
    // A broken file is refused with its line number.
    let broken = p.dir.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        exported.replacen("\"actorId\":", "\"actorID\":", 1),
    )
    .unwrap();
    let out = tool(&[
        "import",
        "--data-dir",
        copy.to_str().unwrap(),
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn compact_rewrites_into_a_fresh_directory() {
    let p = populate();
    let dir = p.arg();
    // Churn: sessions written and deleted leave space behind.
    {
        let store = open(&p.data_dir());
        let mut data = Data::new();
        data.insert("pad", &"x".repeat(4000)).unwrap();
        for i in 0..300 {
            let s = store
                .register(&format!("tmp{i}"), "en", data.clone())
                .unwrap();
            store.logout(s.key().unwrap()).unwrap();
        }
        store.close().unwrap();
    }
    let into = p.dir.path().join("compacted");
    let out = ok(&[
        "compact",
        "--data-dir",
        &dir,
        "--into",
        into.to_str().unwrap(),
    ]);
    assert!(out.contains("compacted 4 session(s)"), "{out}");
    assert_eq!(
        ok(&["export", "--data-dir", into.to_str().unwrap()]),
        ok(&["export", "--data-dir", &dir])
    );
    let store = open(&into);
    assert!(store.check().unwrap().is_healthy());
    for key in &p.keys[1..] {
        store.is_valid(key).unwrap();
    }
    drop(store);
    // Not into a directory that holds something.
    let out = tool(&[
        "compact",
        "--data-dir",
        &dir,
        "--into",
        into.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn tools_refuse_a_store_that_a_running_server_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let key = key_of(&register(&server, "p1"));
    let data_dir = server.data_dir.display().to_string();
    for args in [
        vec!["stats", "--data-dir", &data_dir],
        vec!["list", "--data-dir", &data_dir],
        vec!["check", "--data-dir", &data_dir, "--repair"],
        vec!["expire", "--data-dir", &data_dir, "p1"],
        vec!["import", "--data-dir", &data_dir, "/dev/null"],
    ] {
        let out = tool(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("is in use"), "{args:?}: {err}");
        assert!(err.contains("stop the server"), "{args:?}: {err}");
    }
    // The server was not disturbed.
    let r = post(&server.url("/v1/session/isValid"), Some(&key), "");
    assert_eq!(r.json(), serde_json::json!({"valid": true}));
    let path = server.data_dir.clone();
    assert_eq!(server.terminate().code(), Some(0));
    assert!(ok(&["stats", "--data-dir", path.to_str().unwrap()]).contains("sessions         1"));
}
