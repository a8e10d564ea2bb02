//! Configuration, layered with figment as etcd users expect: built-in
//! defaults < `--config-file` (YAML, etcd's keys) < `ETCD_*` environment
//! variables < command-line flags. Every value is checked here, and a bad one
//! is reported naming the flag (or variable, or file key) it came from.

pub mod flags;
mod urls;

use std::path::PathBuf;
use std::time::Duration;

use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::store::memory::{DEFAULT_MEMBER_BYTES, MIN_MEMBER_BYTES};
use crate::tls::{AllowedIdentity, Port, TlsPolicy, TransportSecurity};

pub use flags::Invocation;
pub use urls::{listen_addr, parse_list as urls_parse_list, ListenUrl};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(msg: impl Into<String>) -> Self {
        ConfigError(msg.into())
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// etcd's `--auto-compaction-mode` with its `--auto-compaction-retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    pub snapshot_count: u64,
    pub heartbeat_interval: u64,
    pub election_timeout: u64,
    pub listen_peer_urls: Vec<ListenUrl>,
    pub listen_client_urls: Vec<ListenUrl>,
    /// etcd's `--listen-metrics-urls`: the health endpoints (and metrics) without gRPC.
    pub listen_metrics_urls: Vec<ListenUrl>,
    /// etcd's `--listen-client-http-urls`: the HTTP endpoints and the JSON
    /// gateway apart from gRPC; when set, the client URLs serve gRPC only.
    pub listen_client_http_urls: Vec<ListenUrl>,
    pub enable_grpc_gateway: bool,
    /// `--metrics extensive`: gRPC handling-time histograms too.
    pub metrics_extensive: bool,
    /// Compare this member's HashKV with its peers' before serving clients.
    pub initial_corrupt_check: bool,
    /// How often the leader compares hashes at its revision (None: never).
    pub corrupt_check_time: Option<Duration>,
    /// How often the leader compares hashes at a new compact revision
    /// (None: never).
    pub compact_hash_check_time: Option<Duration>,
    pub advertise_client_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    pub bootstrap: Bootstrap,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub quota_backend_bytes: u64,
    /// cairn's own: RocksDB's memtables and block caches and the watch
    /// history together.
    pub memory_budget_bytes: u64,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    pub watch_progress_notify_interval: Duration,
    pub lease_checkpoint_interval: Duration,
    pub strict_reconfig_check: bool,
    pub max_learners: usize,
    pub auto_compaction: Option<AutoCompaction>,
    pub log_level: String,
    pub logger: String,
    pub client_security: TransportSecurity,
    pub peer_security: TransportSecurity,
    pub tls_policy: TlsPolicy,
    /// `--auth-token`: `simple`, or `jwt,…` with its options.
    pub auth_token: String,
    /// How long a simple token lives unused.
    pub auth_token_ttl: Duration,
    pub bcrypt_cost: u32,
    /// Notes for the log once it is set up: flags that beat an environment
    /// variable, and environment variables that mean nothing to cairn.
    pub notices: Vec<String>,
}

/// A named layer of settings (the config file, the flags).
struct Layer {
    name: String,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

const DEFAULT_PROGRESS: Duration = Duration::from_secs(600);
const DEFAULT_CHECKPOINT: Duration = Duration::from_secs(300);
const FLAG_LAYER: &str = "command-line flag";
const ENV_PREFIX: &str = "ETCD_";

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('-', "_").to_uppercase())
}

/// A value that sets nothing, so an unsupported key carrying it is harmless
/// (etcd's sample config file lists every key with such values).
fn is_inert(value: &str) -> bool {
    matches!(value, "" | "false" | "0" | "null" | "~")
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(_, n) => Some(match n.to_u128() {
            Some(u) => u.to_string(),
            None => n.to_i128().map_or_else(|| n.to_f64().unwrap_or(0.0).to_string(), |i| i.to_string()),
        }),
        Value::Empty(..) => None,
        Value::Array(_, items) => Some(items.iter().filter_map(scalar).collect::<Vec<_>>().join(",")),
        Value::Dict(..) => None,
    }
}

