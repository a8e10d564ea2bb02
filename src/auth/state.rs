//! The replicated auth state: whether auth is on, users, roles and their
//! permissions, and the auth revision that every change moves. Changes come
//! through the Raft log (`AuthChange`) and are applied here the same way on
//! every member; checks read it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::ranges::{covers, holds, KeyInterval};
use crate::store::types::{Command, KvError, Op, TxnArgs};

/// The role that may do anything, and the user auth cannot be enabled without.
pub const ROOT: &str = "root";

/// etcd's permission types, with their protobuf numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn from_pb(value: i32) -> Option<Access> {
        match value {
            0 => Some(Access::Read),
            1 => Some(Access::Write),
            2 => Some(Access::ReadWrite),
            _ => None,
        }
    }

    pub fn to_pb(self) -> i32 {
        match self {
            Access::Read => 0,
            Access::Write => 1,
            Access::ReadWrite => 2,
        }
    }

    fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub access: Access,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The bcrypt hash; None for a user added with `--no-password`, who can
    /// only be one by its TLS certificate.
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Sorted by key, one per (key, range_end).
    pub permissions: Vec<Permission>,
}

/// A change to the auth state, as the Raft log carries it. Passwords arrive
/// hashed: the member that took the request hashed them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    Enable,
    Disable,
    UserAdd { name: String, password_hash: Option<String> },
    UserDelete { name: String },
    UserChangePassword { name: String, password_hash: String },
    UserGrantRole { user: String, role: String },
    UserRevokeRole { user: String, role: String },
    RoleAdd { name: String },
    RoleDelete { name: String },
    RoleGrantPermission { role: String, permission: Permission },
    RoleRevokePermission { role: String, key: Vec<u8>, range_end: Vec<u8> },
    /// Registers a simple token for `user` on every member (its password was
    /// checked by the member that took the request).
    Authenticate { user: String, token: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        // etcd's fresh auth store reports revision 1.
        AuthState { enabled: false, revision: 1, users: BTreeMap::new(), roles: BTreeMap::new() }
    }
}

