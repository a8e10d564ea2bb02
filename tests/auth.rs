//! etcd's auth: users, roles and permissions driven by Debian's etcdctl
//! (compared line by line with real etcd), checks on every service with the
//! etcd-client crate and raw tokens, simple tokens that expire and follow
//! the cluster, JWTs, and client certificates naming their user.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use etcd_client::proto::{PbRangeRequest, PbRangeResponse};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LockOptions, Permission, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use common::certs::{self, client_flags, tls_member, KeyKind};
use common::*;

const ROOT_PW: &str = "rootpw";

/// What a person reads of an etcdctl run: its exit status, its output, and
/// its error line (etcdctl 3.4 also logs its retries, with timestamps).
fn seen(out: &Output) -> String {
    let errors: Vec<String> =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("Error:")).map(String::from).collect();
    format!("{} | {} | {}", out.status.success(), String::from_utf8_lossy(&out.stdout).trim_end(), errors.join(" / "))
}

/// One etcdctl session: turning auth on, roles and users, what each may do,
/// the refusals, and turning auth off again.
fn etcdctl_auth_session(endpoint: &str) -> Vec<(String, String)> {
    let root = format!("--user=root:{ROOT_PW}");
    let steps: Vec<(Vec<&str>, &str)> = vec![
        (vec!["user", "add", "root:rootpw"], ""),
        (vec!["auth", "enable"], ""),
        (vec!["put", "foo", "bar"], ""),
        (vec![&root, "put", "foo", "bar"], ""),
        (vec![&root, "role", "add", "reader"], ""),
        (vec![&root, "role", "add", "reader"], ""),
        (vec![&root, "role", "grant-permission", "reader", "read", "/a/", "--prefix=true"], ""),
        (vec![&root, "role", "grant-permission", "reader", "readwrite", "/w"], ""),
        (vec![&root, "role", "get", "reader"], ""),
        (vec![&root, "user", "add", "alice:alicepw"], ""),
        (vec![&root, "user", "add", "alice:again"], ""),
        (vec![&root, "user", "grant-role", "alice", "reader"], ""),
        (vec![&root, "user", "grant-role", "alice", "ghost"], ""),
        (vec![&root, "user", "get", "alice"], ""),
        (vec![&root, "put", "/a/x", "1"], ""),
        (vec!["--user=alice:alicepw", "get", "/a/x"], ""),
        (vec!["--user=alice:alicepw", "get", "/a/", "--prefix"], ""),
        (vec!["--user=alice:alicepw", "put", "/a/x", "2"], ""),
        (vec!["--user=alice:alicepw", "put", "/w", "2"], ""),
        (vec!["--user=alice:alicepw", "get", "/b"], ""),
        (vec!["--user=alice:alicepw", "get", "", "--from-key"], ""),
        (vec!["--user=alice:wrong", "get", "/a/x"], ""),
        (vec!["--user=nobody:x", "get", "/a/x"], ""),
        (vec!["--user=alice:alicepw", "user", "list"], ""),
        (vec!["--user=alice:alicepw", "user", "get", "alice"], ""),
        (vec!["--user=alice:alicepw", "user", "get", "root"], ""),
        (vec!["--user=alice:alicepw", "role", "get", "reader"], ""),
        (vec!["--user=alice:alicepw", "role", "add", "mine"], ""),
        (vec![&root, "user", "list"], ""),
        (vec![&root, "role", "list"], ""),
        (vec![&root, "role", "revoke-permission", "reader", "/a/", "--prefix=true"], ""),
        (vec![&root, "role", "revoke-permission", "reader", "/a/", "--prefix=true"], ""),
        (vec!["--user=alice:alicepw", "get", "/a/x"], ""),
        (vec![&root, "user", "delete", "root"], ""),
        (vec![&root, "role", "delete", "root"], ""),
        (vec![&root, "user", "revoke-role", "root", "root"], ""),
        (vec![&root, "user", "revoke-role", "alice", "root"], ""),
        (vec![&root, "user", "passwd", "alice", "--interactive=false"], "newpw\n"),
        (vec!["--user=alice:alicepw", "get", "/w"], ""),
        (vec!["--user=alice:newpw", "get", "/w"], ""),
        (vec![&root, "role", "delete", "reader"], ""),
        (vec![&root, "user", "get", "alice"], ""),
        (vec![&root, "user", "delete", "alice"], ""),
        (vec![&root, "user", "delete", "alice"], ""),
        (vec![&root, "auth", "disable"], ""),
        (vec!["put", "foo", "baz"], ""),
        (vec!["user", "list"], ""),
        (vec!["role", "list"], ""),
    ];
    steps
        .into_iter()
        .map(|(args, stdin)| (args.join(" "), seen(&etcdctl_stdin(endpoint, &args, stdin))))
        .collect()
}

