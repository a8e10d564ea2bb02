//! `cairn --name n1` with no other flag, driven by Debian's real etcdctl.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{etcdctl, etcdctl_ok, etcdctl_stdin, wait_healthy_at, Proc};

const EP: &str = "127.0.0.1:2379";

#[test]
fn default_single_node_serves_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("n1.log")).unwrap();
    let child = Proc(Command::new(common::CAIRN)
        .arg("--name")
        .arg("n1")
        .current_dir(dir.path())
        .stderr(log)
        .spawn()
        .unwrap());
    wait_healthy_at(EP, Duration::from_secs(10), &dir.path().join("n1.log"));
    assert!(dir.path().join("n1.etcd/member/wal").is_dir(), "data dir defaults to n1.etcd");
    assert!(std::net::TcpStream::connect("127.0.0.1:2380").is_ok(), "peer port 2380 listens");

    let version = etcdctl_ok(EP, &["version"]);
    assert!(version.contains("API version: 3.4"), "{version}");

    let health = etcdctl(EP, &["endpoint", "health"]);
    let text = String::from_utf8_lossy(&health.stderr).to_string() + &String::from_utf8_lossy(&health.stdout);
    assert!(health.status.success() && text.contains("is healthy"), "{text}");

    let status = etcdctl_ok(EP, &["endpoint", "status", "-w", "table"]);
    assert!(status.contains("127.0.0.1:2379") && status.contains("3.5.0") && status.contains("true"), "{status}");

    let members = etcdctl_ok(EP, &["member", "list"]);
    assert!(members.contains(", started, n1, http://localhost:2380, http://localhost:2379, false"), "{members}");

    for (k, v) in [("foo/b", "2"), ("foo/a", "1"), ("foo/c", "3"), ("other", "x")] {
        assert_eq!(etcdctl_ok(EP, &["put", k, v]).trim(), "OK");
    }
    let got = etcdctl_ok(EP, &["get", "--prefix", "foo/", "--sort-by=KEY", "--limit", "2"]);
    assert_eq!(got, "foo/a\n1\nfoo/b\n2\n");
    let desc = etcdctl_ok(EP, &["get", "--prefix", "foo/", "--sort-by=KEY", "--order=DESCEND", "--limit", "1"]);
    assert_eq!(desc, "foo/c\n3\n");
    assert_eq!(etcdctl_ok(EP, &["del", "foo/b"]).trim(), "1");
    assert_eq!(etcdctl_ok(EP, &["del", "nothing-here"]).trim(), "0");
    assert_eq!(etcdctl_ok(EP, &["get", "--prefix", "foo/", "--keys-only"]).split_whitespace().collect::<Vec<_>>(), ["foo/a", "foo/c"]);

    // Interactive txn as etcdctl reads it: compares, blank line, success ops, blank line, failure ops.
    let txn = etcdctl_stdin(EP, &["txn"], "value(\"foo/a\") = \"1\"\n\nput foo/a one\n\nput foo/a nope\n\n");
    assert!(txn.status.success(), "{}", String::from_utf8_lossy(&txn.stderr));
    assert_eq!(String::from_utf8_lossy(&txn.stdout), "SUCCESS\n\nOK\n");
    let txn = etcdctl_stdin(EP, &["txn"], "value(\"foo/a\") = \"1\"\n\nput foo/a yes\n\nput foo/c failure-branch\n\n");
    assert_eq!(String::from_utf8_lossy(&txn.stdout), "FAILURE\n\nOK\n");
    assert_eq!(etcdctl_ok(EP, &["get", "foo/a", "--print-value-only"]), "one\n");
    assert_eq!(etcdctl_ok(EP, &["get", "foo/c", "--print-value-only"]), "failure-branch\n");

    // Revisions so far: 4 puts (2..5), 1 delete (6), 2 txns (7, 8).
    let json = etcdctl_ok(EP, &["get", "foo/a", "-w", "json"]);
    assert!(json.contains("\"revision\":8"), "{json}");
    assert_eq!(etcdctl_ok(EP, &["compaction", "7"]).trim(), "compacted revision 7");
    let old = etcdctl(EP, &["get", "foo/a", "--rev=6"]);
    assert!(!old.status.success());
    assert!(String::from_utf8_lossy(&old.stderr).contains("etcdserver: mvcc: required revision has been compacted"));
    assert_eq!(etcdctl_ok(EP, &["get", "foo/a", "--rev=7", "--print-value-only"]), "one\n");

    // etcdctl 3.4 given a URL sends all of it as the HTTP/2 :authority;
    // `--cluster` dials the advertised client URLs the same way.
    let url = "http://127.0.0.1:2379";
    assert_eq!(etcdctl_ok(url, &["put", "from-url", "u"]).trim(), "OK");
    assert_eq!(etcdctl_ok(url, &["get", "from-url", "--print-value-only"]), "u\n");
    let cluster = etcdctl_ok(EP, &["endpoint", "status", "--cluster"]);
    assert!(cluster.starts_with("http://localhost:2379, "), "{cluster}");

    let status = child.terminate();
    assert!(status.success(), "graceful stop exits 0, got {status}");
}
