//! Assembles a member from its configuration: opens the stores, starts Raft,
//! bootstraps a new cluster or recovers from the data dir, serves the peer and
//! client ports, and shuts down cleanly on SIGTERM/SIGINT.

mod compaction;
mod corruption;
mod idle;
mod leases;
mod node;
mod plan;
mod process;
mod security;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tonic::service::Routes;

pub use node::{Header, Limits, Node};

use crate::api::authority::AuthorityRepair;
use crate::api::ClientSurface;
use crate::config::{Bootstrap, Config, ConfigError, ListenUrl};
use crate::raft::peerpb::peer_server::PeerServer;
use crate::raft::network::peer_message_limit;
use crate::raft::snapshots::Snapshots;
use crate::raft::{Consensus, PeerNode, RaftSettings};
use crate::store::log::LogDb;
use crate::store::memory::MemberBudget;
use crate::store::types::{Command, MemberInfo};
use crate::store::Store;
use crate::lease::Lessor;
use crate::tls;
use security::Security;
use crate::watch::Hub;

/// A bound listen URL.
struct Listener {
    url: String,
    tcp: TcpListener,
    tls: bool,
}

async fn bind(urls: &[ListenUrl], flag: &str) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    for u in urls {
        let tcp = TcpListener::bind(u.addr).await.map_err(|e| ConfigError::new(format!("{flag} {}: cannot listen: {e}", u.url)))?;
        listeners.push(Listener { url: u.url.clone(), tcp, tls: u.tls });
    }
    Ok(listeners)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop_requested = process::stop_requested().context("installing signal handlers")?;
    process::reap_orphans_if_init().context("installing the SIGCHLD handler")?;
    let security = security::prepare(&config)?;
    let authenticator = security::authenticator(&config)?;
    let member_dir = config.data_dir.join("member");
    // Refuse a bad bootstrap before leaving anything on disk.
    let mut plan = if member_dir.exists() { None } else { Some(plan::bootstrap_plan(&config, &security.dialer).await?) };
    let snap_dir = member_dir.join("snap");
    let wal_dir = config.wal_dir.clone().unwrap_or_else(|| member_dir.join("wal"));
    let log_existed = wal_dir.join("CURRENT").exists();
    for dir in [&snap_dir, &wal_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let memory = MemberBudget::of(config.memory_budget_bytes);
    let store = Arc::new(Store::open(&snap_dir.join("db"), &memory.state)?);
    store.auth.set_simple_token_ttl(config.auth_token_ttl);
    let snapshots = Arc::new(Snapshots::open(snap_dir.join("raft")).context("raft snapshots")?);
    snapshots.finish_interrupted_install(&store)?;
    let log = LogDb::open(&wal_dir, &memory.log).with_context(|| format!("raft log in {}", wal_dir.display()))?;

    let (member_id, cluster_id, initial) = match store.identity()? {
        Some((member_id, cluster_id)) => {
            check_restart(&config, &store, member_id, log_existed, &wal_dir)?;
            tracing::info!(data_dir = %config.data_dir.display(), "restarting from existing data dir; --initial-cluster* flags are ignored");
            (member_id, cluster_id, None)
        }
        None => match plan.take() {
            Some(plan) => plan.identity(),
            None => plan::bootstrap_plan(&config, &security.dialer).await?.identity(),
        },
    };
    if initial.is_none() && store.identity()?.is_none() {
        // A joining member: it learns the membership from the leader.
        store.set_identity(member_id, cluster_id)?;
        tracing::info!(member_id = format!("{member_id:x}"), cluster_id = format!("{cluster_id:x}"), "joining existing cluster");
    }

    let mut listeners = Listeners::bind(&config).await?;

    let settings = RaftSettings {
        heartbeat_ms: config.heartbeat_interval,
        election_ms: config.election_timeout,
        snapshot_count: config.snapshot_count,
        cluster_token: config.initial_cluster_token.clone(),
        strict_reconfig_check: config.strict_reconfig_check,
        max_learners: config.max_learners,
        dialer: security.dialer.clone(),
    };
    let hub = Arc::new(Hub::new(store.revision(), memory.watch_history));
    let leases = store
        .leases()
        .map_err(|e| anyhow::anyhow!("state database {}: {}", snap_dir.join("db").display(), crate::store::detail(e)))?;
    let lessor = Arc::new(Lessor::new(leases));
    let consensus = Consensus::start(
        (member_id, cluster_id),
        &settings,
        log,
        store.clone(),
        hub.clone(),
        lessor.clone(),
        snapshots,
    )
    .await?;
    if let Some(members) = store.restored_members()? {
        // A data dir made by `snapshot restore`: it forms the new cluster it names.
        let nodes = members.into_iter().map(|(id, name, peer_urls)| (id, PeerNode { name, peer_urls })).collect();
        consensus.bootstrap(nodes).await?;
        store.clear_restored_members()?;
        tracing::info!(member_id = format!("{member_id:x}"), cluster_id = format!("{cluster_id:x}"), "formed a new cluster from a restored snapshot");
    }
    if let Some(cluster) = initial {
        let nodes: BTreeMap<u64, PeerNode> = cluster
            .members
            .iter()
            .map(|m| (m.id, PeerNode { name: m.name.clone(), peer_urls: m.peer_urls.clone() }))
            .collect();
        consensus.bootstrap(nodes).await?;
        // Recorded only once Raft holds the initial membership: a crash
        // before this point bootstraps again, which is harmless.
        store.set_identity(member_id, cluster_id)?;
        tracing::info!(member_id = format!("{member_id:x}"), cluster_id = format!("{cluster_id:x}"), "bootstrapped new cluster member");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let node = Arc::new(Node {
        name: config.name.clone(),
        member_id,
        cluster_id,
        client_urls: config.advertise_client_urls.clone(),
        memory,
        limits: Limits {
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            quota_backend_bytes: config.quota_backend_bytes,
            watch_progress_notify_interval: config.watch_progress_notify_interval,
            // etcd: 1.5 election timeouts, in whole seconds rounded up.
            min_lease_ttl: (3 * config.election_timeout).div_ceil(2000) as i64,
        },
        store,
        hub,
        lessor,
        consensus,
        authenticator,
        stopping: stop_rx.clone(),
    });

    let peer_message_limit = peer_message_limit(config.max_request_bytes);
    let peer_listeners = std::mem::take(&mut listeners.peer);
    let mut servers = serve_peers(&node, peer_listeners, &security, peer_message_limit, &stop_rx);
    if config.initial_corrupt_check {
        corruption::check_initial_hash(&node).await?;
    }
    if let Some(every) = config.corrupt_check_time {
        tokio::spawn(corruption::check_periodically(node.clone(), every, corruption::Checkpoint::Current));
    }
    if let Some(every) = config.compact_hash_check_time {
        tokio::spawn(corruption::check_periodically(node.clone(), every, corruption::Checkpoint::Compaction));
    }
    serve_clients(&mut servers, &node, listeners, &security, config.enable_grpc_gateway, &stop_rx);
    tokio::spawn(publish_self(node.clone(), config.initial_advertise_peer_urls.clone()));
    tokio::spawn(leases::keep_leases(node.clone(), config.lease_checkpoint_interval));
    tokio::spawn(promote_new_voters(node.clone()));
    if matches!(config.bootstrap, Bootstrap::Srv { .. }) {
        let node = node.clone();
        tokio::spawn(async move { plan::promote_when_caught_up(&node.consensus, node.member_id).await });
    }
    tokio::spawn(count_leader_changes(node.clone()));
    tokio::spawn(crate::heap::return_freed_memory());
    tokio::spawn(idle::flush_when_idle(node.clone()));
    if config.metrics_extensive {
        crate::metrics::METRICS.enable_extensive();
    }
    tokio::spawn(compaction::remove_compacted_versions(node.store.clone(), node.stopping.clone()));
    if let Some(mode) = config.auto_compaction {
        tokio::spawn(compaction::auto_compact(node.clone(), mode));
    }
    tracing::info!(
        name = %config.name,
        client_urls = %config.advertise_client_urls.join(","),
        peer_urls = %config.initial_advertise_peer_urls.join(","),
        "serving client requests"
    );
    process::notify_systemd("READY=1");

    let outcome = tokio::select! {
        _ = stop_requested => {
            node.consensus.hand_over_leadership().await;
            Ok(())
        }
        _ = node.consensus.removed() => {
            tracing::warn!(member_id = format!("{member_id:x}"), "the member has been permanently removed from the cluster");
            Ok(())
        }
        // A member whose Raft stopped (its log or state database failed,
        // or an apply panicked) would look alive and serve nothing: it
        // exits instead, so a supervisor sees it and the others go on.
        fatal = node.consensus.fatal() => Err(anyhow::anyhow!("raft stopped: {fatal}")),
        // A listener ends only when told to: one that ends by itself is an error.
        Some(res) = servers.join_next() => {
            res.context("server task")?.context("server stopped")?;
            Err(anyhow::anyhow!("a listener stopped serving"))
        }
    };
    process::notify_systemd("STOPPING=1");
    let _ = stop_tx.send(true);
    // In-flight requests get a moment to finish before Raft stops.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while servers.join_next().await.is_some() {} }).await;
    node.consensus.shutdown().await;
    // The log is durable already; the state machine's memtables are written
    // out too, so a restart has no Raft log entries to apply again (with
    // objects of 1-4 KiB that replay was most of a restart's time).
    if let Err(e) = node.store.flush() {
        tracing::warn!(error = %e, "flushing the state database");
    }
    tracing::info!("stopped");
    outcome
}

/// Refuses a restart that would break Raft's promises: a member the cluster
/// removed, or a state database whose Raft log (and the vote in it) is gone.
fn check_restart(
    config: &Config,
    store: &Store,
    member_id: u64,
    log_existed: bool,
    wal_dir: &std::path::Path,
) -> Result<(), ConfigError> {
    if store.is_removed(member_id).map_err(|e| ConfigError::new(format!("{}: {e}", config.data_dir.display())))? {
        return Err(ConfigError::new(format!(
            "member {member_id:x} has been permanently removed from the cluster; to bring it back, \
             delete its data dir {}, add it again (etcdctl member add {} --peer-urls={}) and start it with \
             --initial-cluster-state existing",
            config.data_dir.display(),
            config.name,
            config.initial_advertise_peer_urls.join(",")
        )));
    }
    if !log_existed {
        return Err(ConfigError::new(format!(
            "the raft log {} is missing but the state database of member {member_id:x} is in {}: the vote and log \
             it held are lost, so it must not rejoin as it was. Restore the --wal-dir, or remove the member \
             (etcdctl member remove {member_id:x}), delete {} and add it again (etcdctl member add)",
            wal_dir.display(),
            config.data_dir.display(),
            config.data_dir.display()
        )));
    }
    Ok(())
}

/// On the leader, turns members added as voters (which join as learners)
/// into voters once they have caught up.
async fn promote_new_voters(node: Arc<Node>) {
    loop {
        node.consensus.promote_caught_up().await;
        if !node.idle(Duration::from_millis(200)).await {
            return;
        }
    }
}

/// The member's bound listeners, by what they serve.
struct Listeners {
    peer: Vec<Listener>,
    client: Vec<Listener>,
    client_http: Vec<Listener>,
    metrics: Vec<Listener>,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            peer: bind(&config.listen_peer_urls, "--listen-peer-urls").await?,
            client: bind(&config.listen_client_urls, "--listen-client-urls").await?,
            client_http: bind(&config.listen_client_http_urls, "--listen-client-http-urls").await?,
            metrics: bind(&config.listen_metrics_urls, "--listen-metrics-urls").await?,
        })
    }
}

