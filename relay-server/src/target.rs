//! Resolving a request to its namespace and hybrid connection, and authorizing it
//! (PROTOCOL.md §2.2 longest-prefix resolution, §2.3 token carriers, §3 rules).
//!
//! A [`Target`] is a snapshot taken under a short read lock, so later checks (auth, renewal)
//! run without holding the model.

use hc_protocol::address::{HEADER_SB_AUTHORIZATION, QUERY_TOKEN, query_value};
use hc_protocol::auth::{self, AuthScope};
use hc_protocol::{AuthError, AuthRule, Authorized, Right};
use http::HeaderMap;

use crate::error::RelayError;
use crate::model::{Model, Namespace, host_without_port};
use crate::registry::HcKey;

/// A hybrid connection as one request sees it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Namespace name as created.
    pub namespace: String,
    /// Every host the namespace answers to.
    pub hosts: Vec<String>,
    /// Hybrid connection name as created.
    pub hc_name: String,
    /// Registry key.
    pub key: HcKey,
    /// Path after the hybrid connection name (empty or starting with `/`).
    pub suffix: String,
    /// Whether senders need a token.
    pub requires_client_authorization: bool,
    /// `userMetadata`.
    pub user_metadata: Option<String>,
    /// Creation and update times.
    pub created_at: u64,
    /// Last update.
    pub updated_at: u64,
    entity_rules: Vec<AuthRule>,
    namespace_rules: Vec<AuthRule>,
}

/// Where a request's token came from; `Authorization` is stripped only when it carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `ServiceBusAuthorization` header.
    Header,
    /// `sb-hc-token` query parameter.
    Query,
    /// `Authorization` header (last resort, §2.3).
    Authorization,
}

/// The token of a request, from `ServiceBusAuthorization`, then `sb-hc-token`, then
/// `Authorization` (§2.3, §8.3).
pub(crate) fn find_token(headers: &HeaderMap, query: &str) -> Option<(String, TokenSource)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    header(HEADER_SB_AUTHORIZATION)
        .map(|t| (t, TokenSource::Header))
        .or_else(|| query_value(query, QUERY_TOKEN).map(|t| (t, TokenSource::Query)))
        .or_else(|| header("authorization").map(|t| (t, TokenSource::Authorization)))
}

impl Target {
    fn from_namespace(ns: &Namespace, path: &str) -> Result<Self, RelayError> {
        let (hc, suffix) = ns.resolve_path(path).ok_or(RelayError::EndpointNotFound)?;
        Ok(Target {
            namespace: ns.name.clone(),
            hosts: ns.hosts(),
            hc_name: hc.name.clone(),
            key: (ns.name.to_ascii_lowercase(), hc.name.to_ascii_lowercase()),
            suffix: suffix.to_owned(),
            requires_client_authorization: hc.requires_client_authorization,
            user_metadata: hc.user_metadata.clone(),
            created_at: hc.created_at,
            updated_at: hc.updated_at,
            entity_rules: hc.authorization_rules.iter().map(|r| r.0.clone()).collect(),
            namespace_rules: ns.auth_rules(),
        })
    }

    /// Resolves `host` (Host header) and `path` (hybrid connection name plus suffix).
    pub(crate) fn resolve(model: &Model, host: &str, path: &str) -> Result<Self, RelayError> {
        let ns = model
            .namespace_for_host(host)
            .ok_or_else(|| RelayError::UnknownHost(host_without_port(host)))?;
        Target::from_namespace(ns, path)
    }

    /// Looks a registry key up again (token renewal; the entity may be gone).
    pub(crate) fn lookup(model: &Model, key: &HcKey) -> Result<Self, RelayError> {
        let ns = model
            .namespaces
            .get(&key.0)
            .ok_or(RelayError::EndpointNotFound)?;
        let target = Target::from_namespace(ns, &key.1)?;
        if target.suffix.is_empty() {
            Ok(target)
        } else {
            Err(RelayError::EndpointNotFound)
        }
    }

    /// The hybrid connection path plus suffix.
    pub(crate) fn path(&self) -> String {
        format!("{}{}", self.hc_name, self.suffix)
    }

    /// Checks `token` for `needed` at `now`.
    pub(crate) fn authorize(
        &self,
        token: Option<&str>,
        needed: Right,
        now: u64,
    ) -> Result<Authorized, AuthError> {
        let token = token.ok_or(AuthError::MissingToken)?;
        let path = self.path();
        let scope = AuthScope {
            namespace_hosts: &self.hosts,
            resource_path: &path,
            entity_rules: &self.entity_rules,
            namespace_rules: &self.namespace_rules,
        };
        auth::authorize(token, &scope, needed, now)
    }

    /// Checks `token` for any one right (the runtime-info GET, §3.4).
    pub(crate) fn authorize_any(
        &self,
        token: Option<&str>,
        now: u64,
    ) -> Result<Authorized, AuthError> {
        match self.authorize(token, Right::Listen, now) {
            Err(AuthError::MissingRight(_)) => self.authorize(token, Right::Send, now),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(
            find_token(&h, "sb-hc-token=SharedAccessSignature%20a"),
            Some(("SharedAccessSignature a".into(), TokenSource::Query))
        );
        h.insert(
            "authorization",
            HeaderValue::from_static("SharedAccessSignature c"),
        );
        assert_eq!(
            find_token(&h, "").map(|t| t.1),
            Some(TokenSource::Authorization)
        );
        h.insert(
            "servicebusauthorization",
            HeaderValue::from_static("SharedAccessSignature b"),
        );
        assert_eq!(
            find_token(&h, "sb-hc-token=x"),
            Some(("SharedAccessSignature b".into(), TokenSource::Header))
        );
    }
}
