//! TLS on the client and peer ports (rustls with ring), from etcd's flags:
//! server configs for the listeners, the client config members dial each
//! other (and `cairn ctl` dials a member) with, self-signed certificates for
//! auto TLS, and the accept loop that logs etcd's "rejected connection".
//! Certificate files are read again when they change, so renewed
//! certificates take effect on the next connection without a restart.

mod accept;
mod auto;
mod files;
pub mod identity;
mod policy;
mod stream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

pub use accept::{connections, ConnInfo};
pub use identity::AllowedIdentity;
pub use policy::TlsPolicy;
pub use stream::Transport;

use files::Stamp;
use identity::{AllowedClients, ServerCheck};

/// Which port a setting is for: it picks the flag names in messages and
/// the auto TLS directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Client,
    Peer,
    /// `cairn ctl` and `cairn healthcheck`, with etcdctl's flags.
    Tool,
}

impl Port {
    /// etcd's flag for `name` on this port: `--cert-file`, `--peer-cert-file`.
    pub fn flag(self, name: &str) -> String {
        match self {
            // etcd spells the client port's CRL flag with its port's name.
            Port::Client if name == "crl-file" => "--client-crl-file".into(),
            Port::Client => format!("--{name}"),
            Port::Peer => format!("--peer-{name}"),
            Port::Tool => match name {
                "cert-file" => "--cert".into(),
                "key-file" => "--key".into(),
                "trusted-ca-file" => "--cacert".into(),
                name => format!("--{name}"),
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Peer => "peer",
            Port::Tool => "tool",
        }
    }
}

/// One port's transport security as etcd's flags (or the config file's
/// `client-transport-security` / `peer-transport-security`) give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportSecurity {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub crl_file: Option<PathBuf>,
    pub auto_tls: bool,
    pub allowed: AllowedIdentity,
}

impl TransportSecurity {
    /// Whether the port will have a certificate to serve https with.
    pub fn has_certificate(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.auto_tls
    }
}

/// A port's TLS material, ready to build rustls configs from.
#[derive(Debug, Clone)]
pub struct PortTls {
    port: Port,
    security: TransportSecurity,
    policy: TlsPolicy,
    /// Leave the other end's certificate unchecked: auto TLS peers, or
    /// `--insecure-skip-tls-verify`.
    skip_verify: bool,
}

impl PortTls {
    /// The port's TLS, with auto TLS certificates made under `data_dir` for
    /// `hosts`; None when the port has no certificate. Its files are read and
    /// checked when a config is first built from it (`into_server`,
    /// `into_dialer`), so a bad one stops the member at start.
    pub fn prepare(
        port: Port,
        security: &TransportSecurity,
        policy: &TlsPolicy,
        data_dir: &Path,
        hosts: &[String],
    ) -> Result<Option<PortTls>, String> {
        let mut security = security.clone();
        let mut skip_verify = false;
        if security.cert_file.is_none() && security.key_file.is_none() {
            if !security.auto_tls {
                return Ok(None);
            }
            let dir = data_dir.join("fixtures").join(port.name());
            let (cert, key) = auto::self_signed(&dir, hosts, policy.self_signed_validity_years)?;
            security.cert_file = Some(cert);
            security.key_file = Some(key);
            skip_verify = true;
        } else if security.auto_tls {
            tracing::warn!("ignoring {} since {} is given", port.flag("auto-tls"), port.flag("cert-file"));
        }
        Ok(Some(PortTls { port, security, policy: policy.clone(), skip_verify }))
    }

    /// TLS for a client tool (`cairn ctl`, `cairn healthcheck`): etcdctl's
    /// `--cacert`, `--cert`, `--key` and `--insecure-skip-tls-verify`.
    pub fn for_tool(cacert: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>, skip_verify: bool) -> Result<PortTls, String> {
        if cacert.is_none() && !skip_verify {
            return Err("https endpoints need --cacert (or --insecure-skip-tls-verify)".into());
        }
        let security = TransportSecurity { cert_file: cert, key_file: key, trusted_ca_file: cacert, ..Default::default() };
        Ok(PortTls { port: Port::Tool, security, policy: TlsPolicy::default(), skip_verify })
    }

    fn flag(&self, name: &str) -> String {
        self.port.flag(name)
    }

