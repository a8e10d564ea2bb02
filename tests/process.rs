//! The process as systemd and container runtimes see it: sd_notify, and
//! PID 1 duties (signals, reaping orphans) in a PID namespace of its own.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, wait_healthy_at, Member, Proc, CAIRN};

#[test]
fn tells_systemd_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut m = Member::single(dir.path(), "sd").with_env("NOTIFY_SOCKET", socket_path.to_str().unwrap());
    m.start();
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within 15 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving: clients get answers right away.
    assert!(common::etcdctl(&m.endpoint(), &["put", "k", "v"]).status.success());
    let started = Instant::now();
    let status = m.terminate();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(status.success(), "graceful stop exits 0: {status}");
    assert!(started.elapsed() < Duration::from_secs(2), "stopped in {:?}", started.elapsed());
    // The state database's memtables were written out: its write-ahead log
    // holds nothing for the next start to replay.
    let db = dir.path().join("sd.etcd/member/snap/db");
    let logs: Vec<_> = std::fs::read_dir(&db)
        .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| (e.file_name(), e.metadata().unwrap().len()))
        .collect();
    assert!(!logs.is_empty() && logs.iter().all(|(_, len)| *len == 0), "write-ahead logs left: {logs:?}");
}

fn can_make_pid_namespaces() -> bool {
    let ok = Command::new("unshare").args(["--pid", "--fork", "true"]).stderr(Stdio::null()).status();
    ok.is_ok_and(|s| s.success())
}

/// Parent pid and state letter of a host process, from /proc.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((fields.next()?.parse().ok()?, state))
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_and_state(*p).is_some_and(|(parent, _)| parent == pid))
        .collect()
}

#[test]
fn as_pid_1_it_reaps_orphans_and_stops_on_sigterm() {
    if !can_make_pid_namespaces() {
        eprintln!("SKIPPED as_pid_1_it_reaps_orphans_and_stops_on_sigterm: needs root and unshare(1) to make a PID namespace");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let (client, peer) = (format!("http://127.0.0.1:{c}"), format!("http://127.0.0.1:{p}"));
    let log = dir.path().join("init.log");
    let unshare = Proc(
        Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", CAIRN, "--name", "init"])
            .args(["--data-dir", dir.path().join("init.etcd").to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("init={peer}")])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_healthy_at(&format!("127.0.0.1:{c}"), Duration::from_secs(10), &log);
    let init = *children_of(unshare.0.id()).first().expect("cairn under unshare");

    // An orphan inside the namespace: its parent shell exits at once, so it
    // is handed to the namespace's init, cairn, which must reap it.
    let spawned = Command::new("nsenter")
        .args(["-t", &init.to_string(), "-p", "--", "sh", "-c", "sleep 0.5 & exit 0"])
        .status()
        .unwrap();
    assert!(spawned.success());
    let deadline = Instant::now() + Duration::from_secs(2);
    let orphan = loop {
        if let Some(pid) = children_of(init).into_iter().next() {
            break pid;
        }
        assert!(Instant::now() < deadline, "the orphan was never adopted by cairn");
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(parent_and_state(orphan), None, "the orphan was reaped, not left a zombie");

    let started = Instant::now();
    let status = unshare.terminate_child(init);
    assert!(status.success(), "SIGTERM to PID 1 stops it cleanly: {status}\n{}", std::fs::read_to_string(&log).unwrap());
    assert!(started.elapsed() < Duration::from_secs(2));
}
