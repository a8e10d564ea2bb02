//! Real cairn processes on real loopback ports, and the real etcdctl.
#![allow(dead_code)] // each test binary uses its own part of these helpers

pub mod certs;
pub mod netns;
pub mod tmpfs;

use std::net::TcpListener;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// A loopback port that was free a moment ago, never the same twice in one
/// test binary. It lies below the kernel's ephemeral range (32768 and up):
/// a port from that range can be taken, before the member binds it, by an
/// outgoing connection of another test, whose cluster would then answer on
/// this one's endpoint.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        // Each binary starts elsewhere, away from members a previous one left.
        let n = std::process::id().wrapping_mul(211).wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst));
        let port = 20000 + (n % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// What runs cairn: nothing, or `ip netns exec <namespace>`.
    launcher: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// A member of a static cluster, started with the flags of etcd's clustering guide.
    pub fn clustered(dir: &Path, name: &str, client_port: u16, peer_port: u16, initial_cluster: &str) -> Member {
        Member::on_host(dir, name, "127.0.0.1", (client_port, peer_port), initial_cluster)
    }

    /// A member of a static cluster on host `host` of `network`, on etcd's
    /// ports (each host has its own).
    pub fn networked(dir: &Path, name: &str, network: &netns::Network, host: usize, initial_cluster: &str) -> Member {
        let mut member = Member::on_host(dir, name, &network.ip(host), (2379, 2380), initial_cluster);
        member.launcher = network.launcher(host);
        member
    }

    fn on_host(dir: &Path, name: &str, ip: &str, (client_port, peer_port): (u16, u16), initial_cluster: &str) -> Member {
        let client_url = format!("http://{ip}:{client_port}");
        let peer_url = format!("http://{ip}:{peer_port}");
        let data_dir = dir.join(format!("{name}.etcd"));
        let args = [
            "--name", name,
            "--data-dir", data_dir.to_str().unwrap(),
            "--initial-advertise-peer-urls", &peer_url,
            "--listen-peer-urls", &peer_url,
            "--listen-client-urls", &client_url,
            "--advertise-client-urls", &client_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "cairn-test-cluster",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<String>>();
        // No --initial-cluster at all for a member that discovers its cluster.
        let args = if initial_cluster.is_empty() {
            args.chunks(2).filter(|flag| flag[0] != "--initial-cluster").flatten().cloned().collect()
        } else {
            args
        };
        let log = dir.join(format!("{name}.log"));
        Member { name: name.into(), client_url, peer_url, data_dir, args, envs: Vec::new(), launcher: Vec::new(), child: None, log }
    }

    /// A member on fresh loopback ports that advertises its peer URL as
    /// `http://<peer_host>:<port>` and finds its cluster by the flags
    /// `bootstrap` (a discovery URL, DNS SRV) instead of --initial-cluster.
    pub fn discovering(dir: &Path, name: &str, scheme: &str, peer_host: &str, bootstrap: &[&str]) -> Member {
        let (client_port, peer_port) = (free_port(), free_port());
        let mut member = Member::on_host(dir, name, "127.0.0.1", (client_port, peer_port), "");
        member.peer_url = format!("{scheme}://{peer_host}:{peer_port}");
        let listen = format!("{scheme}://127.0.0.1:{peer_port}");
        let advertised = member.peer_url.clone();
        member.add_args(&["--listen-peer-urls", &listen, "--initial-advertise-peer-urls", &advertised]);
        member.add_args(bootstrap);
        member
    }

    /// Runs the member under `launcher` (a program and its arguments, to
    /// which cairn's path and flags are appended).
    pub fn with_launcher(mut self, launcher: &[String]) -> Member {
        self.launcher = launcher.to_vec();
        self
    }

    /// Adds flags for the next start (a repeated flag: the last one wins, as in etcd).
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|s| s.to_string()));
    }

    /// Puts the member's data dir at `data_dir`.
    pub fn with_data_dir(mut self, data_dir: PathBuf) -> Member {
        self.add_args(&["--data-dir", data_dir.to_str().unwrap()]);
        self.data_dir = data_dir;
        self
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Member {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Drops an environment variable `with_env` set, for the next start.
    pub fn remove_env(&mut self, name: &str) {
        self.envs.retain(|(n, _)| n != name);
    }

    /// The process id of the running member.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.take().expect("running");
        Proc(child).terminate()
    }

    pub fn with_args(mut self, extra: &[&str]) -> Member {
        self.add_args(extra);
        self
    }

    /// A single member on fresh ports.
    pub fn single(dir: &Path, name: &str) -> Member {
        let (c, p) = (free_port(), free_port());
        let cluster = format!("{name}=http://127.0.0.1:{p}");
        Member::clustered(dir, name, c, p, &cluster)
    }

    pub fn endpoint(&self) -> String {
        self.client_url.trim_start_matches("http://").to_string()
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(CAIRN);
                command
            }
            None => Command::new(CAIRN),
        };
        let child = command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting cairn");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status, once the process has ended by itself.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// The exit status once the member ends by itself; panics with its log
    /// if it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still running after {within:?}:\n{}", self.name, self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the member has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits until `/health` says true.
    pub fn wait_healthy(&self, within: Duration) {
        wait_healthy_at(&self.endpoint(), within, &self.log);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A child process killed when the test ends, passed or not.
pub struct Proc(pub Child);

impl Proc {
    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        self.0.wait().unwrap()
    }
}

