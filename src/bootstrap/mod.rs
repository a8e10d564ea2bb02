//! Who is in the cluster at its birth, found the one way the flags chose:
//! the static `--initial-cluster name=url,...`, a discovery URL (`discovery`)
//! or DNS SRV records (`srv`). Each gives the same `InitialCluster`.

pub mod discovery;
mod http;
pub mod srv;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::config::{urls_parse_list, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialCluster {
    pub cluster_id: u64,
    pub members: Vec<InitialMember>,
}

/// A stable, non-zero id from a hash, as etcd derives member and cluster ids.
fn id_of(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let id = u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
    id.max(1)
}

/// A member's id from its sorted peer URLs and the cluster token, so every
/// member computes the same ids from the same flags.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    id_of(&[urls.join("").as_bytes(), token.as_bytes()])
}

impl InitialCluster {
    /// Parses `--initial-cluster` (a name may repeat, one URL each time).
    pub fn from_static(spec: &str, token: &str) -> Result<InitialCluster, ConfigError> {
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError::new(format!("--initial-cluster: {entry:?} is not of the form name=url")))?;
            let url = urls_parse_list(url).map_err(|e| ConfigError::new(format!("--initial-cluster: {e}")))?;
            by_name.entry(name.to_string()).or_default().extend(url);
        }
        if by_name.is_empty() {
            return Err(ConfigError::new("--initial-cluster is empty"));
        }
        let members: Vec<InitialMember> = by_name
            .into_iter()
            .map(|(name, peer_urls)| InitialMember { id: member_id(&peer_urls, token), name, peer_urls })
            .collect();
        Ok(InitialCluster::of(members))
    }

    /// The cluster of `members`, its id derived from theirs.
    pub fn of(members: Vec<InitialMember>) -> InitialCluster {
        let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        let id_bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
        InitialCluster { cluster_id: id_of(&[&id_bytes]), members }
    }

    /// This member's entry, checked against what it advertises.
    pub fn member(&self, name: &str, advertised_peer_urls: &[String]) -> Result<&InitialMember, ConfigError> {
        let me = self.members.iter().find(|m| m.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.members.iter().map(|m| m.name.as_str()).collect();
            ConfigError::new(format!("--name {name} is not in --initial-cluster ({})", names.join(", ")))
        })?;
        let mut mine = me.peer_urls.clone();
        let mut advertised = advertised_peer_urls.to_vec();
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(ConfigError::new(format!(
                "--initial-cluster has {name}={} but --initial-advertise-peer-urls is {}",
                me.peer_urls.join(","),
                advertised_peer_urls.join(",")
            )));
        }
        Ok(me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let spec = "m1=http://127.0.0.1:2380,m2=http://127.0.0.1:22380,m3=http://127.0.0.1:32380";
        let a = InitialCluster::from_static(spec, "tok").unwrap();
        let b = InitialCluster::from_static(spec, "tok").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.members.len(), 3);
        assert!(a.members.iter().all(|m| m.id != 0));
        assert_ne!(a.members[0].id, a.members[1].id);
        assert_ne!(InitialCluster::from_static(spec, "other").unwrap().cluster_id, a.cluster_id);
    }

    #[test]
    fn checks_this_member() {
        let c = InitialCluster::from_static("m1=http://127.0.0.1:2380", "t").unwrap();
        assert!(c.member("m1", &["http://127.0.0.1:2380".into()]).is_ok());
        assert!(c.member("m9", &["http://127.0.0.1:2380".into()]).unwrap_err().to_string().contains("--name m9 is not in --initial-cluster"));
        assert!(c.member("m1", &["http://127.0.0.1:9999".into()]).is_err());
        assert!(InitialCluster::from_static("m1", "t").is_err());
    }
}