/// The flag a key of the config file's `client-transport-security` or
/// `peer-transport-security` section stands for.
fn security_section_key(section: &str, key: &str) -> String {
    match (section, key) {
        ("client-transport-security", "crl-file") => "client-crl-file".into(),
        ("client-transport-security", key) => key.into(),
        (_, "allowed-cn") => "peer-cert-allowed-cn".into(),
        (_, "allowed-hostname") => "peer-cert-allowed-hostname".into(),
        (_, "client-cert-auth") => "peer-client-cert-auth".into(),
        (_, key) => format!("peer-{key}"),
    }
}

fn yaml_scalar(key: &str, path: &str, value: &serde_yaml_ng::Value) -> Result<Option<String>, ConfigError> {
    Ok(Some(match value {
        serde_yaml_ng::Value::Null => return Ok(None),
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Bool(b) => b.to_string(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        serde_yaml_ng::Value::Sequence(items) => {
            items.iter().map(|i| i.as_str().map(String::from).unwrap_or_default()).collect::<Vec<_>>().join(",")
        }
        _ => return Err(ConfigError::new(format!("{key} in {path}: expected a scalar value"))),
    }))
}

fn read_config_file(path: &str) -> Result<Dict, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("cannot read --config-file {path}: {e}")))?;
    let raw: Option<std::collections::BTreeMap<String, serde_yaml_ng::Value>> = serde_yaml_ng::from_str(&text)
        .map_err(|e| ConfigError::new(format!("--config-file {path} is not valid YAML: {e}")))?;
    let mut settings = Vec::new();
    for (key, value) in raw.unwrap_or_default() {
        match (key.as_str(), &value) {
            ("client-transport-security" | "peer-transport-security", serde_yaml_ng::Value::Mapping(section)) => {
                for (inner, value) in section {
                    let inner = inner.as_str().unwrap_or_default();
                    let flag = security_section_key(&key, inner);
                    if let Some(text) = yaml_scalar(&format!("{key}.{inner}"), path, value)? {
                        settings.push((flag, text));
                    }
                }
            }
            _ => {
                if let Some(text) = yaml_scalar(&key, path, &value)? {
                    settings.push((key, text));
                }
            }
        }
    }
    let mut dict = Dict::new();
    for (key, text) in settings {
        if flags::is_layered_setting(&key) {
            dict.insert(key, Value::from(text));
        } else if flags::is_etcd_unsupported(&key) {
            if !is_inert(&text) {
                return Err(ConfigError::new(format!(
                    "{key} in {path} is an etcd setting that cairn does not support yet"
                )));
            }
        } else {
            return Err(ConfigError::new(format!("unknown key {key} in {path}")));
        }
    }
    Ok(dict)
}

/// Checks the `ETCD_*` variables figment will not read: an etcd setting
/// cairn lacks is an error; anything else is only noted.
fn check_environment(notices: &mut Vec<String>) -> Result<(), ConfigError> {
    for (name, value) in std::env::vars() {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        let key = rest.to_lowercase().replace('_', "-");
        if flags::SUPPORTED.contains(&key.as_str()) {
            continue;
        }
        if flags::is_etcd_unsupported(&key) && !is_inert(&value) {
            return Err(ConfigError::new(format!("{name} sets --{key}, an etcd flag that cairn does not support yet")));
        }
        notices.push(format!("unrecognized environment variable {name}={value}"));
    }
    Ok(())
}

/// Built-in defaults: etcd's, or with `CAIRN_DEFAULTS=container` (set by the
/// image) the ones a container needs: listen on every interface, advertise
/// the container's hostname, keep data in the image's volume.
struct Defaults {
    listen_client: String,
    listen_peer: String,
    advertise_client: String,
    advertise_peer: String,
    data_dir: Option<String>,
}

impl Defaults {
    fn for_environment() -> Defaults {
        if std::env::var("CAIRN_DEFAULTS").is_ok_and(|v| v == "container") {
            let host = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into());
            Defaults {
                listen_client: "http://0.0.0.0:2379".into(),
                listen_peer: "http://0.0.0.0:2380".into(),
                advertise_client: format!("http://{host}:2379"),
                advertise_peer: format!("http://{host}:2380"),
                data_dir: Some("/var/lib/cairn".into()),
            }
        } else {
            Defaults {
                listen_client: "http://localhost:2379".into(),
                listen_peer: "http://localhost:2380".into(),
                advertise_client: "http://localhost:2379".into(),
                advertise_peer: "http://localhost:2380".into(),
                data_dir: None,
            }
        }
    }
}

