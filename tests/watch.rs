//! The Watch service, checked with the Rust etcd-client against real members:
//! event types and revisions, ranges, history, prev_kv, filters, compaction,
//! progress, many watchers on one stream, cancel, fragments, followers, and a
//! watch that survives the kill -9 of the member serving it.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{client, leader_index, runtime, single_member, three_member_cluster};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};


async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .expect("the watch stream failed")
        .expect("the watch stream ended")
}

/// Opens a watch and returns its stream and id, once created.
async fn watch(c: &mut etcd_client::Client, key: &str, options: WatchOptions) -> (WatchStream, i64) {
    let mut stream = c.watch(key, Some(options)).await.unwrap();
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled(), "{created:?}");
    (stream, created.watch_id())
}

/// (type, key, value, mod revision) of each event.
fn events(r: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (e.event_type(), kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string(), kv.mod_revision())
        })
        .collect()
}

/// Responses until `count` events arrived (no more).
async fn collect(stream: &mut WatchStream, count: usize) -> Vec<(EventType, String, String, i64)> {
    let mut got = Vec::new();
    while got.len() < count {
        got.extend(events(&next(stream).await));
    }
    assert_eq!(got.len(), count, "{got:?}");
    got
}

use EventType::{Delete, Put};

fn ev(t: EventType, k: &str, v: &str, rev: i64) -> (EventType, String, String, i64) {
    (t, k.to_string(), v.to_string(), rev)
}

#[test]
fn put_and_delete_events_in_revision_order() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let (mut s, _) = watch(&mut c, "a", WatchOptions::new()).await;
        let r1 = c.put("a", "1", None).await.unwrap().header().unwrap().revision();
        c.put("b", "x", None).await.unwrap();
        c.put("a", "2", None).await.unwrap();
        c.delete("a", None).await.unwrap();
        let first = next(&mut s).await;
        let kv = first.events()[0].kv().unwrap();
        assert_eq!((kv.create_revision(), kv.version()), (r1, 1));
        assert_eq!(first.header().unwrap().revision(), r1);
        let mut got = events(&first);
        got.extend(collect(&mut s, 2).await);
        assert_eq!(got, vec![ev(Put, "a", "1", r1), ev(Put, "a", "2", r1 + 2), ev(Delete, "a", "", r1 + 3)]);

        // A txn's events share one response.
        let (mut p, _) = watch(&mut c, "t/", WatchOptions::new().with_prefix()).await;
        let txn = Txn::new()
            .when([Compare::version("t/none", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("t/1", "x", None), TxnOp::put("t/2", "y", None), TxnOp::delete("t/0", None)]);
        let rev = c.txn(txn).await.unwrap().header().unwrap().revision();
        let r = next(&mut p).await;
        assert_eq!(events(&r), vec![ev(Put, "t/1", "x", rev), ev(Put, "t/2", "y", rev)]);
    });
}

#[test]
fn prefix_range_and_from_key() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let (mut prefix, _) = watch(&mut c, "p/", WatchOptions::new().with_prefix()).await;
        let (mut range, _) = watch(&mut c, "r1", WatchOptions::new().with_range("r3")).await;
        let (mut from, _) = watch(&mut c, "y", WatchOptions::new().with_from_key()).await;
        for k in ["p", "p/1", "q", "r0", "r1", "r2", "r25", "r3", "x", "y", "zz", "p/2"] {
            c.put(k, k, None).await.unwrap();
        }
        let keys = |v: Vec<(EventType, String, String, i64)>| v.into_iter().map(|e| e.1).collect::<Vec<_>>();
        assert_eq!(keys(collect(&mut prefix, 2).await), ["p/1", "p/2"]);
        assert_eq!(keys(collect(&mut range, 3).await), ["r1", "r2", "r25"]);
        assert_eq!(keys(collect(&mut from, 2).await), ["y", "zz"]);
    });
}

