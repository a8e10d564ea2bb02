//! Leases, locks and elections against real members: expiry decided by the
//! leader and watched as deletes, keepalives through a follower and across
//! a leader's kill -9, TTLs that survive a restart of every member, and the
//! lock and election services (and etcdctl's client-side ones).

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    client, code_and_message, etcdctl, etcdctl_command, etcdctl_ok, leader_index, runtime, single_member,
    three_member_cluster_with, Member,
};
use etcd_client::proto::{PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, LockOptions, PutOptions, WatchOptions,
};
use tokio::runtime::Runtime;



#[test]
fn grant_put_revoke_and_errors() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        // etcd's minimum TTL is 1.5 election timeouts, rounded up: 2 s by default.
        let short = c.lease_grant(1, None).await.unwrap();
        assert_eq!(short.ttl(), 2);
        let chosen = c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap();
        assert_eq!((chosen.id(), chosen.ttl()), (0x1234, 60));
        let (code, msg) = code_and_message(c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234))).await.unwrap_err());
        assert_eq!((code, msg.as_str()), (tonic::Code::FailedPrecondition, "etcdserver: lease already exists"));
        let (code, msg) = code_and_message(c.lease_grant(9_000_000_001, None).await.unwrap_err());
        assert_eq!((code, msg.as_str()), (tonic::Code::OutOfRange, "etcdserver: too large lease TTL"));

        let (code, msg) = code_and_message(c.put("k", "v", Some(PutOptions::new().with_lease(0x999))).await.unwrap_err());
        assert_eq!((code, msg.as_str()), (tonic::Code::NotFound, "etcdserver: requested lease not found"));

        let other = c.lease_grant(60, None).await.unwrap().id();
        c.put("a", "1", Some(PutOptions::new().with_lease(0x1234))).await.unwrap();
        c.put("b", "1", Some(PutOptions::new().with_lease(0x1234))).await.unwrap();
        // A put with another lease moves the key; ignore_lease keeps it.
        c.put("b", "2", Some(PutOptions::new().with_lease(other))).await.unwrap();
        c.put("b", "3", Some(PutOptions::new().with_ignore_lease())).await.unwrap();
        let ttl = c.lease_time_to_live(0x1234, Some(LeaseTimeToLiveOptions::new().with_keys())).await.unwrap();
        assert_eq!((ttl.granted_ttl(), ttl.keys()), (60, &[b"a".to_vec()][..]));
        assert!(ttl.ttl() > 55 && ttl.ttl() <= 60);
        let listed: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
        assert!(listed.contains(&0x1234) && listed.contains(&other) && listed.contains(&short.id()));

        // Revoke deletes every attached key in one revision, seen by watchers.
        let mut w = c.watch("", Some(WatchOptions::new().with_all_keys())).await.unwrap();
        w.message().await.unwrap();
        c.put("c", "1", Some(PutOptions::new().with_lease(0x1234))).await.unwrap();
        let rev = c.lease_revoke(0x1234).await.unwrap().header().unwrap().revision();
        let mut deletes = Vec::new();
        while deletes.len() < 2 {
            let r = w.message().await.unwrap().unwrap();
            for e in r.events().iter().filter(|e| e.event_type() == EventType::Delete) {
                deletes.push((e.kv().unwrap().key_str().unwrap().to_string(), e.kv().unwrap().mod_revision()));
            }
        }
        assert_eq!(deletes, [("a".to_string(), rev), ("c".to_string(), rev)]);
        assert_eq!(c.get("b", None).await.unwrap().kvs()[0].lease(), other);
        assert_eq!(c.lease_time_to_live(0x1234, None).await.unwrap().ttl(), -1);
        let (code, _) = code_and_message(c.lease_revoke(0x1234).await.unwrap_err());
        assert_eq!(code, tonic::Code::NotFound);
    });
}

#[test]
fn a_short_lease_expires_and_its_deletes_are_watched() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let mut w = c.watch("exp/", Some(WatchOptions::new().with_prefix())).await.unwrap();
        w.message().await.unwrap();
        let granted = Instant::now();
        let id = c.lease_grant(2, None).await.unwrap().id();
        c.put("exp/1", "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
        c.put("exp/2", "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
        let mut deleted = 0;
        while deleted < 2 {
            let r = tokio::time::timeout(Duration::from_secs(5), w.message()).await.unwrap().unwrap().unwrap();
            deleted += r.events().iter().filter(|e| e.event_type() == EventType::Delete).count();
        }
        let took = granted.elapsed();
        assert!(took >= Duration::from_secs(2) && took < Duration::from_millis(3200), "expired after {took:?}");
        assert!(c.get("exp/", Some(GetOptions::new().with_prefix())).await.unwrap().kvs().is_empty());
    });
}