/// Reads the layered settings; typed values come from `Settings`.
struct Settings {
    figment: Figment,
    values: Dict,
}

impl Settings {
    fn raw(&self, key: &str) -> Option<String> {
        self.values.get(key).and_then(scalar)
    }

    /// Where a key's value came from, for error messages.
    fn origin(&self, key: &str) -> String {
        match self.figment.find_metadata(key).map(|m| m.name.to_string()) {
            Some(n) if n.contains("environment") => env_name(key),
            Some(n) if n.starts_with("config file") => format!("{key} ({n})"),
            _ => format!("--{key}"),
        }
    }

    fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_string())
    }

    fn number(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                ConfigError::new(format!("invalid value {v:?} for {}: expected a non-negative integer", self.origin(key)))
            }),
        }
    }

    /// The name a setting is given under: etcd 3.6's `name` when set, else
    /// 3.5's `experimental` one.
    fn spelling(&self, name: &'static str, experimental: &'static str) -> &'static str {
        if self.is_set(name) {
            name
        } else {
            experimental
        }
    }

    /// A Go duration ("10m", "1m30s", "500ms"), as etcd's duration flags take.
    fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(key) {
            None => Ok(default),
            Some(v) => parse_go_duration(v.trim()).ok_or_else(|| {
                ConfigError::new(format!("invalid value {v:?} for {}: expected a duration such as 10m or 500ms", self.origin(key)))
            }),
        }
    }

    fn one_of(&self, key: &str, default: &str, allowed: &[&str]) -> Result<String, ConfigError> {
        let v = self.string(key, default);
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(ConfigError::new(format!("invalid value {v:?} for {}: expected one of {}", self.origin(key), allowed.join(", "))))
        }
    }

    /// A Go boolean flag's value (strconv.ParseBool's spellings).
    fn boolean(&self, key: &str) -> Result<bool, ConfigError> {
        match self.raw(key).as_deref().map(str::trim) {
            None | Some("") => Ok(false),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(ConfigError::new(format!("invalid value {v:?} for {}: expected true or false", self.origin(key)))),
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.raw(key).filter(|p| !p.trim().is_empty()).map(PathBuf::from)
    }

    /// A comma-separated list.
    fn list(&self, key: &str) -> Vec<String> {
        self.string(key, "").split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect()
    }

    /// One port's TLS settings; an https URL on the port needs a certificate.
    fn transport_security(&self, port: Port, listen: &[ListenUrl]) -> Result<TransportSecurity, ConfigError> {
        let flag = |name: &str| port.flag(name).trim_start_matches("--").to_string();
        let security = TransportSecurity {
            cert_file: self.path(&flag("cert-file")),
            key_file: self.path(&flag("key-file")),
            trusted_ca_file: self.path(&flag("trusted-ca-file")),
            client_cert_auth: self.boolean(&flag("client-cert-auth"))?,
            crl_file: self.path(&flag("crl-file")),
            auto_tls: self.boolean(&flag("auto-tls"))?,
            allowed: match port {
                Port::Peer => AllowedIdentity {
                    common_names: self.list("peer-cert-allowed-cn"),
                    hostnames: self.list("peer-cert-allowed-hostname"),
                },
                _ => AllowedIdentity::default(),
            },
        };
        if let Some(u) = listen.iter().find(|u| u.tls) {
            if !security.has_certificate() {
                return Err(ConfigError::new(format!(
                    "TLS key/cert ({}, {}) must be provided for {} url {} with HTTPS scheme",
                    port.flag("cert-file"),
                    port.flag("key-file"),
                    port.name(),
                    u.url
                )));
            }
        }
        Ok(security)
    }

    fn urls(&self, key: &str, default: &str) -> Result<Vec<String>, ConfigError> {
        urls::parse_list(&self.string(key, default)).map_err(|e| ConfigError::new(format!("{}: {e}", self.origin(key))))
    }

    fn listen_urls(&self, key: &str, default: &str) -> Result<Vec<ListenUrl>, ConfigError> {
        self.urls(key, default)?
            .iter()
            .map(|u| ListenUrl::parse(u).map_err(|e| ConfigError::new(format!("{}: {e}", self.origin(key)))))
            .collect()
    }

    /// Extra client-side listen URLs (none unless set); https ones use the
    /// client certificate, as in etcd.
    fn optional_listen_urls(&self, key: &str, what: &str, client: &TransportSecurity) -> Result<Vec<ListenUrl>, ConfigError> {
        let urls = match self.is_set(key) {
            true => self.listen_urls(key, "")?,
            false => Vec::new(),
        };
        if urls.iter().any(|u| u.tls) && !client.has_certificate() {
            return Err(ConfigError::new(format!(
                "client TLS key/cert (--cert-file, --key-file) must be provided for {what} secure url"
            )));
        }
        Ok(urls)
    }
}