type Servers = JoinSet<Result<(), tonic::transport::Error>>;

/// Serves Raft on the peer listeners until `stop` turns true.
fn serve_peers(node: &Arc<Node>, listeners: Vec<Listener>, security: &Security, peer_message_limit: usize, stop: &watch::Receiver<bool>) -> Servers {
    let mut servers = JoinSet::new();
    for listener in listeners {
        let service = PeerServer::new(node.consensus.peer_service(stop.clone()))
            .max_decoding_message_size(peer_message_limit)
            .max_encoding_message_size(usize::MAX);
        let stop = wait_for(stop.clone());
        let tls = security.peer.clone().filter(|_| listener.tls);
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tls::connections(listener.tcp, tls), stop)
                .await
        });
    }
    servers
}

/// Serves the client API until `stop` turns true: gRPC and HTTP together on
/// the client URLs, unless `--listen-client-http-urls` takes HTTP apart.
fn serve_clients(servers: &mut Servers, node: &Arc<Node>, listeners: Listeners, security: &Security, gateway: bool, stop: &watch::Receiver<bool>) {
    let client_surface = match listeners.client_http.is_empty() {
        true => ClientSurface::GrpcAndHttp,
        false => ClientSurface::Grpc,
    };
    for listener in listeners.client {
        let routes = crate::api::client_routes(node.clone(), client_surface, gateway);
        serve_client_side(servers, listener, routes, security, stop, "client traffic");
    }
    for listener in listeners.client_http {
        let routes = crate::api::client_routes(node.clone(), ClientSurface::Http, gateway);
        serve_client_side(servers, listener, routes, security, stop, "client HTTP traffic");
    }
    for listener in listeners.metrics {
        let routes = Routes::from(crate::api::http::metrics_router(node.clone()));
        serve_client_side(servers, listener, routes, security, stop, "metrics and health endpoints");
    }
}

