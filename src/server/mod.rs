//! Assembles a member from its configuration: opens the stores, starts Raft,
//! bootstraps a new cluster or recovers from the data dir, serves the peer and
//! client ports, and shuts down cleanly on SIGTERM/SIGINT.

mod leases;
mod node;
mod process;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::server::TcpIncoming;

pub use node::{Header, Limits, Node};

use crate::bootstrap::InitialCluster;
use crate::config::{ClusterState, Config, ConfigError, ListenUrl};
use crate::raft::peerpb::peer_server::PeerServer;
use crate::raft::{Consensus, PeerNode, RaftSettings};
use crate::store::log::LogDb;
use crate::store::types::{Command, MemberInfo};
use crate::store::Store;
use crate::lease::Lessor;
use crate::watch::Hub;

/// Memory for the newest revisions' changes, which watchers that keep up
/// read instead of the store's history.
const WATCH_MEMORY_BYTES: usize = 64 * 1024 * 1024;

async fn bind(urls: &[ListenUrl], flag: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for u in urls {
        let l = TcpListener::bind(u.addr).await.map_err(|e| ConfigError::new(format!("{flag} {}: cannot listen: {e}", u.url)))?;
        listeners.push(l);
    }
    Ok(listeners)
}

/// The initial cluster and this member's place in it, for a member that
/// has no data yet.
fn bootstrap_plan(config: &Config) -> Result<(InitialCluster, u64), ConfigError> {
    if config.initial_cluster_state == ClusterState::Existing {
        return Err(ConfigError::new(
            "--initial-cluster-state existing with an empty data dir needs `member add`, which cairn does not support yet",
        ));
    }
    let cluster = InitialCluster::from_static(&config.initial_cluster, &config.initial_cluster_token)?;
    let id = cluster.member(&config.name, &config.initial_advertise_peer_urls)?.id;
    Ok((cluster, id))
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let stop_requested = process::stop_requested().context("installing signal handlers")?;
    process::reap_orphans_if_init().context("installing the SIGCHLD handler")?;
    let member_dir = config.data_dir.join("member");
    if !member_dir.exists() {
        // Refuse a bad bootstrap before leaving anything on disk.
        bootstrap_plan(&config)?;
    }
    let snap_dir = member_dir.join("snap");
    let wal_dir = config.wal_dir.clone().unwrap_or_else(|| member_dir.join("wal"));
    for dir in [&snap_dir, &wal_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let store = Arc::new(Store::open(&snap_dir.join("db"))?);
    let log = LogDb::open(&wal_dir).with_context(|| format!("raft log in {}", wal_dir.display()))?;

    let (member_id, cluster_id, initial) = match store.identity() {
        Some((member_id, cluster_id)) => {
            tracing::info!(data_dir = %config.data_dir.display(), "restarting from existing data dir; --initial-cluster* flags are ignored");
            (member_id, cluster_id, None)
        }
        None => {
            let (cluster, member_id) = bootstrap_plan(&config)?;
            (member_id, cluster.cluster_id, Some(cluster))
        }
    };

    let peer_listeners = bind(&config.listen_peer_urls, "--listen-peer-urls").await?;
    let client_listeners = bind(&config.listen_client_urls, "--listen-client-urls").await?;

    let settings = RaftSettings {
        heartbeat_ms: config.heartbeat_interval,
        election_ms: config.election_timeout,
        snapshot_count: config.snapshot_count,
        cluster_token: config.initial_cluster_token.clone(),
    };
    let hub = Arc::new(Hub::new(store.revision(), WATCH_MEMORY_BYTES));
    let lessor = Arc::new(Lessor::new(store.leases()));
    let consensus = Consensus::start(
        member_id,
        &settings,
        log,
        store.clone(),
        hub.clone(),
        lessor.clone(),
        snap_dir.join("raft.snap"),
    )
    .await?;
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
        stopping: stop_rx.clone(),
    });

    let mut servers = serve(&node, peer_listeners, client_listeners, &stop_rx);
    tokio::spawn(publish_self(node.clone(), config.initial_advertise_peer_urls.clone()));
    tokio::spawn(leases::keep_leases(node.clone(), config.lease_checkpoint_interval));
    tracing::info!(
        name = %config.name,
        client_urls = %config.advertise_client_urls.join(","),
        peer_urls = %config.initial_advertise_peer_urls.join(","),
        "serving client requests"
    );
    process::notify_systemd("READY=1");

    tokio::select! {
        _ = stop_requested => {}
        Some(res) = servers.join_next() => {
            res.context("server task")?.context("server stopped")?;
        }
    }
    process::notify_systemd("STOPPING=1");
    let _ = stop_tx.send(true);
    // In-flight requests get a moment to finish before Raft stops.
    let _ = tokio::time::timeout(Duration::from_secs(2), async { while servers.join_next().await.is_some() {} }).await;
    node.consensus.shutdown().await;
    // The log is durable already; the state machine's writes are made so too,
    // so a restart has nothing to replay.
    if let Err(e) = node.store.sync() {
        tracing::warn!(error = %e, "syncing the state database");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves Raft on the peer listeners and the client API on the client
/// listeners until `stop` turns true.
fn serve(
    node: &Arc<Node>,
    peer_listeners: Vec<TcpListener>,
    client_listeners: Vec<TcpListener>,
    stop: &watch::Receiver<bool>,
) -> JoinSet<Result<(), tonic::transport::Error>> {
    let mut servers = JoinSet::new();
    for listener in peer_listeners {
        let service = PeerServer::new(node.consensus.peer_service())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let stop = wait_for(stop.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming(listener), stop)
                .await
        });
    }
    for listener in client_listeners {
        let routes = crate::api::client_routes(node.clone());
        let stop = wait_for(stop.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming(listener), stop)
                .await
        });
    }
    servers
}

/// Accepted connections with Nagle off: small gRPC frames must not wait for
/// delayed ACKs (the builder's tcp_nodelay only covers listeners it binds).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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
    if node.store.members().contains(&me) {
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