/// etcd 3.6's `--feature-gates=Name=true,…`: the gates turned on. Only the
/// gates cairn has are accepted; the lease checkpoint ones are always on.
/// How a member with no data finds the members of its new cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Bootstrap {
    /// `--initial-cluster name=url,…`; by default this member alone.
    Static(String),
    /// `--discovery URL`: etcd's v2 discovery protocol, against a discovery
    /// service or an etcd v2 keys directory; `--discovery-proxy` is an HTTP
    /// proxy for it.
    Discovery { url: String, proxy: Option<String> },
    /// `--discovery-token` at `--discovery-endpoints`: etcd 3.6's v3
    /// discovery, keys under `/_etcd/registry/<token>` of any etcd-API
    /// cluster, signed in as `--discovery-user` if given.
    DiscoveryV3 { token: String, endpoints: Vec<String>, user: Option<(String, String)> },
    /// `--discovery-srv DOMAIN`: the `_etcd-server-ssl._tcp` and
    /// `_etcd-server._tcp` SRV records of DOMAIN, each service name suffixed
    /// with `-NAME` for `--discovery-srv-name NAME`; with cairn's
    /// `--initial-cluster-size N`, only once they name N members.
    Srv { domain: String, service_name: Option<String>, size: Option<usize> },
}

/// The one way of bootstrapping the flags choose; more than one is an error,
/// as in etcd.
fn bootstrap(s: &Settings, name: &str, advertised_peer_urls: &[String]) -> Result<Bootstrap, ConfigError> {
    let chosen: Vec<&str> = ["initial-cluster", "discovery", "discovery-endpoints", "discovery-srv"]
        .into_iter()
        .filter(|k| s.raw(k).is_some_and(|v| !v.is_empty()))
        .collect();
    if chosen.len() > 1 {
        let origins: Vec<String> = chosen.iter().map(|k| s.origin(k)).collect();
        return Err(ConfigError::new(format!(
            "multiple discovery or bootstrap flags are set ({}): choose one of --initial-cluster, --discovery, \
             --discovery-endpoints or --discovery-srv",
            origins.join(", ")
        )));
    }
    // Without a proxy mode, a member that finds the discovery cluster full
    // can only exit; etcd's default, proxy, is taken and says so then.
    s.one_of("discovery-fallback", "proxy", &["exit", "proxy"])?;
    let given = |key: &str| s.raw(key).filter(|v| !v.is_empty());
    Ok(match chosen.first().copied() {
        Some("discovery") => {
            let url = given("discovery").expect("chosen");
            url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| ConfigError::new(format!("{}: {url:?} is not an http or https URL", s.origin("discovery"))))?;
            let proxy = given("discovery-proxy");
            if let Some(p) = &proxy {
                url::Url::parse(p)
                    .ok()
                    .filter(|u| u.scheme() == "http" && u.host().is_some())
                    .ok_or_else(|| ConfigError::new(format!("{}: {p:?} is not an http URL", s.origin("discovery-proxy"))))?;
            }
            Bootstrap::Discovery { url, proxy }
        }
        Some("discovery-endpoints") => {
            let token = given("discovery-token").ok_or_else(|| {
                ConfigError::new(format!("{} needs --discovery-token, the cluster's name in the discovery service", s.origin("discovery-endpoints")))
            })?;
            let user = match (given("discovery-user"), given("discovery-password")) {
                (Some(user), Some(password)) => Some((user, password)),
                (Some(user), None) => match user.split_once(':') {
                    Some((name, password)) => Some((name.to_string(), password.to_string())),
                    None => return Err(ConfigError::new(format!("{}: give the password as name:password or with --discovery-password", s.origin("discovery-user")))),
                },
                (None, _) => None,
            };
            Bootstrap::DiscoveryV3 { token, endpoints: s.list("discovery-endpoints"), user }
        }
        Some("discovery-srv") => {
            let domain = given("discovery-srv").expect("chosen").trim_end_matches('.').to_string();
            let size = match given("initial-cluster-size") {
                None => None,
                Some(n) => Some(n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ConfigError::new(format!("invalid value {n:?} for {}: a number of members", s.origin("initial-cluster-size")))
                })?),
            };
            Bootstrap::Srv { domain, service_name: given("discovery-srv-name"), size }
        }
        _ if given("discovery-token").is_some() => {
            return Err(ConfigError::new(format!(
                "{} needs --discovery-endpoints, the discovery service's client URLs",
                s.origin("discovery-token")
            )))
        }
        // etcd: without an explicit --initial-cluster, the member forms a cluster of one.
        _ => Bootstrap::Static(given("initial-cluster").unwrap_or_else(|| {
            advertised_peer_urls.iter().map(|u| format!("{name}={u}")).collect::<Vec<_>>().join(",")
        })),
    })
}