#[test]
fn history_prev_kv_and_filters() {
    let (_dir, mut m) = single_member(&[]);
    let rt = runtime();
    let first = rt.block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let first = c.put("h", "1", None).await.unwrap().header().unwrap().revision();
        c.put("h", "2", None).await.unwrap();
        c.delete("h", None).await.unwrap();
        c.put("h", "3", None).await.unwrap();
        first
    });
    let expected = vec![ev(Put, "h", "1", first), ev(Put, "h", "2", first + 1), ev(Delete, "h", "", first + 2), ev(Put, "h", "3", first + 3)];
    // Twice: served from memory, and after a restart from the store's history alone.
    for round in ["memory", "history after restart"] {
        rt.block_on(async {
            let mut c = client(&[m.endpoint()]).await;
            let (mut s, _) = watch(&mut c, "h", WatchOptions::new().with_start_revision(first).with_prev_key()).await;
            let mut prevs = Vec::new();
            let mut got = Vec::new();
            while got.len() < 4 {
                let r = next(&mut s).await;
                got.extend(events(&r));
                prevs.extend(r.events().iter().map(|e| e.prev_kv().map(|p| p.value_str().unwrap().to_string())));
            }
            assert_eq!(got, expected, "{round}");
            assert_eq!(prevs, [None, Some("1".into()), Some("2".into()), None], "{round}");

            let (mut no_put, _) =
                watch(&mut c, "h", WatchOptions::new().with_start_revision(first).with_filters([WatchFilterType::NoPut])).await;
            assert_eq!(collect(&mut no_put, 1).await, vec![expected[2].clone()], "{round}");
            let (mut no_delete, _) = watch(
                &mut c,
                "h",
                WatchOptions::new().with_start_revision(first).with_filters([WatchFilterType::NoDelete]),
            )
            .await;
            let puts: Vec<_> = expected.iter().filter(|e| e.0 == Put).cloned().collect();
            assert_eq!(collect(&mut no_delete, 3).await, puts, "{round}");
            // Without prev_kv, no previous values.
            let (mut plain, _) = watch(&mut c, "h", WatchOptions::new().with_start_revision(first + 1)).await;
            let r = next(&mut plain).await;
            assert!(r.events().iter().all(|e| e.prev_kv().is_none()), "{round}");
        });
        if round == "memory" {
            m.terminate();
            m.start();
            m.wait_healthy(Duration::from_secs(10));
        }
    }
}

#[test]
fn compacted_start_revision_cancels_the_watch() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let mut last = 0;
        for i in 0..5 {
            last = c.put("c", i.to_string(), None).await.unwrap().header().unwrap().revision();
        }
        c.compact(last - 1, None).await.unwrap();
        let mut s = c.watch("c", Some(WatchOptions::new().with_start_revision(last - 3))).await.unwrap();
        let created = next(&mut s).await;
        assert!(created.created());
        let canceled = next(&mut s).await;
        assert!(canceled.canceled(), "{canceled:?}");
        assert_eq!(canceled.compact_revision(), last - 1);
        assert_eq!(canceled.watch_id(), created.watch_id());

        // From the compact revision itself, history is still there.
        let (mut ok, _) = watch(&mut c, "c", WatchOptions::new().with_start_revision(last - 1)).await;
        assert_eq!(collect(&mut ok, 2).await, vec![ev(Put, "c", "3", last - 1), ev(Put, "c", "4", last)]);

        // A negative start revision is refused in the create response, as etcd does.
        let mut bad = c.watch("c", Some(WatchOptions::new().with_start_revision(-1))).await.unwrap();
        let r = next(&mut bad).await;
        assert!(r.created() && r.canceled() && r.watch_id() == -1, "{r:?}");
        assert_eq!(r.cancel_reason(), "etcdserver: mvcc: required revision has been compacted");
        let mut empty = c.watch("b", Some(WatchOptions::new().with_range("a"))).await.unwrap();
        let r = next(&mut empty).await;
        assert!(r.created() && r.canceled(), "{r:?}");
        assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");
    });
}

#[test]
fn progress_request_and_periodic_progress() {
    let (_dir, m) = single_member(&["--experimental-watch-progress-notify-interval", "300ms"]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let (mut s, id) = watch(&mut c, "k", WatchOptions::new()).await;
        let rev = c.put("other", "x", None).await.unwrap().header().unwrap().revision();
        s.request_progress().await.unwrap();
        let r = next(&mut s).await;
        assert!(r.events().is_empty() && !r.created() && !r.canceled(), "{r:?}");
        assert_eq!((r.watch_id(), r.header().unwrap().revision()), (-1, rev));

        // A watcher that asked for progress notifications hears the revision
        // every interval; one that did not, does not.
        let (mut notified, nid) = watch(&mut c, "k", WatchOptions::new().with_progress_notify()).await;
        let t = Instant::now();
        let r = next(&mut notified).await;
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!((r.watch_id(), r.header().unwrap().revision()), (nid, rev));
        assert!(tokio::time::timeout(Duration::from_millis(800), s.message()).await.is_err(), "watch {id} asked for none");
    });
}

