//! DNS SRV bootstrap (`--discovery-srv DOMAIN`): the members of a new
//! cluster are the targets of `_etcd-server-ssl._tcp.DOMAIN` (https) and
//! `_etcd-server._tcp.DOMAIN` (http), looked up through the system's
//! resolv.conf. Either record set may be absent. This member is the target
//! whose addresses and port match one of its advertised peer URLs; until the
//! records exist and name it, and have stayed the same for one look more
//! (a zone may be filled record by record), it looks again with back-off.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RData;

use super::{member_id, InitialCluster, InitialMember};
use crate::config::ConfigError;
use crate::raft::dial::{addresses, resolver};

/// How long a member waits for records that name it before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(4);

/// One SRV target as a peer URL, with the addresses its name has now.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    url: String,
    addresses: BTreeSet<IpAddr>,
}

/// Whose records: the members' peer URLs, or their client URLs.
#[derive(Clone, Copy)]
enum Kind {
    Server,
    Client,
}

/// The SRV record names of `kind` looked up for `domain`, with their scheme.
fn services(kind: Kind, domain: &str, service_name: Option<&str>) -> [(&'static str, String); 2] {
    let kind = match kind {
        Kind::Server => "server",
        Kind::Client => "client",
    };
    let suffix = service_name.map(|n| format!("-{n}")).unwrap_or_default();
    [("https", format!("_etcd-{kind}-ssl{suffix}._tcp.{domain}.")), ("http", format!("_etcd-{kind}{suffix}._tcp.{domain}."))]
}

/// What one look at the records found.
#[derive(Debug, Default)]
struct Sight {
    targets: Vec<Target>,
    /// Per record name: what it held, or why it could not be read.
    said: Vec<String>,
}

impl fmt::Display for Sight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.said.join("; "))
    }
}

async fn look(kind: Kind, domain: &str, service_name: Option<&str>) -> Sight {
    let mut sight = Sight::default();
    let Some(resolver) = resolver() else {
        sight.said.push("no DNS configuration (/etc/resolv.conf)".into());
        return sight;
    };
    // A record that was missing a moment ago may be there now.
    resolver.clear_cache();
    for (scheme, name) in services(kind, domain, service_name) {
        let lookup = match resolver.srv_lookup(name.as_str()).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                sight.said.push(format!("{name}: no records"));
                continue;
            }
            Err(e) => {
                sight.said.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut held = Vec::new();
        for record in lookup.answers() {
            let RData::SRV(srv) = &record.data else { continue };
            let host = srv.target.to_utf8().trim_end_matches('.').to_string();
            let url = format!("{scheme}://{host}:{}", srv.port);
            match addresses(&host).await {
                Ok(found) => {
                    let shown: Vec<String> = found.iter().map(IpAddr::to_string).collect();
                    held.push(format!("{host}:{} ({})", srv.port, shown.join(",")));
                    sight.targets.push(Target { url, addresses: found.into_iter().collect() });
                }
                Err(e) => held.push(format!("{host}:{} ({e})", srv.port)),
            }
        }
        sight.said.push(format!("{name} has {}", held.join(", ")));
    }
    sight.targets.sort();
    sight
}

/// The port and addresses a URL stands for.
async fn endpoint(url: &str) -> Result<(String, u16, BTreeSet<IpAddr>), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let port = parsed.port_or_known_default().unwrap_or(2380);
    let found = addresses(host).await.map_err(|e| e.to_string())?;
    Ok((parsed.scheme().to_string(), port, found.into_iter().collect()))
}

/// The target that is this member: same port, an address in common.
async fn find_self<'a>(targets: &'a [Target], advertised: &[String]) -> Result<Option<&'a Target>, String> {
    for url in advertised {
        let (scheme, port, mine) = endpoint(url).await?;
        for target in targets {
            let (target_scheme, target_port, _) = endpoint(&target.url).await?;
            if target_port == port && !target.addresses.is_disjoint(&mine) {
                if target_scheme != scheme {
                    return Err(format!("the SRV record {} matches the advertised peer URL {url} but not its scheme", target.url));
                }
                return Ok(Some(target));
            }
        }
    }
    Ok(None)
}

/// The new cluster the records describe, and this member's id in it. Every
/// member is named by its record's URL (as etcd does), so all compute the
/// same ids and membership; names are empty until each member publishes its
/// own, as etcd lists an unstarted member.
pub async fn cluster(
    domain: &str,
    service_name: Option<&str>,
    size: Option<usize>,
    advertised: &[String],
    token: &str,
) -> Result<(InitialCluster, u64), ConfigError> {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    // The targets of the previous look, in order (a DNS server may rotate
    // the records of its answers).
    let mut previous: Option<Vec<Target>> = None;
    loop {
        let sight = look(Kind::Server, domain, service_name).await;
        let me = find_self(&sight.targets, advertised).await.map_err(|e| ConfigError::new(format!("--discovery-srv {domain}: {e}")))?;
        let waiting_for = match me {
            None => format!(
                "cannot find this member in the SRV records: {sight}; this member advertises {}",
                advertised.join(",")
            ),
            Some(_) if size.is_some_and(|size| sight.targets.len() < size) => format!(
                "found {} of the {} members --initial-cluster-size asks for: {sight}",
                sight.targets.len(),
                size.unwrap_or_default()
            ),
            Some(me) if previous.as_ref() == Some(&sight.targets) => {
                let members: Vec<InitialMember> = sight
                    .targets
                    .iter()
                    .map(|t| InitialMember { id: member_id(std::slice::from_ref(&t.url), token), name: String::new(), peer_urls: vec![t.url.clone()] })
                    .collect();
                let id = member_id(std::slice::from_ref(&me.url), token);
                tracing::info!(domain, records = %sight, self_url = %me.url, "found the cluster's members in DNS SRV records");
                return Ok((InitialCluster::of(members), id));
            }
            Some(_) => "records seen once; looking again to see that they have settled".to_string(),
        };
        if started.elapsed() > PATIENCE {
            return Err(ConfigError::new(format!("--discovery-srv {domain}: {waiting_for} (gave up after {}s)", PATIENCE.as_secs())));
        }
        tracing::info!(domain, "{waiting_for}; looking again in {backoff:?}");
        previous = Some(sight.targets);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The client URLs that `_etcd-client-ssl._tcp.DOMAIN` (https) and
/// `_etcd-client._tcp.DOMAIN` (http) name: etcdctl's `--discovery-srv`.
pub async fn client_endpoints(domain: &str, service_name: Option<&str>) -> Result<Vec<String>, String> {
    let sight = look(Kind::Client, domain, service_name).await;
    if sight.targets.is_empty() {
        return Err(format!("no client endpoints in the SRV records of {domain}: {sight}"));
    }
    Ok(sight.targets.into_iter().map(|t| t.url).collect())
}