#[test]
fn etcdctl_auth_session_reads_as_on_real_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::single(dir.path(), "auth");
    m.start();
    m.wait_healthy(Duration::from_secs(10));
    let ours = etcdctl_auth_session(&m.endpoint());
    for (step, (command, outcome)) in ours.iter().enumerate() {
        eprintln!("{step:>2} {command:<70} {outcome}");
    }
    let Some(etcd) = RealEtcd::start(dir.path()) else { return };
    let theirs = etcdctl_auth_session(&etcd.endpoint);
    for ((command, ours), (_, theirs)) in ours.iter().zip(&theirs) {
        assert_eq!(ours, theirs, "etcdctl {command}: cairn (left) and etcd (right) differ");
    }
}

/// A unary call sent with exactly the token given (etcd's `token`
/// metadata), as a client that does not sign in again by itself sends it.
async fn call_with_token<Req, Resp>(endpoint: &str, token: Option<&str>, path: &'static str, message: Req) -> Result<Resp, (tonic::Code, String)>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("token", token.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(request, path, tonic_prost::ProstCodec::default())
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| (s.code(), s.message().to_string()))
}

async fn range_with_token(endpoint: &str, token: Option<&str>, key: &str) -> Result<PbRangeResponse, (tonic::Code, String)> {
    let request = PbRangeRequest { key: key.into(), ..Default::default() };
    call_with_token(endpoint, token, "/etcdserverpb.KV/Range", request).await
}

/// etcd's AuthStatus messages (etcd-client has no call for it).
#[derive(Clone, PartialEq, prost::Message)]
struct AuthStatusRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct AuthStatusResponse {
    #[prost(bool, tag = "2")]
    enabled: bool,
    #[prost(uint64, tag = "3")]
    auth_revision: u64,
}

async fn auth_status(endpoint: &str, token: &str) -> Result<AuthStatusResponse, (tonic::Code, String)> {
    call_with_token(endpoint, Some(token), "/etcdserverpb.Auth/AuthStatus", AuthStatusRequest {}).await
}

async fn signed_in(endpoint: &str, user: &str, password: &str) -> Client {
    Client::connect([endpoint], Some(ConnectOptions::new().with_user(user, password))).await.unwrap()
}

async fn token_of(endpoint: &str, user: &str, password: &str) -> String {
    let c = client(&[endpoint.to_string()]).await;
    c.auth_client().authenticate(user.into(), password.into()).await.unwrap().token().to_string()
}

