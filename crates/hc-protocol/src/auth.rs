//! Authorization of a SAS token against the rules of a namespace and an entity
//! (PROTOCOL.md §3.3–§3.5, §15 MUST 2).
//!
//! Order of checks: parse -> find the rule named `skn` (entity first, then namespace) ->
//! signature against the primary, then the secondary key -> expiry (with a small skew) ->
//! audience (lenient rule of §3.3) -> rights. Every failure maps to the Service Bus wording
//! the SDKs surface: 401 for a bad token, 403 for a good token without the right.

use std::fmt;

use crate::limits::CLOCK_SKEW_SECS;
use crate::sas::{SasKey, SasToken, TokenError};
use crate::uri;

/// One right a rule can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Open a control channel, read runtime info.
    Listen,
    /// Connect as a sender, send HTTP requests.
    Send,
    /// Manage entities; implies Listen and Send.
    Manage,
}

impl Right {
    /// The wire name (`Listen`, `Send`, `Manage`).
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Listen => "Listen",
            Right::Send => "Send",
            Right::Manage => "Manage",
        }
    }

    /// Parses a wire name, case-insensitively.
    pub fn parse(text: &str) -> Option<Right> {
        [Right::Listen, Right::Send, Right::Manage]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(text))
    }

    fn bit(self) -> u8 {
        match self {
            Right::Listen => 1,
            Right::Send => 2,
            Right::Manage => 4,
        }
    }
}

/// A set of rights.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    /// No rights at all.
    pub const NONE: Rights = Rights(0);
    /// Listen, Send and Manage.
    pub const ALL: Rights = Rights(7);

    /// The set holding exactly `rights`.
    pub fn of(rights: &[Right]) -> Rights {
        Rights(rights.iter().fold(0, |acc, r| acc | r.bit()))
    }

    /// True when this set allows `right` (Manage implies Listen and Send, §3.4).
    pub fn allows(self, right: Right) -> bool {
        self.0 & right.bit() != 0 || self.0 & Right::Manage.bit() != 0
    }

    /// The rights granted, in wire order.
    pub fn to_vec(self) -> Vec<Right> {
        [Right::Listen, Right::Send, Right::Manage]
            .into_iter()
            .filter(|r| self.0 & r.bit() != 0)
            .collect()
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_vec()).finish()
    }
}

/// A named authorization rule with its two keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRule {
    /// Rule name, the token's `skn`.
    pub name: String,
    /// Primary key.
    pub primary_key: SasKey,
    /// Secondary key.
    pub secondary_key: SasKey,
    /// Rights granted to holders of either key.
    pub rights: Rights,
}

/// What a request is being authorized for.
#[derive(Debug, Clone, Copy)]
pub struct AuthScope<'a> {
    /// Every host name the namespace answers to (canonical name, aliases).
    pub namespace_hosts: &'a [String],
    /// Requested resource: hybrid connection path plus any suffix, no `$hc/`, no query.
    pub resource_path: &'a str,
    /// Rules defined on the hybrid connection.
    pub entity_rules: &'a [AuthRule],
    /// Rules defined on the namespace.
    pub namespace_rules: &'a [AuthRule],
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    /// Name of the rule that signed it.
    pub key_name: String,
    /// The rights that rule grants.
    pub rights: Rights,
    /// Token expiry, Unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the header, query or `Authorization`.
    #[error("MissingToken: The request contains no authorization header or sb-hc-token.")]
    MissingToken,
    /// The token text could not be parsed.
    #[error("MalformedToken: {0}.")]
    Malformed(TokenError),
    /// No rule of that name, or the signature matches neither key.
    #[error("InvalidSignature: The token has an invalid signature.")]
    InvalidSignature,
    /// The token expired (beyond the allowed skew).
    #[error("ExpiredToken: The token is expired. Expiration time: '{0}' (Unix seconds).")]
    Expired(u64),
    /// The token's `sr` does not cover the requested resource.
    #[error("InvalidAudience: The authorization header contains a token with a wrong audience.")]
    InvalidAudience,
    /// The token is genuine but its rule lacks the right.
    #[error("Unauthorized access. '{}' claim(s) are required to perform this operation.", .0.as_str())]
    MissingRight(Right),
}

impl AuthError {
    /// HTTP status for this failure: 403 for a missing right, else 401 (§9.1).
    pub fn status(&self) -> u16 {
        match self {
            AuthError::MissingRight(_) => 403,
            _ => 401,
        }
    }
}

