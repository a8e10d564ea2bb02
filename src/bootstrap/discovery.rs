//! etcd's discovery protocols: a new cluster's members register in a
//! registry and wait until its size has registered.
//! - v2 (`--discovery URL`), as the discovery.etcd.io service and a plain
//!   etcd v2 keys directory serve it: `URL/_config/size` holds the size, each
//!   member creates `URL/<member id>` = `name=peerURL,...`;
//! - v3 (etcd 3.6's `--discovery-token T --discovery-endpoints …`), through
//!   the v3 API of any etcd-API cluster: `/_etcd/registry/T/_config/size`,
//!   and `/_etcd/registry/T/members/<member id>` per member.
//!
//! The first `size` registrations, by creation, are the cluster; a member
//! beyond them is refused ("discovery: cluster is full"). Unlike etcd's v2,
//! registering again after a crash is not an error when the registration
//! holds what this member would write: it resumes.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Deserialize;
use url::Url;

use super::http::{request, Response};
use super::{member_id, InitialCluster};
use crate::config::ConfigError;

/// One request's patience, and how long the service may stay unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const UNREACHABLE_PATIENCE: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_secs(1);

/// What the v2 keys API answers.
#[derive(Deserialize)]
struct Reply {
    node: Option<Node>,
    #[serde(rename = "errorCode")]
    error_code: Option<u32>,
}

#[derive(Deserialize)]
struct Node {
    key: String,
    value: Option<String>,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(rename = "createdIndex", default)]
    created_index: u64,
}

/// etcd v2's "Key not found".
const KEY_NOT_FOUND: u32 = 100;
/// etcd v2's "Key already exists".
const NODE_EXISTS: u32 = 105;

/// A v2 registry: its URL, and the proxy to reach it through.
struct V2 {
    url: Url,
    proxy: Option<Url>,
}

/// A v3 registry: a client of the cluster that holds it, and its keys' prefix.
struct V3 {
    client: etcd_client::Client,
    prefix: String,
    endpoints: String,
}

/// A registered member: its key's last segment, and what it registered.
struct Registration {
    id: String,
    value: String,
}

/// `attempt`, tried again with back-off while the registry at `place`
/// cannot be reached, for up to UNREACHABLE_PATIENCE.
async fn retrying<T, Attempt: Future<Output = Result<T, String>>>(place: &str, mut attempt: impl FnMut() -> Attempt) -> Result<T, ConfigError> {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(e) if started.elapsed() < UNREACHABLE_PATIENCE => {
                tracing::warn!(registry = place, error = %e, "discovery: cannot reach the discovery service; trying again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
            Err(e) => return Err(ConfigError::new(format!("discovery: cannot reach {place} for {}s: {e}", UNREACHABLE_PATIENCE.as_secs()))),
        }
    }
}

/// What a registry of either protocol does.
trait Registry {
    /// Where the registrations are, for messages.
    fn place(&self) -> String;
    /// The cluster's size and its registrations in creation order.
    async fn look(&self) -> Result<(usize, Vec<Registration>), ConfigError>;
    /// Registers this member as `value` under `id`.
    async fn register(&self, id: &str, value: &str) -> Result<(), ConfigError>;
}

impl V2 {
    fn at(&self, suffix: &str) -> Url {
        let mut url = self.url.clone();
        url.set_path(&format!("{}/{suffix}", self.url.path().trim_end_matches('/')));
        url
    }

    /// One request, tried again while the service cannot be reached.
    async fn call(&self, method: http::Method, url: &Url, form: Option<String>) -> Result<(Response, Option<Reply>), ConfigError> {
        let response = retrying(url.as_str(), || request(method.clone(), url, form.clone(), self.proxy.as_ref(), REQUEST_TIMEOUT)).await?;
        let reply = serde_json::from_slice(&response.body).ok();
        Ok((response, reply))
    }

}

impl Registry for V2 {
    fn place(&self) -> String {
        self.url.to_string()
    }

    async fn look(&self) -> Result<(usize, Vec<Registration>), ConfigError> {
        let size_url = self.at("_config/size");
        let (response, reply) = self.call(http::Method::GET, &size_url, None).await?;
        let reply = reply.ok_or_else(|| bad_endpoint(&size_url, &response))?;
        if reply.error_code == Some(KEY_NOT_FOUND) {
            return Err(ConfigError::new(format!(
                "discovery: size key not found: {size_url} does not exist; make the token first \
                 (a discovery service's /new?size=N, or a PUT of value=N there)"
            )));
        }
        let size = reply.node.and_then(|n| n.value).unwrap_or_default();
        let size = parse_size(&size, size_url.as_str())?;
        let (response, reply) = self.call(http::Method::GET, &self.url, None).await?;
        let dir = reply.and_then(|r| r.node).ok_or_else(|| bad_endpoint(&self.url, &response))?;
        let mut nodes: Vec<Node> = dir.nodes.into_iter().filter(|n| !n.key.ends_with("/_config")).collect();
        nodes.sort_by_key(|n| n.created_index);
        let registrations = nodes
            .into_iter()
            .map(|n| Registration {
                id: n.key.rsplit('/').next().unwrap_or_default().to_string(),
                value: n.value.unwrap_or_default(),
            })
            .collect();
        Ok((size, registrations))
    }

