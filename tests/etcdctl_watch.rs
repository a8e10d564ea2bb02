//! Debian's etcdctl `watch` against cairn, and the same commands against real
//! etcd in the same run: the printed output must be identical.

mod common;

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{etcdctl_command, etcdctl_ok, Member, RealEtcd};

fn spawn_watch(endpoint: &str, args: &[&str]) -> Child {
    etcdctl_command(endpoint, &["watch"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl not found: apt-get install etcd-client")
}

fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The watch commands of etcd's docs and what they printed, by command.
fn scenario(endpoint: &str) -> Vec<(String, String)> {
    let watches: Vec<(&str, Vec<&str>)> = vec![
        ("watch foo", vec!["foo"]),
        ("watch --prefix p", vec!["--prefix", "p"]),
        ("watch --prev-kv foo", vec!["--prev-kv", "foo"]),
        ("watch foo zoo (range)", vec!["foo", "zoo"]),
    ];
    let mut children: Vec<(String, Child)> =
        watches.iter().map(|(name, args)| (name.to_string(), spawn_watch(endpoint, args))).collect();
    let mut interactive = spawn_watch(endpoint, &["-i"]);
    interactive.stdin.as_mut().unwrap().write_all(b"watch foo\nwatch --prefix p --prev-kv\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    for args in [
        vec!["put", "foo", "bar1"],
        vec!["put", "p/a", "x"],
        vec!["put", "foo", "bar2"],
        vec!["put", "goo", "g"],
        vec!["del", "foo"],
        vec!["put", "p/b", "y"],
        vec!["del", "--prefix", "p/"],
    ] {
        etcdctl_ok(endpoint, &args);
    }
    std::thread::sleep(Duration::from_millis(1500));
    children.push(("watch -i".into(), interactive));

    // History: every revision of foo from the start.
    children.push(("watch --rev 1 foo".into(), spawn_watch(endpoint, &["--rev", "1", "foo"])));
    children.push(("watch --rev 3 --prefix p".into(), spawn_watch(endpoint, &["--rev", "3", "--prefix", "p"])));
    std::thread::sleep(Duration::from_millis(1500));
    children.into_iter().map(|(name, child)| (name, stop(child))).collect()
}

#[test]
fn etcdctl_watch_prints_what_etcd_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::single(dir.path(), "ctlwatch");
    m.start();
    m.wait_healthy(Duration::from_secs(10));
    let cairn = scenario(&m.endpoint());

    let by_name = |name: &str| cairn.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(by_name("watch foo"), "PUT\nfoo\nbar1\nPUT\nfoo\nbar2\nDELETE\nfoo\n\n");
    assert_eq!(by_name("watch --prev-kv foo"), "PUT\nfoo\nbar1\nPUT\nfoo\nbar1\nfoo\nbar2\nDELETE\nfoo\nbar2\nfoo\n\n");
    assert_eq!(by_name("watch --rev 1 foo"), by_name("watch foo"));
    assert!(by_name("watch -i").contains("PUT\np/a\nx\n"), "{}", by_name("watch -i"));
    assert!(by_name("watch foo zoo (range)").contains("PUT\ngoo\ng\n"));

    let etcd_dir = tempfile::tempdir().unwrap();
    if let Some(etcd) = RealEtcd::start(etcd_dir.path()) {
        let etcd = scenario(&etcd.endpoint);
        for ((name, ours), (_, theirs)) in cairn.iter().zip(&etcd) {
            assert_eq!(ours, theirs, "`etcdctl {name}` prints differently on cairn and on etcd");
        }
    }
}