/// Checks `token_text` for `scope` and the `needed` right at time `now` (Unix seconds).
pub fn authorize(
    token_text: &str,
    scope: &AuthScope<'_>,
    needed: Right,
    now: u64,
) -> Result<Authorized, AuthError> {
    let token = SasToken::parse(token_text).map_err(AuthError::Malformed)?;
    let rule = find_rule(scope, token.key_name()).ok_or(AuthError::InvalidSignature)?;
    if !token.is_signed_by(&rule.primary_key) && !token.is_signed_by(&rule.secondary_key) {
        return Err(AuthError::InvalidSignature);
    }
    if now > token.expiry().saturating_add(CLOCK_SKEW_SECS) {
        return Err(AuthError::Expired(token.expiry()));
    }
    if !audience_matches(
        &token.audience(),
        scope.namespace_hosts,
        scope.resource_path,
    ) {
        return Err(AuthError::InvalidAudience);
    }
    if !rule.rights.allows(needed) {
        return Err(AuthError::MissingRight(needed));
    }
    Ok(Authorized {
        key_name: rule.name.clone(),
        rights: rule.rights,
        expires_at: token.expiry(),
    })
}

/// Rule lookup for key name `name`: the entity's rules, then the namespace's (§3.4).
fn find_rule<'a>(scope: &AuthScope<'a>, name: &str) -> Option<&'a AuthRule> {
    let by_name = |rules: &'a [AuthRule]| rules.iter().find(|r| r.name == name);
    by_name(scope.entity_rules).or_else(|| by_name(scope.namespace_rules))
}