impl AuthState {
    /// The state after `change`, asked for by `caller`, or why it may not
    /// happen. Every successful change but Authenticate moves the revision.
    pub fn changed(&self, caller: Option<&str>, change: &AuthChange) -> Result<AuthState, KvError> {
        if !matches!(change, AuthChange::Authenticate { .. }) {
            self.check_admin(caller)?;
        }
        let mut next = self.clone();
        match change {
            AuthChange::Enable => {
                if self.enabled {
                    return Ok(next);
                }
                let root = self.users.get(ROOT).ok_or(KvError::RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(KvError::RootRoleNotExist);
                }
                // As etcd: turning auth on leaves the revision where it is.
                next.enabled = true;
                return Ok(next);
            }
            AuthChange::Disable => {
                if !self.enabled {
                    return Ok(next);
                }
                next.enabled = false;
            }
            AuthChange::UserAdd { name, password_hash } => {
                if name.is_empty() {
                    return Err(KvError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(KvError::UserAlreadyExist);
                }
                next.users.insert(name.clone(), User { password_hash: password_hash.clone(), roles: BTreeSet::new() });
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(KvError::InvalidAuthMgmt);
                }
                next.users.remove(name).ok_or(KvError::UserNotFound)?;
            }
            AuthChange::UserChangePassword { name, password_hash } => {
                let user = next.users.get_mut(name).ok_or(KvError::UserNotFound)?;
                user.password_hash = Some(password_hash.clone());
            }
            AuthChange::UserGrantRole { user, role } => {
                let holder = next.users.get_mut(user).ok_or(KvError::UserNotFound)?;
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(KvError::RoleNotFound);
                }
                if !holder.roles.insert(role.clone()) {
                    // Held already: etcd answers success and changes nothing.
                    return Ok(self.clone());
                }
            }
            AuthChange::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(KvError::InvalidAuthMgmt);
                }
                let holder = next.users.get_mut(user).ok_or(KvError::UserNotFound)?;
                if !holder.roles.remove(role) {
                    return Err(KvError::RoleNotGranted);
                }
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(KvError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(KvError::RoleAlreadyExist);
                }
                next.roles.insert(name.clone(), Role::default());
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(KvError::InvalidAuthMgmt);
                }
                next.roles.remove(name).ok_or(KvError::RoleNotFound)?;
                for user in next.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthChange::RoleGrantPermission { role, permission } => {
                let from_key = permission.range_end == [0];
                let empty = !permission.range_end.is_empty() && !from_key && permission.range_end <= permission.key;
                if permission.key.is_empty() || empty {
                    return Err(KvError::InvalidAuthMgmt);
                }
                let held = next.roles.get_mut(role).ok_or(KvError::RoleNotFound)?;
                let same = |p: &Permission| p.key == permission.key && p.range_end == permission.range_end;
                match held.permissions.iter_mut().find(|p| same(p)) {
                    Some(existing) => existing.access = permission.access,
                    None => {
                        held.permissions.push(permission.clone());
                        held.permissions.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
            }
            AuthChange::RoleRevokePermission { role, key, range_end } => {
                let held = next.roles.get_mut(role).ok_or(KvError::RoleNotFound)?;
                let before = held.permissions.len();
                held.permissions.retain(|p| !(&p.key == key && &p.range_end == range_end));
                if held.permissions.len() == before {
                    return Err(KvError::PermissionNotGranted);
                }
            }
            AuthChange::Authenticate { user, .. } => {
                if !self.enabled {
                    return Err(KvError::AuthNotEnabled);
                }
                if !self.users.contains_key(user) {
                    return Err(KvError::AuthFailed);
                }
                return Ok(next);
            }
        }
        next.revision += 1;
        Ok(next)
    }

    fn user(&self, caller: Option<&str>) -> Result<&User, KvError> {
        let name = caller.ok_or(KvError::UserEmpty)?;
        self.users.get(name).ok_or(KvError::PermissionDenied)
    }

    /// With auth on, that the caller is a known user: all etcd asks of a
    /// lease grant, a status or a member list.
    pub fn check_user(&self, caller: Option<&str>) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        self.user(caller).map(|_| ())
    }

    fn is_root(user: &User) -> bool {
        user.roles.contains(ROOT)
    }

    /// etcd's IsAdminPermitted: with auth on, only a holder of the root role.
    pub fn check_admin(&self, caller: Option<&str>) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        let name = caller.ok_or(KvError::UserEmpty)?;
        let user = self.users.get(name).ok_or(KvError::UserNotFound)?;
        if Self::is_root(user) {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// True when `caller` holds role `role` (a role's holders may read it).
    pub fn holds_role(&self, caller: Option<&str>, role: &str) -> bool {
        caller.and_then(|name| self.users.get(name)).is_some_and(|u| u.roles.contains(role))
    }

    /// Whether `caller` may read (or write) every key of `[key, range_end)`,
    /// through the union of its roles' permissions.
    pub fn check_keys(&self, caller: Option<&str>, key: &[u8], range_end: &[u8], access: Access) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        let user = self.user(caller)?;
        if Self::is_root(user) {
            return Ok(());
        }
        let mut granted = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.permissions)
            .filter(|p| p.access.allows(access));
        let permitted = if range_end.is_empty() {
            // The common case, one key: no intervals to build.
            granted.any(|p| holds(&p.key, &p.range_end, key))
        } else {
            let intervals: Vec<KeyInterval> = granted.map(|p| KeyInterval::of(&p.key, &p.range_end)).collect();
            covers(&intervals, &KeyInterval::of(key, range_end))
        };
        if permitted {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// What etcd checks of a KV op: reads need read permission, puts and
    /// deletes write permission (and read permission when they return the
    /// previous values), a txn every compare and every op of both branches.
    pub fn check_op(&self, caller: Option<&str>, op: &Op) -> Result<(), KvError> {
        match op {
            Op::Range(r) => self.check_keys(caller, &r.key, &r.range_end, Access::Read),
            Op::Put(p) => {
                self.check_keys(caller, &p.key, &[], Access::Write)?;
                if p.prev_kv {
                    self.check_keys(caller, &p.key, &[], Access::Read)?;
                }
                Ok(())
            }
            Op::Delete(d) => {
                self.check_keys(caller, &d.key, &d.range_end, Access::Write)?;
                if d.prev_kv {
                    self.check_keys(caller, &d.key, &d.range_end, Access::Read)?;
                }
                Ok(())
            }
            Op::Txn(t) => self.check_txn(caller, t),
        }
    }

    pub fn check_txn(&self, caller: Option<&str>, txn: &TxnArgs) -> Result<(), KvError> {
        for c in &txn.compare {
            self.check_keys(caller, &c.key, &c.range_end, Access::Read)?;
        }
        txn.success.iter().chain(&txn.failure).try_for_each(|op| self.check_op(caller, op))
    }

    /// The checks a committed command from a client passes before it is
    /// applied. `lease_keys` lists the keys attached to a lease: a user may
    /// only revoke, or attach a key to, a lease whose keys it may all write.
    pub fn check_command(
        &self,
        caller: Option<&str>,
        command: &Command,
        lease_keys: impl Fn(i64) -> Result<Vec<Vec<u8>>, KvError>,
    ) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        let check_lease = |id: i64| -> Result<(), KvError> {
            lease_keys(id)?.iter().try_for_each(|key| self.check_keys(caller, key, &[], Access::Write))
        };
        match command {
            Command::Write(op) => {
                self.check_op(caller, op)?;
                put_leases(op).try_for_each(check_lease)
            }
            Command::LeaseRevoke { id } => check_lease(*id),
            // Identity is all etcd asks of the rest.
            _ => self.check_user(caller),
        }
    }
}

