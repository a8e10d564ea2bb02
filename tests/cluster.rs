//! Three-member static clusters: forwarding, reads from every member, and
//! kill -9 of the leader (and of everyone) without losing acknowledged writes
//! or letting the members' stores differ.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    assert_has_all, client, etcdctl, etcdctl_ok, leader_index, runtime, spawn_writer, status_of, three_member_cluster,
    three_member_cluster_with, Member,
};
use etcd_client::GetOptions;

fn endpoints(members: &[Member]) -> String {
    members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
}

#[test]
fn static_cluster_with_etcd_guide_flags() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_member_cluster(dir.path());
    let eps = endpoints(&members);

    let health = etcdctl(&eps, &["endpoint", "health"]);
    let text = String::from_utf8_lossy(&health.stdout).to_string() + &String::from_utf8_lossy(&health.stderr);
    assert!(health.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");

    let list = etcdctl_ok(&members[0].endpoint(), &["member", "list"]);
    for m in &members {
        assert!(list.contains(&format!(", started, {}, {}, {}, false", m.name, m.peer_url, m.client_url)), "{list}");
    }
    let status = etcdctl_ok(&eps, &["endpoint", "status", "-w", "json"]);
    assert_eq!(status.matches("\"leader\":").count(), 3);

    // A write through each member is read (linearizably) from every member.
    for (i, writer) in members.iter().enumerate() {
        assert_eq!(etcdctl_ok(&writer.endpoint(), &["put", &format!("via{i}"), &writer.name]).trim(), "OK");
        for reader in &members {
            let got = etcdctl_ok(&reader.endpoint(), &["get", &format!("via{i}"), "--print-value-only"]);
            assert_eq!(got.trim(), writer.name, "read from {}", reader.name);
        }
    }

    runtime().block_on(async {
        let mut c = client(&[members[2].endpoint()]).await;
        let put = c.put("hdr", "x", None).await.unwrap();
        let h = put.header().unwrap();
        assert!(h.cluster_id() != 0 && h.member_id() != 0);
        let ids: Vec<u64> = {
            let mut ids = Vec::new();
            for m in &members {
                ids.push(status_of(m).await.unwrap().header().unwrap().member_id());
            }
            ids
        };
        assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "distinct member ids");
    });
}

/// Writes through every live member until stopped; records what was acknowledged.
#[test]
fn leader_kill9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let writer = spawn_writer(&rt, Arc::new(Mutex::new(eps)), acked.clone(), stop.clone());

    std::thread::sleep(Duration::from_millis(800));
    let old_leader = rt.block_on(leader_index(&members));
    let before = acked.lock().unwrap().len();
    assert!(before > 0, "writes were acknowledged before the kill");
    let killed_at = Instant::now();
    members[old_leader].kill9();

    // A new leader among the survivors, within a few election timeouts.
    let new_leader = rt.block_on(leader_index(&members));
    let elected_in = killed_at.elapsed();
    assert_ne!(new_leader, old_leader);
    assert!(elected_in < Duration::from_secs(4), "election took {elected_in:?}");

    // Writes go on through the survivors.
    let resumed = Instant::now();
    while acked.lock().unwrap().len() < before + 20 {
        assert!(resumed.elapsed() < Duration::from_secs(15), "writes did not resume after the leader died");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The killed member restarts from its data dir and catches up; as etcd,
    // it takes --initial-cluster-state existing on a restart.
    members[old_leader].add_args(&["--initial-cluster-state", "existing"]);
    members[old_leader].start();
    members[old_leader].wait_healthy(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let attempts = rt.block_on(writer).unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} of {attempts} writes acknowledged; new leader elected in {elected_in:?}", acked.len());
    for m in &members {
        rt.block_on(assert_has_all(m, &acked));
    }

    // Kill -9 of all three, restart: still every acknowledged write, everywhere.
    members.iter_mut().for_each(Member::kill9);
    members.iter_mut().for_each(Member::start);
    members.iter().for_each(|m| m.wait_healthy(Duration::from_secs(20)));
    for m in &members {
        rt.block_on(assert_has_all(m, &acked));
    }
    let eps = endpoints(&members);
    assert_eq!(etcdctl_ok(&eps, &["put", "after-restart", "ok"]).trim(), "OK");
}