    /// Creates this member's key; a key that already holds the same
    /// registration (this member, before a crash) is taken as done.
    async fn register(&self, id: &str, value: &str) -> Result<(), ConfigError> {
        let mut url = self.at(id);
        url.query_pairs_mut().append_pair("prevExist", "false");
        let form = url::form_urlencoded::Serializer::new(String::new()).append_pair("value", value).finish();
        let (response, reply) = self.call(http::Method::PUT, &url, Some(form)).await?;
        match (response.status, reply.and_then(|r| r.error_code)) {
            (200..=299, _) => Ok(()),
            (_, Some(NODE_EXISTS)) => {
                let key = self.at(id);
                let (response, reply) = self.call(http::Method::GET, &key, None).await?;
                let held = reply.and_then(|r| r.node).and_then(|n| n.value).ok_or_else(|| bad_endpoint(&key, &response))?;
                if held != value {
                    return Err(ConfigError::new(format!(
                        "discovery: found duplicate id: {key} holds {held:?}, not this member's {value:?}"
                    )));
                }
                tracing::info!(key = %key, "discovery: this member registered before; resuming");
                Ok(())
            }
            _ => Err(bad_endpoint(&url, &response)),
        }
    }
}

impl V3 {
    async fn connect(token: &str, endpoints: &[String], user: Option<(String, String)>) -> Result<V3, ConfigError> {
        let joined = endpoints.join(",");
        let client = retrying(&joined, || crate::ctl::plain_client(endpoints, user.clone(), REQUEST_TIMEOUT)).await?;
        Ok(V3 { client, prefix: format!("/_etcd/registry/{token}"), endpoints: joined })
    }
}

fn message(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        e => e.to_string(),
    }
}

impl Registry for V3 {
    fn place(&self) -> String {
        format!("{} at {}", self.prefix, self.endpoints)
    }

    async fn look(&self) -> Result<(usize, Vec<Registration>), ConfigError> {
        let size_key = format!("{}/_config/size", self.prefix);
        let place = self.place();
        let got = retrying(&place, || {
            let (mut client, key) = (self.client.clone(), size_key.clone());
            async move { client.get(key, None).await.map_err(message) }
        })
        .await?;
        let Some(size) = got.kvs().first() else {
            return Err(ConfigError::new(format!(
                "discovery: size key not found: {size_key} does not exist at {}; make it first \
                 (etcdctl --endpoints={} put {size_key} 3)",
                self.endpoints, self.endpoints
            )));
        };
        let size = parse_size(&String::from_utf8_lossy(size.value()), &size_key)?;
        let members = format!("{}/members/", self.prefix);
        let got = retrying(&place, || {
            let (mut client, key) = (self.client.clone(), members.clone());
            async move { client.get(key, Some(etcd_client::GetOptions::new().with_prefix())).await.map_err(message) }
        })
        .await?;
        let mut kvs: Vec<&etcd_client::KeyValue> = got.kvs().iter().collect();
        kvs.sort_by_key(|kv| kv.create_revision());
        let registrations = kvs
            .into_iter()
            .map(|kv| Registration {
                id: String::from_utf8_lossy(&kv.key()[members.len()..]).into_owned(),
                value: String::from_utf8_lossy(kv.value()).trim().to_string(),
            })
            .collect();
        Ok((size, registrations))
    }

    /// Puts this member's key, as etcd does: a put again after a crash
    /// keeps the key's creation, so its place in the order.
    async fn register(&self, id: &str, value: &str) -> Result<(), ConfigError> {
        let key = format!("{}/members/{id}", self.prefix);
        retrying(&self.place(), || {
            let (mut client, key, value) = (self.client.clone(), key.clone(), value.to_string());
            async move { client.put(key, value, None).await.map_err(message) }
        })
        .await?;
        Ok(())
    }
}

fn parse_size(size: &str, key: &str) -> Result<usize, ConfigError> {
    size.trim()
        .parse()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| ConfigError::new(format!("discovery: size key is bad: {key} holds {size:?}, not a number of members")))
}

fn bad_endpoint(url: &Url, response: &Response) -> ConfigError {
    let body = String::from_utf8_lossy(&response.body);
    let body: String = body.chars().take(200).collect();
    ConfigError::new(format!(
        "discovery: bad discovery endpoint: {url} answered {} {body:?}, not etcd's v2 keys API",
        response.status
    ))
}