/// Sends a keepalive every `every` through `endpoint` until `stop`; counts answers with a live TTL.
fn keep_alive(
    rt: &tokio::runtime::Runtime,
    endpoint: String,
    id: i64,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    rt.spawn(async move {
        let mut alive = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok(mut c) = etcd_client::Client::connect([endpoint.clone()], None).await else { continue };
            let Ok((mut keeper, mut answers)) = c.lease_keep_alive(id).await else { continue };
            while !stop.load(Ordering::SeqCst) {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(10), answers.message()).await {
                    Ok(Ok(Some(a))) if a.ttl() > 0 => alive += 1,
                    _ => break,
                }
                tokio::time::sleep(every).await;
            }
        }
        alive
    })
}

#[test]
fn kept_alive_lease_survives_leader_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster_with(dir.path(), &[]);
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let follower = (leader + 1) % 3;
    let id = rt.block_on(async {
        let mut c = client(&[members[follower].endpoint()]).await;
        let id = c.lease_grant(3, None).await.unwrap().id();
        c.put("held", "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
        id
    });
    // Keepalives through a follower reach whichever member leads.
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = keep_alive(&rt, members[follower].endpoint(), id, Duration::from_millis(500), stop.clone());
    std::thread::sleep(Duration::from_secs(4));
    members[leader].kill9();
    // Longer than the TTL: the lease lives only if keepalives reach the new leader.
    std::thread::sleep(Duration::from_secs(8));
    rt.block_on(async {
        let mut c = client(&[members[follower].endpoint()]).await;
        let got = c.get("held", None).await.unwrap();
        assert_eq!(got.kvs().len(), 1, "the kept-alive lease expired across the leader change");
        assert!(c.lease_time_to_live(id, None).await.unwrap().ttl() > 0);
    });
    stop.store(true, Ordering::SeqCst);
    let answered = rt.block_on(keeper).unwrap();
    assert!(answered >= 10, "keepalives answered: {answered}");

    // Without keepalives it expires, decided by the new leader.
    let t = Instant::now();
    rt.block_on(async {
        let mut c = client(&[members[follower].endpoint()]).await;
        while !c.get("held", None).await.unwrap().kvs().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(8), "the lease never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Three members that checkpoint remaining TTLs every 500 ms, their
/// endpoints, and a client with a lease of 60 s granted 6 s ago.
fn a_lease_checkpointed_for_6s(dir: &std::path::Path, rt: &Runtime) -> (Vec<Member>, Vec<String>, Client, i64) {
    let members = three_member_cluster_with(dir, &["--experimental-lease-checkpoint-interval", "500ms"]);
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let (c, id) = rt.block_on(async {
        let mut c = client(&eps).await;
        let id = c.lease_grant(60, None).await.unwrap().id();
        tokio::time::sleep(Duration::from_secs(6)).await;
        (c, id)
    });
    (members, eps, c, id)
}

/// All members at once, as a power cut: what they resume from is what was on disk.
fn kill9_and_restart_all(members: &mut [Member]) {
    for m in members.iter_mut() {
        m.kill9();
    }
    for m in members.iter_mut() {
        m.start();
    }
    for m in members.iter() {
        m.wait_healthy(Duration::from_secs(20));
    }
}

#[test]
fn remaining_ttls_survive_a_restart_of_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (mut members, eps, mut c, id) = a_lease_checkpointed_for_6s(dir.path(), &rt);
    rt.block_on(c.put("kept", "x", Some(PutOptions::new().with_lease(id)))).unwrap();
    kill9_and_restart_all(&mut members);
    rt.block_on(async {
        let mut c = client(&eps).await;
        let ttl = c.lease_time_to_live(id, None).await.unwrap();
        // About 54 s were left at the last checkpoint, plus an election
        // timeout of grace; a restart that forgot would report 60 or more.
        assert_eq!(ttl.granted_ttl(), 60);
        assert!(ttl.ttl() >= 48 && ttl.ttl() <= 56, "remaining TTL after restart: {}", ttl.ttl());
        assert_eq!(c.get("kept", None).await.unwrap().kvs().len(), 1);
    });
}

/// A renewal outruns the last checkpoint (about 54 s left of 60): its answer
/// must wait until the reset is committed, or every member killed right after
/// it would resume the lease from the checkpoint while its client trusts 60 s.
#[test]
fn a_renewal_is_committed_over_the_checkpoint_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (mut members, eps, mut c, id) = a_lease_checkpointed_for_6s(dir.path(), &rt);
    rt.block_on(async {
        let (mut keeper, mut answers) = c.lease_keep_alive(id).await.unwrap();
        keeper.keep_alive().await.unwrap();
        while answers.message().await.unwrap().expect("an answer").ttl() != 60 {}
    });
    // At once, before a periodic checkpoint (every 500 ms) could record the renewal.
    kill9_and_restart_all(&mut members);
    rt.block_on(async {
        let ttl = client(&eps).await.lease_time_to_live(id, None).await.unwrap().ttl();
        assert!(ttl >= 57, "remaining TTL after the renewal and a restart: {ttl}");
    });
}

#[test]
fn lock_is_never_held_twice_even_when_a_holder_dies() {
    let (_dir, m) = single_member(&[]);
    let rt = runtime();
    let holders = Arc::new(AtomicUsize::new(0));
    let rounds = Arc::new(AtomicUsize::new(0));
    // The lease of the holder that died, once it died.
    let dead_lease = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for contender in 0..2 {
        let (endpoint, holders, rounds, dead_lease) = (m.endpoint(), holders.clone(), rounds.clone(), dead_lease.clone());
        tasks.push(rt.spawn(async move {
            let mut c = client(&[endpoint]).await;
            for round in 0..15 {
                let lease = c.lease_grant(2, None).await.unwrap().id();
                // The contender's life: keepalives while it waits and holds.
                let (mut keeper, _answers) = c.lease_keep_alive(lease).await.unwrap();
                let life = tokio::spawn(async move {
                    while keeper.keep_alive().await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                });
                let locked = c.lock("the-lock", Some(LockOptions::new().with_lease(lease))).await.unwrap();
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                let dead = dead_lease.load(Ordering::SeqCst);
                if dead != 0 {
                    let ttl = c.lease_time_to_live(dead, None).await.unwrap().ttl();
                    assert_eq!(ttl, -1, "the lock passed on while its dead holder's lease lived");
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                holders.fetch_sub(1, Ordering::SeqCst);
                if contender == 0 && round == 7 {
                    // The holder dies mid-round: no unlock, no more keepalives.
                    // The other contender gets the lock only once the lease expires.
                    life.abort();
                    dead_lease.store(lease, Ordering::SeqCst);
                    let died = Instant::now();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    assert!(died.elapsed() >= Duration::from_secs(2));
                    continue;
                }
                c.unlock(locked.key().to_vec()).await.unwrap();
                life.abort();
                c.lease_revoke(lease).await.unwrap();
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t).await.expect("lock rounds finish").unwrap();
        }
    });
    assert_eq!(rounds.load(Ordering::SeqCst), 29);
}

#[test]
fn an_election_leader_that_dies_is_replaced() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let mut observe = c.observe("leader-of").await.unwrap();
        let first = c.lease_grant(2, None).await.unwrap().id();
        let (mut keeper, _answers) = c.lease_keep_alive(first).await.unwrap();
        let won = c.campaign("leader-of", "one", first).await.unwrap();
        let leader = won.leader().unwrap().clone();
        assert_eq!(c.leader("leader-of").await.unwrap().kv().unwrap().value_str().unwrap(), "one");
        let seen = observe.message().await.unwrap().unwrap();
        assert_eq!(seen.kv().unwrap().value_str().unwrap(), "one");
        c.proclaim("uno", Some(etcd_client::ProclaimOptions::new().with_leader(leader))).await.unwrap();
        let seen = observe.message().await.unwrap().unwrap();
        assert_eq!(seen.kv().unwrap().value_str().unwrap(), "uno");

        // A second candidate waits; the leader dies (its lease is no longer
        // kept alive) and the candidate takes over.
        let second = c.lease_grant(10, None).await.unwrap().id();
        let mut c2 = c.clone();
        let candidate = tokio::spawn(async move { c2.campaign("leader-of", "two", second).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!candidate.is_finished(), "only one leader at a time");
        keeper.keep_alive().await.unwrap();
        drop(keeper);
        let t = Instant::now();
        let won = tokio::time::timeout(Duration::from_secs(6), candidate).await.expect("replaced").unwrap().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(1500));
        assert_eq!(won.leader().unwrap().lease(), second);
        let seen = observe.message().await.unwrap().unwrap();
        assert_eq!(seen.kv().unwrap().value_str().unwrap(), "two");
        c.resign(Some(etcd_client::ResignOptions::new().with_leader(won.leader().unwrap().clone()))).await.unwrap();
        let (_, msg) = code_and_message(c.leader("leader-of").await.unwrap_err());
        assert_eq!(msg, "election: no leader");
    });
}