/// The lenient audience rule of PROTOCOL.md §3.3: scheme, port, query and trailing slashes
/// are ignored; the host must be one of the namespace's; the token path (minus any `$hc/`)
/// must be empty, equal to the resource path, or a `/`-segment prefix of it. Case-insensitive.
pub fn audience_matches(audience: &str, namespace_hosts: &[String], resource_path: &str) -> bool {
    let Ok(parts) = uri::parse(audience) else {
        return false;
    };
    if !namespace_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(parts.host))
    {
        return false;
    }
    let token_path = parts.path.trim_matches('/');
    let token_path = token_path
        .strip_prefix("$hc")
        .map(|p| p.trim_start_matches('/'))
        .unwrap_or(token_path);
    let token_path = token_path.to_ascii_lowercase();
    let resource = resource_path.trim_matches('/').to_ascii_lowercase();
    token_path.is_empty()
        || resource == token_path
        || resource
            .strip_prefix(&token_path)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sas::SasToken;

    const NOW: u64 = 1_700_000_000;

    fn rule(name: &str, key: &str, rights: &[Right]) -> AuthRule {
        AuthRule {
            name: name.into(),
            primary_key: SasKey::new(key).unwrap(),
            secondary_key: SasKey::new(format!("{key}-secondary")).unwrap(),
            rights: Rights::of(rights),
        }
    }

    struct Fixture {
        hosts: Vec<String>,
        ns_rules: Vec<AuthRule>,
        hc_rules: Vec<AuthRule>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                hosts: vec![
                    "contoso.servicebus.windows.net".into(),
                    "contoso.localhost".into(),
                ],
                ns_rules: vec![rule(
                    "RootManageSharedAccessKey",
                    "root",
                    &[Right::Manage, Right::Listen, Right::Send],
                )],
                hc_rules: vec![
                    rule("defaultListener", "lis", &[Right::Listen]),
                    rule("defaultSender", "snd", &[Right::Send]),
                ],
            }
        }

        fn check(&self, token: &str, path: &str, needed: Right) -> Result<Authorized, AuthError> {
            let scope = AuthScope {
                namespace_hosts: &self.hosts,
                resource_path: path,
                entity_rules: &self.hc_rules,
                namespace_rules: &self.ns_rules,
            };
            authorize(token, &scope, needed, NOW)
        }
    }

    fn token(uri: &str, name: &str, key: &str, se: u64) -> String {
        SasToken::create(uri, name, &SasKey::new(key).unwrap(), se).expose()
    }

    /// Audiences as each official client builds them (PROTOCOL.md §3.3).
    #[test]
    fn every_client_audience_shape_verifies() {
        let f = Fixture::new();
        let audiences = [
            "http://contoso.servicebus.windows.net/hyco/", // .NET: trailing slash, http
            "http://contoso.servicebus.windows.net:443/hyco", // hyco-ws createRelayToken keeps the port
            "sb://contoso.servicebus.windows.net/hyco",       // Java listener
            "sb://contoso.servicebus.windows.net/hyco//",     // Java's double slash bug
            "sb://contoso.servicebus.windows.net",            // Java sender: namespace only
            "http://contoso.servicebus.windows.net/",         // .NET raw sender: namespace-wide
            "https://CONTOSO.servicebus.windows.net/HYCO",    // case differences
            "wss://contoso.localhost:9443/$hc/hyco",          // $hc kept, alias host
        ];
        for aud in audiences {
            let t = token(aud, "RootManageSharedAccessKey", "root", NOW + 60);
            assert!(f.check(&t, "hyco", Right::Listen).is_ok(), "audience {aud}");
            assert!(
                f.check(&t, "hyco/sub/path", Right::Send).is_ok(),
                "audience {aud} with suffix"
            );
        }
    }

    #[test]
    fn node_encoding_of_sr_verifies() {
        // encodeURIComponent leaves !'()* alone and uses uppercase hex; the raw sr is signed.
        let f = Fixture::new();
        let key = SasKey::new("root").unwrap();
        let t = SasToken::create_raw(
            "http%3A%2F%2Fcontoso.servicebus.windows.net%3A443%2Fhyco",
            "RootManageSharedAccessKey",
            &key,
            NOW,
        );
        assert!(f.check(&t.expose(), "hyco", Right::Send).is_ok());
        // The docs' example uses lowercase hex.
        let t = SasToken::create_raw(
            "http%3a%2f%2fcontoso.servicebus.windows.net%2fhyco%2f",
            "RootManageSharedAccessKey",
            &key,
            NOW,
        );
        assert!(f.check(&t.expose(), "hyco", Right::Send).is_ok());
    }

    #[test]
    fn wrong_audiences_are_refused() {
        let f = Fixture::new();
        for aud in [
            "http://other.servicebus.windows.net/hyco",
            "http://contoso.servicebus.windows.net/hycox",
            "http://contoso.servicebus.windows.net/other",
        ] {
            let t = token(aud, "RootManageSharedAccessKey", "root", NOW + 60);
            assert_eq!(
                f.check(&t, "hyco", Right::Send),
                Err(AuthError::InvalidAudience),
                "{aud}"
            );
        }
    }

    #[test]
    fn rights_and_rule_scope() {
        let f = Fixture::new();
        let listen = token(
            "http://contoso.localhost/hyco",
            "defaultListener",
            "lis",
            NOW + 60,
        );
        assert!(f.check(&listen, "hyco", Right::Listen).is_ok());
        let err = f.check(&listen, "hyco", Right::Send).unwrap_err();
        assert_eq!(
            (err.status(), &err),
            (403, &AuthError::MissingRight(Right::Send))
        );
        assert!(err.to_string().contains("'Send' claim(s) are required"));
        let manage = token(
            "http://contoso.localhost/hyco",
            "RootManageSharedAccessKey",
            "root",
            NOW + 60,
        );
        assert!(
            f.check(&manage, "hyco", Right::Listen).is_ok()
                && f.check(&manage, "hyco", Right::Send).is_ok()
        );
        let manage_only = Fixture {
            ns_rules: vec![rule("m", "m", &[Right::Manage])],
            ..Fixture::new()
        };
        let t = token("http://contoso.localhost/", "m", "m", NOW + 60);
        assert!(manage_only.check(&t, "hyco", Right::Listen).is_ok());
    }

    #[test]
    fn secondary_key_works_and_bad_signatures_fail() {
        let f = Fixture::new();
        let t = token(
            "http://contoso.localhost/hyco",
            "defaultSender",
            "snd-secondary",
            NOW + 60,
        );
        assert!(f.check(&t, "hyco", Right::Send).is_ok());
        let t = token(
            "http://contoso.localhost/hyco",
            "defaultSender",
            "wrong",
            NOW + 60,
        );
        assert_eq!(
            f.check(&t, "hyco", Right::Send),
            Err(AuthError::InvalidSignature)
        );
        let t = token(
            "http://contoso.localhost/hyco",
            "noSuchRule",
            "snd",
            NOW + 60,
        );
        assert_eq!(
            f.check(&t, "hyco", Right::Send),
            Err(AuthError::InvalidSignature)
        );
    }

    #[test]
    fn expiry_allows_small_skew_only() {
        let f = Fixture::new();
        let just = token(
            "http://contoso.localhost/hyco",
            "defaultSender",
            "snd",
            NOW - CLOCK_SKEW_SECS,
        );
        assert!(f.check(&just, "hyco", Right::Send).is_ok());
        let late = token(
            "http://contoso.localhost/hyco",
            "defaultSender",
            "snd",
            NOW - CLOCK_SKEW_SECS - 1,
        );
        let err = f.check(&late, "hyco", Right::Send).unwrap_err();
        assert!(matches!(err, AuthError::Expired(_)) && err.status() == 401);
        assert!(err.to_string().starts_with("ExpiredToken:"));
    }

    #[test]
    fn malformed_token_is_401_with_reason() {
        let f = Fixture::new();
        let err = f
            .check("SharedAccessSignature sr=x", "hyco", Right::Send)
            .unwrap_err();
        assert_eq!(err.status(), 401);
        assert!(
            err.to_string().contains("no 'se' field") || err.to_string().contains("no 'sig'"),
            "{err}"
        );
    }

    #[test]
    fn rights_parse_and_list() {
        assert_eq!(Right::parse("listen"), Some(Right::Listen));
        assert_eq!(Right::parse("Owner"), None);
        assert_eq!(
            Rights::of(&[Right::Send, Right::Listen]).to_vec(),
            vec![Right::Listen, Right::Send]
        );
        assert!(!Rights::NONE.allows(Right::Listen));
    }
}