/// A leader hands its entries to the followers before its own fsync, so a
/// kill -9 can take entries from its log that a follower already holds.
/// Restarted before the others campaign, it must not lead that term again:
/// its new entries would take the lost ones' log ids, and the members would
/// apply different entries under the same id.
#[test]
fn a_leader_restarted_at_once_leads_no_term_it_led_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    // Many writers at once, so that the leader's log writer always has a queue.
    let writers: Vec<_> =
        (0..16).map(|_| spawn_writer(&rt, Arc::new(Mutex::new(eps.clone())), acked.clone(), stop.clone())).collect();
    for m in members.iter_mut() {
        m.add_args(&["--initial-cluster-state", "existing"]);
    }
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        let leader = rt.block_on(leader_index(&members));
        let term = rt.block_on(status_of(&members[leader])).expect("the leader answers").raft_term();
        members[leader].kill9();
        members[leader].start();
        members[leader].wait_healthy(Duration::from_secs(20));
        let now = rt.block_on(leader_index(&members));
        let term_now = rt.block_on(status_of(&members[now])).expect("the leader answers").raft_term();
        assert!(term_now > term, "round {round}: m{leader} led term {term} before its kill -9; m{now} leads term {term_now} after");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(async {
        for w in writers {
            w.await.unwrap();
        }
    });
    let acked = acked.lock().unwrap().clone();
    for m in &members {
        rt.block_on(assert_has_all(m, &acked));
    }
    // Every member holds the same keys, versions and revisions.
    let hashes = rt.block_on(async {
        let revision = client(&eps).await.get("w/", None).await.unwrap().header().unwrap().revision();
        let mut hashes = Vec::new();
        for m in &members {
            let mut c = client(&[m.endpoint()]).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            let hash = loop {
                match c.hash_kv(revision).await {
                    Ok(r) => break r.hash(),
                    Err(e) => assert!(Instant::now() < deadline, "{} has no hash at revision {revision}: {e}", m.name),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            hashes.push(hash);
        }
        hashes
    });
    assert!(hashes.iter().all(|h| *h == hashes[0]), "the members' stores differ: {hashes:?}");
}

#[test]
fn follower_reads_are_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_member_cluster(dir.path());
    let rt = runtime();
    rt.block_on(async {
        let leader = leader_index(&members).await;
        let followers: Vec<&Member> = members.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m).collect();
        let mut w = client(&[members[leader].endpoint()]).await;
        let mut r = client(&[followers[0].endpoint()]).await;
        // Each read right after an acknowledged write (to another member) must see it.
        for i in 0..200 {
            let v = format!("{i}");
            w.put("lin", v.clone(), None).await.unwrap();
            let got = r.get("lin", None).await.unwrap();
            assert_eq!(got.kvs()[0].value_str().unwrap(), v, "stale read at step {i}");
            // A compare-only txn is linearizable too.
            let txn = etcd_client::Txn::new().when([etcd_client::Compare::value("lin", etcd_client::CompareOp::Equal, v.clone())]);
            assert!(r.txn(txn).await.unwrap().succeeded(), "stale compare at step {i}");
        }

        // Concurrent readers on both followers (their reads share ReadIndex
        // rounds) never see less than what was acknowledged before they asked.
        let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                for n in 1u64.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    w.put("ctr", n.to_string(), None).await.unwrap();
                    acked.store(n, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        let mut readers = Vec::new();
        for i in 0..8 {
            let endpoint = followers[i % 2].endpoint();
            let acked = acked.clone();
            readers.push(tokio::spawn(async move {
                let mut c = client(&[endpoint]).await;
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut reads = 0;
                while Instant::now() < deadline {
                    let floor = acked.load(std::sync::atomic::Ordering::SeqCst);
                    let got = c.get("ctr", None).await.unwrap();
                    let seen: u64 = got.kvs().first().map_or(0, |kv| kv.value_str().unwrap().parse().unwrap());
                    assert!(seen >= floor, "stale read: saw {seen} after {floor} was acknowledged");
                    reads += 1;
                }
                reads
            }));
        }
        let mut total = 0;
        for r in readers {
            total += r.await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.await.unwrap();
        assert!(total > 100, "only {total} reads");
    });
}

/// A member that was down while the others compacted their Raft logs catches
/// up from a snapshot.
#[test]
fn lagging_member_catches_up_from_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster_with(dir.path(), &["--snapshot-count", "20"]);
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let lagging = (leader + 1) % 3;
    // Keys the lagging member holds before it goes down, deleted while it is
    // down: the snapshot must replace its state, not merge into it.
    let high_key = vec![0xFFu8; 100];
    rt.block_on(async {
        let mut c = client(&[members[leader].endpoint()]).await;
        c.put("w/stale", "old", None).await.unwrap();
        c.put(high_key.clone(), "old", None).await.unwrap();
        let mut on_lagging = client(&[members[lagging].endpoint()]).await;
        on_lagging.get("w/stale", None).await.unwrap();
    });
    members[lagging].kill9();
    let mut acked = BTreeMap::new();
    rt.block_on(async {
        let mut c = client(&[members[leader].endpoint()]).await;
        c.delete("w/stale", None).await.unwrap();
        c.delete(high_key.clone(), None).await.unwrap();
        for i in 0..300 {
            let (k, v) = (format!("w/{i:04}"), format!("v{i}"));
            c.put(k.clone(), v.clone(), None).await.unwrap();
            acked.insert(k, v);
        }
        c.delete("w/0000", None).await.unwrap();
        acked.remove("w/0000");
    });
    members[lagging].start();
    members[lagging].wait_healthy(Duration::from_secs(20));
    rt.block_on(assert_has_all(&members[lagging], &acked));
    rt.block_on(async {
        let mut c = client(&[members[lagging].endpoint()]).await;
        let got = c.get("w/0000", Some(GetOptions::new().with_serializable())).await.unwrap();
        assert!(got.kvs().is_empty(), "the delete came with the snapshot");
        for gone in [b"w/stale".to_vec(), high_key.clone()] {
            let got = c.get(gone, Some(GetOptions::new().with_serializable())).await.unwrap();
            assert!(got.kvs().is_empty(), "state from before the snapshot is gone");
        }
        let leader_rev = client(&[members[leader].endpoint()]).await.get("w/", None).await.unwrap().header().unwrap().revision();
        assert_eq!(got.header().unwrap().revision(), leader_rev, "same revision on the caught-up member");
    });
    let log = std::fs::read_to_string(dir.path().join(format!("m{}.log", lagging + 1))).unwrap();
    assert!(log.contains("installed snapshot from the leader"), "caught up through a snapshot:\n{log}");
}