/// Serves `routes` on a listener that clients reach (with the client
/// certificate when it is https), HTTP/1 and HTTP/2 alike.
fn serve_client_side(servers: &mut Servers, listener: Listener, routes: Routes, security: &Security, stop: &watch::Receiver<bool>, what: &str) {
    let stop = wait_for(stop.clone());
    let tls = security.client.clone().filter(|_| listener.tls);
    match &tls {
        Some(_) => tracing::info!(address = %listener.url, "serving {what} securely"),
        None => tracing::info!(address = %listener.url, "serving {what} insecurely; this is strongly discouraged!"),
    }
    let connections = tls::connections(listener.tcp, tls).map(|accepted| accepted.map(AuthorityRepair::new));
    servers.spawn(async move {
        tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(connections, stop)
            .await
    });
}

/// etcd_server_leader_changes_seen_total: every new leader this member sees.
async fn count_leader_changes(node: Arc<Node>) {
    let mut raft = node.consensus.server_metrics_watch();
    let mut last = None;
    loop {
        let leader = raft.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            crate::metrics::METRICS.leader_changes_seen.inc();
            last = leader;
        }
        if raft.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Records this member's name and URLs in the cluster (through Raft), so
/// every member can list everyone's client URLs. Retries until it lands.
async fn publish_self(node: Arc<Node>, peer_urls: Vec<String>) {
    let me = MemberInfo {
        id: node.member_id,
        name: node.name.clone(),
        peer_urls,
        client_urls: node.client_urls.clone(),
    };
    if node.store.members().is_ok_and(|members| members.contains(&me)) {
        return;
    }
    loop {
        match node.write(Command::PublishMember(me.clone())).await {
            Ok(_) => {
                tracing::info!("published member attributes to the cluster");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "publishing member attributes; will retry"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
