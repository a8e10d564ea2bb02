//! A cluster that finds its members by itself: through a discovery URL
//! (Debian's discovery.etcd.io service in front of a real etcd with the v2
//! API, and a plain etcd v2 keys directory), through etcd 3.6's v3
//! discovery (in cairn and in a real etcd), and through DNS SRV records
//! served by a real DNS server (Debian's dnsmasq), which each member reads
//! through its own /etc/resolv.conf.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{openssl_ca, openssl_cert, KeyKind};
use common::*;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-fsS", "--max-time", "5"]).args(args).output().expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `etcdctl member list` lines, once every member there is started.
fn started_members(endpoints: &str, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = etcdctl(endpoints, &["member", "list"]);
        let listed: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        if listed.len() == count && listed.iter().all(|l| l.contains(", started, ")) {
            return listed;
        }
        assert!(Instant::now() < deadline, "member list: {listed:?} {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for a member that must refuse to start; returns what it said.
fn refused(member: &mut Member) -> String {
    refused_within(member, Duration::from_secs(30))
}

/// As `refused`, for a member that tries for a while before it gives up.
fn refused_within(member: &mut Member, within: Duration) -> String {
    member.start();
    said_on_exit(member, within)
}

/// What a started member that must exit 1 within `within` said.
fn said_on_exit(member: &mut Member, within: Duration) -> String {
    let status = member.wait_exit(within);
    assert_eq!(status.code(), Some(1), "{}", member.log_text());
    member.log_text()
}

fn endpoints(members: &[Member]) -> String {
    members.iter().map(Member::endpoint).collect::<Vec<_>>().join(",")
}

fn serve_one_cluster(members: &[Member]) {
    let eps = endpoints(members);
    for m in members {
        m.wait_healthy(Duration::from_secs(60));
    }
    let listed = started_members(&eps, members.len());
    for m in members {
        assert!(listed.iter().any(|l| l.contains(&format!(", {}, ", m.name))), "{} missing from {listed:?}", m.name);
    }
    etcdctl_ok(&members[0].endpoint(), &["put", "formed", "yes"]);
    for m in members {
        assert_eq!(etcdctl_ok(&m.endpoint(), &["get", "formed", "--print-value-only"]).trim(), "yes");
    }
}

#[test]
fn three_members_given_only_a_discovery_url_form_one_cluster_and_a_fourth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = RealEtcd::start_with(dir.path(), &["--enable-v2"]) else { return };
    let service_port = free_port();
    let service_url = format!("http://127.0.0.1:{service_port}");
    let _service = Proc(
        Command::new("discovery.etcd.io")
            .args(["--etcd", &format!("http://{}", etcd.endpoint), "--host", &service_url, "--addr", &format!("127.0.0.1:{service_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("discovery.etcd.io (Debian's etcd-discovery)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let token_url = loop {
        let out = Command::new("curl").args(["-fsS", &format!("{service_url}/new?size=3")]).output().unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap().trim().to_string();
        }
        assert!(Instant::now() < deadline, "the discovery service does not answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(token_url.starts_with(&service_url), "{token_url}");

    let discovered = |name: &str| Member::discovering(dir.path(), name, "http", "127.0.0.1", &["--discovery", &token_url]);
    let mut members: Vec<Member> = ["d0", "d1", "d2"].iter().map(|n| discovered(n)).collect();
    // They need not start together: the first two wait for the third.
    members[0].start();
    members[1].start();
    std::thread::sleep(Duration::from_secs(2));
    assert!(members[0].is_running() && members[1].is_running());
    members[2].start();
    serve_one_cluster(&members);

    let mut fourth = discovered("d3");
    let said = refused(&mut fourth);
    assert!(said.contains("discovery: cluster is full") && said.contains("d0=") && said.contains("(d3, "), "{said}");

    // A member with data ignores discovery: restarted, it is the same member.
    members[1].kill9();
    members[1].start();
    members[1].wait_healthy(Duration::from_secs(20));
    assert_eq!(started_members(&endpoints(&members), 3).len(), 3);
}

#[test]
fn a_plain_etcd_v2_keys_directory_serves_as_the_discovery_url_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = RealEtcd::start_with(dir.path(), &["--enable-v2"]) else { return };
    let registry = format!("http://{}/v2/keys/discovery/6c007a14875d53d9bf0ef5a6fc0257c817f0fb83", etcd.endpoint);
    curl(&["-X", "PUT", &format!("{registry}/_config/size"), "-d", "value=2"]);
    let discovered = |name: &str, url: &str| Member::discovering(dir.path(), name, "http", "127.0.0.1", &["--discovery", url]);
    let mut members = vec![discovered("p0", &registry), discovered("p1", &registry)];
    members.iter_mut().for_each(Member::start);
    serve_one_cluster(&members);

    let said = refused(&mut discovered("no-size", &format!("http://{}/v2/keys/discovery/unknown", etcd.endpoint)));
    assert!(said.contains("discovery: size key not found") && said.contains("/v2/keys/discovery/unknown/_config/size"), "{said}");
    // Not etcd's keys API at all: a cairn client URL.
    let said = refused(&mut discovered("bad-endpoint", &format!("{}/some/token", members[0].client_url)));
    assert!(said.contains("discovery: bad discovery endpoint"), "{said}");
    let mut both = discovered("both", &registry).with_args(&["--initial-cluster", "both=http://127.0.0.1:1"]);
    let said = refused(&mut both);
    assert!(said.contains("multiple discovery or bootstrap flags are set"), "{said}");
}

#[test]
fn etcd_3_6s_v3_discovery_through_a_cairn_cluster_and_a_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Member::single(dir.path(), "registry");
    registry.start();
    registry.wait_healthy(Duration::from_secs(20));
    let etcd = RealEtcd::start(dir.path());
    let mut registries = vec![registry.endpoint()];
    registries.extend(etcd.as_ref().map(|e| e.endpoint.clone()));
    for (r, endpoint) in registries.iter().enumerate() {
        let token = format!("token-{r}");
        etcdctl_ok(endpoint, &["put", &format!("/_etcd/registry/{token}/_config/size"), "2"]);
        let discovered = |name: &str| {
            Member::discovering(dir.path(), name, "http", "127.0.0.1", &["--discovery-token", &token, "--discovery-endpoints", endpoint])
        };
        let mut members = vec![discovered(&format!("v{r}a")), discovered(&format!("v{r}b"))];
        members.iter_mut().for_each(Member::start);
        serve_one_cluster(&members);
        let registered = etcdctl_ok(endpoint, &["get", &format!("/_etcd/registry/{token}/members/"), "--prefix", "--print-value-only"]);
        assert!(registered.contains(&format!("v{r}a=http://127.0.0.1:")) && registered.lines().count() == 2, "{registered}");
        let said = refused(&mut discovered(&format!("v{r}c")));
        assert!(said.contains("discovery: cluster is full") && said.contains(&format!("/_etcd/registry/{token} at {endpoint}")), "{said}");
    }
    let said = refused(&mut Member::discovering(
        dir.path(),
        "no-size",
        "http",
        "127.0.0.1",
        &["--discovery-token", "unknown", "--discovery-endpoints", &registries[0]],
    ));
    assert!(said.contains("discovery: size key not found: /_etcd/registry/unknown/_config/size"), "{said}");
}

/// A DNS server on a loopback address of its own, port 53, serving
/// `records` (dnsmasq options) for the zone `cairn.test`.
struct Dns {
    _proc: Proc,
}

const ZONE: &str = "cairn.test";

impl Dns {
    /// The resolv.conf in `dir` that names the server at `address`.
    fn resolv_conf(dir: &Path, address: &str) -> PathBuf {
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(&resolv_conf, format!("nameserver {address}\n")).unwrap();
        resolv_conf
    }

    fn start(address: &str, records: &[String]) -> Option<Dns> {
        if Command::new("dnsmasq").arg("--version").output().is_err() {
            eprintln!("NOTE: dnsmasq is not installed (apt-get install dnsmasq-base); skipping the DNS SRV test");
            return None;
        }
        let child = Command::new("dnsmasq")
            .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args([&format!("--listen-address={address}"), "--port=53", "--user=root", &format!("--local=/{ZONE}/")])
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        let dns = Dns { _proc: Proc(child) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind((address, 53)).is_ok() {
            assert!(Instant::now() < deadline, "dnsmasq did not bind {address}:53 (needs root)");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(dns)
    }

    /// What makes a member read `resolv_conf`: a mount namespace of its
    /// own with that file over /etc/resolv.conf.
    fn launcher(resolv_conf: &Path) -> Vec<String> {
        let script = format!("mount --bind {} /etc/resolv.conf && exec \"$0\" \"$@\"", resolv_conf.display());
        ["unshare", "-m", "sh", "-c", &script].iter().map(|s| s.to_string()).collect()
    }
}

fn can_run_dns() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n");
    if !root {
        eprintln!("NOTE: a DNS server on port 53 and a private resolv.conf need root; skipping the DNS SRV test");
    }
    root
}

/// dnsmasq's options for an SRV record of `service` per host and port, and
/// each host's address record.
fn srv_records(service: &str, hosts: &[(String, u16)]) -> Vec<String> {
    let mut records = Vec::new();
    for (host, port) in hosts {
        records.push(format!("--srv-host={service}._tcp.{ZONE},{host},{port}"));
        records.push(format!("--host-record={host},127.0.0.1"));
    }
    records
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn three_members_given_only_discovery_srv_form_one_cluster_when_their_records_come_late() {
    if !can_run_dns() {
        return;
    }
    const DNS_ADDRESS: &str = "127.0.0.53";
    let dir = tempfile::tempdir().unwrap();
    let launcher = Dns::launcher(&Dns::resolv_conf(dir.path(), DNS_ADDRESS));
    let mut members: Vec<Member> = (0..3)
        .map(|i| {
            let host = format!("s{i}.{ZONE}");
            Member::discovering(dir.path(), &format!("s{i}"), "http", &host, &["--discovery-srv", ZONE]).with_launcher(&launcher)
        })
        .collect();
    // The members start first; the DNS server, and so the records, later.
    members.iter_mut().for_each(Member::start);
    std::thread::sleep(Duration::from_secs(3));
    assert!(members.iter().all(Member::is_running), "a member gave up before its records existed");
    let hosts: Vec<(String, u16)> = members.iter().enumerate().map(|(i, m)| (format!("s{i}.{ZONE}"), port_of(&m.peer_url))).collect();
    let mut records = srv_records("_etcd-server", &hosts);
    records.extend(members.iter().enumerate().map(|(i, m)| format!("--srv-host=_etcd-client._tcp.{ZONE},s{i}.{ZONE},{}", port_of(&m.client_url))));
    let Some(_dns) = Dns::start(DNS_ADDRESS, &records) else { return };
    serve_one_cluster(&members);
    let listed = started_members(&endpoints(&members), 3);
    assert!(listed.iter().all(|l| l.contains(&format!(".{ZONE}:"))), "peer URLs as the records name them: {listed:?}");

    // A client finds the members through their `_etcd-client._tcp` records.
    let health = Command::new(&launcher[0])
        .args(&launcher[1..])
        .arg(CAIRN)
        .args(["ctl", "--discovery-srv", ZONE, "endpoint", "health"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&health.stdout);
    assert!(health.status.success() && said.matches(&format!(".{ZONE}:")).count() == 3 && said.matches("is healthy").count() == 3, "{said}");

    // A member the records do not name says what it found and compared;
    // one that asks for more members than the records name says so too.
    let mut stranger = Member::discovering(dir.path(), "stranger", "http", "127.0.0.1", &["--discovery-srv", ZONE])
        .with_launcher(&launcher)
        .with_args(&["--discovery-srv-name", "other"]);
    let mut too_few = Member::discovering(dir.path(), "too-few", "http", &hosts[0].0, &["--discovery-srv", ZONE, "--initial-cluster-size", "4"])
        .with_launcher(&launcher);
    // It advertises member s0's peer URL: it binds nothing before its cluster is found.
    too_few.add_args(&["--initial-advertise-peer-urls", &members[0].peer_url]);
    stranger.start();
    too_few.start();
    let said = said_on_exit(&mut stranger, Duration::from_secs(90));
    assert!(
        said.contains("cannot find this member in the SRV records")
            && said.contains(&format!("_etcd-server-other._tcp.{ZONE}.: no records"))
            && said.contains("this member advertises http://127.0.0.1:"),
        "{said}"
    );
    let said = said_on_exit(&mut too_few, Duration::from_secs(30));
    assert!(said.contains("found 3 of the 4 members --initial-cluster-size asks for"), "{said}");
}

#[test]
fn etcd_server_ssl_records_form_a_cluster_over_tls() {
    if !can_run_dns() {
        return;
    }
    const DNS_ADDRESS: &str = "127.0.0.54";
    let dir = tempfile::tempdir().unwrap();
    let ca = openssl_ca(dir.path(), "ca");
    let names: Vec<String> = (0..3).map(|i| format!("t{i}.{ZONE}")).collect();
    let san = names.iter().map(|n| format!("DNS:{n}")).chain(["IP:127.0.0.1".to_string()]).collect::<Vec<_>>().join(",");
    let peer = openssl_cert(dir.path(), &ca, "peer", "etcd-peer", &san, KeyKind::Rsa, "");
    let launcher = Dns::launcher(&Dns::resolv_conf(dir.path(), DNS_ADDRESS));
    let mut members: Vec<Member> = names
        .iter()
        .enumerate()
        .map(|(i, host)| {
            Member::discovering(dir.path(), &format!("t{i}"), "https", host, &["--discovery-srv", ZONE])
                .with_launcher(&launcher)
                .with_args(&[
                    "--peer-cert-file", peer.cert(),
                    "--peer-key-file", peer.key(),
                    "--peer-trusted-ca-file", ca.cert(),
                    "--peer-client-cert-auth",
                ])
        })
        .collect();
    let hosts: Vec<(String, u16)> = names.iter().cloned().zip(members.iter().map(|m| port_of(&m.peer_url))).collect();
    let Some(_dns) = Dns::start(DNS_ADDRESS, &srv_records("_etcd-server-ssl", &hosts)) else { return };
    members.iter_mut().for_each(Member::start);
    serve_one_cluster(&members);
    let listed = started_members(&endpoints(&members), 3);
    assert!(listed.iter().all(|l| l.contains(&format!("https://t"))), "{listed:?}");
}

#[test]
fn a_member_with_a_new_srv_record_joins_the_running_cluster_by_itself_and_resumes_after_a_crash() {
    if !can_run_dns() {
        return;
    }
    const DNS_ADDRESS: &str = "127.0.0.55";
    const CRASH: &str = "CAIRN_TEST_CRASH_AFTER_MEMBER_ADD";
    let dir = tempfile::tempdir().unwrap();
    let launcher = Dns::launcher(&Dns::resolv_conf(dir.path(), DNS_ADDRESS));
    let srv_member = |name: &str, host: &str| {
        Member::discovering(dir.path(), name, "http", &format!("{host}.{ZONE}"), &["--discovery-srv", ZONE]).with_launcher(&launcher)
    };
    let mut members: Vec<Member> = (0..3).map(|i| srv_member(&format!("j{i}"), &format!("j{i}"))).collect();
    let records = |members: &[(&str, &Member)]| {
        let hosts: Vec<(String, u16)> = members.iter().map(|(host, m)| (format!("{host}.{ZONE}"), port_of(&m.peer_url))).collect();
        srv_records("_etcd-server", &hosts)
    };
    let first_three: Vec<(&str, &Member)> = vec![("j0", &members[0]), ("j1", &members[1]), ("j2", &members[2])];
    let Some(dns) = Dns::start(DNS_ADDRESS, &records(&first_three)) else { return };
    members.iter_mut().for_each(Member::start);
    serve_one_cluster(&members);
    for i in 0..20 {
        etcdctl_ok(&members[0].endpoint(), &["put", &format!("data/{i}"), &i.to_string()]);
    }

    // One record more (and one for a member that takes a started member's
    // name), served once the DNS server restarts with them.
    let mut fourth = srv_member("j3", "j3").with_env(CRASH, "1");
    let mut namesake = srv_member("j0", "namesake").with_data_dir(dir.path().join("namesake.etcd"));
    drop(dns);
    let all: Vec<(&str, &Member)> =
        vec![("j0", &members[0]), ("j1", &members[1]), ("j2", &members[2]), ("j3", &fourth), ("namesake", &namesake)];
    let Some(_dns) = Dns::start(DNS_ADDRESS, &records(&all)) else { return };

    // It adds itself as a learner and crashes before it starts.
    fourth.start();
    let status = fourth.wait_exit(Duration::from_secs(60));
    assert!(!status.success() && fourth.log_text().contains("the cluster added this member as a learner"), "{status}: {}", fourth.log_text());
    let eps = endpoints(&members);
    let listed = etcdctl_ok(&eps, &["member", "list"]);
    assert!(listed.lines().count() == 4 && listed.contains("unstarted") && listed.contains(", true"), "an added, unstarted learner: {listed}");

    // Started again, it resumes as that member, catches up and promotes itself.
    fourth.remove_env(CRASH);
    fourth.start();
    fourth.wait_healthy(Duration::from_secs(60));
    assert!(fourth.log_text().contains("resuming as that member"), "{}", fourth.log_text());
    members.push(fourth);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = started_members(&endpoints(&members), 4);
        if listed.iter().all(|l| l.ends_with(", false")) {
            break;
        }
        assert!(Instant::now() < deadline, "not four voters: {listed:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(etcdctl_ok(&members[3].endpoint(), &["get", "data/19", "--print-value-only"]).trim(), "19", "it serves the data");
    etcdctl_ok(&members[3].endpoint(), &["put", "after-join", "x"]);

    let said = refused(&mut namesake);
    assert!(said.contains("already has a member named j0"), "{said}");
    assert_eq!(started_members(&endpoints(&members), 4).len(), 4, "no member was added twice");
}
