//! `cairn ctl` (or `cairn` invoked as `etcdctl`): the etcdctl commands one
//! needs inside a FROM-scratch container, with etcdctl's flags, `ETCDCTL_*`
//! environment and output.

mod output;
mod snapshot;
mod transport;

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions};
use serde_json::json;

use output::{human_bytes, table};
use transport::ToolTls;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteOut {
    Simple,
    Table,
    Json,
}

struct Global {
    endpoints: Vec<String>,
    write_out: WriteOut,
    timeout: Duration,
    tls: ToolTls,
    /// `--user name[:password]`, with `--password` for a password with no name in front.
    user: Option<String>,
    password: Option<String>,
}

pub(crate) type CtlResult = Result<(), String>;

/// Runs one ctl command line (without the program name); returns the exit code.
pub fn main(args: Vec<String>) -> u8 {
    match parse_and_run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(format!("ETCDCTL_{name}")).ok().filter(|v| !v.is_empty())
}

impl Global {
    /// etcdctl's defaults, as the `ETCDCTL_*` variables change them.
    fn from_env() -> Result<Global, String> {
        Ok(Global {
            endpoints: env("ENDPOINTS").unwrap_or_else(|| "127.0.0.1:2379".into()).split(',').map(String::from).collect(),
            write_out: parse_write_out(&env("WRITE_OUT").unwrap_or_else(|| "simple".into()))?,
            timeout: Duration::from_secs(5),
            tls: ToolTls::from_env(),
            user: env("USER"),
            password: env("PASSWORD"),
        })
    }
}

