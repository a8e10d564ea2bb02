//! `cairn ctl` (and `cairn` run as `etcdctl`) against Debian's real etcdctl:
//! the same commands must print the same thing.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{etcdctl, Member, CAIRN};

fn cairn(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(CAIRN).args(args).envs(env.iter().copied()).output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn ctl_prints_what_etcdctl_prints() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::single(dir.path(), "ctl");
    m.start();
    m.wait_healthy(Duration::from_secs(10));
    let ep = m.endpoint();
    let endpoints = format!("--endpoints={ep}");

    // Writes through cairn ctl, read back by etcdctl, and the other way round.
    assert_eq!(text(&cairn(&["ctl", &endpoints, "put", "k1", "v1"], &[])), "OK\n");
    assert_eq!(text(&etcdctl(&ep, &["put", "k2", "v2"])), "OK\n");
    for args in [
        vec!["get", "k1"],
        vec!["get", "k", "--prefix"],
        vec!["get", "k", "--prefix", "--keys-only"],
        vec!["get", "k2", "--print-value-only"],
        vec!["member", "list"],
        vec!["member", "list", "-w", "table"],
        vec!["endpoint", "status"],
        vec!["endpoint", "status", "-w", "table"],
        vec!["endpoint", "status", "-w", "json"],
    ] {
        let ours = cairn(&[&["ctl", endpoints.as_str()], args.as_slice()].concat(), &[]);
        let theirs = etcdctl(&ep, &args);
        assert!(ours.status.success(), "{args:?}: {}", String::from_utf8_lossy(&ours.stderr));
        assert_eq!(text(&ours), text(&theirs), "{args:?}");
    }
    let health = text(&cairn(&["ctl", &endpoints, "endpoint", "health"], &[]));
    assert!(health.starts_with(&format!("{ep} is healthy: successfully committed proposal: took = ")), "{health}");
    assert_eq!(text(&cairn(&["ctl", &endpoints, "del", "k", "--prefix"], &[])), "2\n");

    // Run as `etcdctl` through a link, configured by ETCDCTL_ENDPOINTS, as
    // `docker exec <container> etcdctl …` does.
    let link = dir.path().join("etcdctl");
    std::os::unix::fs::symlink(CAIRN, &link).unwrap();
    let linked = Command::new(&link).args(["put", "via-link", "yes"]).env("ETCDCTL_ENDPOINTS", &ep).output().unwrap();
    assert_eq!(text(&linked), "OK\n");
    assert_eq!(text(&etcdctl(&ep, &["get", "via-link", "--print-value-only"])), "yes\n");

    // The image's HEALTHCHECK.
    assert!(cairn(&["healthcheck", "--endpoint", &ep], &[]).status.success());
    m.kill9();
    let down = cairn(&["healthcheck", "--endpoint", &ep], &[]);
    assert_eq!(down.status.code(), Some(1));
    let failed = cairn(&["ctl", &endpoints, "--command-timeout=1s", "endpoint", "health"], &[]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("Error: unhealthy cluster"));
}
