//! The readable table (with sessiondb ÷ other ratios), the targets of
//! issue 6 checked against one run's figures, and the JSON lines.

use std::fmt::Write as _;

use crate::compare::Ctx;
use crate::measure::Row;
use crate::plan::{SYSTEMS, WORKLOADS};

fn position(list: &[&str], x: &str) -> usize {
    list.iter().position(|w| *w == x).unwrap_or(list.len())
}

/// Rows in table order: by workload, then client count, then system.
pub fn sorted(rows: &[Row]) -> Vec<Row> {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| {
        (
            position(WORKLOADS, &r.workload),
            r.threads.unwrap_or(0),
            position(SYSTEMS, &r.system),
        )
    });
    rows
}

/// The sessiondb row a group's ratios are taken against.
fn base_system(workload: &str) -> &'static str {
    if workload.starts_with("durable") {
        "sessiondb_immediate"
    } else if workload.starts_with("cpu_") {
        "sessiondb_redis"
    } else {
        "sessiondb"
    }
}

fn find<'a>(
    rows: &'a [Row],
    workload: &str,
    system: &str,
    threads: Option<usize>,
) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == workload && r.system == system && r.threads == threads)
}

/// sessiondb ÷ `system` on the row group's figure: ops/s where there is
/// one, else bytes, else seconds.
pub fn ratio(rows: &[Row], workload: &str, system: &str, threads: Option<usize>) -> Option<f64> {
    ratio_of(rows, workload, base_system(workload), system, threads)
}

/// `of` ÷ `to` on the row group's figure.
pub fn ratio_of(
    rows: &[Row],
    workload: &str,
    of: &str,
    to: &str,
    threads: Option<usize>,
) -> Option<f64> {
    let base = find(rows, workload, of, threads)?;
    let other = find(rows, workload, to, threads)?;
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    if base.ops_per_sec.is_some() {
        div(base.ops_per_sec, other.ops_per_sec)
    } else if base.bytes.is_some() {
        div(base.bytes.map(|b| b as f64), other.bytes.map(|b| b as f64))
    } else {
        div(base.seconds, other.seconds)
    }
}

/// A number with three significant digits and thousands separators.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// Seconds with at least three significant digits.
fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3}")
    } else if s >= 0.001 {
        format!("{s:.4}")
    } else {
        format!("{s:.6}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), num)
}

/// The table: one block per workload and client count.
pub fn table(rows: &[Row]) -> String {
    let rows = sorted(rows);
    let mut out = String::new();
    let header = format!(
        "{:<17} {:>3}  {:<20} {:>12} {:>9} {:>9} {:>9} {:>10} {:>9}  {}",
        "workload",
        "thr",
        "system",
        "ops/s",
        "p50 µs",
        "p99 µs",
        "seconds",
        "bytes",
        "sdb÷this",
        "note"
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.chars().count() + 20));
    let mut last = None;
    for r in &rows {
        let group = (r.workload.clone(), r.threads);
        if last.as_ref().is_some_and(|g| *g != group) {
            let _ = writeln!(out);
        }
        last = Some(group);
        let ratio = if r.system == base_system(&r.workload) {
            "1".to_owned()
        } else {
            ratio(&rows, &r.workload, &r.system, r.threads)
                .map_or("-".into(), |x| format!("{}x", num(x)))
        };
        let _ = writeln!(
            out,
            "{:<17} {:>3}  {:<20} {:>12} {:>9} {:>9} {:>9} {:>10} {:>9}  {}",
            r.workload,
            r.threads.map_or("-".into(), |t| t.to_string()),
            r.system,
            opt(r.ops_per_sec),
            opt(r.p50_us),
            opt(r.p99_us),
            r.seconds.map_or("-".into(), secs),
            r.bytes.map_or("-".into(), bytes),
            ratio,
            r.note.as_deref().unwrap_or(""),
        );
    }
    out
}

/// One target of the issue, checked.
pub struct Target {
    pub what: String,
    pub measured: Option<String>,
    pub met: Option<bool>,
}

