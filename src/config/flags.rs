//! Command-line flags, parsed the way etcd's Go flag package accepts them:
//! `--name v`, `--name=v`, `-name v`, `-name=v`.

use figment::value::{Dict, Value};

use super::ConfigError;

/// Flags cairn serves (each takes a value), by etcd's names.
pub const SUPPORTED: &[&str] = &[
    "name",
    "data-dir",
    "wal-dir",
    "snapshot-count",
    "heartbeat-interval",
    "election-timeout",
    "listen-peer-urls",
    "listen-client-urls",
    "advertise-client-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "discovery",
    "discovery-proxy",
    "discovery-fallback",
    "discovery-srv",
    "discovery-srv-name",
    "initial-cluster-size",
    "discovery-token",
    "discovery-endpoints",
    "discovery-user",
    "discovery-password",
    "quota-backend-bytes",
    "memory-budget-bytes",
    "max-request-bytes",
    "max-txn-ops",
    "experimental-watch-progress-notify-interval",
    "experimental-lease-checkpoint-interval",
    "experimental-enable-lease-checkpoint",
    "strict-reconfig-check",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "max-learners",
    "experimental-max-learners",
    "log-level",
    "logger",
    "config-file",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "client-crl-file",
    "auto-tls",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
    "self-signed-cert-validity",
    "auth-token",
    "auth-token-ttl",
    "bcrypt-cost",
    "listen-metrics-urls",
    "listen-client-http-urls",
    "enable-grpc-gateway",
    "metrics",
    "experimental-initial-corrupt-check",
    "experimental-corrupt-check-time",
    "corrupt-check-time",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "compact-hash-check-time",
    "feature-gates",
];

/// Go boolean flags: a bare `--name` means true, and only `--name=false` sets false.
pub const BOOLEAN: &[&str] = &[
    "experimental-enable-lease-checkpoint",
    "strict-reconfig-check",
    "client-cert-auth",
    "auto-tls",
    "peer-client-cert-auth",
    "peer-auto-tls",
    "enable-grpc-gateway",
    "experimental-initial-corrupt-check",
    "experimental-compact-hash-check-enabled",
];

/// etcd flags that cairn does not serve yet: named in the error rather than
/// silently ignored.
pub const UNSUPPORTED: &[&str] = &[
    "cors", "debug",
    "enable-log-rotation", "enable-pprof", "enable-v2", "force-new-cluster",
    "grpc-keepalive-interval", "grpc-keepalive-min-time", "grpc-keepalive-timeout", "host-whitelist",
    "log-outputs", "log-rotation-config-json", "log-package-levels",
    "max-concurrent-streams", "max-snapshots", "max-wals", "pre-vote", "proxy", "proxy-dial-timeout",
    "proxy-failure-wait", "proxy-read-timeout", "proxy-refresh-interval", "proxy-write-timeout",
    "socket-reuse-address", "socket-reuse-port", "unsafe-no-fsync", "v2-deprecation", "client-cert-file",
    "client-key-file", "peer-client-cert-file", "peer-client-key-file", "peer-skip-client-san-verification",
    "initial-election-tick-advance", "enable-distributed-tracing",
    "discovery-dial-timeout", "discovery-request-timeout", "discovery-keepalive-time",
    "discovery-keepalive-timeout", "discovery-insecure-transport", "discovery-insecure-skip-tls-verify",
    "discovery-cert", "discovery-key", "discovery-cacert",
];

/// A setting a config file or an `ETCD_*` variable may carry: any supported
/// flag but `config-file`, which says where the file is.
pub fn is_layered_setting(key: &str) -> bool {
    SUPPORTED.contains(&key) && key != "config-file"
}

pub fn is_etcd_unsupported(key: &str) -> bool {
    !SUPPORTED.contains(&key) && (UNSUPPORTED.contains(&key) || key.starts_with("experimental-"))
}

/// What the command line asks for.
pub enum Invocation {
    Serve(Dict),
    Version,
}

pub fn parse(args: &[String]) -> Result<Invocation, ConfigError> {
    let mut dict = Dict::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')).filter(|b| !b.is_empty()) else {
            return Err(ConfigError::new(format!("'{arg}' is not a valid flag")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name == "version" {
            return Ok(Invocation::Version);
        }
        if is_etcd_unsupported(name) {
            return Err(ConfigError::new(format!("flag --{name} is an etcd flag that cairn does not support yet")));
        }
        if !SUPPORTED.contains(&name) {
            return Err(ConfigError::new(format!("unknown flag: --{name}")));
        }
        let value = match inline {
            Some(v) => v,
            None if BOOLEAN.contains(&name) => "true".to_string(),
            None => {
                i += 1;
                args.get(i).cloned().ok_or_else(|| ConfigError::new(format!("flag needs an argument: --{name}")))?
            }
        };
        dict.insert(name.to_string(), Value::from(value));
        i += 1;
    }
    Ok(Invocation::Serve(dict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn accepts_go_flag_spellings() {
        let Ok(Invocation::Serve(d)) = parse(&args("--name a -data-dir=x --snapshot-count 5 -max-txn-ops 7")) else {
            panic!("should parse")
        };
        assert_eq!(d["name"].as_str(), Some("a"));
        assert_eq!(d["data-dir"].as_str(), Some("x"));
        assert_eq!(d["snapshot-count"].as_str(), Some("5"));
        assert_eq!(d["max-txn-ops"].as_str(), Some("7"));
    }

    #[test]
    fn rejects_by_name() {
        let err = |s| match parse(&args(s)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{s} should fail"),
        };
        assert!(err("--enable-v2=true").contains("--enable-v2 is an etcd flag that cairn does not support yet"));
        assert!(err("--experimental-foo 1").contains("--experimental-foo"));
        assert!(err("--bogus 1").contains("unknown flag: --bogus"));
        assert!(err("--name").contains("flag needs an argument: --name"));
        assert!(err("stray").contains("'stray' is not a valid flag"));
    }
}