fn feature_gates(s: &Settings) -> Result<Vec<&'static str>, ConfigError> {
    const KNOWN: [&str; 4] = ["InitialCorruptCheck", "CompactHashCheck", "LeaseCheckpoint", "LeaseCheckpointPersist"];
    let mut on = Vec::new();
    for gate in s.list("feature-gates") {
        let invalid = || ConfigError::new(format!("invalid value {gate:?} for {}: expected Name=true or Name=false", s.origin("feature-gates")));
        let (name, value) = gate.split_once('=').ok_or_else(invalid)?;
        let value: bool = value.trim().parse().map_err(|_| invalid())?;
        let known = KNOWN.iter().find(|k| **k == name.trim()).ok_or_else(|| {
            ConfigError::new(format!("{}: unrecognized feature gate: {name} (cairn knows {})", s.origin("feature-gates"), KNOWN.join(", ")))
        })?;
        if !value && known.starts_with("LeaseCheckpoint") {
            return Err(ConfigError::new(format!("{}: cairn always checkpoints leases; {name}=false is not supported", s.origin("feature-gates"))));
        }
        if value {
            on.push(*known);
        }
    }
    Ok(on)
}

/// Go's time.ParseDuration for non-negative values: a sequence of decimal
/// numbers, each with a unit (ns, us, µs, ms, s, m, h); "0" alone is allowed.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// etcd's reading of the retention: for periodic mode a duration, or a
/// whole number of hours; for revision mode a number of revisions; 0 is off.
fn auto_compaction(s: &Settings) -> Result<Option<AutoCompaction>, ConfigError> {
    let mode = s.one_of("auto-compaction-mode", "periodic", &["periodic", "revision"])?;
    let retention = s.string("auto-compaction-retention", "0");
    let retention = retention.trim();
    let invalid = |expected: &str| {
        ConfigError::new(format!(
            "invalid value {retention:?} for {}: expected {expected}",
            s.origin("auto-compaction-retention")
        ))
    };
    if retention.is_empty() || retention == "0" {
        return Ok(None);
    }
    let mode = if mode == "revision" {
        AutoCompaction::Revision(retention.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| invalid("a number of revisions"))?)
    } else {
        let period = match retention.parse::<u64>() {
            Ok(hours) => Duration::from_secs(hours * 3600),
            Err(_) => parse_go_duration(retention).ok_or_else(|| invalid("a duration such as 1h or 30m, or a number of hours"))?,
        };
        AutoCompaction::Periodic(period)
    };
    Ok(Some(mode))
}

