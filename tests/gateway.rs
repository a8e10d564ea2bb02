//! The JSON gateway (`POST /v3/…`) with curl, as etcd's gateway guide uses
//! it: every answer compared byte for byte with real etcd's in the same run
//! (member and cluster ids, terms and tokens aside), watch streaming
//! included; and `--listen-client-http-urls` and `--enable-grpc-gateway`.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `curl -d body http://endpoint/path` as `<status> <body>`.
fn post(endpoint: &str, path: &str, body: &str, token: Option<&str>) -> String {
    let mut curl = Command::new("curl");
    curl.args(["-s", "-m", "10", "-w", " %{http_code}", "-d", body, &format!("http://{endpoint}{path}")]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: {token}")]);
    }
    let out = curl.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once(' ').unwrap_or((&text, ""));
    format!("{code} {body}")
}

/// A watch stream kept open by curl until it is stopped.
struct Watching {
    curl: Child,
    output: std::path::PathBuf,
}

impl Watching {
    fn start(endpoint: &str, body: &str, output: std::path::PathBuf) -> Watching {
        let file = std::fs::File::create(&output).unwrap();
        let curl = Command::new("curl")
            .args(["-s", "-N", "-m", "20", "-d", body, &format!("http://{endpoint}/v3/watch")])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        let watching = Watching { curl, output };
        watching.wait_for("\"created\":true", 1);
        watching
    }