#[test]
fn twenty_watchers_on_one_stream_and_cancel() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let (mut s, first) = watch(&mut c, "k00", WatchOptions::new()).await;
        let mut ids = BTreeMap::from([(first, "k00".to_string())]);
        for i in 1..20 {
            let key = format!("k{i:02}");
            s.watch(key.clone(), None).await.unwrap();
            let r = next(&mut s).await;
            assert!(r.created());
            assert!(ids.insert(r.watch_id(), key).is_none(), "watch ids are distinct");
        }
        // A client-chosen id is used; a duplicate one is refused.
        s.watch("chosen", Some(WatchOptions::new().with_watch_id(1000))).await.unwrap();
        assert_eq!(next(&mut s).await.watch_id(), 1000);
        s.watch("chosen", Some(WatchOptions::new().with_watch_id(1000))).await.unwrap();
        let dup = next(&mut s).await;
        assert!(dup.canceled() && dup.watch_id() == -1);
        assert_eq!(dup.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");

        for i in (0..20).rev() {
            c.put(format!("k{i:02}"), "v", None).await.unwrap();
        }
        let mut seen = BTreeMap::new();
        while seen.len() < 20 {
            let r = next(&mut s).await;
            for e in events(&r) {
                assert_eq!(ids[&r.watch_id()], e.1, "each watcher sees its own key");
                assert!(seen.insert(r.watch_id(), e.3).is_none(), "exactly once");
            }
        }

        let victim = *ids.keys().nth(5).unwrap();
        s.cancel(victim).await.unwrap();
        let r = next(&mut s).await;
        assert!(r.canceled() && r.watch_id() == victim, "{r:?}");
        c.put(ids[&victim].as_str(), "again", None).await.unwrap();
        c.put("k19", "again", None).await.unwrap();
        let r = next(&mut s).await;
        assert_eq!(events(&r)[0].1, "k19", "the canceled watcher hears nothing: {r:?}");
    });
}

#[test]
fn large_responses_are_fragmented_when_asked() {
    let max = 64 * 1024;
    let (_dir, m) = single_member(&["--max-request-bytes", &max.to_string()]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        for i in 0..20 {
            c.put(format!("f/{i:02}"), vec![b'x'; 10_000], None).await.unwrap();
        }
        let (mut whole, _) = watch(&mut c, "f/", WatchOptions::new().with_prefix().with_prev_key()).await;
        let (mut parts, _) = watch(&mut c, "f/", WatchOptions::new().with_prefix().with_prev_key().with_fragment()).await;
        let rev = c.delete("f/", Some(DeleteOptions::new().with_prefix())).await.unwrap().header().unwrap().revision();

        let r = next(&mut whole).await;
        assert_eq!(r.events().len(), 20);
        assert!(!r.0.fragment);

        let mut got = 0;
        let mut responses = 0;
        loop {
            let r = next(&mut parts).await;
            use prost::Message;
            assert!(r.0.encoded_len() <= max, "each fragment fits in --max-request-bytes");
            assert_eq!(r.header().unwrap().revision(), rev);
            got += r.events().len();
            responses += 1;
            if !r.0.fragment {
                break;
            }
        }
        assert_eq!(got, 20);
        assert!(responses >= 3, "200 kB of previous values in 64 kB fragments: {responses}");
    });
}