fn parse_and_run(args: Vec<String>) -> CtlResult {
    let mut global = Global::from_env()?;
    let mut words = Vec::new();
    let mut options = Vec::new();
    let (mut discovery_srv, mut discovery_srv_name) = (None::<String>, None::<String>);
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-').filter(|f| !f.is_empty())) else {
            words.push(arg);
            continue;
        };
        let (name, inline) = split_flag(flag);
        let mut value = || inline.clone().or_else(|| iter.next()).ok_or(format!("flag needs an argument: --{name}"));
        if global.tls.take_flag(&name, inline.as_deref(), &mut value)? {
            continue;
        }
        match name.as_str() {
            "endpoints" => global.endpoints = value()?.split(',').map(String::from).collect(),
            "w" | "write-out" => global.write_out = parse_write_out(&value()?)?,
            "command-timeout" => global.timeout = parse_duration(&value()?)?,
            "discovery-srv" => discovery_srv = Some(value()?),
            "discovery-srv-name" => discovery_srv_name = Some(value()?),
            "user" => global.user = Some(value()?),
            "password" => global.password = Some(value()?),
            "name" | "data-dir" | "wal-dir" | "initial-cluster" | "initial-cluster-token"
            | "initial-advertise-peer-urls" => {
                let v = value()?;
                options.push((name, Some(v)));
            }
            _ => options.push((name, inline)),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let has = |opt: &str| options.iter().any(|(n, _)| n == opt);
    let option = |opt: &str| options.iter().rev().find(|(n, _)| n == opt).and_then(|(_, v)| v.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    if let Some(domain) = discovery_srv {
        global.endpoints = runtime.block_on(crate::bootstrap::srv::client_endpoints(&domain, discovery_srv_name.as_deref()))?;
    }
    match words.as_slice() {
        ["version"] => {
            println!("etcdctl version: {}\nAPI version: 3.5", crate::api::grpc::ETCD_VERSION);
            Ok(())
        }
        ["endpoint", "health"] => runtime.block_on(endpoint_health(&global)),
        ["endpoint", "status"] => runtime.block_on(endpoint_status(&global)),
        ["member", "list"] => runtime.block_on(member_list(&global)),
        ["auth", "status"] => runtime.block_on(auth_status(&global)),
        ["put", key, value] => runtime.block_on(async {
            connect(&global, &global.endpoints).await?.put(*key, *value, None).await.map_err(rpc)?;
            println!("OK");
            Ok(())
        }),
        ["get", key] => {
            let mut opts = GetOptions::new();
            if has("prefix") {
                opts = opts.with_prefix();
            }
            if has("keys-only") {
                opts = opts.with_keys_only();
            }
            runtime.block_on(get(&global, key, opts, has("print-value-only")))
        }
        ["del", key] => runtime.block_on(async {
            let opts = if has("prefix") { DeleteOptions::new().with_prefix() } else { DeleteOptions::new() };
            let r = connect(&global, &global.endpoints).await?.delete(*key, Some(opts)).await.map_err(rpc)?;
            println!("{}", r.deleted());
            Ok(())
        }),
        ["snapshot", "status", file] => snapshot::status(file, global.write_out),
        ["snapshot", "restore", file] => snapshot::restore(
            file,
            snapshot::RestoreOptions {
                name: option("name"),
                data_dir: option("data-dir"),
                wal_dir: option("wal-dir"),
                initial_cluster: option("initial-cluster"),
                initial_cluster_token: option("initial-cluster-token"),
                initial_advertise_peer_urls: option("initial-advertise-peer-urls"),
            },
        ),
        _ => Err(format!(
            "unknown command {:?}: cairn ctl knows version, endpoint health|status, member list, auth status, put, get, \
             del, snapshot restore|status",
            words.join(" ")
        )),
    }
}

/// `name=value` or `name` (its value, if any, is the next argument).
fn split_flag(flag: &str) -> (String, Option<String>) {
    match flag.split_once('=') {
        Some((name, value)) => (name.to_string(), Some(value.to_string())),
        None => (flag.to_string(), None),
    }
}

fn parse_write_out(v: &str) -> Result<WriteOut, String> {
    match v {
        "simple" => Ok(WriteOut::Simple),
        "table" => Ok(WriteOut::Table),
        "json" => Ok(WriteOut::Json),
        other => Err(format!("unsupported output format {other:?} (simple, table, json)")),
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let (number, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len()));
    let n: f64 = number.parse().map_err(|_| format!("invalid duration {v:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration {v:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn rpc(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// A client for `endpoints` with the TLS and user the `ETCDCTL_*`
/// variables give (`ETCDCTL_CACERT`, `ETCDCTL_CERT`, …, `ETCDCTL_USER`):
/// for tools beside ctl, such as the bench client.
pub async fn client_from_env(endpoints: &[String], timeout: Duration) -> Result<Client, String> {
    let global = Global { timeout, ..Global::from_env()? };
    connect(&global, endpoints).await
}

/// A client for `endpoints` over plain connections (names resolved by
/// hickory, as the member's own), signed in as `user` if given: for a
/// member's own calls to another cluster, such as v3 discovery.
pub async fn plain_client(endpoints: &[String], user: Option<(String, String)>, timeout: Duration) -> Result<Client, String> {
    let channel = ToolTls::default().channel(endpoints, timeout).await?;
    Client::from_channel(channel, user.map(|(name, password)| ConnectOptions::new().with_user(name, password))).await.map_err(rpc)
}

async fn connect(global: &Global, endpoints: &[String]) -> Result<Client, String> {
    let channel = global.tls.channel(endpoints, global.timeout).await?;
    Client::from_channel(channel, global.credentials()?).await.map_err(rpc)
}

impl Global {
    /// etcdctl's `--user name:password` (split at the first colon) or
    /// `--user name --password password`.
    fn user_and_password(&self) -> Result<Option<(String, String)>, String> {
        let Some(user) = &self.user else { return Ok(None) };
        let (name, password) = match (user.split_once(':'), &self.password) {
            (_, Some(password)) => (user.as_str(), password.as_str()),
            (Some((name, password)), None) => (name, password),
            (None, None) => return Err(format!("--user {user}: give the password as name:password or with --password")),
        };
        Ok(Some((name.to_string(), password.to_string())))
    }

    fn credentials(&self) -> Result<Option<ConnectOptions>, String> {
        Ok(self.user_and_password()?.map(|(name, password)| ConnectOptions::new().with_user(name, password)))
    }
}

/// etcdctl 3.5's `auth status`, through cairn's own Auth client (etcd-client has no call for it).
async fn auth_status(global: &Global) -> CtlResult {
    use crate::api::grpc::auth::pb::etcdserverpb::{auth_client::AuthClient, AuthStatusRequest, AuthenticateRequest};
    let message = |s: tonic::Status| s.message().to_string();
    let mut auth = AuthClient::new(global.tls.tonic_channel(&global.endpoints, global.timeout).await?);
    let mut request = tonic::Request::new(AuthStatusRequest {});
    if let Some((name, password)) = global.user_and_password()? {
        let token = auth.authenticate(AuthenticateRequest { name, password }).await.map_err(message)?.into_inner().token;
        request.metadata_mut().insert("token", token.parse().map_err(|_| "the member sent an unusable token".to_string())?);
    }
    let status = auth.auth_status(request).await.map_err(message)?.into_inner();
    match global.write_out {
        WriteOut::Json => println!("{}", json!({"enabled": status.enabled, "authRevision": status.auth_revision})),
        _ => println!("Authentication Status: {}\nAuthRevision: {}", status.enabled, status.auth_revision),
    }
    Ok(())
}

async fn get(global: &Global, key: &str, opts: GetOptions, values_only: bool) -> CtlResult {
    let r = connect(global, &global.endpoints).await?.get(key, Some(opts)).await.map_err(rpc)?;
    for kv in r.kvs() {
        if !values_only {
            println!("{}", String::from_utf8_lossy(kv.key()));
        }
        println!("{}", String::from_utf8_lossy(kv.value()));
    }
    Ok(())
}

/// etcdctl's check: a linearizable read of the key "health" (answered even
/// when the key is absent, or refused for want of permission) proves a
/// leader and a quorum.
async fn endpoint_health(global: &Global) -> CtlResult {
    let mut results = Vec::new();
    for ep in &global.endpoints {
        let started = Instant::now();
        let outcome = match connect(global, std::slice::from_ref(ep)).await {
            Ok(mut c) => match c.get("health", None).await {
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::PermissionDenied => Ok(()),
                outcome => outcome.map(|_| ()).map_err(rpc),
            },
            Err(e) => Err(e),
        };
        results.push((ep.clone(), started.elapsed(), outcome));
    }
    let healthy = results.iter().all(|(_, _, r)| r.is_ok());
    match global.write_out {
        WriteOut::Json => {
            let list: Vec<_> = results
                .iter()
                .map(|(ep, took, r)| match r {
                    Ok(()) => json!({"endpoint": ep, "health": true, "took": format!("{took:?}")}),
                    Err(e) => json!({"endpoint": ep, "health": false, "took": format!("{took:?}"), "error": e}),
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        WriteOut::Table => {
            let rows: Vec<Vec<String>> = results
                .iter()
                .map(|(ep, took, r)| vec![ep.clone(), r.is_ok().to_string(), format!("{took:?}"), r.clone().err().unwrap_or_default()])
                .collect();
            print!("{}", table(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows));
        }
        WriteOut::Simple => {
            for (ep, took, r) in &results {
                match r {
                    Ok(()) => println!("{ep} is healthy: successfully committed proposal: took = {took:?}"),
                    Err(e) => eprintln!("{ep} is unhealthy: failed to commit proposal: {e}"),
                }
            }
        }
    }
    if healthy {
        Ok(())
    } else {
        Err("unhealthy cluster".into())
    }
}

async fn endpoint_status(global: &Global) -> CtlResult {
    let mut statuses = Vec::new();
    for ep in &global.endpoints {
        let s = connect(global, std::slice::from_ref(ep)).await?.status().await.map_err(rpc)?;
        statuses.push((ep.clone(), s));
    }
    match global.write_out {
        WriteOut::Json => {
            let list: Vec<_> = statuses
                .iter()
                .map(|(ep, s)| {
                    let h = s.header();
                    json!({"Endpoint": ep, "Status": {
                        "header": {
                            "cluster_id": h.map_or(0, |h| h.cluster_id()),
                            "member_id": h.map_or(0, |h| h.member_id()),
                            "revision": h.map_or(0, |h| h.revision()),
                            "raft_term": h.map_or(0, |h| h.raft_term()),
                        },
                        "version": s.version(),
                        "dbSize": s.db_size(),
                        "leader": s.leader(),
                        "raftIndex": s.raft_index(),
                        "raftTerm": s.raft_term(),
                        "raftAppliedIndex": s.raft_applied_index(),
                        "dbSizeInUse": s.raft_used_db_size(),
                    }})
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        form => {
            let rows: Vec<Vec<String>> = statuses
                .iter()
                .map(|(ep, s)| {
                    let id = s.header().map_or(0, |h| h.member_id());
                    vec![
                        ep.clone(),
                        format!("{id:x}"),
                        s.version().to_string(),
                        human_bytes(s.db_size().max(0) as u64),
                        (s.leader() == id).to_string(),
                        s.is_learner().to_string(),
                        s.raft_term().to_string(),
                        s.raft_index().to_string(),
                        s.raft_applied_index().to_string(),
                        s.errors().join(", "),
                    ]
                })
                .collect();
            if form == WriteOut::Table {
                let headers = [
                    "ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER", "RAFT TERM", "RAFT INDEX",
                    "RAFT APPLIED INDEX", "ERRORS",
                ];
                print!("{}", table(&headers, &rows));
            } else {
                rows.iter().for_each(|r| println!("{}", r.join(", ")));
            }
        }
    }
    Ok(())
}

async fn member_list(global: &Global) -> CtlResult {
    let r = connect(global, &global.endpoints).await?.member_list().await.map_err(rpc)?;
    let rows: Vec<Vec<String>> = r
        .members()
        .iter()
        .map(|m| {
            let status = if m.name().is_empty() { "unstarted" } else { "started" };
            vec![
                format!("{:x}", m.id()),
                status.to_string(),
                m.name().to_string(),
                m.peer_urls().join(","),
                m.client_urls().join(","),
                m.is_learner().to_string(),
            ]
        })
        .collect();
    match global.write_out {
        WriteOut::Table => {
            print!("{}", table(&["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"], &rows))
        }
        WriteOut::Json => {
            let members: Vec<_> = r
                .members()
                .iter()
                .map(|m| json!({"ID": m.id(), "name": m.name(), "peerURLs": m.peer_urls(), "clientURLs": m.client_urls()}))
                .collect();
            println!("{}", json!({"members": members}));
        }
        WriteOut::Simple => rows.iter().for_each(|r| println!("{}", r.join(", "))),
    }
    Ok(())
}

/// `cairn healthcheck [--endpoint HOST:PORT|URL] [TLS flags]`: for a
/// container HEALTHCHECK in an image with no curl; takes etcdctl's TLS
/// flags and variables. Exit 0 when the member's `/readyz` says ok: it can
/// serve linearizably (the endpoint may be a `--listen-metrics-urls` one).
pub fn healthcheck(args: Vec<String>) -> u8 {
    let mut endpoint = "127.0.0.1:2379".to_string();
    let mut tls = ToolTls::from_env();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let flag = arg.trim_start_matches('-');
        let (name, inline) = split_flag(flag);
        let mut value = || inline.clone().or_else(|| iter.next()).ok_or(format!("flag needs an argument: --{name}"));
        let taken = match tls.take_flag(&name, inline.as_deref(), &mut value) {
            Ok(true) => Ok(()),
            Ok(false) if name == "endpoint" => value().map(|v| endpoint = v),
            Ok(false) => Err(format!(
                "unknown flag {arg}; usage: cairn healthcheck [--endpoint HOST:PORT] [--cacert F] [--cert F] [--key F] [--insecure-skip-tls-verify]"
            )),
            Err(e) => Err(e),
        };
        if let Err(e) = taken {
            eprintln!("{e}");
            return 1;
        }
    }
    match tls.http_get(&endpoint, "/readyz") {
        Ok(body) if body.trim() == "ok" => 0,
        Ok(body) => {
            eprintln!("{endpoint} is not ready: {}", body.trim().replace('\n', "; "));
            1
        }
        Err(e) => {
            eprintln!("{endpoint} is unhealthy: {e}");
            1
        }
    }
}

/// A plain HTTP/1.1 GET: the body of the response, whatever its status.
pub fn http_get(endpoint: &str, path: &str) -> std::io::Result<String> {
    ToolTls::default().http_get(endpoint, path)
}
