//! What `--cipher-suites`, `--tls-min-version`, `--tls-max-version` and
//! `--self-signed-cert-validity` allow, as one rustls crypto provider and a
//! list of protocol versions shared by every TLS config of the member.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::SupportedProtocolVersion;

#[derive(Debug, Clone)]
pub struct TlsPolicy {
    pub provider: Arc<CryptoProvider>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// Years a certificate made for `--auto-tls` is valid.
    pub self_signed_validity_years: u32,
    /// Something the operator should know (TLS 1.0/1.1 asked for), for the log.
    pub notice: Option<String>,
}

impl Default for TlsPolicy {
    fn default() -> TlsPolicy {
        TlsPolicy::parse("", "", "", 1).expect("the defaults are valid")
    }
}

/// Go's TLS version names as etcd's flags take them, in order; rustls
/// speaks the last two only.
const VERSION_NAMES: [&str; 4] = ["TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3"];

fn version_rank(flag: &str, name: &str) -> Result<Option<usize>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    VERSION_NAMES
        .iter()
        .position(|v| *v == name)
        .map(Some)
        .ok_or_else(|| format!("--{flag}: unexpected TLS version {name:?} (must be one of: TLS1.2, TLS1.3)"))
}

impl TlsPolicy {
    /// `cipher_suites` is etcd's comma-separated list of Go names; empty
    /// versions mean Go's defaults (TLS 1.2 up to TLS 1.3).
    pub fn parse(cipher_suites: &str, min: &str, max: &str, validity_years: u64) -> Result<TlsPolicy, String> {
        let min_rank = version_rank("tls-min-version", min)?;
        let max_rank = version_rank("tls-max-version", max)?;
        if let (Some(lo), Some(hi)) = (min_rank, max_rank) {
            if lo > hi {
                return Err(format!("--tls-min-version {min} is greater than --tls-max-version {max}"));
            }
        }
        if max_rank.is_some_and(|hi| hi < 2) {
            return Err(format!("--tls-max-version {max}: cairn speaks TLS1.2 and TLS1.3 only"));
        }
        let notice = min_rank
            .filter(|lo| *lo < 2)
            .map(|_| format!("--tls-min-version {min}: cairn never offers TLS versions below TLS1.2"));
        let lo = min_rank.unwrap_or(2).max(2);
        let hi = max_rank.unwrap_or(3);
        let versions: Vec<&'static SupportedProtocolVersion> =
            [&rustls::version::TLS12, &rustls::version::TLS13][lo - 2..=hi - 2].to_vec();

        let mut provider = rustls::crypto::ring::default_provider();
        let names: Vec<&str> = cipher_suites.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        if !names.is_empty() {
            if lo == 3 {
                return Err("--cipher-suites cannot be set when only TLS1.3 is allowed: TLS1.3's suites are fixed".into());
            }
            let mut chosen: Vec<_> = provider.cipher_suites.iter().filter(|s| s.version() == &rustls::version::TLS13).copied().collect();
            for name in &names {
                let found = provider.cipher_suites.iter().find(|s| {
                    let rustls_name = format!("{:?}", s.suite());
                    rustls_name == *name || rustls_name == format!("{name}_SHA256")
                });
                match found {
                    Some(s) if s.version() == &rustls::version::TLS13 => {}
                    Some(s) => chosen.push(*s),
                    None => {
                        let supported: Vec<String> = provider
                            .cipher_suites
                            .iter()
                            .filter(|s| s.version() == &rustls::version::TLS12)
                            .map(|s| format!("{:?}", s.suite()))
                            .collect();
                        return Err(format!(
                            "--cipher-suites: unexpected TLS cipher suite {name:?} (cairn supports {})",
                            supported.join(", ")
                        ));
                    }
                }
            }
            provider.cipher_suites = chosen;
        }
        let self_signed_validity_years = match validity_years {
            0 => 1,
            y => u32::try_from(y).ok().filter(|y| *y <= 100).ok_or_else(|| {
                format!("--self-signed-cert-validity {y}: expected a number of years up to 100")
            })?,
        };
        Ok(TlsPolicy { provider: Arc::new(provider), versions, self_signed_validity_years, notice })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_suites_follow_the_flags() {
        let p = TlsPolicy::parse("", "", "", 0).unwrap();
        assert_eq!(p.versions.len(), 2);
        assert_eq!(p.self_signed_validity_years, 1);
        let p = TlsPolicy::parse("", "TLS1.3", "", 1).unwrap();
        assert_eq!(p.versions, vec![&rustls::version::TLS13]);
        let p = TlsPolicy::parse("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "", "TLS1.2", 1)
            .unwrap();
        let tls12: Vec<String> = p
            .provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(tls12, ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"]);
        assert!(TlsPolicy::parse("", "TLS1.1", "", 1).unwrap().notice.is_some());
    }

    #[test]
    fn bad_values_are_named() {
        let err = |s: &str, min: &str, max: &str| TlsPolicy::parse(s, min, max, 1).unwrap_err();
        assert!(err("", "TLS9", "").contains("unexpected TLS version \"TLS9\""));
        assert!(err("", "TLS1.3", "TLS1.2").contains("greater than"));
        assert!(err("", "", "TLS1.1").contains("TLS1.2 and TLS1.3 only"));
        assert!(err("TLS_RSA_WITH_RC4_128_SHA", "", "").contains("unexpected TLS cipher suite"));
        assert!(err("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS1.3", "").contains("only TLS1.3"));
    }
}