impl Config {
    /// Builds the configuration from the command line (without the program
    /// name) and the process environment.
    pub fn load(flag_values: Dict) -> Result<Config, ConfigError> {
        let mut notices = Vec::new();
        let config_file = flag_values
            .get("config-file")
            .and_then(scalar)
            .or_else(|| std::env::var(env_name("config-file")).ok())
            .filter(|p| !p.is_empty());
        let mut figment = Figment::new();
        if let Some(path) = &config_file {
            figment = figment.merge(Layer { name: format!("config file {path}"), dict: read_config_file(path)? });
        }
        check_environment(&mut notices)?;
        figment = figment.merge(Env::prefixed(ENV_PREFIX).filter_map(|k| {
            // figment lowercases only after this filter runs.
            let key = k.as_str().to_lowercase().replace('_', "-");
            flags::is_layered_setting(&key).then(|| key.into())
        }));
        for key in flag_values.keys() {
            if std::env::var_os(env_name(key)).is_some() {
                notices.push(format!("--{key} overrides environment variable {}", env_name(key)));
            }
        }
        figment = figment.merge(Layer { name: FLAG_LAYER.into(), dict: flag_values });
        let values: Dict = figment.extract().map_err(|e| ConfigError::new(format!("configuration: {e}")))?;
        let s = Settings { figment, values };
        Config::from_settings(&s, notices)
    }

