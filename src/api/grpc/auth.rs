//! `etcdserverpb.Auth`: turning auth on and off, signing in, users and roles.
//! Changes go through the Raft log as `AuthChange`s and are checked when
//! applied; the listings read this member's auth state after a read barrier.

use std::sync::Arc;

use etcd_client::proto::PbResponseHeader;
use tonic::{Request, Response, Status};

use super::{caller, header, status};
use crate::auth::tokens::{new_simple_token, TokenKind};
use crate::auth::{password_matches, Access, AuthChange, AuthState, Caller, Permission};
use crate::server::Node;
use crate::store::types::{Command, KvError};

pub mod pb {
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::authpb;
use pb::etcdserverpb::auth_server::Auth;
use pb::etcdserverpb::*;

pub struct AuthService {
    node: Arc<Node>,
}

impl AuthService {
    pub fn new(node: Arc<Node>) -> Self {
        AuthService { node }
    }

    /// Commits `change` asked for by the sender of `request`; returns the header.
    async fn change<T>(&self, request: &Request<T>, change: AuthChange) -> Result<Option<PbResponseHeader>, Status> {
        let caller = caller(&self.node, request).await?;
        let result = self.node.write(Command::Auth { caller: caller.user, change }).await.map_err(status)?;
        Ok(header(&self.node, result.revision))
    }

    /// The auth state once this member has applied everything committed
    /// before the request, with the request's caller.
    async fn read<T>(&self, request: &Request<T>) -> Result<(Caller, Arc<AuthState>), Status> {
        self.node.consensus.read_barrier().await.map_err(status)?;
        let caller = caller(&self.node, request).await?;
        Ok((caller, self.node.store.auth.state()))
    }

    fn header(&self) -> Option<PbResponseHeader> {
        header(&self.node, self.node.store.revision())
    }

    async fn hash(&self, password: String) -> Result<String, Status> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || node.authenticator.hash_password(&password))
            .await
            .map_err(|e| status(KvError::Internal(e.to_string())))?
            .map_err(status)
    }

    /// The token for `name`, whose password was checked.
    async fn token_for(&self, name: String, auth_revision: u64) -> Result<String, KvError> {
        match &self.node.authenticator.tokens {
            TokenKind::Jwt(jwt) => jwt.sign(&name, auth_revision),
            TokenKind::Simple => {
                let token = new_simple_token(self.node.store.revision() as u64);
                let change = AuthChange::Authenticate { user: name, token: token.clone() };
                self.node.write(Command::Auth { caller: None, change }).await?;
                Ok(token)
            }
        }
    }
}

fn to_pb_permission(p: &Permission) -> authpb::Permission {
    authpb::Permission { perm_type: p.access.to_pb(), key: p.key.clone(), range_end: p.range_end.clone() }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.change(&request, AuthChange::Enable).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(&self, request: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(&request, AuthChange::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        let (caller, state) = self.read(&request).await?;
        state.check_admin(caller.user()).map_err(status)?;
        Ok(Response::new(AuthStatusResponse { header: self.header(), enabled: state.enabled, auth_revision: state.revision }))
    }

    async fn authenticate(&self, request: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        // The password is checked against every change committed before.
        self.node.consensus.read_barrier().await.map_err(status)?;
        let r = request.into_inner();
        let state = self.node.store.auth.state();
        if !state.enabled {
            return Err(status(KvError::AuthNotEnabled));
        }
        let hash = state.users.get(&r.name).and_then(|u| u.password_hash.clone()).ok_or(status(KvError::AuthFailed))?;
        let password = r.password;
        let matches = tokio::task::spawn_blocking(move || password_matches(&password, &hash))
            .await
            .map_err(|e| status(KvError::Internal(e.to_string())))?;
        if !matches {
            return Err(status(KvError::AuthFailed));
        }
        let token = self.token_for(r.name, state.revision).await.map_err(status)?;
        Ok(Response::new(AuthenticateResponse { header: self.header(), token }))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let r = request.get_ref();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let password_hash = if no_password { None } else { Some(self.hash(r.password.clone()).await?) };
        let change = AuthChange::UserAdd { name: r.name.clone(), password_hash };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let (caller, state) = self.read(&request).await?;
        let name = &request.get_ref().name;
        // Anyone may look at themselves.
        if caller.user() != Some(name.as_str()) {
            state.check_admin(caller.user()).map_err(status)?;
        }
        let user = state.users.get(name).ok_or(status(KvError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse { header: self.header(), roles: user.roles.iter().cloned().collect() }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        let (caller, state) = self.read(&request).await?;
        state.check_admin(caller.user()).map_err(status)?;
        Ok(Response::new(AuthUserListResponse { header: self.header(), users: state.users.keys().cloned().collect() }))
    }

    async fn user_delete(&self, request: Request<AuthUserDeleteRequest>) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let change = AuthChange::UserDelete { name: request.get_ref().name.clone() };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let r = request.get_ref();
        let password_hash = self.hash(r.password.clone()).await?;
        let change = AuthChange::UserChangePassword { name: r.name.clone(), password_hash };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let r = request.get_ref();
        let change = AuthChange::UserGrantRole { user: r.user.clone(), role: r.role.clone() };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let r = request.get_ref();
        let change = AuthChange::UserRevokeRole { user: r.name.clone(), role: r.role.clone() };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let change = AuthChange::RoleAdd { name: request.get_ref().name.clone() };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let (caller, state) = self.read(&request).await?;
        let name = &request.get_ref().role;
        // A role's holders may look at it.
        if !state.holds_role(caller.user(), name) {
            state.check_admin(caller.user()).map_err(status)?;
        }
        let role = state.roles.get(name).ok_or(status(KvError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: role.permissions.iter().map(to_pb_permission).collect(),
        }))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        let (caller, state) = self.read(&request).await?;
        state.check_admin(caller.user()).map_err(status)?;
        Ok(Response::new(AuthRoleListResponse { header: self.header(), roles: state.roles.keys().cloned().collect() }))
    }

    async fn role_delete(&self, request: Request<AuthRoleDeleteRequest>) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let change = AuthChange::RoleDelete { name: request.get_ref().role.clone() };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = request.get_ref();
        let perm = r.perm.as_ref().ok_or(status(KvError::PermissionNotGiven))?;
        let access = Access::from_pb(perm.perm_type).ok_or(status(KvError::PermissionNotGiven))?;
        let permission = Permission { access, key: perm.key.clone(), range_end: perm.range_end.clone() };
        let change = AuthChange::RoleGrantPermission { role: r.name.clone(), permission };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = request.get_ref();
        let change =
            AuthChange::RoleRevokePermission { role: r.role.clone(), key: r.key.clone(), range_end: r.range_end.clone() };
        let header = self.change(&request, change).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