/// A member left alone after losing its quorum answers with etcd's timeout,
/// never hanging and never serving a read it cannot prove current.
#[test]
fn no_quorum_times_out_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    rt.block_on(async {
        client(&[members[leader].endpoint()]).await.put("before", "x", None).await.unwrap();
    });
    for (i, m) in members.iter_mut().enumerate() {
        if i != leader {
            m.kill9();
        }
    }
    rt.block_on(async {
        let mut c = client(&[members[leader].endpoint()]).await;
        let started = Instant::now();
        let err = c.put("after", "x", None).await.unwrap_err();
        let etcd_client::Error::GRpcStatus(status) = err else { panic!("gRPC status expected") };
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().starts_with("etcdserver: "), "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(12), "answered in {:?}", started.elapsed());
        let err = c.get("before", None).await.unwrap_err();
        let etcd_client::Error::GRpcStatus(status) = err else { panic!("gRPC status expected") };
        assert_eq!(status.code(), tonic::Code::Unavailable, "linearizable read without quorum: {status:?}");
        // A serializable read is local and still answers.
        let local = c.get("before", Some(GetOptions::new().with_serializable())).await.unwrap();
        assert_eq!(local.kvs()[0].value(), b"x");
    });
}

/// A leader that cannot commit (both followers down) does not queue writes
/// without end: past its backlog limit it answers etcd's "too many
/// requests" at once, and the writes whose callers gave up while queued are
/// never proposed once the followers are back.
#[test]
fn a_leader_that_cannot_commit_refuses_writes_past_its_backlog() {
    const CONNECTIONS: usize = 100;
    // Below the 200 streams one HTTP/2 connection carries at once, so every
    // put reaches the leader rather than waiting in the client.
    const PUTS_PER_CONNECTION: usize = 150;
    // The proposer's two entries in flight hold at most 1,024 commands each.
    const AT_MOST_IN_FLIGHT: i64 = 2 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let ep = members[leader].endpoint();
    for (i, m) in members.iter_mut().enumerate() {
        if i != leader {
            m.kill9();
        }
    }
    let (refused, other_errors, first_refusal) = rt.block_on(async {
        let clients = futures::future::join_all((0..CONNECTIONS).map(|_| client(std::slice::from_ref(&ep)))).await;
        let started = Instant::now();
        let puts = clients.into_iter().enumerate().flat_map(|(c, client)| {
            (0..PUTS_PER_CONNECTION).map(move |p| {
                let mut client = client.clone();
                async move { (client.put(format!("flood/{c}/{p}"), "x", None).await, started.elapsed()) }
            })
        });
        let answers = futures::future::join_all(puts).await;
        let mut refused = 0;
        let mut other_errors = BTreeMap::<String, usize>::new();
        let mut first_refusal = Duration::MAX;
        for (answer, after) in answers {
            match answer {
                Ok(_) => panic!("a put committed with both followers down"),
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::ResourceExhausted && s.message() == "etcdserver: too many requests" =>
                {
                    refused += 1;
                    first_refusal = first_refusal.min(after);
                }
                Err(e) => *other_errors.entry(e.to_string()).or_default() += 1,
            }
        }
        (refused, other_errors, first_refusal)
    });
    assert!(refused > 0, "no put was refused; the others: {other_errors:?}");
    assert!(first_refusal < Duration::from_secs(4), "the first refusal came after {first_refusal:?}, not at once");
    assert!(
        other_errors.keys().all(|e| e.contains("etcdserver: request timed out")),
        "queued puts end with etcd's timeout: {other_errors:?}"
    );

    for (i, m) in members.iter_mut().enumerate() {
        if i != leader {
            m.start();
        }
    }
    members.iter().for_each(|m| m.wait_healthy(Duration::from_secs(30)));
    let written = rt.block_on(async {
        let mut c = client(&[ep]).await;
        // The backlog drains once the entries in flight commit, which waits
        // for the leader's next replication attempt to the followers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = c.put("after", "x", None).await {
            assert!(Instant::now() < deadline, "still no write 10 s after the followers came back: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.get("flood/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count()
    });
    eprintln!("{refused} puts refused at once, the first after {first_refusal:?}; {written} written once the followers were back");
    assert!(
        written <= AT_MOST_IN_FLIGHT,
        "{written} puts whose callers had gone were proposed after the followers came back; at most the {AT_MOST_IN_FLIGHT} in flight may be"
    );
}

/// A leader sends each follower its entries on one long-lived stream. A
/// follower told to stop ends that stream, rather than have its server's
/// graceful stop wait out a stream the leader never closes.
#[test]
fn a_follower_stops_at_once_while_the_leader_writes_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let to_leader = Arc::new(Mutex::new(vec![members[leader].endpoint()]));
    let writer = spawn_writer(&rt, to_leader, acked.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    let asked = Instant::now();
    let status = members[(leader + 1) % 3].terminate();
    let took = asked.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(writer).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(1), "the follower took {took:?} to stop");
    assert!(!acked.lock().unwrap().is_empty(), "the leader was writing");
}