/// Checks the targets against the run's rows.
pub fn targets(ctx: &Ctx) -> Vec<Target> {
    let rows = &ctx.rows;
    let plan = &ctx.plan;
    let mut out = Vec::new();
    let mut at_least = |what: String, r: Option<f64>, want: f64| {
        out.push(Target {
            what,
            measured: r.map(|r| format!("{}x", num(r))),
            met: r.map(|r| r >= want),
        });
    };
    // Issues 12 and 19: writes, reaping, restarts and disk against SQLite.
    let clients = [1, 8, 64];
    for t in clients {
        at_least(
            format!("register >= 1.5x sqlite_normal at {t} clients"),
            ratio(rows, "register", "sqlite_normal", Some(t)),
            1.5,
        );
    }
    at_least(
        "register >= 1x sled_naive at 1 client".into(),
        ratio(rows, "register", "sled_naive", Some(1)),
        1.0,
    );
    for w in ["set_data", "extend"] {
        for t in clients {
            let want = if t == 1 { 1.0 } else { 1.5 };
            at_least(
                format!("{w} >= {want}x sqlite_normal at {t} clients"),
                ratio(rows, w, "sqlite_normal", Some(t)),
                want,
            );
        }
    }
    for &t in &plan.read_threads {
        at_least(
            format!("resolve_hot >= 0.8x sled_raw_get at {t} threads"),
            ratio(rows, "resolve_hot", "sled_raw_get", Some(t)),
            0.8,
        );
    }
    // The Redis engine against the hand-written baseline on the same server.
    for &t in &plan.read_threads {
        at_least(
            format!("sessiondb_redis resolve_hot >= 0.9x redis GETEX at {t} threads"),
            ratio_of(rows, "resolve_hot", "sessiondb_redis", "redis", Some(t)),
            0.9,
        );
    }
    for w in ["register", "set_data"] {
        for &t in &plan.write_threads {
            at_least(
                format!("sessiondb_redis {w} >= 0.7x redis one-script baseline at {t} clients"),
                ratio_of(rows, w, "sessiondb_redis", "redis", Some(t)),
                0.7,
            );
        }
    }
    // Rows count operations per second of server CPU: sessiondb's CPU per
    // register is at most twice the baseline's when this ratio is >= 0.5.
    at_least(
        "sessiondb_redis server CPU per register <= 2x the one-script baseline's (ratio >= 0.5)"
            .into(),
        ratio_of(rows, "cpu_register", "sessiondb_redis", "redis", None),
        0.5,
    );
    let callers = Some(plan.durable_callers);
    at_least(
        format!(
            "durable_register >= 1x redis appendfsync always at {} callers",
            plan.durable_callers
        ),
        ratio(rows, "durable_register", "redis_aof_always", callers),
        1.0,
    );
    let reap = find(rows, "reap", "sessiondb", Some(1));
    let rate = reap.and_then(|r| r.ops_per_sec);
    let p99 = reap.and_then(|r| r.p99_us);
    let sqlite = find(rows, "reap", "sqlite_normal", Some(1)).and_then(|r| r.ops_per_sec);
    let cpu =
        |t| find(rows, "durable_cpu", "sessiondb_immediate", Some(t)).and_then(|r| r.cpu_us_per_op);
    let (alone, two) = (cpu(1), cpu(2));
    out.push(Target {
        what: "a caller waiting on another's fsync sleeps: CPU per durable register at 2 callers <= 1.25x at 1".into(),
        measured: alone.zip(two).map(|(a, b)| format!("{:.2}x ({b:.0} vs {a:.0} µs)", b / a)),
        met: alone.zip(two).map(|(a, b)| b <= 1.25 * a),
    });
    out.push(Target {
        what: "reap >= 1.5x sqlite_normal's delete rate, foreground resolve p99 < 1 ms".into(),
        measured: rate.zip(p99).zip(sqlite).map(|((r, p), q)| {
            format!(
                "{}x ({} vs {} sessions/s), p99 {} µs",
                num(r / q),
                num(r),
                num(q),
                num(p)
            )
        }),
        met: rate
            .zip(p99)
            .zip(sqlite)
            .map(|((r, p), q)| r >= 1.5 * q && p < 1_000.0),
    });
    let sdb_reap = find(rows, "reap", "sessiondb_redis", Some(1));
    let rate = sdb_reap.and_then(|r| r.ops_per_sec);
    let p99 = sdb_reap.and_then(|r| r.p99_us);
    let bulk = find(rows, "reap", "redis", Some(1)).and_then(|r| r.ops_per_sec);
    out.push(Target {
        what: "sessiondb_redis reap across two nodes, every expiry announced, >= 0.7x redis's bulk delete; foreground resolve p99 < 5 ms".into(),
        measured: rate.zip(p99).zip(bulk).map(|((r, p), b)| {
            format!(
                "{}x ({} vs {} sessions/s), p99 {} µs",
                num(r / b),
                num(r),
                num(b),
                num(p)
            )
        }),
        met: rate
            .zip(p99)
            .zip(bulk)
            .map(|((r, p), b)| r >= 0.7 * b && p < 5_000.0),
    });
    // Idle nodes on a 3-primary cluster: the servers' commands per second.
    let idle =
        |n| find(rows, "idle_cost", "sessiondb_redis_cluster", Some(n)).and_then(|r| r.ops_per_sec);
    let (none, one, eight) = (idle(0), idle(1), idle(8));
    out.push(Target {
        what: "idle nodes on a 3-primary cluster: commands/s with 8 <= 2x with 1".into(),
        measured: one
            .zip(eight)
            .map(|(a, b)| format!("{}x ({} vs {} /s)", num(b / a.max(1e-9)), num(b), num(a))),
        met: one.zip(eight).map(|(a, b)| b <= 2.0 * a),
    });
    let per_node = none
        .zip(one)
        .zip(eight)
        .map(|((z, a), b)| ((a - z).max(0.0), (b - z).max(0.0) / 8.0));
    out.push(Target {
        what: "idle nodes: <= 20 commands/s per node over the cluster's own".into(),
        measured: per_node.map(|(a, b)| format!("{} with 1 node, {} each with 8", num(a), num(b))),
        met: per_node.map(|(a, b)| a <= 20.0 && b <= 20.0),
    });
    // Following the events: the server's CPU per register with 8 nodes
    // following, against 1 (rows count registers per server CPU second).
    let follow =
        |n| find(rows, "follow_cpu", "sessiondb_redis", Some(n)).and_then(|r| r.ops_per_sec);
    let cost = follow(1).zip(follow(8)).map(|(one, eight)| one / eight);
    out.push(Target {
        what: "redis-server CPU per register with 8 nodes following <= 1.2x with 1".into(),
        measured: cost.map(|c| format!("{}x", num(c))),
        met: cost.map(|c| c <= 1.2),
    });
    let mut at_most = |what: String, r: Option<f64>, want: f64| {
        out.push(Target {
            what,
            measured: r.map(|r| format!("{}x", num(r))),
            met: r.map(|r| r <= want),
        });
    };
    at_most(
        "open after SIGKILL <= 1.5x sled's own open of the killed directory".into(),
        ratio(rows, "open_unclean", "sled_raw", None),
        1.5,
    );
    at_most(
        "open after clean close <= 1x raw sled open of the same data".into(),
        ratio(rows, "open_clean", "sled_raw", None),
        1.0,
    );
    at_most(
        "disk bytes after the bulk load <= 2x sqlite_normal".into(),
        ratio(rows, "disk_bytes", "sqlite_normal", None),
        2.0,
    );
    at_most(
        "disk bytes after a day of churn <= 2x sqlite_normal".into(),
        ratio(rows, "disk_churn", "sqlite_normal", None),
        2.0,
    );
    // sessiondb's default cache (64 MiB) plus 100 MiB: the library with
    // glibc's defaults, and as the `sessiondb` binary runs.
    for (system, how) in [
        ("sessiondb", "glibc's default arenas"),
        ("sessiondb_2_arenas", "2 malloc arenas, as the binary"),
    ] {
        let rss = find(rows, "peak_rss", system, None).and_then(|r| r.bytes);
        out.push(Target {
            what: format!("peak RSS of the bulk load <= the 64 MiB cache + 100 MiB ({how})"),
            measured: rss.map(|b| format!("{} MiB", num(b as f64 / 1_048_576.0))),
            met: rss.map(|b| b <= (64 + 100) << 20),
        });
    }
    out
}

pub fn targets_text(targets: &[Target]) -> String {
    let mut out = String::from("targets (ratios from this run: sessiondb ÷ other)\n");
    for t in targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "  {:<13} {:<78} {}",
            verdict,
            t.what,
            t.measured.as_deref().unwrap_or("-")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(999.4), "999");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.5), "0.50");
    }

    #[test]
    fn ratios_use_the_groups_figure() {
        let mut a = Row::new("register", "sessiondb", Some(1));
        a.ops_per_sec = Some(300.0);
        let mut b = Row::new("register", "sled_naive", Some(1));
        b.ops_per_sec = Some(100.0);
        let mut c = Row::new("disk_bytes", "sessiondb", None);
        c.bytes = Some(150);
        let mut d = Row::new("disk_bytes", "sled_raw", None);
        d.bytes = Some(100);
        let rows = vec![a, b, c, d];
        assert_eq!(ratio(&rows, "register", "sled_naive", Some(1)), Some(3.0));
        assert_eq!(ratio(&rows, "register", "sled_naive", Some(2)), None);
        assert_eq!(ratio(&rows, "disk_bytes", "sled_raw", None), Some(1.5));
    }
}
