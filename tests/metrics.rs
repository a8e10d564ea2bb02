//! `/metrics` read by Python's own Prometheus parser (Debian's
//! python3-prometheus-client): etcd's metric names grow as the member works.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Every sample of `/metrics` on `endpoint`, as `name{label="v",…}` →
/// value, parsed by prometheus_client (which fails on a malformed page).
fn scrape(endpoint: &str) -> BTreeMap<String, f64> {
    let page = http_get(endpoint, "/metrics").expect("GET /metrics");
    let parser = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}=\"{v}\"' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{s.name}{{{labels}}} {s.value}')\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Debian's python3 (scripts/setup-debian.sh installs python3-prometheus-client)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "prometheus_client cannot read /metrics: {}\n{page}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| panic!("no {name} in {:#?}", samples.keys().collect::<Vec<_>>()))
}

#[test]
fn metrics_have_etcds_names_and_grow_with_the_work() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let (_dir, m) = single_member(&[&format!("--listen-metrics-urls=http://{metrics}"), "--metrics=extensive"]);
    let before = scrape(&metrics);
    assert_eq!(value(&before, "etcd_server_has_leader{}"), 1.0);
    assert_eq!(value(&before, "etcd_server_is_leader{}"), 1.0);
    assert_eq!(value(&before, r#"etcd_server_version{server_version="3.5.0"}"#), 1.0);
    assert!(value(&before, "process_resident_memory_bytes{}") > 0.0);
    for i in 0..20 {
        etcdctl_ok(&m.endpoint(), &["put", &format!("k{i}"), "v"]);
    }
    let failed = etcdctl(&m.endpoint(), &["get", "k1", "--rev=1000"]);
    assert!(!failed.status.success());
    let after = scrape(&m.endpoint());
    assert!(value(&after, "etcd_server_proposals_committed_total{}") >= value(&before, "etcd_server_proposals_committed_total{}") + 20.0);
    assert!(value(&after, "etcd_server_proposals_applied_total{}") >= 20.0);
    assert!(value(&after, "etcd_disk_wal_fsync_duration_seconds_count{}") >= 20.0);
    assert!(value(&after, "etcd_disk_backend_commit_duration_seconds_count{}") >= 20.0);
    assert_eq!(value(&after, "etcd_mvcc_put_total{}"), 20.0);
    assert!(value(&after, "etcd_mvcc_db_total_size_in_bytes{}") > 0.0);
    let put = r#"grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary""#;
    assert_eq!(value(&after, &format!("grpc_server_handled_total{{{put}}}")), 20.0);
    let started = r#"grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary""#;
    assert_eq!(value(&after, &format!("grpc_server_started_total{{{started}}}")), 20.0);
    let future = r#"grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary""#;
    assert_eq!(value(&after, &format!("grpc_server_handled_total{{{future}}}")), 1.0);
    assert_eq!(value(&after, &format!("grpc_server_handling_seconds_count{{{started}}}")), 20.0, "--metrics extensive");
    assert!(value(&after, "etcd_debugging_mvcc_keys_total{}") >= 1.0);
    assert!(value(&after, "etcd_mvcc_db_total_size_in_use_in_bytes{}") > 0.0);
    assert!(value(&after, "etcd_network_client_grpc_received_bytes_total{}") > 20.0 * 4.0);
    assert!(value(&after, "etcd_network_client_grpc_sent_bytes_total{}") > 20.0 * 4.0);
    // Where the memory budget goes: the puts are in the state's and the
    // log's memtables and in the watch history, none of it yet in a cache.
    let part = |name: &str| value(&after, &format!("cairn_memory_bytes{{part=\"{name}\"}}"));
    for written in ["state_memtables", "log_memtables"] {
        assert!(part(written) > 0.0, "{written} holds the puts");
    }
    assert!(part("watch_history") >= 20.0 * 3.0, "twenty changes of k<i>=v are kept for watchers");
    assert!(part("state_block_cache") >= 0.0 && part("log_block_cache") >= 0.0);
    // The process heap: the watch history is in it; what is free is reported
    // (value() fails on a missing series).
    let heap = |state: &str| value(&after, &format!("cairn_heap_bytes{{state=\"{state}\"}}"));
    assert!(heap("in_use") >= part("watch_history"), "the heap in use holds the watch history");
    assert!(heap("free") >= 0.0);

    let watchers = || value(&scrape(&metrics), "etcd_mvcc_watcher_total{}");
    assert_eq!(watchers(), 0.0);
    let mut watch = etcdctl_command(&m.endpoint(), &["watch", "k", "--prefix"]).stdout(Stdio::null()).spawn().unwrap();
    wait_until(|| watchers() == 1.0, "the watch counted");
    watch.kill().unwrap();
    watch.wait().unwrap();
    wait_until(|| watchers() == 0.0, "the watch uncounted when its stream ends");
}

fn wait_until(done: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of every sample of `name` whatever its labels.
fn total(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
}

#[test]
fn leader_changes_seen_grows_when_the_leader_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let witness = (leader + 1) % 3;
    let seen = |m: &Member| value(&scrape(&m.endpoint()), "etcd_server_leader_changes_seen_total{}");
    let on_leader = scrape(&members[leader].endpoint());
    let to_peers = r#"etcd_network_peer_round_trip_time_seconds_count{To=""#;
    assert_eq!(on_leader.keys().filter(|k| k.starts_with(to_peers)).count(), 2, "heartbeats timed to both followers");
    assert!(total(&on_leader, "etcd_network_peer_sent_bytes_total") > 0.0);
    assert!(total(&scrape(&members[witness].endpoint()), "etcd_network_peer_received_bytes_total") > 0.0);
    let before = seen(&members[witness]);
    assert!(before >= 1.0);
    members[leader].kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen(&members[witness]) <= before {
        assert!(std::time::Instant::now() < deadline, "no new leader seen");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(value(&scrape(&members[witness].endpoint()), "etcd_server_has_leader{}"), 1.0);
    let new_leader = (0..3).find(|&i| i != leader && value(&scrape(&members[i].endpoint()), "etcd_server_is_leader{}") == 1.0);
    let new_leader = &members[new_leader.expect("one of the two leads")];
    wait_until(
        || value(&scrape(&new_leader.endpoint()), "etcd_server_heartbeat_send_failures_total{}") > 0.0,
        "heartbeats to the killed member fail",
    );
}

#[test]
fn a_member_that_is_down_is_retried_every_heartbeat_and_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let down = (leader + 1) % 3;
    let down_id = rt.block_on(status_of(&members[down])).unwrap().header().unwrap().member_id();
    let leader_endpoint = members[leader].endpoint();
    let failures = || value(&scrape(&leader_endpoint), "etcd_server_heartbeat_send_failures_total{}");
    let log_before = members[leader].log_text();
    members[down].kill9();
    std::thread::sleep(Duration::from_millis(500));
    let before = failures();
    std::thread::sleep(Duration::from_secs(2));
    let retried = failures() - before;
    // Every 100 ms (the heartbeat interval) is 20 tries; openraft's own 500 ms would be 4.
    assert!(retried >= 10.0, "the leader tried the member that is down {retried} times in 2 s");
    let log = members[leader].log_text();
    let while_down = &log[log_before.len()..];
    let gone = format!(r#""peer":"{down_id:x}""#);
    let inactive = while_down.lines().filter(|l| l.contains("peer became inactive") && l.contains(&gone)).count();
    assert_eq!(inactive, 1, "one line for the member going, not one per try:\n{while_down}");
    assert!(!while_down.contains("backoff mode") && !while_down.contains("update progress error"), "{while_down}");

    etcdctl_ok(&leader_endpoint, &["put", "written-while-down", "v"]);
    members[down].start();
    let back = members[down].endpoint();
    wait_until(
        || String::from_utf8_lossy(&etcdctl(&back, &["get", "written-while-down", "--consistency=s", "--print-value-only"]).stdout).trim() == "v",
        "the restarted member catches up",
    );
    let log = members[leader].log_text();
    let active = log[log_before.len()..].lines().filter(|l| l.contains("peer became active") && l.contains(&gone)).count();
    assert_eq!(active, 1, "one line for the member coming back");
}

#[test]
fn an_idle_member_writes_out_its_memtables_and_keeps_every_key() {
    let (_dir, m) = single_member(&[]);
    let endpoint = m.endpoint();
    let memtables = || value(&scrape(&endpoint), r#"cairn_memory_bytes{part="state_memtables"}"#);
    let value_of = |i: usize| format!("{i:08}").repeat(1024);
    runtime().block_on(async {
        let mut c = client(&[endpoint.clone()]).await;
        for i in 0..800 {
            c.put(format!("key{i}"), value_of(i), None).await.unwrap();
        }
    });
    let held = memtables();
    assert!(held >= 6e6, "the 6.5 MB of puts are in the memtables: {held}");
    // Not at once: a member still writing keeps them.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(memtables(), held, "written out before the member was idle");
    wait_until(|| memtables() < 1e6, "an idle member's memtables written out");
    let read = etcdctl_ok(&endpoint, &["get", "key799", "--print-value-only"]);
    assert_eq!(read.trim(), value_of(799));
    let keys = etcdctl_ok(&endpoint, &["get", "key", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 800);
}
