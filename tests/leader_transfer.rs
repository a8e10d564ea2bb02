//! Leader transfer: etcdctl move-leader, and the handover a leader makes when
//! it is stopped, both while a client writes without pause.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_has_all, etcdctl, etcdctl_ok, leader_index, runtime, spawn_writer, three_member_cluster_with, Member};

fn member_id(m: &Member) -> u64 {
    runtime().block_on(async { common::status_of(m).await.unwrap().header().unwrap().member_id() })
}

fn all_endpoints(members: &[Member]) -> String {
    members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
}

#[test]
fn move_leader_with_etcdctl_hands_over_at_once_and_refuses_as_etcd() {
    let dir = tempfile::tempdir().unwrap();
    // A long election timeout: a transfer that fell back on an election would show.
    let members = three_member_cluster_with(dir.path(), &["--election-timeout", "3000"]);
    let rt = runtime();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let writer = spawn_writer(&rt, Arc::new(Mutex::new(eps)), acked.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    let leader = rt.block_on(leader_index(&members));
    let (leader_id, target) = (member_id(&members[leader]), (leader + 1) % 3);
    let target_id = member_id(&members[target]);
    let started = Instant::now();
    let out = etcdctl_ok(&all_endpoints(&members), &["move-leader", &format!("{target_id:x}")]);
    let took = started.elapsed();
    assert_eq!(out.trim(), format!("Leadership transferred from {leader_id:x} to {target_id:x}"));
    assert_eq!(rt.block_on(leader_index(&members)), target, "every member follows the new leader");
    assert!(took < Duration::from_millis(1500), "move-leader took {took:?}, an election timeout is 3 s");

    // Moving to the leader itself is done already, as in etcd.
    let out = etcdctl_ok(&members[target].endpoint(), &["move-leader", &format!("{target_id:x}")]);
    assert!(out.contains(&format!("to {target_id:x}")), "{out}");

    // etcd's refusals: a stranger as transferee, and a member that does not lead.
    let bad = etcdctl(&all_endpoints(&members), &["move-leader", "1234"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("etcdserver: bad leader transferee"), "{bad:?}");
    let follower = (target + 1) % 3;
    let refused = rt.block_on(async {
        let mut c = common::client(&[members[follower].endpoint()]).await;
        c.move_leader(leader_id).await.map(|_| ()).map_err(common::code_and_message)
    });
    assert_eq!(refused, Err((tonic::Code::FailedPrecondition, "etcdserver: not leader".to_string())));
    // Asked of the leader for itself: done at once, and, as etcd's, the answer has no header.
    let to_itself = rt.block_on(async {
        let mut c = common::client(&[members[target].endpoint()]).await;
        c.move_leader(target_id).await.unwrap()
    });
    assert!(to_itself.header().is_none());
    let no_leader_given = etcdctl(&members[follower].endpoint(), &["move-leader", &format!("{leader_id:x}")]);
    assert!(String::from_utf8_lossy(&no_leader_given.stderr).contains("no leader endpoint given"));

    // And back, still under writes; nothing acknowledged is lost.
    etcdctl_ok(&all_endpoints(&members), &["move-leader", &format!("{leader_id:x}")]);
    assert_eq!(rt.block_on(leader_index(&members)), leader);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let attempts = rt.block_on(writer).unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} of {attempts} writes acknowledged across two transfers", acked.len());
    assert!(acked.len() * 10 >= attempts * 9, "writes failed during the transfers: {} of {attempts}", acked.len());
    for m in &members {
        rt.block_on(assert_has_all(m, &acked));
    }
}

#[test]
fn a_stopping_leader_hands_over_so_writes_pause_far_less_than_an_election_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster_with(dir.path(), &["--election-timeout", "3000"]);
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let followers: Vec<String> = (0..3).filter(|&i| i != leader).map(|i| members[i].endpoint()).collect();

    // One client writes through the followers; every put's latency is kept.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = rt.spawn({
        let stop = stop.clone();
        async move {
            let mut c = common::client(&followers).await;
            let (mut acked, mut slowest, mut i) = (BTreeMap::new(), Duration::ZERO, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (key, value) = (format!("w/{i:06}"), format!("v{i}"));
                c.put(key.clone(), value.clone(), None).await.expect("a write failed during the handover");
                slowest = slowest.max(started.elapsed());
                acked.insert(key, value);
                i += 1;
            }
            (acked, slowest)
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let status = members[leader].terminate();
    assert!(status.success(), "SIGTERM ends the member cleanly: {status:?}");
    assert!(
        members[leader].log_text().contains("leadership transferred before stopping"),
        "{}",
        members[leader].log_text()
    );
    let new_leader = rt.block_on(leader_index(&members));
    assert_ne!(new_leader, leader);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (acked, slowest) = rt.block_on(writer).unwrap();
    eprintln!("{} writes; the slowest took {slowest:?} (election timeout 3 s)", acked.len());
    // Without the handover the followers wait out the lease and an election
    // timeout: 4.5 s or more.
    assert!(slowest < Duration::from_millis(1500), "a write waited {slowest:?}");

    // The old leader comes back as a follower with everything.
    members[leader].add_args(&["--initial-cluster-state", "existing"]);
    members[leader].start();
    members[leader].wait_healthy(Duration::from_secs(20));
    for m in &members {
        rt.block_on(assert_has_all(m, &acked));
    }
}

#[test]
fn a_transfer_to_a_member_that_stops_answering_gives_up_and_loses_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster_with(dir.path(), &["--election-timeout", "1000"]);
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let target = (leader + 1) % 3;
    let target_id = member_id(&members[target]);
    let others: Vec<String> = (0..3).filter(|&i| i != target).map(|i| members[i].endpoint()).collect();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(&rt, Arc::new(Mutex::new(others.clone())), acked.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(300));

    // Frozen, the target takes the leader's Campaign call and never answers.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(members[target].pid() as i32), nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    // As with etcd: the leader holds new writes for one election timeout,
    // then lets them flow while the call waits out etcdctl's 5 s deadline.
    let before = acked.lock().unwrap().len();
    let out = etcdctl(&others.join(","), &["move-leader", &format!("{target_id:x}")]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("context deadline exceeded") || err.contains("leader transfer took too long"), "{err}");
    let during = acked.lock().unwrap().len() - before;
    assert!(during >= 100, "only {during} writes were acknowledged while the transfer call waited");

    // It dies there; the other two keep leading and taking writes.
    members[target].kill9();
    let before = acked.lock().unwrap().len();
    let resumed = Instant::now();
    while acked.lock().unwrap().len() < before + 50 {
        assert!(resumed.elapsed() < Duration::from_secs(10), "writes did not resume after the failed transfer");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    rt.block_on(writer).unwrap();

    members[target].add_args(&["--initial-cluster-state", "existing"]);
    members[target].start();
    members[target].wait_healthy(Duration::from_secs(20));
    let acked = acked.lock().unwrap().clone();
    for m in &members {
        rt.block_on(assert_has_all(m, &acked));
    }
}