/// Root with the root role, and auth on.
async fn enable_auth(endpoint: &str) {
    let mut c = client(&[endpoint.to_string()]).await;
    c.user_add("root", ROOT_PW, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
}

fn denied(e: etcd_client::Error) -> bool {
    code_and_message(e) == (tonic::Code::PermissionDenied, "etcdserver: permission denied".into())
}

#[test]
fn every_service_checks_the_callers_permissions() {
    let (_dir, m) = single_member(&[]);
    let ep = m.endpoint();
    runtime().block_on(async {
        let mut anyone = client(&[ep.clone()]).await;
        assert_eq!(
            code_and_message(anyone.auth_enable().await.unwrap_err()),
            (tonic::Code::FailedPrecondition, "etcdserver: root user does not exist".into())
        );
        enable_auth(&ep).await;
        let mut root = signed_in(&ep, "root", ROOT_PW).await;
        let root_token = token_of(&ep, "root", ROOT_PW).await;
        let status = auth_status(&ep, &root_token).await.unwrap();
        assert!(status.enabled);
        root.role_add("reader").await.unwrap();
        root.role_grant_permission("reader", Permission::read("/a/").with_prefix()).await.unwrap();
        root.role_add("writer").await.unwrap();
        root.role_grant_permission("writer", Permission::read_write("/w/").with_prefix()).await.unwrap();
        root.user_add("alice", "alicepw", None).await.unwrap();
        root.user_grant_role("alice", "reader").await.unwrap();
        root.user_grant_role("alice", "writer").await.unwrap();
        root.put("/a/x", "1", None).await.unwrap();
        let revision_before = auth_status(&ep, &root_token).await.unwrap().auth_revision;
        assert_eq!(revision_before, status.auth_revision + 7, "each of the seven changes moved the auth revision");

        // No token: etcd's "user name is empty"; a made-up token: "invalid auth token".
        assert_eq!(
            range_with_token(&ep, None, "/a/x").await.unwrap_err(),
            (tonic::Code::InvalidArgument, "etcdserver: user name is empty".into())
        );
        assert_eq!(
            anyone.put("/w/x", "v", None).await.map_err(code_and_message).unwrap_err().1,
            "etcdserver: user name is empty"
        );
        assert_eq!(
            range_with_token(&ep, Some("madeup.1"), "/a/x").await.unwrap_err(),
            (tonic::Code::Unauthenticated, "etcdserver: invalid auth token".into())
        );
        let token = token_of(&ep, "alice", "alicepw").await;
        assert_eq!(range_with_token(&ep, Some(&token), "/a/x").await.unwrap().kvs.len(), 1);

        // KV: reads need read permission, writes write permission, a txn every key it touches.
        let mut alice = signed_in(&ep, "alice", "alicepw").await;
        assert_eq!(alice.get("/a/x", None).await.unwrap().kvs().len(), 1);
        assert!(denied(alice.put("/a/x", "2", None).await.unwrap_err()));
        assert!(denied(alice.get("/b", None).await.unwrap_err()));
        assert!(denied(alice.get("/", Some(GetOptions::new().with_prefix())).await.unwrap_err()));
        alice.put("/w/x", "1", None).await.unwrap();
        let sneaky = Txn::new()
            .when([Compare::value("/w/x", CompareOp::Equal, "nope")])
            .and_then([TxnOp::put("/w/y", "1", None)])
            .or_else([TxnOp::put("/a/x", "stolen", None)]);
        assert!(denied(alice.txn(sneaky).await.unwrap_err()), "both branches are checked, whichever runs");
        let peek = Txn::new().when([Compare::version("/b", CompareOp::Equal, 0)]);
        assert!(denied(alice.txn(peek).await.unwrap_err()), "a compare needs read permission");
        assert_eq!(root.get("/a/x", None).await.unwrap().kvs()[0].value(), b"1");

        // Leases: alice may not revoke a lease holding a key she cannot write.
        let lease = alice.lease_grant(60, None).await.unwrap().id();
        alice.put("/w/leased", "1", Some(PutOptions::new().with_lease(lease))).await.unwrap();
        root.put("/secret/leased", "1", Some(PutOptions::new().with_lease(lease))).await.unwrap();
        assert!(denied(alice.lease_revoke(lease).await.unwrap_err()));
        assert!(denied(alice.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await.unwrap_err()));
        assert!(denied(alice.put("/w/more", "1", Some(PutOptions::new().with_lease(lease))).await.unwrap_err()));
        root.lease_revoke(lease).await.unwrap();

        // Watch: refused at creation, with etcd's reason; an allowed one sees events.
        let mut refused = alice.watch("/b", None).await.unwrap();
        let first = refused.message().await.unwrap().unwrap();
        assert!(first.created() && first.canceled(), "{first:?}");
        assert_eq!(first.cancel_reason(), "rpc error: code = PermissionDenied desc = etcdserver: permission denied");
        let mut allowed = alice.watch("/a/", Some(WatchOptions::new().with_prefix())).await.unwrap();
        assert!(!allowed.message().await.unwrap().unwrap().canceled());
        root.put("/a/y", "2", None).await.unwrap();
        let event = allowed.message().await.unwrap().unwrap();
        assert_eq!(event.events()[0].kv().unwrap().key(), b"/a/y");

        // Lock and election keys are keys like any other.
        let lease = alice.lease_grant(60, None).await.unwrap().id();
        alice.lock("/w/lock", Some(LockOptions::new().with_lease(lease))).await.unwrap();
        assert!(denied(alice.lock("/a/lock", Some(LockOptions::new().with_lease(lease))).await.unwrap_err()));

        // Compaction, snapshots, hashes, defragmentation and membership are root's.
        let revision = root.get("/a/x", None).await.unwrap().header().unwrap().revision();
        assert!(denied(alice.compact(revision, None).await.unwrap_err()));
        assert!(denied(alice.defragment().await.unwrap_err()));
        assert!(denied(alice.hash_kv(0).await.unwrap_err()));
        assert!(denied(alice.member_add(["http://127.0.0.1:1"], None).await.unwrap_err()));
        assert!(alice.member_list().await.is_ok(), "a known user may list members");
        assert!(alice.status().await.is_ok(), "a known user may ask for status");
        root.compact(revision, None).await.unwrap();

        // Users and roles: alice may look at herself and her roles, nothing more.
        assert_eq!(alice.user_get("alice").await.unwrap().roles(), ["reader", "writer"]);
        assert!(denied(alice.user_get("root").await.unwrap_err()));
        assert!(alice.role_get("reader").await.is_ok());
        assert!(denied(alice.role_get("root").await.unwrap_err()));
        assert!(denied(alice.user_list().await.unwrap_err()));
        let alice_token = token_of(&ep, "alice", "alicepw").await;
        assert_eq!(auth_status(&ep, &alice_token).await.unwrap_err().1, "etcdserver: permission denied");
        assert_eq!(
            code_and_message(root.user_delete("root").await.unwrap_err()),
            (tonic::Code::InvalidArgument, "etcdserver: invalid auth management".into())
        );
        assert_eq!(
            code_and_message(root.user_get("ghost").await.unwrap_err()),
            (tonic::Code::FailedPrecondition, "etcdserver: user name not found".into())
        );

        // A revoked role stops the next write, with the same token.
        root.user_revoke_role("alice", "writer").await.unwrap();
        assert!(denied(alice.put("/w/x", "2", None).await.unwrap_err()));
        assert_eq!(auth_status(&ep, &root_token).await.unwrap().auth_revision, revision_before + 1);
    });

    // Users, roles and auth itself survive kill -9.
    let mut m = m;
    m.kill9();
    m.start();
    m.wait_healthy(Duration::from_secs(10));
    runtime().block_on(async {
        let mut alice = signed_in(&ep, "alice", "alicepw").await;
        assert_eq!(alice.get("/a/x", None).await.unwrap().kvs().len(), 1);
        assert!(denied(alice.put("/w/x", "3", None).await.unwrap_err()));
        assert_eq!(range_with_token(&ep, None, "/a/x").await.unwrap_err().1, "etcdserver: user name is empty");
    });

    // cairn ctl signs in as etcdctl does: --user name:password, or --user and --password.
    let endpoints = format!("--endpoints={ep}");
    let got = cairn_command(&["ctl", &endpoints, "--user", "alice:alicepw", "get", "/a/x", "--print-value-only"]);
    assert_eq!(got.trim(), "1");
    let refused = cairn_command_fails(&["ctl", &endpoints, "--user=alice", "--password=alicepw", "put", "/a/x", "2"]);
    assert!(refused.contains("etcdserver: permission denied"), "{refused}");
    let anonymous = cairn_command_fails(&["ctl", &endpoints, "get", "/a/x"]);
    assert!(anonymous.contains("etcdserver: user name is empty"), "{anonymous}");
    let no_password = cairn_command_fails(&["ctl", &endpoints, "--user=alice", "get", "/a/x"]);
    assert!(no_password.contains("--user alice: give the password"), "{no_password}");
    // etcdctl 3.5's `auth status`, which Debian's etcdctl 3.4 lacks.
    let status = cairn_command(&["ctl", &endpoints, &format!("--user=root:{ROOT_PW}"), "auth", "status"]);
    assert!(status.starts_with("Authentication Status: true\nAuthRevision: "), "{status}");
    let not_root = cairn_command_fails(&["ctl", &endpoints, "--user=alice:alicepw", "auth", "status"]);
    assert!(not_root.contains("etcdserver: permission denied"), "{not_root}");
}

#[test]
fn simple_tokens_expire_unused_reach_every_member_and_end_with_their_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = three_member_cluster_with(dir.path(), &["--auth-token-ttl=2", "--snapshot-count=20"]);
    let endpoints: Vec<String> = members.iter().map(Member::endpoint).collect();
    runtime().block_on(async {
        enable_auth(&endpoints[0]).await;
        let mut root = signed_in(&endpoints[0], "root", ROOT_PW).await;
        root.put("k", "v", None).await.unwrap();
        let token = token_of(&endpoints[0], "root", ROOT_PW).await;
        assert_eq!(token.split('.').count(), 2, "etcd's shape: letters, a dot, a number: {token}");
        // Every member learned the token through the log.
        for ep in &endpoints {
            assert_eq!(range_with_token(ep, Some(&token), "k").await.unwrap().kvs.len(), 1, "{ep}");
        }
        // Used every second, it outlives its two-second TTL on the member that sees it used.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            range_with_token(&endpoints[0], Some(&token), "k").await.unwrap();
        }
        assert_eq!(
            range_with_token(&endpoints[1], Some(&token), "k").await.unwrap_err().1,
            "etcdserver: invalid auth token",
            "unused on this member for longer than its TTL"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(range_with_token(&endpoints[0], Some(&token), "k").await.unwrap_err().1, "etcdserver: invalid auth token");

        // A password change ends the user's tokens at once. (Root's own
        // token expired while it slept: etcd-client does not sign in again.)
        let mut root = signed_in(&endpoints[0], "root", ROOT_PW).await;
        root.user_add("bob", "bobpw", None).await.unwrap();
        root.role_add("all").await.unwrap();
        root.role_grant_permission("all", Permission::read_write("\0").with_from_key()).await.unwrap();
        root.user_grant_role("bob", "all").await.unwrap();
        let bobs = token_of(&endpoints[0], "bob", "bobpw").await;
        range_with_token(&endpoints[2], Some(&bobs), "k").await.unwrap();
        root.user_change_password("bob", "newpw").await.unwrap();
        for ep in &endpoints {
            assert_eq!(range_with_token(ep, Some(&bobs), "k").await.unwrap_err().1, "etcdserver: invalid auth token");
        }
    });

    // A member that was down catches up from a snapshot: users come with it.
    members[2].kill9();
    runtime().block_on(async {
        let mut root = signed_in(&endpoints[0], "root", ROOT_PW).await;
        root.role_add("late").await.unwrap();
        for i in 0..300 {
            root.put(format!("fill{i}"), "x", None).await.unwrap();
        }
    });
    members[2].start();
    members[2].wait_healthy(Duration::from_secs(20));
    runtime().block_on(async {
        let mut root = signed_in(&endpoints[2], "root", ROOT_PW).await;
        assert!(root.role_get("late").await.is_ok());
        let mut bob = signed_in(&endpoints[2], "bob", "newpw").await;
        let serializable = GetOptions::new().with_serializable();
        assert_eq!(bob.get("fill299", Some(serializable)).await.unwrap().kvs()[0].value(), b"x");
    });
    assert!(members[2].log_text().contains("installed snapshot from the leader"), "caught up through a snapshot");
}

