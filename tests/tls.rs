//! TLS on the client and peer ports, with certificates made the way etcd's
//! installation guides make them (cfssl, openssl), checked with Debian's
//! etcdctl and with raw connections; and a peer port that refuses requests
//! from another cluster.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::raft::credentials::Credentials;
use cairn::raft::peerpb::peer_client::PeerClient;
use cairn::raft::peerpb::Payload;
use common::certs::{self, client_flags, tls_member, KeyKind, Pair};
use common::*;

fn args(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// Debian's etcdctl with short timeouts (a refused client must fail fast).
fn etcdctl_tls(endpoint: &str, flags: &[String], command: &[&str]) -> std::process::Output {
    etcdctl_command(endpoint, &["--dial-timeout=2s", "--command-timeout=4s"])
        .args(flags)
        .args(command)
        .output()
        .expect("etcdctl")
}

fn wait_until(within: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rejections(member: &Member) -> usize {
    member.log_text().matches("rejected connection").count()
}

#[test]
fn seed_003_three_members_with_cfssl_certificates_serve_etcdctl_over_tls() {
    let _ = Command::new("pkill").args(["-9", "-f", "127.0.1.[123]:2380"]).status();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = certs::cfssl_ca(d);
    let ips = ["127.0.1.1", "127.0.1.2", "127.0.1.3"];
    let nodes: Vec<String> = ips.iter().enumerate().map(|(i, ip)| format!("etcd0{}=https://{ip}:2380", i + 1)).collect();
    let nodes = nodes.join(",");
    let mut members = Vec::new();
    let mut node_certs = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let name = format!("etcd0{}", i + 1);
        let node_dir = d.join(&name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let pair = certs::cfssl_member(&node_dir, &ca, "etcd", ip);
        // The guide's second listener is http://127.0.0.1:2379; three members
        // on one machine need three ports for it.
        let plain = free_port();
        let mut m = Member::clustered(d, &name, plain, 0, &nodes);
        m.add_args(&[
            &format!("--cert-file={}", pair.cert()),
            &format!("--key-file={}", pair.key()),
            &format!("--peer-cert-file={}", pair.cert()),
            &format!("--peer-key-file={}", pair.key()),
            &format!("--trusted-ca-file={}", ca.cert()),
            &format!("--peer-trusted-ca-file={}", ca.cert()),
            &format!("--initial-advertise-peer-urls=https://{ip}:2380"),
            &format!("--listen-peer-urls=https://{ip}:2380"),
            &format!("--listen-client-urls=https://{ip}:2379,http://127.0.0.1:{plain}"),
            &format!("--advertise-client-urls=https://{ip}:2379"),
            "--initial-cluster-token=etcd-cluster-0",
            &format!("--initial-cluster={nodes}"),
            "--initial-cluster-state=new",
        ]);
        m.start();
        members.push(m);
        node_certs.push(pair);
    }
    members.iter().for_each(|m| m.wait_healthy(Duration::from_secs(30)));

    // The guide's check, on master 01 with its certificate.
    let flags = client_flags(&ca, &node_certs[0]);
    for ip in ips {
        let out = etcdctl_tls(&format!("https://{ip}:2379"), &flags, &["endpoint", "health"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(&format!("https://{ip}:2379 is healthy: successfully committed proposal")), "{text}");
    }
    let all: Vec<String> = ips.iter().map(|ip| format!("https://{ip}:2379")).collect();
    let out = etcdctl_tls(&all.join(","), &flags, &["endpoint", "health", "--write-out=table"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("HEALTH"), "{table}");
    for ep in &all {
        assert!(table.lines().any(|l| l.contains(ep.as_str()) && l.contains("true")), "{table}");
    }

    // The plain listener beside the TLS one, and the write seen over TLS.
    etcdctl_ok(&members[0].endpoint(), &["put", "seed", "003"]);
    let out = etcdctl_tls(&all[2], &flags, &["get", "seed", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "003");
    let out = etcdctl_tls(&all[1], &flags, &["member", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert_eq!(list.matches("https://127.0.1.").count(), 6, "{list}");

    // The built-in client and the container health check, with the same flags.
    let mut ctl = vec!["ctl".to_string(), format!("--endpoints={}", all[1])];
    ctl.extend(flags.clone());
    ctl.extend(["endpoint".to_string(), "health".to_string()]);
    assert!(cairn_command(&args(&ctl)).contains("is healthy"));
    let mut check = vec!["healthcheck".to_string(), "--endpoint".to_string(), all[2].clone()];
    check.extend(flags.clone());
    cairn_command(&args(&check));
    // Without a client certificate, the members refuse (a trusted CA means
    // client certificates are required, as in etcd).
    let refused = etcdctl_tls(&all[0], &[format!("--cacert={}", ca.cert())], &["endpoint", "health"]);
    assert!(!refused.status.success());
}

#[test]
fn client_cert_auth_refuses_strangers_and_logs_each_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = certs::openssl_ca(d, "root");
    let intermediate =
        certs::openssl_cert(d, &root, "intermediate", "Intermediate CA", "DNS:intermediate", KeyKind::Rsa, certs::INTERMEDIATE_CA);
    let server = certs::openssl_cert(d, &intermediate, "radon", "Server Radon", "IP:127.0.0.1,DNS:radon.gmem.cc", KeyKind::Rsa, "");
    // The server presents its chain: its certificate, then the intermediate.
    let chain = Pair { cert: d.join("radon-chain.crt"), key: server.key.clone() };
    let chain_text = std::fs::read_to_string(&server.cert).unwrap() + &std::fs::read_to_string(&intermediate.cert).unwrap();
    std::fs::write(&chain.cert, chain_text).unwrap();
    let client = certs::openssl_cert(d, &root, "client", "client", "DNS:client", KeyKind::Ecdsa, "");
    let other_ca = certs::openssl_ca(d, "other");
    let stranger = certs::openssl_cert(d, &other_ca, "stranger", "stranger", "DNS:stranger", KeyKind::Rsa, "");
    let expired = certs::openssl_expired(d, &root, "expired");

    let extra = ["--client-cert-auth".to_string(), format!("--trusted-ca-file={}", root.cert())];
    let (mut member, ep) = tls_member(d, "radon", &chain, &extra, false);
    let good = client_flags(&root, &client);
    wait_until(Duration::from_secs(30), "the member serves TLS", || {
        etcdctl_tls(&ep, &good, &["put", "k", "v"]).status.success()
    });

    let no_cert = vec![format!("--cacert={}", root.cert())];
    let refusals = [
        ("no certificate", ep.clone(), no_cert),
        ("a certificate from another CA", ep.clone(), client_flags(&root, &stranger)),
        ("an expired certificate", ep.clone(), client_flags(&root, &expired)),
        ("plaintext on the TLS port", ep.replace("https://", "http://"), vec![]),
    ];
    for (what, endpoint, flags) in &refusals {
        let before = rejections(&member);
        let out = etcdctl_tls(endpoint, flags, &["get", "k"]);
        assert!(!out.status.success(), "{what}: etcdctl succeeded");
        wait_until(Duration::from_secs(5), &format!("a rejected-connection log line for {what}"), || rejections(&member) > before);
        assert!(member.try_wait().is_none(), "{what}: the member exited");
    }
    let log = member.log_text();
    let rejected: Vec<&str> = log.lines().filter(|l| l.contains("rejected connection")).collect();
    assert!(rejected.iter().all(|l| l.contains("remote_addr") && l.contains("127.0.0.1")), "{rejected:?}");
    assert!(rejected.iter().any(|l| l.to_lowercase().contains("expired")), "{rejected:?}");

    let out = etcdctl_tls(&ep, &good, &["get", "k", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    // cairn ctl reads etcdctl's ETCDCTL_* variables for the same flags.
    let out = Command::new(CAIRN)
        .args(["ctl", &format!("--endpoints={ep}"), "get", "k", "--print-value-only"])
        .env("ETCDCTL_CACERT", root.cert())
        .env("ETCDCTL_CERT", client.cert())
        .env("ETCDCTL_KEY", client.key())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v", "{}", String::from_utf8_lossy(&out.stderr));
    let without = Command::new(CAIRN).args(["healthcheck", "--endpoint", &ep, "--cacert", root.cert()]).output().unwrap();
    assert_eq!(without.status.code(), Some(1));
}

/// The bytes a real TLS client opens with.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// Sends `bytes`, closes the sending side, and tells whether the member
/// closed the connection within three seconds.
fn closed_after(addr: &str, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
    }
}

#[test]
fn garbage_and_truncated_handshakes_leave_both_tls_ports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = certs::openssl_ca(d, "root");
    let server = certs::openssl_cert(d, &root, "server", "etcd", "IP:127.0.0.1", KeyKind::Rsa, "");
    let extra = [
        format!("--peer-cert-file={}", server.cert()),
        format!("--peer-key-file={}", server.key()),
        format!("--peer-trusted-ca-file={}", root.cert()),
        "--peer-client-cert-auth".to_string(),
    ];
    let (mut member, ep) = tls_member(d, "m", &server, &extra, true);
    let health = || Command::new(CAIRN).args(["healthcheck", "--endpoint", &ep, "--cacert", root.cert()]).status().unwrap().success();
    wait_until(Duration::from_secs(30), "the member is healthy over TLS", health);

    let hello = client_hello();
    let mut noise = Vec::with_capacity(4096);
    let mut x: u32 = 0x2545_f491;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let mut huge_record = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    huge_record.extend([0u8; 100]);
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("nothing", vec![]),
        ("a record header only", hello[..5].to_vec()),
        ("half a ClientHello", hello[..hello.len() / 2].to_vec()),
        ("a ClientHello without its last byte", hello[..hello.len() - 1].to_vec()),
        ("an HTTP/1.1 request", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("an HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("4 KiB of noise", noise),
        ("a record announcing 64 KiB", huge_record),
    ];
    let peer_addr = member.peer_url.trim_start_matches("http://").to_string();
    let client_addr = ep.trim_start_matches("https://").to_string();
    // Clients that connect and say nothing hold no one up meanwhile.
    let idle: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(&client_addr).unwrap()).collect();
    let before = rejections(&member);
    for addr in [&client_addr, &peer_addr] {
        for (what, bytes) in &payloads {
            assert!(closed_after(addr, bytes), "{addr}: {what}: the member kept the connection open");
        }
    }
    wait_until(Duration::from_secs(5), "a rejected-connection line per bad handshake", || {
        rejections(&member) >= before + 2 * payloads.len()
    });
    assert!(health(), "the member stopped serving");
    assert!(member.try_wait().is_none(), "the member exited");
    drop(idle);
}

#[test]
fn certificate_files_are_read_again_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first_ca = certs::openssl_ca(d, "first");
    let second_ca = certs::openssl_ca(d, "second");
    let first = certs::openssl_cert(d, &first_ca, "first-server", "etcd", "IP:127.0.0.1", KeyKind::Rsa, "");
    let second = certs::openssl_cert(d, &second_ca, "second-server", "etcd", "IP:127.0.0.1", KeyKind::Ecdsa, "");
    let live = Pair { cert: d.join("live.crt"), key: d.join("live.key") };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let (mut member, ep) = tls_member(d, "m", &live, &[], false);
    let with_ca = |ca: &Pair| etcdctl_tls(&ep, &[format!("--cacert={}", ca.cert())], &["put", "k", "v"]).status.success();
    wait_until(Duration::from_secs(30), "the first certificate serves", || with_ca(&first_ca));
    let pid = member.pid();

    std::fs::copy(&second.key, &live.key).unwrap();
    std::fs::copy(&second.cert, &live.cert).unwrap();
    wait_until(Duration::from_secs(5), "the second certificate serves", || with_ca(&second_ca));
    assert!(!with_ca(&first_ca), "the old certificate is still served");
    assert!(member.log_text().contains("certificate files changed: reloaded"));
    assert_eq!(member.pid(), pid);
    assert!(member.try_wait().is_none());
}

#[test]
fn a_revoked_client_certificate_is_refused_and_a_new_crl_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = certs::openssl_ca(d, "ca");
    let server = certs::openssl_cert(d, &ca, "server", "server", "IP:127.0.0.1", KeyKind::Rsa, "");
    let kept = certs::openssl_cert(d, &ca, "kept", "kept", "DNS:kept", KeyKind::Ecdsa, "");
    let revoked = certs::openssl_cert(d, &ca, "revoked", "revoked", "DNS:revoked", KeyKind::Rsa, "");
    let crl = d.join("live.crl");
    certs::openssl_crl(d, &ca, &[&revoked], &crl);
    let extra = [
        "--client-cert-auth".to_string(),
        format!("--trusted-ca-file={}", ca.cert()),
        format!("--client-crl-file={}", crl.display()),
    ];
    let (member, ep) = tls_member(d, "crl", &server, &extra, false);
    let put = |client: &Pair| etcdctl_tls(&ep, &client_flags(&ca, client), &["put", "k", "v"]).status.success();
    wait_until(Duration::from_secs(30), "the member serves a certificate the CRL keeps", || put(&kept));
    let before = rejections(&member);
    assert!(!put(&revoked), "a revoked certificate was taken");
    wait_until(Duration::from_secs(5), "a rejected-connection line for the revoked certificate", || rejections(&member) > before);
    let log = member.log_text();
    let line = log.lines().filter(|l| l.contains("rejected connection")).last().unwrap();
    assert!(line.to_lowercase().contains("revoked"), "{line}");

    // A new CRL that revokes the other one too, written under the running member.
    certs::openssl_crl(d, &ca, &[&revoked, &kept], &d.join("next.crl"));
    std::fs::copy(d.join("next.crl"), &crl).unwrap();
    wait_until(Duration::from_secs(5), "the new CRL refuses the certificate it revokes", || !put(&kept));
    assert!(member.is_running());
}

/// A request on the peer port from a process that is not a member of
/// this cluster, claiming a newer term: before the peer port checked
/// credentials, it deposed the leader.
async fn stranger_append(peer_url: &str, credentials: Credentials, term: u64) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(peer_url.to_string()).unwrap().connect().await.unwrap();
    let mut client = PeerClient::with_interceptor(channel, credentials);
    let request: openraft::raft::AppendEntriesRequest<cairn::raft::TypeConfig> = openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(term + 10, 0x99),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let data = postcard::to_allocvec(&request).unwrap();
    client.append_entries(Payload { data }).await.expect_err("the stranger's request was taken")
}

#[test]
fn members_of_another_cluster_cannot_disturb_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let members = three_member_cluster(dir.path());
    let rt = runtime();
    let before = rt.block_on(status_of(&members[0])).unwrap();
    let (term, leader, cluster_id) = (before.raft_term(), before.leader(), before.header().unwrap().cluster_id());

    // A process started with another --initial-cluster-token but these peers.
    let (c, p) = (free_port(), free_port());
    let peers: Vec<String> = members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect();
    let cluster = format!("{},stranger=http://127.0.0.1:{p}", peers.join(","));
    let mut stranger =
        Member::clustered(dir.path(), "stranger", c, p, &cluster).with_args(&["--initial-cluster-token", "another-cluster"]);
    stranger.start();
    // Crafted requests: another cluster, an unknown member, no credentials.
    for member in &members {
        let (other, unknown, anonymous) = rt.block_on(async {
            (
                stranger_append(&member.peer_url, Credentials::of_member(0x99, cluster_id ^ 1), term).await,
                stranger_append(&member.peer_url, Credentials::of_member(0x99, cluster_id), term).await,
                stranger_append(&member.peer_url, Credentials::anonymous(), term).await,
            )
        });
        assert_eq!(other.code(), tonic::Code::FailedPrecondition, "{other:?}");
        assert!(other.message().contains("cluster ID mismatch"), "{other:?}");
        assert_eq!(unknown.code(), tonic::Code::PermissionDenied, "{unknown:?}");
        assert_eq!(anonymous.code(), tonic::Code::FailedPrecondition, "{anonymous:?}");
    }
    // Writes go on while the stranger campaigns for a few election timeouts.
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < Duration::from_secs(6) {
        etcdctl_ok(&members[written % 3].endpoint(), &["put", &format!("k{written}"), "v"]);
        written += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = rt.block_on(status_of(&members[0])).unwrap();
    assert_eq!((after.raft_term(), after.leader()), (term, leader), "the cluster's leadership was disturbed");
    let refusals: usize = members.iter().map(|m| m.log_text().matches("request cluster ID mismatch").count()).sum();
    assert!(refusals >= 3, "the members did not log the strangers' requests");
    assert!(http_get(&stranger.endpoint(), "/health").is_none_or(|b| !b.contains("\"health\":\"true\"")));
    assert_eq!(etcdctl_ok(&members[1].endpoint(), &["get", "k0", "--print-value-only"]).trim(), "v");
}

/// Whether the TLS port at `addr` takes a session with this client
/// certificate (None: none): the handshake, then HTTP/2's preface answered
/// with the server's first frame.
fn accepts_client(addr: &str, ca: &Pair, client: Option<&Pair>) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&ca.cert).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(pair) => {
            let chain = CertificateDer::pem_file_iter(&pair.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&pair.key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connection = rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let mut frame_header = [0u8; 9];
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_ok() && tls.read_exact(&mut frame_header).is_ok()
}

#[test]
fn peer_port_takes_only_certificates_with_an_allowed_common_name_or_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = certs::openssl_ca(d, "root");
    let member_cert = certs::openssl_cert(d, &root, "member", "member", "IP:127.0.0.1", KeyKind::Rsa, "");
    let by_host = certs::openssl_cert(d, &root, "by-host", "other", "DNS:peer.example", KeyKind::Ecdsa, "");
    let intruder = certs::openssl_cert(d, &root, "intruder", "intruder", "DNS:intruder.example", KeyKind::Rsa, "");
    let extra = [
        format!("--peer-cert-file={}", member_cert.cert()),
        format!("--peer-key-file={}", member_cert.key()),
        format!("--peer-trusted-ca-file={}", root.cert()),
        "--peer-client-cert-auth".to_string(),
        "--peer-cert-allowed-cn=member".to_string(),
        "--peer-cert-allowed-hostname=peer.example".to_string(),
    ];
    let (mut member, ep) = tls_member(d, "m", &member_cert, &extra, true);
    wait_until(Duration::from_secs(30), "the member is healthy over TLS", || {
        Command::new(CAIRN).args(["healthcheck", "--endpoint", &ep, "--cacert", root.cert()]).status().unwrap().success()
    });
    let peer_addr = member.peer_url.trim_start_matches("http://").to_string();
    assert!(accepts_client(&peer_addr, &root, Some(&member_cert)), "the allowed common name was refused");
    assert!(accepts_client(&peer_addr, &root, Some(&by_host)), "the allowed host name was refused");
    let before = rejections(&member);
    assert!(!accepts_client(&peer_addr, &root, Some(&intruder)), "a certificate with neither was taken");
    assert!(!accepts_client(&peer_addr, &root, None), "a peer without a certificate was taken");
    wait_until(Duration::from_secs(5), "a rejected-connection line per refusal", || rejections(&member) >= before + 2);
    let log = member.log_text();
    let rejected: Vec<&str> = log.lines().filter(|l| l.contains("rejected connection")).collect();
    assert!(rejected.iter().any(|l| l.contains("matches neither the allowed common names nor the allowed host names")), "{rejected:?}");
    assert!(member.try_wait().is_none());
}
