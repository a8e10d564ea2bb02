//! `--auto-tls` / `--peer-auto-tls`: a self-signed certificate for the
//! port, kept in `<data-dir>/fixtures/{client,peer}/` as etcd keeps it, and
//! reused while it is there.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

/// The certificate and key files for a port, made now unless both exist.
pub fn self_signed(dir: &Path, hosts: &[String], validity_years: u32) -> Result<(PathBuf, PathBuf), String> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("auto TLS in {}: {what}: {e}", dir.display());
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| failed("certificate parameters", &e))?;
    params.distinguished_name.push(DnType::OrganizationName, "etcd");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(365 * i64::from(validity_years));
    let key = KeyPair::generate().map_err(|e| failed("generating a key", &e))?;
    let cert = params.self_signed(&key).map_err(|e| failed("signing", &e))?;
    std::fs::create_dir_all(dir).map_err(|e| failed("creating the directory", &e))?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(|e| failed("writing key.pem", &e))?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644).map_err(|e| failed("writing cert.pem", &e))?;
    tracing::info!(cert_file = %cert_path.display(), hosts = %hosts.join(","), "generated a self-signed certificate (auto TLS)");
    Ok((cert_path, key_path))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(data)?;
    file.sync_all()
}