#[test]
fn jwt_tokens_check_on_any_member_and_go_stale_when_auth_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| assert!(Command::new("openssl").current_dir(d).args(args).status().unwrap().success());
    openssl(&["genrsa", "-out", "jwt.key", "2048"]);
    openssl(&["rsa", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
    openssl(&["genrsa", "-out", "other.key", "2048"]);
    openssl(&["rsa", "-in", "other.key", "-pubout", "-out", "other.pub"]);
    let jwt = |key: &str| format!("--auth-token=jwt,pub-key={0}/{key}.pub,priv-key={0}/{key}.key,sign-method=RS256,ttl=10m", d.display());
    let (_a, signer) = single_member(&[&jwt("jwt")]);
    let (_b, stranger) = single_member(&[&jwt("other")]);
    runtime().block_on(async {
        for m in [&signer, &stranger] {
            enable_auth(&m.endpoint()).await;
        }
        let token = token_of(&signer.endpoint(), "root", ROOT_PW).await;
        assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
        range_with_token(&signer.endpoint(), Some(&token), "k").await.unwrap();
        assert_eq!(
            range_with_token(&stranger.endpoint(), Some(&token), "k").await.unwrap_err(),
            (tonic::Code::Unauthenticated, "etcdserver: invalid auth token".into()),
            "signed with another key"
        );
        let mut root = signed_in(&signer.endpoint(), "root", ROOT_PW).await;
        root.role_add("r").await.unwrap();
        assert_eq!(
            range_with_token(&signer.endpoint(), Some(&token), "k").await.unwrap_err(),
            (tonic::Code::InvalidArgument, "etcdserver: revision of auth store is old".into())
        );
        // Signed in again, it works: etcd's Go client does that by itself on this answer.
        assert!(root.put("k", "v", None).await.is_err());
        let mut again = signed_in(&signer.endpoint(), "root", ROOT_PW).await;
        again.put("k", "v", None).await.unwrap();
    });
}

#[test]
fn a_client_certificate_names_its_user_when_no_token_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = certs::openssl_ca(d, "ca");
    let server = certs::openssl_cert(d, &ca, "server", "server", "IP:127.0.0.1", KeyKind::Rsa, "");
    let root_cert = certs::openssl_cert(d, &ca, "root-client", "root", "DNS:root", KeyKind::Ecdsa, "");
    let alice_cert = certs::openssl_cert(d, &ca, "alice-client", "alice", "DNS:alice", KeyKind::Rsa, "");
    let extra = ["--client-cert-auth".to_string(), format!("--trusted-ca-file={}", ca.cert())];
    let (member, ep) = tls_member(d, "certs", &server, &extra, false);
    let as_root = client_flags(&ca, &root_cert);
    let as_alice = client_flags(&ca, &alice_cert);
    let run = |flags: &[String], command: &[&str]| {
        let out = etcdctl_command(&ep, &["--command-timeout=10s"]).args(flags).args(command).output().unwrap();
        seen(&out)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(&as_root, &["put", "/a/x", "1"]).starts_with("true") {
        assert!(Instant::now() < deadline, "the member serves TLS: {}", member.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    for command in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "/a/", "--prefix=true"],
        &["user", "add", "alice", "--no-password"],
        &["user", "grant-role", "alice", "reader"],
    ] {
        let outcome = run(&as_root, command);
        assert!(outcome.starts_with("true"), "{command:?} with root's certificate: {outcome}");
    }
    assert_eq!(run(&as_alice, &["get", "/a/x", "--print-value-only"]), "true | 1 | ");
    assert_eq!(run(&as_alice, &["put", "/a/x", "2"]), "false |  | Error: etcdserver: permission denied");
    assert_eq!(run(&as_alice, &["user", "list"]), "false |  | Error: etcdserver: permission denied");
    // A password sign-in overrides the certificate; a no-password user has none to give.
    assert_eq!(
        run(&as_alice, &["--user=alice:anything", "get", "/a/x"]),
        "false |  | Error: etcdserver: authentication failed, invalid user ID or password"
    );
    assert!(run(&as_alice, &["--user=root:rootpw", "put", "/a/x", "3"]).starts_with("true"));
}
