//! Flags, environment and config file: precedence and one-line errors.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::certs::{self, KeyKind};
use common::{free_port, http_get, wait_healthy_at, Proc, CAIRN};

/// Runs cairn in an empty directory; returns its output and what it left there.
fn run(args: &[&str], env: &[(&str, &str)]) -> (Output, Vec<std::path::PathBuf>) {
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CAIRN);
    cmd.args(args).env_clear().current_dir(cwd.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let left = std::fs::read_dir(cwd.path()).unwrap().map(|e| e.unwrap().path()).collect();
    (out, left)
}

/// The process exits 1 with exactly one line on stderr containing `needle`.
fn fails_with(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let (out, left) = run(args, env);
    assert!(left.is_empty(), "{args:?} left {left:?} behind");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{args:?}: expected {needle:?} in {err:?}");
}

#[test]
fn bad_flags_exit_1_naming_the_flag() {
    fails_with(&["--snapshot-count", "lots"], &[], "invalid value \"lots\" for --snapshot-count");
    fails_with(&["--enable-v2"], &[], "--enable-v2 is an etcd flag that cairn does not support yet");
    fails_with(&["--cert-file=/x.pem", "--key-file=/x.key"], &[], "--cert-file /x.pem: No such file");
    fails_with(&["--no-such-flag", "1"], &[], "unknown flag: --no-such-flag");
    fails_with(&["--initial-cluster-state", "maybe"], &[], "--initial-cluster-state");
    fails_with(&["--heartbeat-interval", "500"], &[], "should be at least as 5 times as --heartbeat-interval");
    fails_with(&["--log-level", "loud"], &[], "--log-level");
    fails_with(&["--feature-gates=Bogus=true"], &[], "--feature-gates: unrecognized feature gate: Bogus");
    fails_with(&["--feature-gates=InitialCorruptCheck"], &[], "expected Name=true or Name=false");
    fails_with(&["--experimental-initial-corrupt-check=maybe"], &[], "--experimental-initial-corrupt-check");
    fails_with(&["--experimental-corrupt-check-time=often"], &[], "invalid value \"often\" for --experimental-corrupt-check-time");
    fails_with(&["--corrupt-check-time=1"], &[], "for --corrupt-check-time: expected a duration");
    fails_with(
        &["--feature-gates=CompactHashCheck=true", "--experimental-compact-hash-check-time=x"],
        &[],
        "--experimental-compact-hash-check-time",
    );
    fails_with(&["--metrics", "all"], &[], "--metrics");
    fails_with(&["--listen-client-urls", "http://127.0.0.1:1"], &[], "--advertise-client-urls is required");
    fails_with(
        &["--listen-client-urls", "https://127.0.0.1:1", "--advertise-client-urls", "https://127.0.0.1:1"],
        &[],
        "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:1 with HTTPS scheme",
    );
    fails_with(&["--advertise-client-urls", "http://127.0.0.1:9"], &[], "--advertise-client-urls: http://127.0.0.1:9 is not served");
    fails_with(&["--name", "m1", "--initial-cluster", "m2=http://localhost:2380"], &[], "--name m1 is not in --initial-cluster (m2)");
    fails_with(&["--initial-cluster-state", "existing"], &[], "member add");
    fails_with(&["--snapshot-count", "x"], &[], "--snapshot-count");
    fails_with(&[], &[("ETCD_SNAPSHOT_COUNT", "x")], "for ETCD_SNAPSHOT_COUNT");
    fails_with(&[], &[("ETCD_CORS", "*")], "ETCD_CORS");
    fails_with(&["--bcrypt-cost", "3"], &[], "invalid value 3 for --bcrypt-cost: bcrypt's cost is 4 to 31");
    fails_with(&[], &[("ETCD_AUTH_TOKEN_TTL", "5m")], "for ETCD_AUTH_TOKEN_TTL");
    fails_with(&["--auth-token", "opaque"], &[], "invalid --auth-token: unknown token type \"opaque\"");
    fails_with(&["--auth-token", "jwt"], &[], "invalid --auth-token: jwt needs sign-method");
    fails_with(
        &["--auth-token", "jwt,sign-method=RS256,pub-key=/no/such.pub"],
        &[],
        "invalid --auth-token: cannot read jwt key /no/such.pub",
    );
    fails_with(&["--memory-budget-bytes", "1048576"], &[], "for --memory-budget-bytes: at least 16777216 (16 MiB)");
    fails_with(&[], &[("ETCD_MEMORY_BUDGET_BYTES", "64MiB")], "for ETCD_MEMORY_BUDGET_BYTES");
}

