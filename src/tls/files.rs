//! PEM files as etcd users make them (cfssl, openssl, kubeadm): certificate
//! chains, RSA/ECDSA keys in PKCS#1, PKCS#8 or SEC1, CA bundles and CRLs.
//! Every error names the flag whose file it is.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;

pub fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{flag} {}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}

pub fn private_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(e)))
}

pub fn roots(flag: &str, path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(flag, path)? {
        roots.add(cert).map_err(|e| format!("{flag} {}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The serial numbers the CRLs in a PEM file revoke. As etcd, only serials
/// count: the lists are the operator's own files, trusted as the CA file is,
/// and version 1 lists (what `openssl ca -gencrl` makes by default) are read
/// as well as version 2.
pub fn revoked_serials(flag: &str, path: &Path) -> Result<HashSet<Vec<u8>>, String> {
    let lists: Vec<CertificateRevocationListDer<'static>> = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("{flag} {}: {}", path.display(), pem_error(e)))?;
    let mut serials = HashSet::new();
    for der in &lists {
        let (_, list) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| format!("{flag} {}: not a certificate revocation list: {e}", path.display()))?;
        serials.extend(list.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()));
    }
    Ok(serials)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// What a file looked like when it was last read: a change means read again.
pub type Stamp = Option<(SystemTime, u64)>;

pub fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = certificates("--cert-file", &missing).unwrap_err();
        assert!(err.starts_with("--cert-file ") && err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        assert!(certificates("--cert-file", &empty).unwrap_err().contains("no PEM"));
        assert!(private_key("--key-file", &empty).unwrap_err().starts_with("--key-file"));
    }
}
