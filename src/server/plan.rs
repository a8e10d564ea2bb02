//! How a member with no data comes to its cluster: forms the new cluster
//! its bootstrap flags describe, joins a running one that added it
//! (`--initial-cluster-state existing`), or, found through DNS SRV records,
//! joins a running cluster by itself (auto-join): it adds itself as a
//! learner and, once started and caught up, promotes itself.

use std::time::{Duration, Instant};

use etcd_client::MemberAddOptions;

use crate::bootstrap::{self, InitialCluster};
use crate::config::{Bootstrap, ClusterState, Config, ConfigError};
use crate::raft::dial::Dialer;
use crate::raft::members::{ask_cluster, ClusterInfo, MemberChange, MemberView, JOIN_PATIENCE};
use crate::raft::Consensus;
use crate::store::types::KvError;

/// How a member with no data yet comes to its cluster.
pub enum Plan {
    /// Forms a new cluster with the initial members.
    New(InitialCluster, u64),
    /// Joins a running cluster that has added it (`member add`).
    Join { cluster_id: u64, member_id: u64 },
}

fn same_urls(a: &[String], b: &[String]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// Refuses an empty data dir for a member the cluster has seen running:
/// with an empty log it could vote against what it acknowledged before.
fn refuse_restarted_member(config: &Config, member: &MemberView, cluster_id: u64) -> Result<(), ConfigError> {
    if member.name.is_empty() {
        return Ok(());
    }
    Err(ConfigError::new(format!(
        "member {} ({:x}) has already been bootstrapped in cluster {cluster_id:x}, and its data dir {} has no data: \
         it cannot rejoin with an empty log. Either restore its data dir, or remove it (etcdctl member remove {:x}), \
         add it again (etcdctl member add {} --peer-urls={}) and start it with --initial-cluster-state existing",
        member.name,
        member.id,
        config.data_dir.display(),
        member.id,
        config.name,
        config.initial_advertise_peer_urls.join(","),
    )))
}

/// The plan for a member that has no data yet: for `new`, the static initial
/// cluster (unless its peers know this member already); for `existing`, the
/// id the running cluster gave this member when it was added.
pub async fn bootstrap_plan(config: &Config, dialer: &Dialer) -> Result<Plan, ConfigError> {
    let advertised = &config.initial_advertise_peer_urls;
    let token = &config.initial_cluster_token;
    let (cluster, id) = match &config.bootstrap {
        Bootstrap::Static(spec) => {
            let cluster = InitialCluster::from_static(spec, token)?;
            let id = cluster.member(&config.name, advertised)?.id;
            (cluster, id)
        }
        Bootstrap::Discovery { url, proxy } => bootstrap::discovery::v2(url, proxy.as_deref(), &config.name, advertised).await?,
        Bootstrap::DiscoveryV3 { token, endpoints, user } => {
            bootstrap::discovery::v3(token, endpoints, user.clone(), &config.name, advertised).await?
        }
        Bootstrap::Srv { domain, service_name, size } => {
            bootstrap::srv::cluster(domain, service_name.as_deref(), *size, advertised, token).await?
        }
    };
    // This member's URLs as the cluster knows them (an SRV record names it
    // by its record's URL) and as it advertises them.
    let known_as = cluster.members.iter().find(|m| m.id == id).map(|m| m.peer_urls.clone()).unwrap_or_default();
    let others: Vec<String> = cluster.members.iter().filter(|m| m.id != id).flat_map(|m| m.peer_urls.clone()).collect();
    let is_me = |m: &&MemberView| same_urls(&m.peer_urls, advertised) || same_urls(&m.peer_urls, &known_as);
    match config.initial_cluster_state {
        ClusterState::New => {
            // One quick look: in a new cluster the others may not run yet.
            if let Some(info) = ask_cluster(&others, dialer, Duration::ZERO, |_| true).await {
                if let Some(me) = info.members.iter().find(|m| m.id == id) {
                    refuse_restarted_member(config, me, info.cluster_id)?;
                } else if matches!(config.bootstrap, Bootstrap::Srv { .. }) {
                    // A running cluster that did not form with this member.
                    return auto_join(config, dialer, &others, info, &known_as).await;
                }
            }
            Ok(Plan::New(cluster, id))
        }
        ClusterState::Existing => {
            if others.is_empty() {
                return Err(ConfigError::new(
                    "--initial-cluster-state existing: --initial-cluster names no other member to join through; \
                     give it the cluster's members and this one, as `etcdctl member add` prints it",
                ));
            }
            let info = ask_cluster(&others, dialer, JOIN_PATIENCE, |info| info.members.iter().any(|m| is_me(&m))).await;
            let Some(info) = info else {
                return Err(ConfigError::new(format!(
                    "--initial-cluster-state existing: no member of the cluster answered at {} within {}s",
                    others.join(","),
                    JOIN_PATIENCE.as_secs()
                )));
            };
            let Some(me) = info.members.iter().find(is_me) else {
                let known: Vec<String> = info.members.iter().map(|m| m.peer_urls.join(",")).collect();
                return Err(ConfigError::new(format!(
                    "--initial-cluster-state existing: cluster {:x} has no member with peer URLs {} (it has {}); \
                     add this member first: etcdctl member add {} --peer-urls={}",
                    info.cluster_id,
                    advertised.join(","),
                    known.join(" "),
                    config.name,
                    advertised.join(",")
                )));
            };
            refuse_restarted_member(config, me, info.cluster_id)?;
            Ok(Plan::Join { cluster_id: info.cluster_id, member_id: me.id })
        }
    }
}

impl Plan {
    /// (member id, cluster id, the initial cluster to form, if new).
    pub fn identity(self) -> (u64, u64, Option<InitialCluster>) {
        match self {
            Plan::New(cluster, member_id) => (member_id, cluster.cluster_id, Some(cluster)),
            Plan::Join { cluster_id, member_id } => (member_id, cluster_id, None),
        }
    }
}

/// How long a joining member waits for another join to finish.
const OTHER_JOIN_PATIENCE: Duration = Duration::from_secs(120);

/// Set in tests only: the process aborts right after the cluster added it,
/// as a crash there would, to show that the next start resumes.
const CRASH_AFTER_ADD: &str = "CAIRN_TEST_CRASH_AFTER_MEMBER_ADD";

/// Joins the running cluster `info` that this member's SRV records led to,
/// without `member add` by hand: one join at a time, as a learner that
/// promotes itself once caught up (see `promote_when_caught_up`). A member
/// the cluster already added but that never started (a crash between the
/// add and the start) resumes as that member; a name a started member has
/// is refused.
async fn auto_join(
    config: &Config,
    dialer: &Dialer,
    others: &[String],
    mut info: ClusterInfo,
    known_as: &[String],
) -> Result<Plan, ConfigError> {
    let refuse = |what: String| ConfigError::new(format!("--discovery-srv auto-join: {what}"));
    let started = Instant::now();
    loop {
        let is_me = |m: &&MemberView| same_urls(&m.peer_urls, known_as) || same_urls(&m.peer_urls, &config.initial_advertise_peer_urls);
        if let Some(me) = info.members.iter().find(is_me) {
            refuse_restarted_member(config, me, info.cluster_id)?;
            tracing::info!(member_id = %format!("{:x}", me.id), cluster_id = %format!("{:x}", info.cluster_id), "auto-join: the cluster added this member before it started; resuming as that member");
            return Ok(Plan::Join { cluster_id: info.cluster_id, member_id: me.id });
        }
        if let Some(namesake) = info.members.iter().find(|m| m.name == config.name) {
            return Err(refuse(format!(
                "cluster {:x} already has a member named {} ({:x}, peer URLs {}); give this member a name of its own",
                info.cluster_id,
                config.name,
                namesake.id,
                namesake.peer_urls.join(",")
            )));
        }
        let joining: Vec<String> = info.members.iter().filter(|m| m.is_learner).map(|m| format!("{:x}", m.id)).collect();
        let waiting_for = if joining.is_empty() {
            match add_self(&info, known_as).await {
                Ok(id) => {
                    tracing::info!(member_id = %format!("{id:x}"), cluster_id = %format!("{:x}", info.cluster_id), "auto-join: the cluster added this member as a learner");
                    if std::env::var_os(CRASH_AFTER_ADD).is_some() {
                        std::process::abort();
                    }
                    return Ok(Plan::Join { cluster_id: info.cluster_id, member_id: id });
                }
                // Another member's join won the race, or this one's add
                // went through although its answer was lost: look again.
                Err(e) if e.contains("too many learner members") || e.contains("Peer URLs already exists") => e,
                Err(e) => return Err(refuse(format!("member add through {}: {e}", client_urls(&info).join(",")))),
            }
        } else {
            format!("learner {} is still joining", joining.join(","))
        };
        if started.elapsed() > OTHER_JOIN_PATIENCE {
            return Err(refuse(format!("{waiting_for} after {}s; one member joins at a time", OTHER_JOIN_PATIENCE.as_secs())));
        }
        tracing::info!("auto-join: {waiting_for}; one member joins at a time, looking again in 1s");
        tokio::time::sleep(Duration::from_secs(1)).await;
        info = ask_cluster(others, dialer, JOIN_PATIENCE, |_| true)
            .await
            .ok_or_else(|| refuse(format!("no member of the cluster answers at {}", others.join(","))))?;
    }
}

fn client_urls(info: &ClusterInfo) -> Vec<String> {
    info.members.iter().flat_map(|m| m.client_urls.clone()).collect()
}

/// `member add --learner` with this member's peer URLs, through the
/// cluster's client URLs as etcdctl would send it (the `ETCDCTL_*` TLS and
/// user variables apply); the new member's id.
async fn add_self(info: &ClusterInfo, peer_urls: &[String]) -> Result<u64, String> {
    let mut client = crate::ctl::client_from_env(&client_urls(info), Duration::from_secs(5)).await?;
    let added = client
        .member_add(peer_urls.to_vec(), Some(MemberAddOptions::new().with_is_learner()))
        .await
        .map_err(|e| match e {
            etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
            e => e.to_string(),
        })?;
    added.member().map(|m| m.id()).ok_or_else(|| "the answer names no member".to_string())
}

/// For a member bootstrapped by DNS SRV that is a learner: asks the leader
/// to make it a voter until it is one, once it has caught up (etcd's rule,
/// which the leader checks).
pub async fn promote_when_caught_up(consensus: &Consensus, member_id: u64) {
    loop {
        // A joining member learns the membership from the leader's log.
        let (known, voter) = {
            let m = consensus.metrics();
            let membership = m.membership_config.membership();
            let known = membership.nodes().any(|(id, _)| *id == member_id);
            let voter = membership.voter_ids().any(|id| id == member_id);
            (known, voter)
        };
        if voter {
            return;
        }
        if known {
            match consensus.change_members(MemberChange::Promote { id: member_id }).await {
                Ok(_) => {
                    tracing::info!(member_id = %format!("{member_id:x}"), "auto-join: caught up; this member is a voter now");
                    return;
                }
                Err(KvError::LearnerNotReady) => {}
                Err(e) => tracing::debug!(error = %e, "auto-join: promoting this member; will retry"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
