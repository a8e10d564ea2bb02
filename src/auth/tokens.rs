//! Auth tokens as etcd's `--auth-token` chooses them: simple tokens (random
//! strings every member knows from the Raft log, dropped after
//! `--auth-token-ttl` seconds unused, gone on restart) or signed JWTs
//! (stateless: any member with the key can check one).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use crate::store::types::KvError;

/// `--auth-token`, parsed.
pub enum TokenKind {
    Simple,
    Jwt(Jwt),
}

impl TokenKind {
    /// etcd's spelling: `simple`, or `jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…]`.
    pub fn parse(spec: &str) -> Result<TokenKind, String> {
        let mut parts = spec.split(',').map(str::trim);
        match parts.next() {
            Some("simple") if parts.next().is_none() => Ok(TokenKind::Simple),
            Some("jwt") => Jwt::from_options(parts).map(TokenKind::Jwt),
            _ => Err(format!("unknown token type {spec:?}: expected simple or jwt,…")),
        }
    }
}

/// A random simple token in etcd's shape: 16 letters, a dot and a number
/// (the suffix keeps two tokens made at once apart).
pub fn new_simple_token(suffix: u64) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let random: String = (0..16).map(|_| *LETTERS.choose(&mut rng).expect("letters") as char).collect();
    format!("{random}.{suffix}")
}

/// The simple tokens this member knows: token → (user, last use).
pub struct SimpleTokens {
    ttl_millis: AtomicU64,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// etcd's `--auth-token-ttl` default.
pub const DEFAULT_SIMPLE_TTL: Duration = Duration::from_secs(300);

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens { ttl_millis: AtomicU64::new(ttl.as_millis() as u64), tokens: Mutex::new(HashMap::new()) }
    }

    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_millis.store(ttl.as_millis() as u64, Ordering::Relaxed);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_millis.load(Ordering::Relaxed))
    }

    pub fn insert(&self, token: String, user: String) {
        let (now, ttl) = (Instant::now(), self.ttl());
        let mut tokens = self.tokens.lock().expect("token table lock");
        tokens.retain(|_, (_, used)| now.duration_since(*used) < ttl);
        tokens.insert(token, (user, now));
    }

    /// The token's user, when it is known and not expired; a use keeps it alive.
    pub fn user(&self, token: &str) -> Option<String> {
        let (now, ttl) = (Instant::now(), self.ttl());
        let mut tokens = self.tokens.lock().expect("token table lock");
        match tokens.get_mut(token) {
            Some((user, used)) if now.duration_since(*used) < ttl => {
                *used = now;
                Some(user.clone())
            }
            Some(_) => {
                tokens.remove(token);
                None
            }
            None => None,
        }
    }

    /// Forgets the tokens of `user` (deleted, or its password changed).
    pub fn forget_user(&self, user: &str) {
        self.tokens.lock().expect("token table lock").retain(|_, (holder, _)| holder != user);
    }

    pub fn clear(&self) {
        self.tokens.lock().expect("token table lock").clear();
    }
}

/// The claims etcd's JWTs carry.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

pub struct Jwt {
    algorithm: Algorithm,
    /// None when only a public key was given: this member checks tokens but cannot sign.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

impl Jwt {
    fn from_options<'a>(options: impl Iterator<Item = &'a str>) -> Result<Jwt, String> {
        let (mut public, mut private, mut method, mut ttl) = (None, None, None, DEFAULT_JWT_TTL);
        for option in options.filter(|o| !o.is_empty()) {
            let (name, value) = option.split_once('=').ok_or_else(|| format!("jwt option {option:?} is not name=value"))?;
            match name {
                "pub-key" => public = Some(value.to_string()),
                "priv-key" => private = Some(value.to_string()),
                "sign-method" => method = Some(value.to_string()),
                "ttl" => {
                    ttl = crate::config::parse_go_duration(value)
                        .ok_or_else(|| format!("jwt ttl {value:?} is not a duration such as 5m"))?
                }
                _ => return Err(format!("unknown jwt option {name:?}")),
            }
        }
        let method = method.ok_or("jwt needs sign-method")?;
        let algorithm: Algorithm = method.parse().map_err(|_| format!("jwt sign-method {method:?} is not supported"))?;
        let read = |path: &str| std::fs::read(path).map_err(|e| format!("cannot read jwt key {path}: {e}"));
        let hmac = matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        let (signing, verifying) = if hmac {
            let secret = read(private.as_deref().ok_or("jwt with an HMAC sign-method needs priv-key")?)?;
            (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
        } else {
            let public = read(public.as_deref().ok_or("jwt needs pub-key")?)?;
            let verifying = decoding_key(algorithm, &public).map_err(|e| format!("jwt pub-key: {e}"))?;
            let signing = match private {
                Some(path) => Some(encoding_key(algorithm, &read(&path)?).map_err(|e| format!("jwt priv-key: {e}"))?),
                None => None,
            };
            (signing, verifying)
        };
        Ok(Jwt { algorithm, signing, verifying, ttl })
    }

    pub fn sign(&self, username: &str, revision: u64) -> Result<String, KvError> {
        let key = self.signing.as_ref().ok_or_else(|| KvError::Internal("auth: no jwt private key to sign with".into()))?;
        let exp = jsonwebtoken::get_current_timestamp() + self.ttl.as_secs();
        let claims = Claims { username: username.to_string(), revision, exp };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).map_err(|e| KvError::Internal(format!("auth: {e}")))
    }

    /// The token's user and the auth revision it was made at, when its
    /// signature holds and it has not expired.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

fn decoding_key(algorithm: Algorithm, pem: &[u8]) -> jsonwebtoken::errors::Result<DecodingKey> {
    match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    }
}

fn encoding_key(algorithm: Algorithm, pem: &[u8]) -> jsonwebtoken::errors::Result<EncodingKey> {
    match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_expire_unused_and_live_while_used() {
        let tokens = SimpleTokens::new(Duration::from_millis(300));
        tokens.insert("t".into(), "u".into());
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(tokens.user("t").as_deref(), Some("u"));
        }
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(tokens.user("t"), None);
        tokens.insert("a".into(), "u".into());
        tokens.insert("b".into(), "v".into());
        tokens.forget_user("u");
        assert_eq!((tokens.user("a"), tokens.user("b").as_deref()), (None, Some("v")));
    }

    #[test]
    fn token_kinds_parse_as_etcd_spells_them() {
        assert!(matches!(TokenKind::parse("simple"), Ok(TokenKind::Simple)));
        assert!(TokenKind::parse("jwt").is_err(), "a jwt needs a sign method");
        let error = |spec: &str| TokenKind::parse(spec).err().unwrap_or_else(|| panic!("{spec} parsed"));
        assert!(error("jwt,sign-method=RS256,pub-key=/nonexistent").contains("/nonexistent"));
        assert!(error("jwt,sign-method=XX1").contains("XX1"));
        assert!(TokenKind::parse("opaque").is_err());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"shared secret").unwrap();
        let TokenKind::Jwt(jwt) = TokenKind::parse(&format!("jwt,priv-key={},sign-method=HS256,ttl=1m", secret.display())).unwrap()
        else {
            panic!("a jwt")
        };
        let token = jwt.sign("alice", 7).unwrap();
        assert_eq!(jwt.verify(&token), Some(("alice".into(), 7)));
        let mut forged = token.clone();
        forged.push('x');
        assert_eq!(jwt.verify(&forged), None);
    }
}
