//! The KV service's etcd semantics, checked with the Rust etcd-client against
//! one real member.

mod common;

use std::time::Duration;

use common::{client, code_and_message, runtime, single_member};
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};



#[test]
fn revisions_versions_and_headers() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let r1 = c.put("a", "1", None).await.unwrap();
        let h = r1.header().unwrap();
        assert!(h.cluster_id() != 0 && h.member_id() != 0 && h.raft_term() >= 1);
        let rev1 = h.revision();
        c.put("a", "2", None).await.unwrap();
        let got = c.get("a", None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!((kv.create_revision(), kv.mod_revision(), kv.version()), (rev1, rev1 + 1, 2));
        assert_eq!(got.header().unwrap().revision(), rev1 + 1);

        // A delete of nothing does not move the revision; a real one does.
        let d = c.delete("missing", None).await.unwrap();
        assert_eq!((d.deleted(), d.header().unwrap().revision()), (0, rev1 + 1));
        let d = c.delete("a", Some(DeleteOptions::new().with_prev_key())).await.unwrap();
        assert_eq!((d.deleted(), d.header().unwrap().revision()), (1, rev1 + 2));
        assert_eq!(d.prev_kvs()[0].value(), b"2");

        // Version and create revision start over after a delete.
        let p = c.put("a", "3", Some(PutOptions::new().with_prev_key())).await.unwrap();
        assert!(p.prev_key().is_none());
        let kv = c.get("a", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.create_revision(), kv.version()), (rev1 + 3, 1));

        // History: the key as it was at each revision.
        let at = |rev| GetOptions::new().with_revision(rev);
        assert_eq!(c.get("a", Some(at(rev1))).await.unwrap().kvs()[0].value(), b"1");
        assert_eq!(c.get("a", Some(at(rev1 + 1))).await.unwrap().kvs()[0].value(), b"2");
        assert!(c.get("a", Some(at(rev1 + 2))).await.unwrap().kvs().is_empty());
        let (code, msg) = code_and_message(c.get("a", Some(at(rev1 + 100))).await.unwrap_err());
        assert_eq!((code, msg.as_str()), (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision"));

        let p = c.put("a", "4", Some(PutOptions::new().with_prev_key())).await.unwrap();
        assert_eq!(p.prev_key().unwrap().value(), b"3");
    });
}

