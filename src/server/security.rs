//! The member's TLS, made ready from its configuration before anything else
//! starts (the peers are asked about the cluster over it): a missing or bad
//! certificate stops the member with one line naming the flag.

use std::sync::Arc;

use crate::auth::tokens::TokenKind;
use crate::auth::Authenticator;
use crate::config::{Bootstrap, Config, ConfigError, ListenUrl};
use crate::raft::dial::Dialer;
use crate::tls::{Port, PortTls, ServerTls, TransportSecurity};

pub struct Security {
    pub client: Option<Arc<ServerTls>>,
    pub peer: Option<Arc<ServerTls>>,
    /// Dials the other members, with the peer certificate for https URLs.
    pub dialer: Dialer,
}

/// The hosts an auto TLS certificate names: those of the port's URLs.
fn hosts(listen: &[ListenUrl], advertised: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = listen
        .iter()
        .map(|l| l.url.as_str())
        .chain(advertised.iter().map(String::as_str))
        .filter_map(|u| url::Url::parse(u).ok()?.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

pub fn prepare(config: &Config) -> Result<Security, ConfigError> {
    let port = |port: Port, security: &TransportSecurity, hosts: Vec<String>| {
        PortTls::prepare(port, security, &config.tls_policy, &config.data_dir, &hosts).map_err(ConfigError::new)
    };
    let serve = |tls: Option<PortTls>| tls.map(PortTls::into_server).transpose().map_err(ConfigError::new);
    // Each port's files are checked before the next port's auto TLS
    // certificate is made: a bad client certificate leaves nothing on disk.
    let client = serve(port(
        Port::Client,
        &config.client_security,
        hosts(&config.listen_client_urls, &config.advertise_client_urls),
    )?)?;
    let peer_tls = port(
        Port::Peer,
        &config.peer_security,
        hosts(&config.listen_peer_urls, &config.initial_advertise_peer_urls),
    )?;
    let peer = serve(peer_tls.clone())?;
    let bootstrap_https = match &config.bootstrap {
        Bootstrap::Static(cluster) => cluster.contains("https://"),
        // The members found are dialed as this member advertises itself:
        // an `_etcd-server-ssl` record must match an https advertised URL.
        Bootstrap::Discovery { .. } | Bootstrap::DiscoveryV3 { .. } | Bootstrap::Srv { .. } => false,
    };
    let dials_https = bootstrap_https || config.initial_advertise_peer_urls.iter().any(|u| u.starts_with("https://"));
    let dial = match peer_tls.map(PortTls::into_dialer) {
        Some(Ok(dial)) => Some(dial),
        Some(Err(e)) if dials_https => return Err(ConfigError::new(e)),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "this member cannot dial https peer URLs");
            None
        }
        None if dials_https => {
            return Err(ConfigError::new(
                "the peer URLs are https: this member needs --peer-cert-file and --peer-key-file (or --peer-auto-tls) \
                 and --peer-trusted-ca-file to reach its peers",
            ))
        }
        None => None,
    };
    Ok(Security { client, peer, dialer: Dialer::new(dial) })
}

/// How the member signs clients in: `--auth-token` (its JWT keys are read
/// here, so a bad one stops the member at start) and `--bcrypt-cost`.
pub fn authenticator(config: &Config) -> Result<Authenticator, ConfigError> {
    let tokens = TokenKind::parse(&config.auth_token).map_err(|e| ConfigError::new(format!("invalid --auth-token: {e}")))?;
    Ok(Authenticator { tokens, bcrypt_cost: config.bcrypt_cost })
}