/// A keepalive stream's headers wait for the answer to its first request, so
/// that both leave in one write; a client that waits for the headers before
/// it sends anything must get them all the same.
#[test]
fn a_keepalive_stream_serves_a_client_that_waits_for_its_headers() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let id = client(&[m.endpoint()]).await.lease_grant(60, None).await.unwrap().id();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", m.endpoint())).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let (send, requests) = tokio::sync::mpsc::channel(1);
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive");
        let codec = tonic_prost::ProstCodec::<PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse>::default();
        let opened = grpc.streaming(tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests)), path, codec);
        let mut answers = tokio::time::timeout(Duration::from_secs(5), opened)
            .await
            .expect("the headers came though nothing was sent")
            .unwrap()
            .into_inner();
        for _ in 0..2 {
            send.send(PbLeaseKeepAliveRequest { id }).await.unwrap();
            let answer = answers.message().await.unwrap().unwrap();
            assert_eq!((answer.id, answer.ttl), (id, 60));
        }
    });
}

#[test]
fn etcdctl_lease_lock_and_elect() {
    let (_dir, m) = single_member(&[]);
    let ep = m.endpoint();
    let granted = etcdctl_ok(&ep, &["lease", "grant", "100"]);
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(100s)\n"));
    assert_eq!(etcdctl_ok(&ep, &["put", "--lease", &id, "lk", "v"]), "OK\n");
    let ttl = etcdctl_ok(&ep, &["lease", "timetolive", "--keys", &id]);
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(100s), remaining(")), "{ttl}");
    assert!(ttl.ends_with("s), attached keys([lk])\n"), "{ttl}");
    assert_eq!(etcdctl_ok(&ep, &["lease", "list"]), format!("found 1 leases\n{id}\n"));
    assert_eq!(etcdctl_ok(&ep, &["lease", "keep-alive", "--once", &id]), format!("lease {id} keepalived with TTL(100)\n"));
    assert_eq!(etcdctl_ok(&ep, &["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(etcdctl_ok(&ep, &["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
    assert_eq!(etcdctl_ok(&ep, &["get", "lk"]), "");
    let missing = etcdctl(&ep, &["lease", "revoke", "1234"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("etcdserver: requested lease not found"));

    // etcdctl's lock and elect run etcd's client-side recipes on KV, Lease and Watch.
    let out = etcdctl_ok(&ep, &["lock", "--ttl", "2", "ctl-lock", "--", "sh", "-c", "echo inside"]);
    assert_eq!(out, "inside\n");
    let mut elect = etcdctl_command(&ep, &["elect", "ctl-election", "proposal-1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let observed = std::process::Command::new("timeout")
        .args(["2", "etcdctl", &format!("--endpoints={ep}"), "elect", "-l", "ctl-election"])
        .env("ETCDCTL_API", "3")
        .output()
        .unwrap();
    let _ = elect.kill();
    let out = String::from_utf8_lossy(&elect.wait_with_output().unwrap().stdout).to_string();
    let observed = String::from_utf8_lossy(&observed.stdout).to_string();
    assert!(out.starts_with("ctl-election/") && out.ends_with("\nproposal-1\n"), "{out}");
    assert_eq!(observed, out, "elect -l shows the leader");
}

#[test]
fn ten_thousand_leases_expiring_at_once_do_not_stall_writes() {
    let (_dir, m) = single_member(&[]);
    let rt = runtime();
    let leases = 10_000;
    let ttl = 8;
    let granted = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..32 {
            let mut c = client(&[m.endpoint()]).await;
            tasks.push(tokio::spawn(async move {
                for i in (t..leases).step_by(32) {
                    let id = c.lease_grant(ttl, None).await.unwrap().id();
                    c.put(format!("mass/{i:05}"), "x", Some(PutOptions::new().with_lease(id))).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let setup = granted.elapsed();
    assert!(setup < Duration::from_secs(ttl as u64 - 2), "granting took {setup:?}");
    rt.block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let mut worst = Duration::ZERO;
        let mut i = 0;
        let deadline = granted + Duration::from_secs(ttl as u64 + 40);
        loop {
            let t = Instant::now();
            c.put(format!("writer/{i}"), "x", None).await.unwrap();
            worst = worst.max(t.elapsed());
            i += 1;
            if i % 50 == 0 {
                let left = c.get("mass/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count();
                if left == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{left} keys of expired leases remain");
            }
        }
        assert!(worst < Duration::from_secs(1), "a write waited {worst:?} while leases expired");
        assert!(granted.elapsed() >= Duration::from_secs(ttl as u64), "nothing expires early");
    });
}