#[test]
fn range_options() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        for (k, v) in [("k3", "a"), ("k1", "c"), ("k2", "b"), ("k1", "cc"), ("l", "z")] {
            c.put(k, v, None).await.unwrap();
        }
        let keys = |r: &etcd_client::GetResponse| r.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect::<Vec<_>>();

        let r = c.get("k", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
        assert_eq!((keys(&r), r.count(), r.more()), (vec!["k1".to_string(), "k2".into()], 3, true));
        let r = c.get("k", Some(GetOptions::new().with_prefix().with_limit(3))).await.unwrap();
        assert!(!r.more());
        let r = c.get("k2", Some(GetOptions::new().with_from_key())).await.unwrap();
        assert_eq!(keys(&r), ["k2", "k3", "l"]);
        let r = c.get("k1", Some(GetOptions::new().with_range("k3"))).await.unwrap();
        assert_eq!(keys(&r), ["k1", "k2"]);
        let r = c.get("\0", Some(GetOptions::new().with_from_key().with_count_only())).await.unwrap();
        assert_eq!((r.count(), r.kvs().len()), (4, 0));
        let r = c.get("k", Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
        assert!(r.kvs().iter().all(|kv| kv.value().is_empty()));

        let sorted = |target, order| GetOptions::new().with_prefix().with_sort(target, order);
        let r = c.get("k", Some(sorted(SortTarget::Value, SortOrder::Ascend))).await.unwrap();
        assert_eq!(keys(&r), ["k3", "k2", "k1"]);
        let r = c.get("k", Some(sorted(SortTarget::Key, SortOrder::Descend))).await.unwrap();
        assert_eq!(keys(&r), ["k3", "k2", "k1"]);
        let r = c.get("k", Some(sorted(SortTarget::Version, SortOrder::Descend).with_limit(1))).await.unwrap();
        assert_eq!((keys(&r), r.more()), (vec!["k1".to_string()], true));
        let r = c.get("k", Some(sorted(SortTarget::Mod, SortOrder::Descend))).await.unwrap();
        assert_eq!(keys(&r), ["k1", "k2", "k3"]);
        let r = c.get("k", Some(sorted(SortTarget::Create, SortOrder::Ascend))).await.unwrap();
        assert_eq!(keys(&r), ["k3", "k1", "k2"]);

        // Ties keep key order, descending too (etcd: k2 and k3 are both at version 1).
        let r = c.get("k", Some(sorted(SortTarget::Version, SortOrder::Descend))).await.unwrap();
        assert_eq!(keys(&r), ["k1", "k2", "k3"]);

        let k1 = c.get("k1", None).await.unwrap().kvs()[0].clone();
        let r = c.get("k", Some(GetOptions::new().with_prefix().with_min_mod_revision(k1.mod_revision()))).await.unwrap();
        assert_eq!(keys(&r), ["k1"]);
        let r = c.get("k", Some(GetOptions::new().with_prefix().with_max_create_revision(k1.create_revision()))).await.unwrap();
        assert_eq!(keys(&r), ["k1", "k3"]);

        let serial = c.get("l", Some(GetOptions::new().with_serializable())).await.unwrap();
        assert_eq!(serial.kvs()[0].value(), b"z");

        let (code, msg) = code_and_message(c.get("", None).await.unwrap_err());
        assert_eq!((code, msg.as_str()), (tonic::Code::InvalidArgument, "etcdserver: key is not provided"));
    });
}