/// The leases the puts of `op` attach keys to.
fn put_leases(op: &Op) -> Box<dyn Iterator<Item = i64> + '_> {
    match op {
        Op::Put(p) if p.lease != 0 && !p.ignore_lease => Box::new(std::iter::once(p.lease)),
        Op::Txn(t) => Box::new(t.success.iter().chain(&t.failure).flat_map(put_leases)),
        _ => Box::new(std::iter::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::types::{PutArgs, RangeArgs};

    fn applied(state: AuthState, changes: &[AuthChange]) -> AuthState {
        changes.iter().fold(state, |s, c| s.changed(Some(ROOT), c).unwrap_or_else(|e| panic!("{c:?}: {e}")))
    }

    fn with_root_and_reader() -> AuthState {
        applied(
            AuthState::default(),
            &[
                AuthChange::UserAdd { name: ROOT.into(), password_hash: Some("h".into()) },
                AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() },
                AuthChange::RoleAdd { name: "reader".into() },
                AuthChange::RoleGrantPermission {
                    role: "reader".into(),
                    permission: Permission { access: Access::Read, key: b"/a/".to_vec(), range_end: b"/a0".to_vec() },
                },
                AuthChange::UserAdd { name: "u".into(), password_hash: Some("h".into()) },
                AuthChange::UserGrantRole { user: "u".into(), role: "reader".into() },
                AuthChange::Enable,
            ],
        )
    }

    #[test]
    fn enable_needs_a_root_user_with_the_root_role() {
        let empty = AuthState::default();
        assert_eq!(empty.changed(None, &AuthChange::Enable), Err(KvError::RootUserNotExist));
        let root = applied(empty, &[AuthChange::UserAdd { name: ROOT.into(), password_hash: None }]);
        assert_eq!(root.changed(None, &AuthChange::Enable), Err(KvError::RootRoleNotExist));
        let on = with_root_and_reader();
        assert!(on.enabled);
        assert_eq!(on.revision, 7, "six changes after the first revision; enabling moves nothing");
    }

    #[test]
    fn with_auth_on_only_root_changes_auth() {
        let on = with_root_and_reader();
        let add = AuthChange::RoleAdd { name: "x".into() };
        assert_eq!(on.changed(Some("u"), &add), Err(KvError::PermissionDenied));
        assert_eq!(on.changed(None, &add), Err(KvError::UserEmpty));
        assert_eq!(on.changed(Some("nobody"), &add), Err(KvError::UserNotFound));
        assert_eq!(on.changed(Some(ROOT), &AuthChange::UserDelete { name: ROOT.into() }), Err(KvError::InvalidAuthMgmt));
        assert_eq!(
            on.changed(Some(ROOT), &AuthChange::UserRevokeRole { user: ROOT.into(), role: ROOT.into() }),
            Err(KvError::InvalidAuthMgmt)
        );
    }

    #[test]
    fn key_permissions_follow_roles() {
        let on = with_root_and_reader();
        let read = |key: &str| Op::Range(RangeArgs { key: key.into(), ..Default::default() });
        let put = |key: &str| Op::Put(PutArgs { key: key.into(), ..Default::default() });
        assert_eq!(on.check_op(Some("u"), &read("/a/x")), Ok(()));
        assert_eq!(on.check_op(Some("u"), &read("/b")), Err(KvError::PermissionDenied));
        assert_eq!(on.check_op(Some("u"), &put("/a/x")), Err(KvError::PermissionDenied));
        assert_eq!(on.check_op(Some(ROOT), &put("/b")), Ok(()));
        assert_eq!(on.check_op(None, &read("/a/x")), Err(KvError::UserEmpty));
        let revoked = on
            .changed(Some(ROOT), &AuthChange::RoleDelete { name: "reader".into() })
            .unwrap();
        assert_eq!(revoked.check_op(Some("u"), &read("/a/x")), Err(KvError::PermissionDenied));
        assert!(revoked.users["u"].roles.is_empty());
    }

    #[test]
    fn granting_the_same_range_again_replaces_its_access() {
        let on = with_root_and_reader();
        let grant = AuthChange::RoleGrantPermission {
            role: "reader".into(),
            permission: Permission { access: Access::ReadWrite, key: b"/a/".to_vec(), range_end: b"/a0".to_vec() },
        };
        let next = on.changed(Some(ROOT), &grant).unwrap();
        assert_eq!(next.roles["reader"].permissions.len(), 1);
        assert_eq!(next.roles["reader"].permissions[0].access, Access::ReadWrite);
        let revoke = AuthChange::RoleRevokePermission { role: "reader".into(), key: b"/a/".to_vec(), range_end: vec![] };
        assert_eq!(next.changed(Some(ROOT), &revoke), Err(KvError::PermissionNotGranted));
    }
}