#[test]
fn config_file_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yml");
    std::fs::write(&file, "name: x\nsnapshot-count: many\n").unwrap();
    fails_with(&["--config-file", file.to_str().unwrap()], &[], "snapshot-count (config file");
    std::fs::write(&file, "name: x\nbogus-key: 1\n").unwrap();
    fails_with(&["--config-file", file.to_str().unwrap()], &[], "unknown key bogus-key");
    std::fs::write(&file, "enable-v2: true\n").unwrap();
    fails_with(&["--config-file", file.to_str().unwrap()], &[], "enable-v2");
    fails_with(&["--config-file", "/no/such/file.yml"], &[], "cannot read --config-file");
}

#[test]
fn version_flag() {
    let (out, _) = run(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcd API Version: 3.5.0"));
}

/// defaults < config file < ETCD_* env < flags, observed on a running member.
#[test]
fn precedence_file_env_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port, peer) = (free_port(), free_port(), free_port(), free_port());
    let file = dir.path().join("etcd.conf.yml");
    std::fs::write(
        &file,
        format!(
            "name: from-file\ndata-dir: {}\nlisten-client-urls: http://127.0.0.1:{file_port}\nadvertise-client-urls: http://127.0.0.1:{file_port}\nlisten-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\nenable-v2: false\n",
            dir.path().join("d").display()
        ),
    )
    .unwrap();
    let env_url = format!("http://127.0.0.1:{env_port}");
    let flag_url = format!("http://127.0.0.1:{flag_port}");
    let child = Proc(Command::new(CAIRN)
        .args(["--config-file", file.to_str().unwrap(), "--listen-client-urls", &flag_url, "--advertise-client-urls", &flag_url])
        .env("ETCD_NAME", "from-env")
        .env("ETCD_LISTEN_CLIENT_URLS", &env_url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &env_url)
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap());
    let ep = format!("127.0.0.1:{flag_port}");
    wait_healthy_at(&ep, Duration::from_secs(10), &dir.path().join("log"));
    // The flag's port serves; the env's and file's do not. The env's name beat the file's.
    assert!(http_get(&format!("127.0.0.1:{env_port}"), "/health").is_none());
    assert!(http_get(&format!("127.0.0.1:{file_port}"), "/health").is_none());
    let members = common::etcdctl_ok(&ep, &["member", "list"]);
    assert!(members.contains(", from-env, ") && members.contains(&flag_url), "{members}");
    assert!(dir.path().join("d/member").is_dir(), "data-dir from the file");
    assert!(child.terminate().success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("--listen-client-urls overrides environment variable ETCD_LISTEN_CLIENT_URLS"), "{log}");
    // JSON lines with the keys of etcd's zap logger.
    for line in log.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for k in ["level", "ts", "caller", "msg"] {
            assert!(entry.get(k).is_some(), "{k} missing in {line}");
        }
    }
}

/// The image's defaults (CAIRN_DEFAULTS=container): every interface, the
/// hostname advertised, ETCD_DATA_DIR still in charge.
#[test]
fn container_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let child = Proc(
        Command::new(CAIRN)
            .args(["--name", "box"])
            .env("CAIRN_DEFAULTS", "container")
            .env("ETCD_DATA_DIR", dir.path().join("data"))
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_healthy_at("127.0.0.1:2379", Duration::from_secs(10), &dir.path().join("log"));
    let members = common::etcdctl_ok("127.0.0.1:2379", &["member", "list"]);
    assert!(members.contains(&format!(", box, http://{host}:2380, http://{host}:2379, false")), "{members}");
    assert!(dir.path().join("data/member/wal").is_dir());
    assert!(child.terminate().success());
}