#[test]
fn transactions() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let rev = c.put("t", "v1", None).await.unwrap().header().unwrap().revision();

        let ok = c
            .txn(
                Txn::new()
                    .when([Compare::value("t", CompareOp::Equal, "v1"), Compare::version("t", CompareOp::Greater, 0)])
                    .and_then([TxnOp::put("t", "v2", None), TxnOp::put("u", "x", None), TxnOp::get("t", None)])
                    .or_else([TxnOp::put("t", "no", None)]),
            )
            .await
            .unwrap();
        assert!(ok.succeeded());
        // One revision for the whole txn; the read inside sees the txn's own write.
        assert_eq!(ok.header().unwrap().revision(), rev + 1);
        let etcd_client::TxnOpResponse::Get(g) = &ok.op_responses()[2] else { panic!("get response") };
        assert_eq!((g.kvs()[0].value(), g.kvs()[0].mod_revision()), (&b"v2"[..], rev + 1));
        assert_eq!(c.get("u", None).await.unwrap().kvs()[0].mod_revision(), rev + 1);

        let failed = c
            .txn(
                Txn::new()
                    .when([Compare::create_revision("t", CompareOp::NotEqual, rev)])
                    .and_then([TxnOp::put("t", "wrong", None)])
                    .or_else([TxnOp::delete("u", None)]),
            )
            .await
            .unwrap();
        assert!(!failed.succeeded());
        assert!(c.get("u", None).await.unwrap().kvs().is_empty());

        // A missing key: value compares fail, version compares against 0.
        let missing = c.txn(Txn::new().when([Compare::value("nope", CompareOp::NotEqual, "x")])).await.unwrap();
        assert!(!missing.succeeded());
        let missing = c.txn(Txn::new().when([Compare::version("nope", CompareOp::Equal, 0)])).await.unwrap();
        assert!(missing.succeeded());
        let before = c.get("t", None).await.unwrap().header().unwrap().revision();
        assert_eq!(missing.header().unwrap().revision(), before, "a read-only txn does not move the revision");

        // Compare over a range: every key must satisfy it.
        c.put("r/1", "1", None).await.unwrap();
        c.put("r/2", "2", None).await.unwrap();
        let all = Compare::value("r/", CompareOp::Greater, "0").with_prefix();
        assert!(c.txn(Txn::new().when([all])).await.unwrap().succeeded());
        let all = Compare::value("r/", CompareOp::Greater, "1").with_prefix();
        assert!(!c.txn(Txn::new().when([all])).await.unwrap().succeeded());

        // Nested txn.
        let nested = Txn::new().when([Compare::value("t", CompareOp::Equal, "v2")]).and_then([TxnOp::put("n", "inner", None)]);
        let outer = c.txn(Txn::new().and_then([TxnOp::txn(nested)])).await.unwrap();
        let etcd_client::TxnOpResponse::Txn(inner) = &outer.op_responses()[0] else { panic!("txn response") };
        assert!(inner.succeeded());
        assert_eq!(c.get("n", None).await.unwrap().kvs()[0].value(), b"inner");

        let dup = c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)])).await;
        assert_eq!(code_and_message(dup.unwrap_err()), (tonic::Code::InvalidArgument, "etcdserver: duplicate key given in txn request".into()));
        let dup = c
            .txn(Txn::new().and_then([TxnOp::delete("d", Some(DeleteOptions::new().with_prefix())), TxnOp::put("d1", "2", None)]))
            .await;
        assert_eq!(code_and_message(dup.unwrap_err()).1, "etcdserver: duplicate key given in txn request");

        // A nested txn gets what the outer txn's longest list leaves of the 128.
        let outer: Vec<TxnOp> = (0..100).map(|i| TxnOp::put(format!("o{i}"), "v", None)).collect();
        let inner = Txn::new().and_then((0..29).map(|i| TxnOp::put(format!("i{i}"), "v", None)).collect::<Vec<_>>());
        let nested = c.txn(Txn::new().and_then(outer.into_iter().chain([TxnOp::txn(inner)]).collect::<Vec<_>>())).await;
        assert_eq!(code_and_message(nested.unwrap_err()).1, "etcdserver: too many operations in txn request");

        let many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("m{i}"), "v", None)).collect();
        let too_many = c.txn(Txn::new().and_then(many)).await;
        assert_eq!(code_and_message(too_many.unwrap_err()), (tonic::Code::InvalidArgument, "etcdserver: too many operations in txn request".into()));
    });
}

#[test]
fn put_options_and_errors() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let err = c.put("x", "v", Some(PutOptions::new().with_ignore_value())).await.unwrap_err();
        assert_eq!(code_and_message(err), (tonic::Code::InvalidArgument, "etcdserver: value is provided".into()));
        let err = c.put("x", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err();
        assert_eq!(code_and_message(err), (tonic::Code::InvalidArgument, "etcdserver: key not found".into()));
        c.put("x", "keep", None).await.unwrap();
        c.put("x", "", Some(PutOptions::new().with_ignore_value())).await.unwrap();
        let kv = c.get("x", None).await.unwrap().kvs()[0].clone();
        assert_eq!((kv.value(), kv.version()), (&b"keep"[..], 2));

        let err = c.put("x", "v", Some(PutOptions::new().with_lease(12345))).await.unwrap_err();
        assert_eq!(code_and_message(err), (tonic::Code::NotFound, "etcdserver: requested lease not found".into()));

        let big = vec![b'v'; 1_600_000];
        let err = c.put("big", big, None).await.unwrap_err();
        assert_eq!(code_and_message(err), (tonic::Code::InvalidArgument, "etcdserver: request is too large".into()));
        let err = c.put("", "v", None).await.unwrap_err();
        assert_eq!(code_and_message(err).1, "etcdserver: key is not provided");
    });
}