#[test]
fn followers_deliver_and_a_watch_survives_kill9_of_its_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let follower = (leader + 1) % 3;
    let writer_member = (leader + 2) % 3;

    // Writes go through one member; the watch is served by a follower.
    let writer_ep = members[writer_member].endpoint();
    let writes = 300;
    let writer = rt.spawn(async move {
        let mut c = client(&[writer_ep]).await;
        for i in 0..writes {
            loop {
                let put = tokio::time::timeout(Duration::from_secs(5), c.put(format!("e/{i:04}"), i.to_string(), None));
                if let Ok(Ok(_)) = put.await {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let seen = rt.block_on(async {
        let mut c = client(&[members[follower].endpoint()]).await;
        let (mut s, _) = watch(&mut c, "e/", WatchOptions::new().with_prefix().with_start_revision(1)).await;
        let mut seen: Vec<(String, i64)> = Vec::new();
        while seen.len() < 50 {
            seen.extend(events(&next(&mut s).await).into_iter().map(|e| (e.1, e.3)));
        }
        seen
    });
    // The member serving the watch dies; the client resumes elsewhere from
    // the revision after the last one it saw.
    members[follower].kill9();
    let survivor = members[leader].endpoint();
    let seen = rt.block_on(async move {
        let mut seen = seen;
        let mut c = client(&[survivor]).await;
        let resume = seen.last().unwrap().1 + 1;
        let (mut s, _) = watch(&mut c, "e/", WatchOptions::new().with_prefix().with_start_revision(resume)).await;
        while seen.len() < writes {
            seen.extend(events(&next(&mut s).await).into_iter().map(|e| (e.1, e.3)));
        }
        writer.await.unwrap();
        seen
    });
    let keys: Vec<String> = seen.iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<String> = (0..writes).map(|i| format!("e/{i:04}")).collect();
    assert_eq!(keys, expected, "every event exactly once, in order");
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "revisions strictly increase");
    drop(members);
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[test]
fn many_watchers_and_a_slow_reader_keep_memory_bounded() {
    // Two members take the same writes; one also has 10,000 watchers and a
    // reader that stops reading. RocksDB's own memory grows alike in both,
    // so the difference is what watching costs.
    let (_dir, watched) = single_member(&[]);
    let (_dir2, plain) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[watched.endpoint()]).await;
        let mut other = client(&[plain.endpoint()]).await;
        // 10,000 watchers on 10 streams, each on its own key.
        let mut streams = Vec::new();
        for s in 0..10 {
            let (mut stream, _) = watch(&mut c, &format!("w/{s}/0000"), WatchOptions::new()).await;
            for i in 1..1000 {
                stream.watch(format!("w/{s}/{i:04}"), None).await.unwrap();
            }
            for _ in 1..1000 {
                assert!(next(&mut stream).await.created());
            }
            streams.push(stream);
        }
        // A reader that watches everything big and does not read.
        let (mut slow, _) = watch(&mut c, "big/", WatchOptions::new().with_prefix()).await;
        let value = vec![b'v'; 256 * 1024];
        let puts = 2400; // 600 MiB through a reader that takes nothing
        let mut first_rev = 0;
        for i in 0..puts {
            let key = format!("big/{i:05}");
            let rev = c.put(key.clone(), value.clone(), None).await.unwrap().header().unwrap().revision();
            other.put(key, value.clone(), None).await.unwrap();
            if i == 0 {
                first_rev = rev;
            }
        }
        let (with_watchers, without) = (rss_mib(watched.pid()), rss_mib(plain.pid()));
        assert!(
            with_watchers < without + 200,
            "a stalled reader cost memory: {with_watchers} MiB with watchers, {without} MiB without"
        );

        // Every watcher still works: one put per key, one event per watcher.
        for s in 0..10 {
            for i in (0..1000).step_by(97) {
                c.put(format!("w/{s}/{i:04}"), "x", None).await.unwrap();
            }
        }
        for (s, stream) in streams.iter_mut().enumerate() {
            let got = collect(stream, 11).await;
            assert!(got.iter().all(|e| e.1.starts_with(&format!("w/{s}/"))));
        }
        // The slow reader then gets all of it, in order, from history.
        let mut next_rev = first_rev;
        while next_rev < first_rev + puts {
            let r = next(&mut slow).await;
            for e in r.events() {
                assert_eq!(e.kv().unwrap().mod_revision(), next_rev);
                next_rev += 1;
            }
        }
    });
}

#[test]
fn require_leader_watches_end_when_the_leader_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let rt = runtime();
    let leader = rt.block_on(leader_index(&members));
    let follower = (leader + 1) % 3;
    let options = etcd_client::ConnectOptions::new().with_require_leader(true);
    let mut stream = rt.block_on(async {
        let mut c = etcd_client::Client::connect([members[follower].endpoint()], Some(options.clone())).await.unwrap();
        watch(&mut c, "rl", WatchOptions::new()).await.0
    });
    members[leader].kill9();
    members[(leader + 2) % 3].kill9();
    let t = Instant::now();
    rt.block_on(async {
        let ended = tokio::time::timeout(Duration::from_secs(15), stream.message()).await.expect("the stream ends");
        match ended {
            Err(etcd_client::Error::GRpcStatus(s)) => {
                assert_eq!((s.code(), s.message()), (tonic::Code::Unavailable, "etcdserver: no leader"));
            }
            other => panic!("expected etcd's no-leader error, got {other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_secs(3), "not before three election timeouts");
        // A new require-leader watch is refused at once.
        let mut c = etcd_client::Client::connect([members[follower].endpoint()], Some(options)).await.unwrap();
        match c.watch("rl", None).await {
            Err(etcd_client::Error::GRpcStatus(s)) => assert_eq!(s.message(), "etcdserver: no leader"),
            Ok(mut s) => match s.message().await {
                Err(etcd_client::Error::GRpcStatus(st)) => assert_eq!(st.message(), "etcdserver: no leader"),
                other => panic!("expected a refusal, got {other:?}"),
            },
            Err(other) => panic!("expected a refusal, got {other:?}"),
        }
    });
}
