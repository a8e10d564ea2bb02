//! etcd's auth: users, roles and key permissions (the replicated `AuthState`),
//! passwords, tokens, and who a request comes from.
//!
//! Changes to users and roles go through the Raft log and are checked when
//! applied, so every member agrees; a write from a client carries its user
//! through the log and is checked against the state as it is when the write
//! is applied, so a permission revoked just before cannot be used just after.
//! Reads are checked on the member that serves them, after their read barrier.

mod ranges;
pub mod state;
pub mod tokens;

use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use state::{Access, AuthChange, AuthState, Permission, ROOT};
use tokens::{SimpleTokens, TokenKind, DEFAULT_SIMPLE_TTL};

use crate::store::types::KvError;

/// Who a request comes from, as far as auth is concerned. `user` is None
/// when auth is off, or on and the request names nobody.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<String>,
}

impl Caller {
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// This member's copy of the auth state, kept beside the store's record of
/// it so that checks never read the database, and the simple tokens the
/// Raft log has handed out.
pub struct Registry {
    state: RwLock<Arc<AuthState>>,
    simple_tokens: SimpleTokens,
}

impl Registry {
    pub fn new(state: AuthState) -> Registry {
        Registry { state: RwLock::new(Arc::new(state)), simple_tokens: SimpleTokens::new(DEFAULT_SIMPLE_TTL) }
    }

    pub fn state(&self) -> Arc<AuthState> {
        self.state.read().expect("auth state lock").clone()
    }

    /// Replaces the state wholesale (a snapshot from the leader, a restore).
    pub fn replace(&self, state: AuthState) {
        *self.state.write().expect("auth state lock") = Arc::new(state);
    }

    /// Takes in an applied change and the state it made.
    pub fn applied(&self, change: &AuthChange, state: AuthState) {
        match change {
            AuthChange::Authenticate { user, token } => self.simple_tokens.insert(token.clone(), user.clone()),
            AuthChange::UserDelete { name } | AuthChange::UserChangePassword { name, .. } => {
                self.simple_tokens.forget_user(name)
            }
            AuthChange::Disable => self.simple_tokens.clear(),
            _ => {}
        }
        self.replace(state);
    }

    pub fn set_simple_token_ttl(&self, ttl: Duration) {
        self.simple_tokens.set_ttl(ttl);
    }

    fn simple_token_user(&self, token: &str) -> Option<String> {
        self.simple_tokens.user(token)
    }
}

/// How this member makes and checks tokens and hashes passwords.
pub struct Authenticator {
    pub tokens: TokenKind,
    pub bcrypt_cost: u32,
}

impl Authenticator {
    /// The caller of a request that brought `token` (etcd's `token`
    /// metadata), or over a connection whose verified client certificate
    /// names `common_name`. A token wins over the certificate, as in etcd.
    pub fn identify(
        &self,
        registry: &Registry,
        token: Option<&str>,
        common_name: Option<String>,
    ) -> Result<Caller, KvError> {
        let state = registry.state();
        if !state.enabled {
            return Ok(Caller::default());
        }
        let Some(token) = token else { return Ok(Caller { user: common_name }) };
        let user = match &self.tokens {
            TokenKind::Simple => registry.simple_token_user(token).ok_or(KvError::InvalidAuthToken)?,
            TokenKind::Jwt(jwt) => {
                let (user, revision) = jwt.verify(token).ok_or(KvError::InvalidAuthToken)?;
                if revision < state.revision {
                    // Auth changed since (a password, a role): the client must sign in again.
                    return Err(KvError::AuthOldRevision);
                }
                user
            }
        };
        Ok(Caller { user: Some(user) })
    }

    pub fn hash_password(&self, password: &str) -> Result<String, KvError> {
        bcrypt::hash(password, self.bcrypt_cost).map_err(|e| KvError::Internal(format!("auth: {e}")))
    }
}

/// True when `password` is the one `hash` was made from.
pub fn password_matches(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}
