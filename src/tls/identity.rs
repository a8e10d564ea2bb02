//! Certificate checks beyond the chain: etcd's `--peer-cert-allowed-cn` and
//! `--peer-cert-allowed-hostname` (applied to the certificates of both ends
//! of a peer connection, as etcd does), the common name a client certificate
//! names its user with, and the no-verification mode of `--auto-tls` peers
//! and `--insecure-skip-tls-verify`.

use std::collections::HashSet;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_name, WebPkiServerVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Allowed common names and host names; empty lists allow anyone the CA signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedIdentity {
    pub common_names: Vec<String>,
    pub hostnames: Vec<String>,
}

impl AllowedIdentity {
    pub fn is_open(&self) -> bool {
        self.common_names.is_empty() && self.hostnames.is_empty()
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        if self.is_open() {
            return Ok(());
        }
        if let Some(cn) = common_name(end_entity) {
            if self.common_names.contains(&cn) {
                return Ok(());
            }
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        for host in &self.hostnames {
            let Ok(name) = ServerName::try_from(host.as_str()) else { continue };
            if verify_server_name(&parsed, &name).is_ok() {
                return Ok(());
            }
        }
        Err(Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(NotAllowed {
            common_name: common_name(end_entity).unwrap_or_default(),
        })))))
    }
}

#[derive(thiserror::Error)]
#[error("certificate (CN={common_name:?}) matches neither the allowed common names nor the allowed host names")]
struct NotAllowed {
    common_name: String,
}

/// rustls logs a certificate error's cause with Debug: it reads as Display.
impl std::fmt::Debug for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A client verifier that also applies an `AllowedIdentity`.
#[derive(Debug)]
pub struct AllowedClients {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub allowed: AllowedIdentity,
    /// Serial numbers the CRL file revokes.
    pub revoked: HashSet<Vec<u8>>,
}

impl ClientCertVerifier for AllowedClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if !self.revoked.is_empty() {
            let (_, parsed) = x509_parser::parse_x509_certificate(end_entity.as_ref())
                .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if self.revoked.contains(parsed.raw_serial()) {
                return Err(Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        self.allowed.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// How a dialing member or `ctl` checks the server's certificate.
#[derive(Debug)]
pub enum ServerCheck {
    /// Chain to these roots, name as dialed, then the allowed identity.
    Verified(Arc<WebPkiServerVerifier>, AllowedIdentity),
    /// Nothing checked (`--peer-auto-tls`, `--insecure-skip-tls-verify`);
    /// handshake signatures still are, so the session key is the server's.
    Unchecked(Arc<CryptoProvider>),
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self {
            ServerCheck::Verified(inner, allowed) => {
                let verified = inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
                allowed.check(end_entity)?;
                Ok(verified)
            }
            ServerCheck::Unchecked(_) => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match self {
            ServerCheck::Verified(inner, _) => inner.verify_tls12_signature(message, cert, dss),
            ServerCheck::Unchecked(p) => verify_tls12_signature(message, cert, dss, &p.signature_verification_algorithms),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        match self {
            ServerCheck::Verified(inner, _) => inner.verify_tls13_signature(message, cert, dss),
            ServerCheck::Unchecked(p) => verify_tls13_signature(message, cert, dss, &p.signature_verification_algorithms),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match self {
            ServerCheck::Verified(inner, _) => inner.supported_verify_schemes(),
            ServerCheck::Unchecked(p) => p.signature_verification_algorithms.supported_schemes(),
        }
    }
}