/// Refuses a member that is not among the first `size` registrations once
/// `size` have registered.
fn check_room(place: &str, size: usize, registered: &[Registration], id: &str, name: &str) -> Result<(), ConfigError> {
    let first = &registered[..registered.len().min(size)];
    if registered.len() < size || first.iter().any(|r| r.id == id) {
        return Ok(());
    }
    let members: Vec<&str> = first.iter().map(|r| r.value.as_str()).collect();
    Err(ConfigError::new(format!(
        "discovery: cluster is full: {place} has its {size} members ({}), and this member ({name}, {id}) is not one of them; \
         cairn has no proxy mode (--discovery-fallback), so it exits. Add it to the running cluster with etcdctl member add instead",
        members.join(" ")
    )))
}

/// Registers this member at the v2 discovery URL `url` and returns the
/// cluster once its size has registered, with this member's id. The URL is
/// the cluster token, as in etcd.
pub async fn v2(url: &str, proxy: Option<&str>, name: &str, advertised: &[String]) -> Result<(InitialCluster, u64), ConfigError> {
    let parse = |u: &str| Url::parse(u).map_err(|e| ConfigError::new(format!("discovery: {u}: {e}")));
    let registry = V2 { url: parse(url)?, proxy: proxy.map(parse).transpose()? };
    cluster(&registry, url, name, advertised).await
}

/// As `v2`, with etcd 3.6's v3 discovery: token `token` in the cluster at
/// `endpoints`.
pub async fn v3(
    token: &str,
    endpoints: &[String],
    user: Option<(String, String)>,
    name: &str,
    advertised: &[String],
) -> Result<(InitialCluster, u64), ConfigError> {
    let registry = V3::connect(token, endpoints, user).await?;
    cluster(&registry, token, name, advertised).await
}

async fn cluster(registry: &impl Registry, token: &str, name: &str, advertised: &[String]) -> Result<(InitialCluster, u64), ConfigError> {
    let place = registry.place();
    let id = member_id(advertised, token);
    let id_hex = format!("{id:x}");
    let mine: Vec<String> = advertised.iter().map(|u| format!("{name}={u}")).collect();
    let mine = mine.join(",");
    let (size, registered) = registry.look().await?;
    check_room(&place, size, &registered, &id_hex, name)?;
    registry.register(&id_hex, &mine).await?;
    tracing::info!(registry = %place, member_id = %id_hex, size, "discovery: registered this member");
    loop {
        let (size, registered) = registry.look().await?;
        check_room(&place, size, &registered, &id_hex, name)?;
        if registered.len() >= size {
            let spec: Vec<&str> = registered[..size].iter().map(|r| r.value.as_str()).collect();
            let spec = spec.join(",");
            let cluster = InitialCluster::from_static(&spec, token)
                .map_err(|e| ConfigError::new(format!("discovery: {place} holds a bad registration ({spec}): {e}")))?;
            if cluster.members.len() != size {
                return Err(ConfigError::new(format!("discovery: found duplicate name in the registrations at {place}: {spec}")));
            }
            let me = cluster.member(name, advertised)?.id;
            tracing::info!(registry = %place, cluster = %spec, "discovery: found the cluster's members");
            return Ok((cluster, me));
        }
        tracing::info!(registry = %place, "discovery: found {} of {size} members, waiting for {} more", registered.len(), size - registered.len());
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(ids: &[&str]) -> Vec<Registration> {
        ids.iter().map(|id| Registration { id: id.to_string(), value: format!("n{id}=http://{id}:2380") }).collect()
    }

    #[test]
    fn a_member_beyond_the_size_is_refused_naming_the_members() {
        let url = "http://disco/abc";
        assert!(check_room(url, 3, &registered(&["a", "b"]), "z", "nz").is_ok());
        assert!(check_room(url, 3, &registered(&["a", "b", "z", "d"]), "z", "nz").is_ok());
        let full = check_room(url, 3, &registered(&["a", "b", "c", "z"]), "z", "nz").unwrap_err().to_string();
        assert!(full.starts_with("discovery: cluster is full"), "{full}");
        assert!(full.contains("na=http://a:2380 nb=http://b:2380 nc=http://c:2380") && full.contains("(nz, z)"), "{full}");
    }

    #[test]
    fn keys_sit_under_the_discovery_url() {
        let registry = V2 { url: Url::parse("http://h:2379/v2/keys/_etcd/registry/tok/").unwrap(), proxy: None };
        assert_eq!(registry.at("_config/size").as_str(), "http://h:2379/v2/keys/_etcd/registry/tok/_config/size");
        assert_eq!(registry.at("1a").as_str(), "http://h:2379/v2/keys/_etcd/registry/tok/1a");
    }
}