#[test]
fn compaction() {
    let (_dir, m) = single_member(&[]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let r1 = c.put("c", "1", None).await.unwrap().header().unwrap().revision();
        c.put("c", "2", None).await.unwrap();
        c.put("gone", "x", None).await.unwrap();
        let r4 = c.delete("gone", None).await.unwrap().header().unwrap().revision();
        let r5 = c.put("c", "3", None).await.unwrap().header().unwrap().revision();

        c.compact(r4, Some(etcd_client::CompactionOptions::new().with_physical())).await.unwrap();
        let err = c.get("c", Some(GetOptions::new().with_revision(r1))).await.unwrap_err();
        assert_eq!(code_and_message(err), (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted".into()));
        // The newest version at or before the compact revision stays readable.
        let kept = c.get("c", Some(GetOptions::new().with_revision(r4))).await.unwrap();
        assert_eq!(kept.kvs()[0].value(), b"2");
        assert!(c.get("gone", Some(GetOptions::new().with_revision(r4))).await.unwrap().kvs().is_empty());
        assert_eq!(c.get("c", None).await.unwrap().kvs()[0].value(), b"3");

        let err = c.compact(r4, None).await.unwrap_err();
        assert_eq!(code_and_message(err).1, "etcdserver: mvcc: required revision has been compacted");
        let err = c.compact(r5 + 10, None).await.unwrap_err();
        assert_eq!(code_and_message(err).1, "etcdserver: mvcc: required revision is a future revision");
    });
}

#[test]
fn space_quota_refuses_puts_not_deletes() {
    let (_dir, m) = single_member(&["--quota-backend-bytes", "1"]);
    runtime().block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let err = c.put("k", "v", None).await.unwrap_err();
        assert_eq!(code_and_message(err), (tonic::Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded".into()));
        let err = c.txn(Txn::new().and_then([TxnOp::delete("k", None), TxnOp::put("j", "v", None)])).await.unwrap_err();
        assert_eq!(code_and_message(err).0, tonic::Code::ResourceExhausted);
        // Deleting is how space is freed: it still goes through.
        c.delete("k", None).await.unwrap();
        c.txn(Txn::new().and_then([TxnOp::delete("k", Some(DeleteOptions::new().with_prefix()))])).await.unwrap();
    });
}

/// The store's revision and every key with its value, create and mod revision and version.
async fn every_key(endpoint: String) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>) {
    let mut c = client(&[endpoint]).await;
    let got = c.get("\0", Some(GetOptions::new().with_from_key())).await.unwrap();
    let kvs = got
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version()))
        .collect();
    (got.header().unwrap().revision(), kvs)
}

/// The state database keeps no write-ahead log of its own: a member killed
/// with -9 loses what it had not written out and applies it again from the
/// Raft log, to the same keys, versions and revisions.
#[test]
fn a_member_killed_9_applies_its_writes_again_from_the_raft_log() {
    let (_dir, mut m) = single_member(&[]);
    let rt = runtime();
    let before = rt.block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        for (key, value) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1"), ("a", "3")] {
            c.put(key, value, None).await.unwrap();
        }
        c.delete("b", None).await.unwrap();
        every_key(m.endpoint()).await
    });
    assert_eq!(before.1.len(), 2, "a and c");
    let state_log_bytes: u64 = std::fs::read_dir(m.data_dir.join("member/snap/db"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    assert_eq!(state_log_bytes, 0, "the state database wrote a log of its own");

    m.kill9();
    m.start();
    m.wait_healthy(Duration::from_secs(10));
    assert_eq!(rt.block_on(every_key(m.endpoint())), before);
    rt.block_on(async {
        let mut c = client(&[m.endpoint()]).await;
        let put = c.put("a", "4", None).await.unwrap();
        assert_eq!(put.header().unwrap().revision(), before.0 + 1);
        assert_eq!(c.get("a", None).await.unwrap().kvs()[0].version(), 4);
    });
}