    fn text(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.output).unwrap().read_to_string(&mut text).unwrap();
        text
    }

    fn wait_for(&self, needle: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.text().matches(needle).count() < times {
            assert!(Instant::now() < deadline, "waiting for {times} x {needle} in {}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) -> String {
        let _ = self.curl.kill();
        let _ = self.curl.wait();
        self.text()
    }
}

/// What differs between two fresh stores whatever they serve: their ids,
/// terms and tokens.
fn normalized(answer: &str) -> String {
    let mut text = answer.to_string();
    for key in ["cluster_id", "member_id", "raft_term", "token"] {
        let marker = format!("\"{key}\":\"");
        let mut from = 0;
        while let Some(at) = text[from..].find(&marker) {
            let start = from + at + marker.len();
            let end = start + text[start..].find('"').unwrap();
            text.replace_range(start..end, "*");
            from = start + 1;
        }
    }
    text
}

/// The curl session of etcd's gateway guide and more, on one endpoint: each
/// answer as curl got it.
fn session(endpoint: &str, dir: &std::path::Path) -> Vec<String> {
    let mut answers = Vec::new();
    let mut ask = |path: &str, body: &str| answers.push(post(endpoint, path, body, None));
    ask("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    ask("/v3/kv/range", r#"{"key":"Zm9v"}"#);
    ask("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"YmF6","prev_kv":true}"#);
    ask("/v3/kv/put", r#"{"key":"Zm9vMg==","value":"cXV4","prev_kv":true}"#);
    ask("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w","sort_order":"DESCEND","sort_target":"VALUE","limit":1}"#);
    ask("/v3/kv/range", r#"{"key":"Zm9v","rangeEnd":"Zm9w","keysOnly":true,"revision":"2"}"#);
    ask("/v3/kv/range", r#"{"key":"Zm9v","range_end":"Zm9w","count_only":true}"#);
    ask("/v3/kv/range", r#"{"key":"","unknown_field":1}"#);
    ask("/v3/kv/range", r#"{"key":"Zm9v","revision":"100"}"#);
    ask("/v3/kv/range", "");
    ask(
        "/v3/kv/txn",
        r#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}},{"request_range":{"key":"Zm9v"}},{"request_txn":{"success":[{"request_delete_range":{"key":"eHg="}}]}}]}"#,
    );
    ask("/v3/kv/txn", r#"{"compare":[{"result":"GREATER","target":"VERSION","key":"Zm9v","version":"5"}],"failure":[{"request_range":{"key":"bm9uZQ=="}}]}"#);
    ask("/v3/kv/deleterange", r#"{"key":"Zm9vMg==","prev_kv":true}"#);
    ask("/v3/kv/compaction", r#"{"revision":"3"}"#);
    ask("/v3/kv/range", r#"{"key":"Zm9v","revision":"2"}"#);
    ask("/v3/lease/grant", r#"{"TTL":"30","ID":"7"}"#);
    ask("/v3/lease/grant", r#"{"TTL":"30","ID":"7"}"#);
    ask("/v3/kv/put", r#"{"key":"bGVhc2Vk","value":"eA==","lease":"7"}"#);
    ask("/v3/lease/keepalive", r#"{"ID":"7"}"#);
    ask("/v3/kv/lease/timetolive", r#"{"ID":"7","keys":true}"#);
    ask("/v3/lease/leases", "{}");
    ask("/v3/lease/revoke", r#"{"ID":"8"}"#);
    ask("/v3/kv/lease/revoke", r#"{"ID":"7"}"#);
    ask("/v3/lease/timetolive", r#"{"ID":"7"}"#);

    let watch = Watching::start(endpoint, r#"{"create_request":{"key":"dw==","prev_kv":true}}"#, dir.join("watch-1"));
    ask("/v3/kv/put", r#"{"key":"dw==","value":"MQ=="}"#);
    ask("/v3/kv/put", r#"{"key":"dw==","value":"Mg=="}"#);
    ask("/v3/kv/deleterange", r#"{"key":"dw=="}"#);
    watch.wait_for("\"events\"", 3);
    answers.push(watch.stop());
    let watch = Watching::start(endpoint, r#"{"create_request":{"key":"dw==","start_revision":"4"}}"#, dir.join("watch-2"));
    watch.wait_for("\"type\":\"DELETE\"", 1);
    answers.push(watch.stop());
    let body = r#"{"create_request":{"key":"dw==","watch_id":"9"}}{"create_request":{"key":"Zm9v","range_end":"AA==","filters":["NOPUT"]}}"#;
    let watch = Watching::start(endpoint, body, dir.join("watch-3"));
    watch.wait_for("\"created\":true", 2);
    answers.push(post(endpoint, "/v3/kv/deleterange", r#"{"key":"Zm9v"}"#, None));
    watch.wait_for("\"events\"", 1);
    answers.push(watch.stop());

    let mut ask = |path: &str, body: &str, token: Option<&str>| answers.push(post(endpoint, path, body, token));
    ask("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#, None);
    ask("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#, None);
    ask("/v3/auth/role/add", r#"{"name":"reader"}"#, None);
    ask("/v3/auth/role/grant", r#"{"name":"reader","perm":{"permType":"READ","key":"Zm9v","range_end":"Zm9w"}}"#, None);
    ask("/v3/auth/role/get", r#"{"role":"reader"}"#, None);
    ask("/v3/auth/enable", "{}", None);
    ask("/v3/kv/range", r#"{"key":"Zm9v"}"#, None);
    ask("/v3/auth/authenticate", r#"{"name":"root","password":"wrong"}"#, None);
    let signed_in = post(endpoint, "/v3/auth/authenticate", r#"{"name":"root","password":"pw"}"#, None);
    let json: serde_json::Value = serde_json::from_str(signed_in.split_once(' ').unwrap().1).unwrap();
    let token = json["token"].as_str().expect("a token").to_string();
    answers.push(signed_in);
    let mut ask = |path: &str, body: &str, token: Option<&str>| answers.push(post(endpoint, path, body, token));
    ask("/v3/kv/put", r#"{"key":"Zm9v","value":"YXV0aA=="}"#, Some(&token));
    ask("/v3/kv/range", r#"{"key":"Zm9v"}"#, Some("not-a-token"));
    ask("/v3/auth/user/list", "{}", Some(&token));
    ask("/v3/auth/disable", "{}", Some(&token));
    ask("/v3/kv/range", r#"{"key":"Zm9v"}"#, None);
    answers
}

#[test]
fn curl_gets_the_json_real_etcd_gives() {
    let (dir, m) = single_member(&[]);
    let cairn = session(&m.endpoint(), dir.path());
    let text = cairn.join("\n");
    assert!(text.contains(r#""kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#), "{text}");
    assert!(text.contains(r#"{"result":{"header":"#) && text.contains(r#""type":"DELETE""#), "{text}");
    assert!(text.contains(r#"401 {"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#), "{text}");

    let etcd_dir = tempfile::tempdir().unwrap();
    let Some(etcd) = RealEtcd::start(etcd_dir.path()) else { return };
    let etcd = session(&etcd.endpoint, etcd_dir.path());
    assert_eq!(cairn.len(), etcd.len());
    for (step, (ours, theirs)) in cairn.iter().zip(&etcd).enumerate() {
        assert_eq!(normalized(ours), normalized(theirs), "step {step}");
    }
}

#[test]
fn gateway_errors_and_listeners() {
    let http = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut m = Member::single(dir.path(), "split").with_args(&[&format!("--listen-client-http-urls=http://{http}")]);
    m.start();
    wait_healthy_at(&http, Duration::from_secs(10), &dir.path().join("split.log"));
    etcdctl_ok(&m.endpoint(), &["put", "k", "v"]);
    let range = post(&http, "/v3/kv/range", r#"{"key":"aw=="}"#, None);
    assert!(range.starts_with("200 ") && range.contains(r#""value":"dg==""#), "{range}");
    let on_grpc_url = post(&m.endpoint(), "/v3/kv/range", r#"{"key":"aw=="}"#, None);
    assert!(!on_grpc_url.starts_with("200 {"), "HTTP moved to --listen-client-http-urls: {on_grpc_url}");
    // etcd 3.4 answers {} here; 3.5 fills in the header, as cairn does.
    let alarms = post(&http, "/v3/maintenance/alarm", r#"{"action":"GET"}"#, None);
    assert!(alarms.starts_with(r#"200 {"header":{"cluster_id":"#), "{alarms}");
    let old_path = post(&http, "/v3beta/kv/range", r#"{"key":"aw=="}"#, None);
    assert!(old_path.starts_with("200 ") && old_path.contains(r#""value":"dg==""#), "etcd 3.4's /v3beta: {old_path}");
    let bad = post(&http, "/v3/kv/range", r#"{"key":"aw==""#, None);
    assert!(bad.starts_with(r#"400 {"error":"#) && bad.ends_with(r#""code":3}"#), "{bad}");
    let health = Command::new("curl").args(["-s", &format!("http://{http}/health")]).output().unwrap();
    assert!(String::from_utf8_lossy(&health.stdout).contains(r#""health":"true""#));

    let (_dir, off) = single_member(&["--enable-grpc-gateway=false"]);
    assert!(post(&off.endpoint(), "/v3/kv/range", r#"{"key":"aw=="}"#, None).starts_with("404 "));
    assert!(etcdctl(&off.endpoint(), &["get", "k"]).status.success());
}