impl Proc {
    /// SIGTERM to `pid` (a process under this one, e.g. behind unshare),
    /// then this process's exit status.
    pub fn terminate_child(mut self, pid: u32) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        self.0.wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `/health` on `endpoint` until it says true; panics with `log` otherwise.
pub fn wait_healthy_at(endpoint: &str, within: Duration, log: &Path) {
    let deadline = Instant::now() + within;
    while http_get(endpoint, "/health").is_none_or(|b| !b.contains("\"health\":\"true\"")) {
        assert!(Instant::now() < deadline, "{endpoint} not healthy within {within:?}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `GET path` on `endpoint`, with the client `cairn healthcheck` uses.
pub fn http_get(endpoint: &str, path: &str) -> Option<String> {
    cairn::ctl::http_get(endpoint, path).ok()
}

/// One started, healthy member in a fresh directory, with extra flags.
pub fn single_member(extra: &[&str]) -> (tempfile::TempDir, Member) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::single(dir.path(), "single").with_args(extra);
    m.start();
    m.wait_healthy(Duration::from_secs(10));
    (dir, m)
}

/// The gRPC code and message of a client error that must be a gRPC status.
pub fn code_and_message(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Debian's etcdctl (v3 API) against `endpoints`, ready to run.
pub fn etcdctl_command(endpoints: &str, args: &[&str]) -> Command {
    let mut command = Command::new("etcdctl");
    command.env("ETCDCTL_API", "3").arg(format!("--endpoints={endpoints}")).args(args);
    command
}

/// Runs Debian's etcdctl (v3 API) against `endpoints`.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_stdin(endpoints, args, "")
}

pub fn etcdctl_stdin(endpoints: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = etcdctl_command(endpoints, &["--command-timeout=10s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl not found: apt-get install etcd-client");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// etcdctl that must succeed; returns its stdout.
pub fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoints, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

pub async fn client(endpoints: &[String]) -> etcd_client::Client {
    etcd_client::Client::connect(endpoints, None).await.expect("connecting etcd-client")
}

pub async fn status_of(m: &Member) -> Option<etcd_client::StatusResponse> {
    let mut c = etcd_client::Client::connect([m.endpoint()], None).await.ok()?;
    c.status().await.ok()
}

/// Index of the running member that is leader, as the members themselves report it.
pub async fn leader_index(members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for (i, m) in members.iter().enumerate().filter(|(_, m)| m.is_running()) {
            if let Some(s) = status_of(m).await {
                if s.leader() != 0 && s.leader() == s.header().unwrap().member_id() {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key written under `w/` must read back, serializably, from member
/// `m` (once it caught up).
pub async fn assert_has_all(m: &Member, acked: &BTreeMap<String, String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = client(&[m.endpoint()]).await;
    loop {
        let got = c.get("w/", Some(etcd_client::GetOptions::new().with_prefix().with_serializable())).await;
        match got {
            Ok(got) => {
                let present: BTreeMap<String, String> =
                    got.kvs().iter().map(|kv| (kv.key_str().unwrap().into(), kv.value_str().unwrap().into())).collect();
                if acked.iter().all(|(k, v)| present.get(k) == Some(v)) {
                    return;
                }
                if Instant::now() > deadline {
                    let missing: Vec<_> = acked.keys().filter(|k| !present.contains_key(*k)).collect();
                    panic!("{} is missing acknowledged writes {missing:?}", m.name);
                }
            }
            Err(e) => assert!(Instant::now() < deadline, "{} cannot be read: {e}", m.name),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Puts `w/NNNNNN` keys one after another, round-robin over the endpoints
/// (which the test may change while it runs), until `stop`; records every
/// acknowledged one in `acked`. Returns the number of attempts.
pub fn spawn_writer(
    rt: &tokio::runtime::Runtime,
    endpoints: Arc<Mutex<Vec<String>>>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    rt.spawn(async move {
        let mut clients: BTreeMap<String, etcd_client::Client> = BTreeMap::new();
        let mut attempts = 0;
        let mut i = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let endpoint = {
                let eps = endpoints.lock().unwrap();
                eps[i % eps.len()].clone()
            };
            let (key, value) = (format!("w/{i:06}"), format!("v{i}"));
            i += 1;
            attempts += 1;
            if !clients.contains_key(&endpoint) {
                match etcd_client::Client::connect([endpoint.clone()], None).await {
                    Ok(c) => clients.insert(endpoint.clone(), c),
                    Err(_) => continue,
                };
            }
            let c = clients.get_mut(&endpoint).expect("connected above");
            let put = tokio::time::timeout(Duration::from_secs(3), c.put(key.clone(), value.clone(), None)).await;
            if let Ok(Ok(_)) = put {
                acked.lock().unwrap().insert(key, value);
            }
        }
        attempts
    })
}

/// Runs `cairn ARGS` (a client command) to completion; it must succeed. Returns stdout.
pub fn cairn_command(args: &[&str]) -> String {
    let out = Command::new(CAIRN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "cairn {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Runs `cairn ARGS`, which must fail with exit code 1; returns stderr.
pub fn cairn_command_fails(args: &[&str]) -> String {
    let out = Command::new(CAIRN).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "cairn {args:?}: {text}");
    text
}

/// Three members of a static cluster on fresh ports, started.
pub fn three_member_cluster(dir: &Path) -> Vec<Member> {
    three_member_cluster_with(dir, &[])
}

pub fn three_member_cluster_with(dir: &Path, extra: &[&str]) -> Vec<Member> {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("m{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| Member::clustered(dir, &format!("m{}", i + 1), *c, *p, &cluster).with_args(extra))
        .collect();
    members.iter_mut().for_each(Member::start);
    members.iter().for_each(|m| m.wait_healthy(Duration::from_secs(20)));
    members
}

/// Real etcd (Debian's etcd-server), to compare behavior against; `None`
/// (with a visible note) where it is not installed.
pub struct RealEtcd {
    pub endpoint: String,
    _proc: Proc,
}

impl RealEtcd {
    pub fn start(dir: &Path) -> Option<RealEtcd> {
        RealEtcd::start_with(dir, &[])
    }

    /// With `extra` flags (e.g. `--enable-v2`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Option<RealEtcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            eprintln!("NOTE: etcd (Debian's etcd-server) is not installed; skipping the comparison with real etcd");
            return None;
        }
        let (c, p) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{c}");
        let peer_url = format!("http://127.0.0.1:{p}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "etcd", "--data-dir", dir.join("etcd.data").to_str().unwrap()])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("etcd={peer_url}")])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let endpoint = format!("127.0.0.1:{c}");
        let proc = Proc(child);
        wait_healthy_at(&endpoint, Duration::from_secs(20), &dir.join("etcd.log"));
        Some(RealEtcd { endpoint, _proc: proc })
    }
}
