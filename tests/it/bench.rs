//! `gearframe bench` as a subprocess: it must finish, exit 0, and report
//! every scenario in its JSON. No test here asserts a time.

use std::process::Command;

use crate::support::peer;

fn bench(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gearframe"))
        .args(["bench", "--mode", "all", "--jobs", "200", "--seq-jobs", "50", "--rounds", "1"])
        .args(["--workers", "1,2", "--in-flight", "50", "--json"])
        .args(extra)
        .output()
        .expect("run gearframe bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gearframe bench failed: {}\n{stderr}", out.status);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("bad JSON ({e}): {}\n{stderr}", String::from_utf8_lossy(&out.stdout))
    })
}

/// Every scenario appears for `server`, with a rate above zero and one run.
fn check_rows(doc: &serde_json::Value, server: &str) {
    let rows = doc["rows"].as_array().expect("rows");
    let want: [(&str, Option<u64>); 6] = [
        ("bg", None),
        ("drain", Some(1)),
        ("drain", Some(2)),
        ("fg", Some(1)),
        ("fg", Some(2)),
        ("seq", Some(1)),
    ];
    for (scenario, workers) in want {
        let row = rows
            .iter()
            .find(|r| {
                r["scenario"] == scenario
                    && r["workers"].as_u64() == workers
                    && r["server"] == server
                    && r["generator"] == "gearframe"
            })
            .unwrap_or_else(|| panic!("no {scenario} {workers:?} row for {server}: {doc:#}"));
        assert!(row["median"]["jobs_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{row:#}");
        assert_eq!(row["runs"].as_array().map(Vec::len), Some(1), "{row:#}");
        assert!(row["median"]["server_cpu_s"].is_number(), "server CPU not measured: {row:#}");
    }
}

#[test]
fn bench_all_scenarios_on_gearframe() {
    // Polling off everywhere: every scenario must still complete.
    let doc = bench(&["--busy-poll", "0"]);
    check_rows(&doc, "gearframe");
    assert_eq!(doc["settings"]["busy_poll_us"], 0, "{doc:#}");
    assert!(doc["machine"]["nproc"].as_u64().unwrap_or(0) >= 1);
}

#[test]
fn bench_against_gearmand() {
    if peer("gearmand").is_none() {
        return;
    }
    let doc = bench(&["--against-gearmand"]);
    check_rows(&doc, "gearframe");
    check_rows(&doc, "gearmand");
    let ratios = doc["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.iter().filter(|r| r["kind"] == "server").count(), 6, "{doc:#}");
}

#[test]
fn bench_with_the_php_peer_on_both_servers() {
    if peer("gearmand").is_none() || peer("php").is_none() {
        return;
    }
    let doc = bench(&["--peer", "php"]);
    check_rows(&doc, "gearframe");
    check_rows(&doc, "gearmand");
    let rows = doc["rows"].as_array().expect("rows");
    for server in ["gearframe", "gearmand"] {
        let php = rows.iter().filter(|r| r["server"] == server && r["generator"] == "php");
        assert_eq!(php.clone().count(), 6, "php rows on {server}: {doc:#}");
        for r in php {
            assert!(r["median"]["jobs_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{r:#}");
        }
    }
    let ratios = doc["ratios"].as_array().expect("ratios");
    let client = |server: &str| {
        ratios
            .iter()
            .filter(|r| r["kind"] == "client" && r["what"].as_str().unwrap_or("").contains(server))
            .count()
    };
    assert_eq!((client("on gearframe"), client("on gearmand")), (6, 6), "{doc:#}");
    assert_eq!(ratios.iter().filter(|r| r["kind"] == "latency").count(), 1, "{doc:#}");
}