/// The shipped examples (config/cairn.conf.yml, config/cairn.env) are
/// accepted as they are; flags move only the ports and the data dir.
#[test]
fn shipped_config_examples_start() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let env_file = std::fs::read_to_string(root.join("config/cairn.env")).unwrap();
    let env: Vec<(String, String)> = env_file
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
        .collect();
    for (source, file_arg, envs) in [
        ("config file", vec!["--config-file".to_string(), root.join("config/cairn.conf.yml").display().to_string()], vec![]),
        ("env file", vec![], env),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (c, p) = (free_port(), free_port());
        let (client, peer) = (format!("http://127.0.0.1:{c}"), format!("http://127.0.0.1:{p}"));
        let child = Proc(
            Command::new(CAIRN)
                .args(&file_arg)
                .args(["--data-dir", dir.path().join("d").to_str().unwrap()])
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("n1={peer}")])
                .envs(envs)
                .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_healthy_at(&format!("127.0.0.1:{c}"), Duration::from_secs(10), &dir.path().join("log"));
        let members = common::etcdctl_ok(&format!("127.0.0.1:{c}"), &["member", "list"]);
        assert!(members.contains(", n1, "), "{source}: {members}");
        assert!(child.terminate().success(), "{source}");
    }
}

#[test]
fn tls_misconfiguration_exits_1_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = certs::openssl_ca(d, "ca");
    let a = certs::openssl_cert(d, &ca, "a", "a", "IP:127.0.0.1", KeyKind::Rsa, "");
    let b = certs::openssl_cert(d, &ca, "b", "b", "IP:127.0.0.1", KeyKind::Ecdsa, "");
    let flag = |name: &str, path: &std::path::Path| format!("--{name}={}", path.display());
    let (cert, key, other_key) = (flag("cert-file", &a.cert), flag("key-file", &a.key), flag("key-file", &b.key));
    fails_with(&[&cert, &other_key], &[], "--key-file does not match the certificate of --cert-file");
    fails_with(&[&cert], &[], "--cert-file is given without --key-file");
    fails_with(&["--cert-file=/no/such.pem", &key], &[], "--cert-file /no/such.pem");
    fails_with(&[&cert, &key, "--client-cert-auth"], &[], "--client-cert-auth needs --trusted-ca-file");
    fails_with(&[&cert, &key, &flag("trusted-ca-file", &a.key)], &[], "--trusted-ca-file");
    let peer = format!("https://127.0.0.1:{}", free_port());
    let peer_urls = [format!("--listen-peer-urls={peer}"), format!("--initial-advertise-peer-urls={peer}")];
    fails_with(&[&peer_urls[0], &peer_urls[1]], &[], "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url");
    let (peer_cert, peer_key) = (flag("peer-cert-file", &a.cert), flag("peer-key-file", &a.key));
    fails_with(&[&peer_urls[0], &peer_urls[1], &peer_cert, &peer_key], &[], "--peer-trusted-ca-file is needed");
    fails_with(&["--tls-min-version", "TLS1.4"], &[], "--tls-min-version: unexpected TLS version \"TLS1.4\"");
    fails_with(&["--cipher-suites", "TLS_RSA_WITH_RC4_128_SHA"], &[], "unexpected TLS cipher suite");
    fails_with(&["--client-cert-auth=maybe"], &[], "for --client-cert-auth: expected true or false");
    // The config file's transport security sections stand for the same flags.
    let file = d.join("tls.yml");
    let yaml = format!(
        "client-transport-security:\n  cert-file: {}\n  key-file: {}\npeer-transport-security:\n  auto-tls: true\n",
        a.cert.display(),
        b.key.display()
    );
    std::fs::write(&file, yaml).unwrap();
    fails_with(&["--config-file", file.to_str().unwrap()], &[], "--key-file does not match the certificate of --cert-file");
}