    fn from_settings(s: &Settings, notices: Vec<String>) -> Result<Config, ConfigError> {
        let name = s.string("name", "default");
        if name.is_empty() {
            return Err(ConfigError::new(format!("{} must not be empty", s.origin("name"))));
        }
        let heartbeat_interval = s.number("heartbeat-interval", 100)?;
        let election_timeout = s.number("election-timeout", 1000)?;
        if heartbeat_interval == 0 {
            return Err(ConfigError::new(format!("{} must be at least 1 (ms)", s.origin("heartbeat-interval"))));
        }
        if election_timeout < 5 * heartbeat_interval {
            return Err(ConfigError::new(format!(
                "--election-timeout[{election_timeout}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_interval}ms]"
            )));
        }
        if election_timeout > 50_000 {
            return Err(ConfigError::new(format!("--election-timeout[{election_timeout}ms] is too long, and should be set less than 50 seconds")));
        }
        let defaults = Defaults::for_environment();
        let listen_client_urls = s.listen_urls("listen-client-urls", &defaults.listen_client)?;
        if s.is_set("listen-client-urls") && !s.is_set("advertise-client-urls") {
            return Err(ConfigError::new("--advertise-client-urls is required when --listen-client-urls is set explicitly"));
        }
        let advertise_client_urls = s.urls("advertise-client-urls", &defaults.advertise_client)?;
        urls::check_advertised(&advertise_client_urls, &listen_client_urls)
            .map_err(|e| ConfigError::new(format!("{}: {e}", s.origin("advertise-client-urls"))))?;
        let listen_peer_urls = s.listen_urls("listen-peer-urls", &defaults.listen_peer)?;
        let initial_advertise_peer_urls = s.urls("initial-advertise-peer-urls", &defaults.advertise_peer)?;
        urls::check_advertised(&initial_advertise_peer_urls, &listen_peer_urls)
            .map_err(|e| ConfigError::new(format!("{}: {e}", s.origin("initial-advertise-peer-urls"))))?;
        let bootstrap = bootstrap(s, &name, &initial_advertise_peer_urls)?;
        let initial_cluster_state = match s.one_of("initial-cluster-state", "new", &["new", "existing"])?.as_str() {
            "existing" => ClusterState::Existing,
            _ => ClusterState::New,
        };
        let data_dir = PathBuf::from(
            s.raw("data-dir").filter(|d| !d.is_empty()).or(defaults.data_dir).unwrap_or_else(|| format!("{name}.etcd")),
        );
        let quota = s.number("quota-backend-bytes", 0)?;
        let memory_budget_bytes = s.number("memory-budget-bytes", DEFAULT_MEMBER_BYTES)?;
        if memory_budget_bytes < MIN_MEMBER_BYTES {
            return Err(ConfigError::new(format!(
                "invalid value {memory_budget_bytes} for {}: at least {MIN_MEMBER_BYTES} ({} MiB)",
                s.origin("memory-budget-bytes"),
                MIN_MEMBER_BYTES >> 20
            )));
        }
        let tls_policy = TlsPolicy::parse(
            &s.string("cipher-suites", ""),
            &s.string("tls-min-version", ""),
            &s.string("tls-max-version", ""),
            s.number("self-signed-cert-validity", 1)?,
        )
        .map_err(ConfigError::new)?;
        let mut notices = notices;
        notices.extend(tls_policy.notice.clone());
        let client_security = s.transport_security(Port::Client, &listen_client_urls)?;
        let listen_metrics_urls = s.optional_listen_urls("listen-metrics-urls", "metrics", &client_security)?;
        let listen_client_http_urls = s.optional_listen_urls("listen-client-http-urls", "client http", &client_security)?;
        let peer_security = s.transport_security(Port::Peer, &listen_peer_urls)?;
        let bcrypt_cost = s.number("bcrypt-cost", 10)?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(ConfigError::new(format!(
                "invalid value {bcrypt_cost} for {}: bcrypt's cost is 4 to 31",
                s.origin("bcrypt-cost")
            )));
        }
        // Accepted for etcd's command lines; cairn always checkpoints leases.
        s.one_of("experimental-enable-lease-checkpoint", "true", &["true", "false"])?;
        Ok(Config {
            wal_dir: s.raw("wal-dir").filter(|d| !d.is_empty()).map(PathBuf::from),
            snapshot_count: s.number("snapshot-count", 100_000)?.max(1),
            heartbeat_interval,
            election_timeout,
            listen_peer_urls,
            listen_client_urls,
            listen_metrics_urls,
            listen_client_http_urls,
            enable_grpc_gateway: !s.is_set("enable-grpc-gateway") || s.boolean("enable-grpc-gateway")?,
            metrics_extensive: s.one_of("metrics", "basic", &["basic", "extensive"])? == "extensive",
            initial_corrupt_check: s.boolean("experimental-initial-corrupt-check")?
                || feature_gates(s)?.contains(&"InitialCorruptCheck"),
            // 3.6 drops the experimental- prefix; either spelling is taken.
            corrupt_check_time: Some(s.duration(s.spelling("corrupt-check-time", "experimental-corrupt-check-time"), Duration::ZERO)?).filter(|d| !d.is_zero()),
            compact_hash_check_time: (s.boolean("experimental-compact-hash-check-enabled")?
                || feature_gates(s)?.contains(&"CompactHashCheck"))
            .then(|| s.duration(s.spelling("compact-hash-check-time", "experimental-compact-hash-check-time"), Duration::from_secs(60)))
            .transpose()?
            .filter(|d| !d.is_zero()),
            advertise_client_urls,
            initial_advertise_peer_urls,
            bootstrap,
            initial_cluster_state,
            initial_cluster_token: s.string("initial-cluster-token", "etcd-cluster"),
            quota_backend_bytes: if quota == 0 { 2 * 1024 * 1024 * 1024 } else { quota },
            memory_budget_bytes,
            max_request_bytes: s.number("max-request-bytes", 1_572_864)?,
            max_txn_ops: s.number("max-txn-ops", 128)?,
            // As etcd: zero keeps the default.
            watch_progress_notify_interval: Some(s.duration("experimental-watch-progress-notify-interval", DEFAULT_PROGRESS)?)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_PROGRESS),
            lease_checkpoint_interval: Some(s.duration("experimental-lease-checkpoint-interval", DEFAULT_CHECKPOINT)?)
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_CHECKPOINT),
            auto_compaction: auto_compaction(s)?,
            strict_reconfig_check: s.one_of("strict-reconfig-check", "true", &["true", "false"])? == "true",
            // etcd 3.5 spells it --experimental-max-learners.
            max_learners: s.number(s.spelling("max-learners", "experimental-max-learners"), 1)? as usize,
            log_level: s.one_of("log-level", "info", &["debug", "info", "warn", "error", "panic", "fatal"])?,
            logger: s.one_of("logger", "zap", &["zap", "capnslog"])?,
            client_security,
            peer_security,
            tls_policy,
            auth_token: s.string("auth-token", "simple"),
            // As etcd: zero keeps the default.
            auth_token_ttl: Duration::from_secs(Some(s.number("auth-token-ttl", 300)?).filter(|t| *t > 0).unwrap_or(300)),
            bcrypt_cost: bcrypt_cost as u32,
            name,
            data_dir,
            notices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(parse_go_duration("10m"), ms(600_000));
        assert_eq!(parse_go_duration("1m30s"), ms(90_000));
        assert_eq!(parse_go_duration("500ms"), ms(500));
        assert_eq!(parse_go_duration("1.5s"), ms(1500));
        assert_eq!(parse_go_duration("0"), ms(0));
        for bad in ["", "10", "s", "1x", "-1s", "1s2"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
