//! Compaction in the background, auto-compaction, HashKV agreement, the
//! NOSPACE alarm through Raft, and defragmentation, with the real etcdctl.

mod common;

use std::time::{Duration, Instant};

use common::{etcdctl, etcdctl_ok, runtime, single_member, three_member_cluster_with, Member};

fn hashkv(m: &Member, revision: i64) -> (u32, i64) {
    runtime().block_on(async {
        let mut c = common::client(&[m.endpoint()]).await;
        let r = c.hash_kv(revision).await.unwrap();
        (r.hash(), r.compact_version())
    })
}

fn revision(m: &Member) -> i64 {
    let out = etcdctl_ok(&m.endpoint(), &["get", "x", "-w", "json"]);
    let at = out.find("\"revision\":").unwrap() + "\"revision\":".len();
    out[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn wait_for_log(m: &Member, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !m.log_text().contains(text) {
        assert!(Instant::now() < deadline, "{} never logged {text:?}:\n{}", m.name, m.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn compaction_in_the_background_keeps_members_in_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_member_cluster_with(dir.path(), &[]);
    let rt = runtime();
    rt.block_on(async {
        let mut c = common::client(&[members[0].endpoint()]).await;
        for i in 0..3000 {
            c.put(format!("k{:03}", i % 300), format!("v{i}"), None).await.unwrap();
        }
        c.delete("k000", None).await.unwrap();
    });
    let rev = revision(&members[0]);
    let before: Vec<(u32, i64)> = members.iter().map(|m| hashkv(m, rev)).collect();
    assert!(before.iter().all(|h| *h == before[0]), "HashKV at {rev} differs: {before:?}");

    // Compact to the middle of the history: physical returns once done here.
    let compact_at = rev - 1500;
    etcdctl_ok(&members[1].endpoint(), &["compaction", "--physical", &compact_at.to_string()]);
    for m in &members {
        wait_for_log(m, "finished scheduled compaction", Duration::from_secs(20));
    }
    let after: Vec<(u32, i64)> = members.iter().map(|m| hashkv(m, rev)).collect();
    assert!(after.iter().all(|h| *h == after[0]), "HashKV after compaction differs: {after:?}");
    assert_eq!(after[0].1, compact_at, "compact revision reported");
    assert_ne!(after[0].0, before[0].0, "compacted versions no longer count");

    // Reads below the compact revision fail; at it and above, they see what they did.
    let old = etcdctl(&members[2].endpoint(), &["get", "k001", &format!("--rev={}", compact_at - 1)]);
    assert!(String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted"));
    let at = etcdctl_ok(&members[2].endpoint(), &["get", "k001", &format!("--rev={compact_at}"), "--print-value-only"]);
    let expected_at = (0..3000).filter(|i| i % 300 == 1 && *i < (compact_at - 2) as usize + 1).max().unwrap();
    assert_eq!(at.trim(), format!("v{expected_at}"));
    // etcdctl's own HashKV view of the cluster.
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let out = etcdctl_ok(&eps.join(","), &["endpoint", "hashkv", &format!("--rev={rev}")]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let hashes: Vec<&str> = out.lines().map(|l| l.rsplit(", ").next().unwrap()).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{out}");
}

#[test]
fn periodic_auto_compaction_compacts_on_its_own() {
    let (_dir, m) = single_member(&["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "2s"]);
    for i in 0..20 {
        etcdctl_ok(&m.endpoint(), &["put", "k", &format!("v{i}")]);
    }
    // Compacted to what the revision was a period ago, every period.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let old = etcdctl(&m.endpoint(), &["get", "k", "--rev=10"]);
        if String::from_utf8_lossy(&old.stderr).contains("required revision has been compacted") {
            break;
        }
        assert!(Instant::now() < deadline, "revision 10 never compacted:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for_log(&m, "completed auto compaction", Duration::from_secs(1));
    wait_for_log(&m, "finished scheduled compaction", Duration::from_secs(10));
    assert_eq!(etcdctl_ok(&m.endpoint(), &["get", "k", "--print-value-only"]).trim(), "v19");
}

#[test]
fn nospace_alarm_is_raised_everywhere_and_cleared_by_compact_defrag_disarm() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_member_cluster_with(dir.path(), &["--quota-backend-bytes", "3000000"]);
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    // Values that do not compress, until the quota is hit.
    let rt = runtime();
    let refused = rt.block_on(async {
        let mut c = common::client(&[eps[0].clone()]).await;
        let mut seed = 0x2545f4914f6cdd1du64;
        for _ in 0..100 {
            let value: Vec<u8> = (0..100_000)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if let Err(e) = c.put("big", value, None).await {
                return common::code_and_message(e);
            }
        }
        panic!("100 puts of 100 kB never hit a 3 MB quota");
    });
    assert_eq!(refused, (tonic::Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded".to_string()));

    // Every member knows the alarm and refuses writes, wherever they arrive.
    for ep in &eps {
        let list = etcdctl_ok(ep, &["alarm", "list"]);
        assert!(list.contains("alarm:NOSPACE"), "{ep}: {list}");
        let put = etcdctl(ep, &["put", "small", "x"]);
        assert!(String::from_utf8_lossy(&put.stderr).contains("database space exceeded"));
    }
    let status = etcdctl_ok(&eps[1], &["endpoint", "status", "-w", "table"]);
    assert!(status.contains("alarm:NOSPACE"), "{status}");
    // Deletes still pass, to make room.
    etcdctl_ok(&eps[2], &["del", "small"]);

    // etcd's recovery: compact, defragment every member, disarm.
    let rev = revision(&members[0]);
    etcdctl_ok(&eps[0], &["compaction", "--physical", &rev.to_string()]);
    let defrag = etcdctl_ok(&eps.join(","), &["defrag"]);
    assert_eq!(defrag.matches("Finished defragmenting etcd member").count(), 3, "{defrag}");
    etcdctl_ok(&eps[0], &["alarm", "disarm"]);
    for ep in &eps {
        assert_eq!(etcdctl_ok(ep, &["alarm", "list"]).trim(), "", "{ep}");
    }
    assert_eq!(etcdctl_ok(&eps[1], &["put", "small", "x"]).trim(), "OK");
}

#[test]
fn snapshot_save_then_restore_into_a_new_cluster_keeps_hashkv() {
    let dir = tempfile::tempdir().unwrap();
    let (_source_dir, source) = single_member(&[]);
    for i in 0..500 {
        etcdctl_ok(&source.endpoint(), &["put", &format!("key{:03}", i % 200), &format!("value {i}")]);
    }
    etcdctl_ok(&source.endpoint(), &["del", "key000"]);
    let lease = etcdctl_ok(&source.endpoint(), &["lease", "grant", "600"]);
    let lease_id = lease.split_whitespace().nth(1).unwrap().to_string();
    etcdctl_ok(&source.endpoint(), &["put", "leased", "x", "--lease", &lease_id]);
    etcdctl_ok(&source.endpoint(), &["compaction", "300"]);
    let rev = revision(&source);
    let source_hash = hashkv(&source, rev);

    let file = dir.path().join("backup.db");
    let saved = etcdctl_ok(&source.endpoint(), &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let status = common::cairn_command(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(status.contains(&format!("\"revision\":{rev}")), "{status}");
    assert!(status.contains("\"totalKey\":200"), "199 keys and the leased one: {status}");

    // Three members of a new cluster, each restored from the file.
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (common::free_port(), common::free_port())).collect();
    let cluster: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("r{}=http://127.0.0.1:{p}", i + 1)).collect();
    let cluster = cluster.join(",");
    let mut members = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let mut m = Member::clustered(dir.path(), &format!("r{}", i + 1), *c, *p, &cluster);
        let out = common::cairn_command(&[
            "snapshot", "restore", file.to_str().unwrap(),
            "--name", &m.name,
            "--data-dir", m.data_dir.to_str().unwrap(),
            "--initial-cluster", &cluster,
            "--initial-cluster-token", "restored-cluster",
            "--initial-advertise-peer-urls", &m.peer_url,
        ]);
        assert!(out.contains("restored snapshot"), "{out}");
        m.start();
        members.push(m);
    }
    for m in &members {
        m.wait_healthy(Duration::from_secs(20));
        assert_eq!(hashkv(m, rev), source_hash, "{} at revision {rev}", m.name);
    }
    let got = etcdctl_ok(&members[2].endpoint(), &["get", "key007", "--print-value-only"]);
    assert_eq!(got.trim(), "value 407");
    let ttl = etcdctl_ok(&members[0].endpoint(), &["lease", "timetolive", &lease_id]);
    assert!(ttl.contains("granted with TTL(600s)"), "{ttl}");
    // A new cluster: new ids, and it takes writes.
    let list = etcdctl_ok(&members[0].endpoint(), &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert_eq!(etcdctl_ok(&members[1].endpoint(), &["put", "after", "restore"]).trim(), "OK");

    // A damaged file is refused, and a restore never overwrites a data dir.
    let bytes = std::fs::read(&file).unwrap();
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes[..bytes.len() - 1]).unwrap();
    let out = common::cairn_command_fails(&["snapshot", "status", damaged.to_str().unwrap()]);
    assert!(out.contains("not a cairn snapshot") || out.contains("checksum"), "{out}");
    let out = common::cairn_command_fails(&[
        "snapshot", "restore", file.to_str().unwrap(), "--name", "r1", "--data-dir", members[0].data_dir.to_str().unwrap(),
        "--initial-cluster", &cluster, "--initial-advertise-peer-urls", &members[0].peer_url,
    ]);
    assert!(out.contains("exists"), "{out}");
}