    /// The certificate chain and key this end presents, if any.
    fn identity(&self) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
        let s = &self.security;
        match (&s.cert_file, &s.key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                Ok(Some((files::certificates(&self.flag("cert-file"), cert)?, files::private_key(&self.flag("key-file"), key)?)))
            }
            (Some(_), None) => Err(format!("{} is given without {}", self.flag("cert-file"), self.flag("key-file"))),
            (None, Some(_)) => Err(format!("{} is given without {}", self.flag("key-file"), self.flag("cert-file"))),
        }
    }

    /// etcd requires and verifies client certificates when a trusted CA is
    /// given, with or without `--client-cert-auth`.
    fn client_verifier(&self) -> Result<Option<Arc<dyn ClientCertVerifier>>, String> {
        let s = &self.security;
        let Some(ca) = &s.trusted_ca_file else {
            if s.client_cert_auth && !self.skip_verify {
                return Err(format!("{} needs {}", self.flag("client-cert-auth"), self.flag("trusted-ca-file")));
            }
            return Ok(None);
        };
        let roots = files::roots(&self.flag("trusted-ca-file"), ca)?;
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.policy.provider.clone());
        let verifier = builder.build().map_err(|e| format!("{} {}: {e}", self.flag("trusted-ca-file"), ca.display()))?;
        let revoked = match &s.crl_file {
            Some(crl) => files::revoked_serials(&self.flag("crl-file"), crl)?,
            None => HashSet::new(),
        };
        if s.allowed.is_open() && revoked.is_empty() {
            return Ok(Some(verifier));
        }
        Ok(Some(Arc::new(AllowedClients { inner: verifier, allowed: s.allowed.clone(), revoked })))
    }

    fn server_config(&self) -> Result<ServerConfig, String> {
        let (chain, key) = self.identity()?.ok_or_else(|| format!("{} is needed to serve TLS", self.flag("cert-file")))?;
        let builder = ServerConfig::builder_with_provider(self.policy.provider.clone())
            .with_protocol_versions(&self.policy.versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match self.client_verifier()? {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| self.pair_error(e))?;
        // Go's gRPC clients insist on h2; etcd's HTTP endpoints share the port.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = self.policy.provider.clone();
        let check = if self.skip_verify {
            ServerCheck::Unchecked(provider.clone())
        } else {
            let ca = self.security.trusted_ca_file.as_ref().ok_or_else(|| {
                format!("{} is needed to check the certificates of the members dialed", self.flag("trusted-ca-file"))
            })?;
            let roots = files::roots(&self.flag("trusted-ca-file"), ca)?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("{} {}: {e}", self.flag("trusted-ca-file"), ca.display()))?;
            ServerCheck::Verified(verifier, self.security.allowed.clone())
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.policy.versions)
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(check));
        let mut config = match self.identity()? {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| self.pair_error(e))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn pair_error(&self, e: rustls::Error) -> String {
        let (cert, key) = (self.flag("cert-file"), self.flag("key-file"));
        match e {
            rustls::Error::InconsistentKeys(_) => format!("{key} does not match the certificate of {cert}"),
            e => format!("{cert} / {key}: {e}"),
        }
    }

    fn stamps(&self) -> Vec<Stamp> {
        let s = &self.security;
        [&s.cert_file, &s.key_file, &s.trusted_ca_file, &s.crl_file].iter().filter_map(|f| f.as_deref()).map(files::stamp).collect()
    }
}

/// A rustls config built from a port's files, built again when they change.
pub struct Reloading<C> {
    tls: PortTls,
    build: fn(&PortTls) -> Result<C, String>,
    current: Mutex<(Vec<Stamp>, Arc<C>)>,
}

pub type ServerTls = Reloading<ServerConfig>;
pub type DialTls = Reloading<ClientConfig>;

impl<C> Reloading<C> {
    fn new(tls: PortTls, build: fn(&PortTls) -> Result<C, String>) -> Result<Arc<Reloading<C>>, String> {
        let stamps = tls.stamps();
        let config = Arc::new(build(&tls)?);
        Ok(Arc::new(Reloading { tls, build, current: Mutex::new((stamps, config)) }))
    }

    /// The config for a new connection: the files' current contents, or the
    /// last good ones while the files on disk cannot be used (say, a
    /// certificate replaced before its key).
    pub fn get(&self) -> Arc<C> {
        let stamps = self.tls.stamps();
        let mut current = self.current.lock().expect("TLS config lock poisoned");
        if current.0 != stamps {
            current.0 = stamps;
            match (self.build)(&self.tls) {
                Ok(config) => {
                    current.1 = Arc::new(config);
                    tracing::info!(port = self.tls.port.name(), "certificate files changed: reloaded");
                }
                Err(error) => tracing::warn!(
                    port = self.tls.port.name(),
                    %error,
                    "certificate files changed but cannot be used; keeping the previous ones"
                ),
            }
        }
        current.1.clone()
    }
}

impl PortTls {
    pub fn into_server(self) -> Result<Arc<ServerTls>, String> {
        Reloading::new(self, PortTls::server_config)
    }

    pub fn into_dialer(self) -> Result<Arc<DialTls>, String> {
        Reloading::new(self, PortTls::client_config)
    }
}

#[cfg(test)]
mod tests {
    use super::Port;

    #[test]
    fn flags_are_named_as_etcd_names_them() {
        assert_eq!(Port::Client.flag("crl-file"), "--client-crl-file");
        assert_eq!(Port::Peer.flag("crl-file"), "--peer-crl-file");
        assert_eq!(Port::Client.flag("client-cert-auth"), "--client-cert-auth");
        assert_eq!(Port::Peer.flag("client-cert-auth"), "--peer-client-cert-auth");
        assert_eq!(Port::Tool.flag("trusted-ca-file"), "--cacert");
    }
}
