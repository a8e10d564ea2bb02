//! A member whose disk fills up (its data dir on a small tmpfs) while the
//! cluster takes writes: it must exit with a line that says why rather than
//! stay up serving nothing, and the other two keep every acknowledged write.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::tmpfs::Tmpfs;
use common::*;

#[test]
fn a_member_whose_disk_fills_exits_and_the_others_keep_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("small"), 24) else { return };
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> = ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
    let mut members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| Member::clustered(dir.path(), &format!("m{i}"), *c, *p, &cluster.join(",")))
        .collect();
    // Only the data dir is on the small disk: the log file, where the last
    // line goes, is not.
    let small_data = disk.0.join("m0.etcd");
    members[0].add_args(&["--data-dir", small_data.to_str().unwrap()]);
    members.iter_mut().for_each(Member::start);
    members.iter().for_each(|m| m.wait_healthy(Duration::from_secs(20)));

    let rt = runtime();
    let mut acked = BTreeMap::new();
    let value = "x".repeat(512 * 1024);
    let started = Instant::now();
    let status = rt.block_on(async {
        let mut c = client(&[members[1].endpoint(), members[2].endpoint()]).await;
        let mut i = 0;
        let status = loop {
            if let Some(status) = members[0].try_wait() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "m0 still running with a full disk:\n{}", members[0].log_text());
            let key = format!("w/k{i:04}");
            if c.put(key.clone(), value.clone(), None).await.is_ok() {
                acked.insert(key, value.clone());
            }
            i += 1;
        };
        // The other two go on.
        for j in 0..5 {
            let key = format!("w/after{j}");
            c.put(key.clone(), "v", None).await.expect("a write after m0 stopped");
            acked.insert(key, "v".to_string());
        }
        status
    });
    let said = members[0].log_text();
    assert_eq!(status.code(), Some(1), "{}", &said[said.len().saturating_sub(3000)..]);
    assert!(said.contains("cairn: raft stopped:"), "{said}");
    assert!(said.contains("No space left on device"), "{said}");
    // Key by key: all of them at once would not fit one gRPC message.
    rt.block_on(async {
        for m in &members[1..] {
            let mut c = client(&[m.endpoint()]).await;
            for (key, value) in &acked {
                let got = c.get(key.as_str(), None).await.unwrap();
                assert_eq!(got.kvs().first().map(|kv| kv.value()), Some(value.as_bytes()), "{key} on {}", m.name);
            }
        }
    });
}
