//! A damaged data dir: a corrupt record, a truncated table file, a lost
//! Raft log. The member must refuse to start with one line that names what
//! is damaged (never fall back to defaults, skip the record, or panic), and
//! the rest of the cluster keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs `change` on the member's state database, opened as RocksDB.
fn with_state_db(data_dir: &Path, change: impl FnOnce(&rocksdb::DB)) {
    let path = data_dir.join("member/snap/db");
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, families).unwrap();
    change(&db);
    db.flush().unwrap();
}

/// Starts the member on its damaged data dir and returns what it logged;
/// it must exit 1 by itself.
fn refused_start(m: &mut Member) -> String {
    let before = m.log_text().len();
    m.start();
    let status = m.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", m.log_text());
    m.log_text()[before..].to_string()
}

fn largest_table_file(dir: &Path) -> PathBuf {
    let tables = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "sst"));
    tables.max_by_key(|p| p.metadata().unwrap().len()).expect("a table file")
}

#[test]
fn a_damaged_data_dir_is_refused_with_a_line_that_names_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let ep = members[0].endpoint();
    let others = format!("{},{}", members[1].endpoint(), members[2].endpoint());
    for i in 0..200 {
        etcdctl_ok(&ep, &["put", &format!("k{i}"), &"v".repeat(100)]);
    }
    // Table files on disk, not only the write-ahead log.
    etcdctl_ok(&ep, &["defrag"]);
    assert!(members[0].terminate().success());
    let data_dir = members[0].data_dir.clone();
    let pristine = dir.path().join("pristine");
    copy_dir(&data_dir, &pristine);
    let restore = || {
        std::fs::remove_dir_all(&data_dir).unwrap();
        copy_dir(&pristine, &data_dir);
    };

    with_state_db(&data_dir, |db| db.put_cf(db.cf_handle("meta").unwrap(), b"revision", b"bad").unwrap());
    let said = refused_start(&mut members[0]);
    assert!(said.contains(r#"meta record "revision": corrupt record"#) && said.contains("snap/db"), "{said}");
    etcdctl_ok(&others, &["put", "while-one-is-down", "1"]);

    restore();
    with_state_db(&data_dir, |db| db.put_cf(db.cf_handle("lease").unwrap(), [b"l".as_slice(), &7i64.to_be_bytes()].concat(), b"\xff\xff\xff").unwrap());
    let said = refused_start(&mut members[0]);
    assert!(said.contains("snap/db") && said.contains("lease 7: corrupt record"), "an unreadable lease would never expire: {said}");

    restore();
    let table = largest_table_file(&data_dir.join("member/snap/db"));
    let file = std::fs::OpenOptions::new().write(true).open(&table).unwrap();
    file.set_len(file.metadata().unwrap().len() / 2).unwrap();
    let said = refused_start(&mut members[0]);
    assert!(said.contains("snap/db") && said.to_lowercase().contains("corrupt"), "{said}");

    restore();
    std::fs::remove_dir_all(data_dir.join("member/wal")).unwrap();
    let said = refused_start(&mut members[0]);
    assert!(said.contains("the raft log") && said.contains("is missing"), "{said}");

    restore();
    members[0].start();
    members[0].wait_healthy(Duration::from_secs(20));
    let got = etcdctl_ok(&ep, &["get", "while-one-is-down", "--print-value-only"]);
    assert_eq!(got.trim(), "1", "the restored member caught up");
}

#[test]
fn the_initial_corruption_check_stops_a_member_whose_data_differs_from_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster(dir.path());
    let ep = members[0].endpoint();
    for i in 0..50 {
        etcdctl_ok(&ep, &["put", &format!("k{i}"), "v"]);
    }
    assert!(members[0].terminate().success());
    let data_dir = members[0].data_dir.clone();
    let pristine = dir.path().join("pristine");
    copy_dir(&data_dir, &pristine);

    change_newest_version(&data_dir);
    members[0].add_args(&["--experimental-initial-corrupt-check=true"]);
    let said = refused_start(&mut members[0]);
    assert!(said.contains("found data inconsistency with peers"), "{said}");

    std::fs::remove_dir_all(&data_dir).unwrap();
    copy_dir(&pristine, &data_dir);
    members[0].add_args(&["--feature-gates=InitialCorruptCheck=true"]);
    members[0].start();
    members[0].wait_healthy(Duration::from_secs(20));
    assert_eq!(members[0].log_text().matches("corruption check: the peer agrees").count(), 2, "{}", members[0].log_text());
}

/// Changes the bytes of the newest version in the member's state database,
/// behind Raft's back: revisions and layout stay, the hash does not.
fn change_newest_version(data_dir: &Path) {
    with_state_db(data_dir, |db| {
        let history = db.cf_handle("history").unwrap();
        let (key, value) = db.iterator_cf(history, rocksdb::IteratorMode::End).next().unwrap().unwrap();
        db.put_cf(history, key, [&value[..], b"!"].concat()).unwrap();
    });
}

/// A follower's data changed behind Raft's back while the cluster runs with
/// `flags`; after `trigger`, the leader must raise a CORRUPT alarm, after
/// which every member refuses writes, still serves reads, and fails
/// `/readyz`'s data_corruption check.
fn the_leader_raises_the_corrupt_alarm(flags: &[&str], trigger: impl Fn(&str)) {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster_with(dir.path(), flags);
    let all: Vec<String> = members.iter().map(Member::endpoint).collect();
    for i in 0..50 {
        etcdctl_ok(&all[0], &["put", &format!("k{i}"), "v"]);
    }
    let rt = runtime();
    let follower = (rt.block_on(leader_index(&members)) + 1) % 3;
    let status = members[follower].terminate();
    assert!(status.success(), "the follower stopped with {status}:\n{}", members[follower].log_text());
    change_newest_version(&members[follower].data_dir);
    // Not waited for until healthy: with the periodic check the alarm may be
    // raised first, and a member with an alarm is not healthy (as in etcd).
    members[follower].start();
    trigger(&all[0]);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl_ok(&all[0], &["alarm", "list"]).contains("alarm:CORRUPT") {
        assert!(Instant::now() < deadline, "no CORRUPT alarm; leader's log:\n{}", members[rt.block_on(leader_index(&members))].log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    for ep in &all {
        let out = etcdctl(ep, &["put", "after", "x"]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("etcdserver: corrupt cluster"), "{out:?}");
        assert_eq!(etcdctl_ok(ep, &["get", "k1", "--print-value-only"]).trim(), "v", "reads are still served");
        let ready = http_get(ep, "/readyz?verbose").unwrap_or_default();
        assert!(ready.contains("data_corruption") && ready.contains("CORRUPT"), "{ready}");
    }
    let leader = rt.block_on(leader_index(&members));
    assert!(members[leader].log_text().contains("found data inconsistency with a peer"), "{}", members[leader].log_text());
}

#[test]
fn the_periodic_check_raises_the_corrupt_alarm_and_every_write_stops() {
    the_leader_raises_the_corrupt_alarm(&["--experimental-corrupt-check-time=1s"], |_| {});
}

#[test]
fn the_compaction_hash_check_raises_the_corrupt_alarm() {
    let flags = ["--feature-gates=CompactHashCheck=true", "--experimental-compact-hash-check-time=1s"];
    // Revision 51: the 50 puts; the changed version is the newest, so the
    // hash at the compact revision covers it.
    the_leader_raises_the_corrupt_alarm(&flags, |ep| {
        etcdctl_ok(ep, &["compact", "51"]);
    });
}
