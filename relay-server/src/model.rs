//! The relay's durable model: namespaces, hybrid connections and authorization rules
//! (PROTOCOL.md §3.4, §11, §12.1), where each namespace sits in Azure Resource Manager
//! (subscription, resource group, location, tags, SKU), and the App Service side of the
//! management plane (ARM.md §3: resource groups, sites, plans and their hybrid connection
//! relays). Serialized as the data directory's `state.json`; the config file and the ARM
//! endpoint change the same model.
//!
//! Host resolution lives here too: a namespace answers to `{name}.localhost`, to its
//! configured aliases, and, for the default namespace, to `localhost` and IP literals.
//! Neighbours: `store` persists it, `config` merges the declarative file into it, `routes`
//! reads it under a short read lock for every request.

use std::collections::BTreeMap;

use hc_protocol::limits::MAX_AUTHORIZATION_RULES;
use hc_protocol::metadata::Endpoint;
use hc_protocol::{AuthRule, Right, Rights, SasKey};
use serde::{Deserialize, Serialize};

/// Name of the namespace the zero-config start creates.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Name of the sample hybrid connection the zero-config start creates.
pub const SAMPLE_HYBRID_CONNECTION: &str = "sample";
/// The namespace-level rule every new namespace gets (§3.4).
pub const ROOT_RULE: &str = "RootManageSharedAccessKey";
/// The hybrid-connection rules App Service creates (§12.1).
pub const LISTENER_RULE: &str = "defaultListener";
/// See [`LISTENER_RULE`].
pub const SENDER_RULE: &str = "defaultSender";
/// Suffix every namespace answers to.
pub(crate) const LOCALHOST_SUFFIX: &str = ".localhost";
/// Subscription (and tenant) the emulator hosts by default, as LocalStack for Azure does
/// (ARM.md §4.7); ARM paths may name any other.
pub const DEFAULT_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";
/// Resource group of namespaces made by the config file or the zero-config start.
pub const DEFAULT_RESOURCE_GROUP: &str = "relay-emulator";
/// Location of namespaces and resource groups made without one.
pub const DEFAULT_LOCATION: &str = "local";

/// All namespaces, keyed by lower-cased name, and the other ARM resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    /// The namespaces.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Resource groups created through ARM, keyed by `{subscription}/{group}` lower-cased.
    #[serde(default)]
    pub resource_groups: BTreeMap<String, ResourceGroup>,
    /// App Service sites, keyed by `{subscription}/{group}/{site}` lower-cased.
    #[serde(default)]
    pub sites: BTreeMap<String, Site>,
    /// App Service plans, keyed by `{subscription}/{group}/{plan}` lower-cased.
    #[serde(default)]
    pub plans: BTreeMap<String, Plan>,
    /// Hybrid connections of sites (`sites/{app}[/slots/{slot}]/hybridConnectionNamespaces/
    /// {ns}/relays/{relay}`), keyed by [`WebRelay::key`].
    #[serde(default)]
    pub web_relays: BTreeMap<String, WebRelay>,
}

/// Where a namespace sits in Azure Resource Manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmPlacement {
    /// Subscription id.
    pub subscription: String,
    /// Resource group, as created.
    pub resource_group: String,
    /// Location, as given.
    pub location: String,
    /// Resource tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// SKU name and tier (`Standard`).
    pub sku: String,
    /// Last change through ARM, Unix seconds (0: never).
    #[serde(default)]
    pub updated_at: u64,
}

impl Default for ArmPlacement {
    fn default() -> Self {
        ArmPlacement {
            subscription: DEFAULT_SUBSCRIPTION.into(),
            resource_group: DEFAULT_RESOURCE_GROUP.into(),
            location: DEFAULT_LOCATION.into(),
            tags: BTreeMap::new(),
            sku: "Standard".into(),
            updated_at: 0,
        }
    }
}

/// A resource group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceGroup {
    /// Subscription id.
    pub subscription: String,
    /// Name as created.
    pub name: String,
    /// Location.
    pub location: String,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// An App Service site (web or function app), as far as hybrid connections need one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    /// Subscription id.
    pub subscription: String,
    /// Resource group.
    pub resource_group: String,
    /// Name as created.
    pub name: String,
    /// Location.
    pub location: String,
    /// `serverFarmId`: the plan's resource id, when known.
    pub server_farm_id: Option<String>,
}

/// An App Service plan: its tier sets how many hybrid connections an app may use
/// (PROTOCOL.md §12.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Subscription id.
    pub subscription: String,
    /// Resource group.
    pub resource_group: String,
    /// Name as created.
    pub name: String,
    /// Location.
    pub location: String,
    /// SKU name, e.g. `S1`.
    pub sku_name: String,
    /// SKU tier, e.g. `Standard`.
    pub sku_tier: String,
}

impl Plan {
    /// Hybrid connections one app on this plan may use: Basic 5, Standard 25, Premium and
    /// Isolated 220, none on Free, Shared and the consumption tiers (PROTOCOL.md §12.2).
    pub fn hybrid_connection_limit(&self) -> usize {
        let tier = self.sku_tier.to_ascii_lowercase();
        if tier.starts_with("premium") || tier.starts_with("isolated") {
            220
        } else if tier == "standard" {
            25
        } else if tier == "basic" {
            5
        } else {
            0
        }
    }
}

/// A hybrid connection of a site (Microsoft.Web `…/hybridConnectionNamespaces/{ns}/relays/
/// {relay}`): which relay the app reaches, the endpoint it reaches through it, and the Send
/// key the platform uses. `Debug` shows no key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebRelay {
    /// Subscription id.
    pub subscription: String,
    /// Resource group of the site.
    pub resource_group: String,
    /// Site name as created.
    pub site: String,
    /// Deployment slot, if any.
    pub slot: Option<String>,
    /// Relay namespace name, from the URL (as the real service does, ARM.md §3.1).
    pub namespace: String,
    /// Hybrid connection name, from the URL.
    pub relay: String,
    /// The hybrid connection's resource id.
    pub relay_arm_uri: Option<String>,
    /// Endpoint host the app connects to.
    pub hostname: String,
    /// Endpoint port.
    pub port: u16,
    /// Send rule name.
    pub send_key_name: String,
    /// Send key.
    #[serde(with = "optional_key")]
    pub send_key_value: Option<SasKey>,
    /// `serviceBusSuffix`, e.g. `.servicebus.windows.net`.
    pub service_bus_suffix: Option<String>,
}

impl WebRelay {
    /// Map key: `{subscription}/{group}/{site}/{slot}/{namespace}/{relay}`, lower-cased.
    pub fn key(&self) -> String {
        web_relay_key(
            &self.subscription,
            &self.resource_group,
            &self.site,
            self.slot.as_deref(),
            &self.namespace,
            &self.relay,
        )
    }
}

/// A key stored as its text.
mod optional_key {
    use hc_protocol::SasKey;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(key: &Option<SasKey>, s: S) -> Result<S::Ok, S::Error> {
        key.as_ref().map(SasKey::expose).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SasKey>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(SasKey::new)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

/// See [`WebRelay::key`].
pub(crate) fn web_relay_key(
    subscription: &str,
    group: &str,
    site: &str,
    slot: Option<&str>,
    namespace: &str,
    relay: &str,
) -> String {
    format!(
        "{subscription}/{group}/{site}/{}/{namespace}/{relay}",
        slot.unwrap_or("")
    )
    .to_ascii_lowercase()
}

/// Map key of resource groups, sites and plans: `{subscription}/{group}[/{name}]`,
/// lower-cased.
pub(crate) fn arm_key(parts: &[&str]) -> String {
    parts.join("/").to_ascii_lowercase()
}

/// One namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// Name as created.
    pub name: String,
    /// Extra host names (e.g. `contoso.servicebus.windows.net`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Answers to `localhost` and IP literals.
    #[serde(default)]
    pub default: bool,
    /// Namespace-level rules.
    pub authorization_rules: Vec<Rule>,
    /// Hybrid connections keyed by lower-cased path.
    pub hybrid_connections: BTreeMap<String, HybridConnection>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Where it sits in Azure Resource Manager.
    #[serde(default)]
    pub arm: ArmPlacement,
}

/// One hybrid connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HybridConnection {
    /// Path as created (may contain `/`).
    pub name: String,
    /// Whether senders need a Send token.
    pub requires_client_authorization: bool,
    /// Free text; by convention `[{"key":"endpoint","value":"host:port"}]`.
    pub user_metadata: Option<String>,
    /// Entity-level rules.
    pub authorization_rules: Vec<Rule>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Last update, Unix seconds.
    pub updated_at: u64,
}

/// An authorization rule with its keys; `Debug` shows no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(pub AuthRule);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleRecord {
    name: String,
    rights: Vec<String>,
    primary_key: String,
    secondary_key: String,
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RuleRecord {
            name: self.0.name.clone(),
            rights: self
                .0
                .rights
                .to_vec()
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            primary_key: self.0.primary_key.expose().to_owned(),
            secondary_key: self.0.secondary_key.expose().to_owned(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let r = RuleRecord::deserialize(d)?;
        let rights = parse_rights(&r.rights).map_err(D::Error::custom)?;
        let key = |k: String| SasKey::new(k).map_err(D::Error::custom);
        Ok(Rule(AuthRule {
            name: r.name,
            primary_key: key(r.primary_key)?,
            secondary_key: key(r.secondary_key)?,
            rights,
        }))
    }
}

/// Parses rights names; errors name the unknown one.
pub(crate) fn parse_rights(names: &[String]) -> Result<Rights, ModelError> {
    let rights = names
        .iter()
        .map(|n| Right::parse(n).ok_or_else(|| ModelError::UnknownRight(n.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rights::of(&rights))
}

/// Why a change to the model was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Namespace names are 6-50 letters, digits and hyphens, starting with a letter (§14).
    #[error(
        "namespace name '{0}' must be 6 to 50 letters, digits or hyphens, starting with a letter"
    )]
    BadNamespaceName(String),
    /// Hybrid connection path segments are letters, digits, `-`, `_`, `.`.
    #[error(
        "hybrid connection name '{0}' must be 1 to 260 characters of letters, digits, '-', '_', '.' and '/' (not at either end)"
    )]
    BadHybridConnectionName(String),
    /// Rule names are 1-256 characters of letters, digits, `-`, `_`, `.`.
    #[error("authorization rule name '{0}' must be 1 to 256 letters, digits, '-', '_' or '.'")]
    BadRuleName(String),
    /// A rights name other than Listen, Send, Manage.
    #[error("unknown right '{0}' (expected Listen, Send or Manage)")]
    UnknownRight(String),
    /// A rule has no rights.
    #[error("authorization rule '{0}' grants no rights")]
    NoRights(String),
    /// Too many rules on one entity.
    #[error("'{0}' would have more than {MAX_AUTHORIZATION_RULES} authorization rules")]
    TooManyRules(String),
    /// No such namespace.
    #[error("namespace '{0}' does not exist")]
    NoNamespace(String),
    /// No such hybrid connection.
    #[error("hybrid connection '{1}' does not exist in namespace '{0}'")]
    NoHybridConnection(String, String),
    /// A key is empty or too long.
    #[error("key of rule '{0}' is invalid: {1}")]
    BadKey(String, String),
    /// An endpoint that is not host:port.
    #[error("hybrid connection '{0}': {1}")]
    BadEndpoint(String, String),
    /// The same host claimed by two namespaces.
    #[error("host '{0}' is claimed by namespaces '{1}' and '{2}'")]
    HostClash(String, String, String),
    /// No such authorization rule.
    #[error("authorization rule '{1}' does not exist on '{0}'")]
    NoRule(String, String),
    /// A namespace name is taken by another resource group or subscription (names are
    /// global, as DNS names are).
    #[error("namespace name '{0}' is already in use")]
    NamespaceNameTaken(String),
    /// An app would use more hybrid connections than its plan allows.
    #[error("App Service plan '{0}' allows {1} hybrid connections per app")]
    PlanLimit(String, usize),
}

/// Checks a namespace name.
pub(crate) fn validate_namespace_name(name: &str) -> Result<(), ModelError> {
    let ok = (6..=50).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some(())
        .ok_or_else(|| ModelError::BadNamespaceName(name.into()))
}

/// Checks a hybrid connection path.
pub(crate) fn validate_hybrid_connection_name(name: &str) -> Result<(), ModelError> {
    let ok = (1..=260).contains(&name.len())
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
    ok.then_some(())
        .ok_or_else(|| ModelError::BadHybridConnectionName(name.into()))
}

/// Checks a rule name.
pub(crate) fn validate_rule_name(name: &str) -> Result<(), ModelError> {
    let ok = (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then_some(())
        .ok_or_else(|| ModelError::BadRuleName(name.into()))
}

/// Checks an endpoint `host:port` and returns the userMetadata text for it.
pub(crate) fn endpoint_metadata(hc: &str, endpoint: &str) -> Result<String, ModelError> {
    Endpoint::parse(endpoint)
        .map(|e| e.to_user_metadata())
        .map_err(|e| ModelError::BadEndpoint(hc.into(), e.to_string()))
}

/// Strips a `:port` from a Host header value and lower-cases it.
pub(crate) fn host_without_port(host: &str) -> String {
    let bare = hc_protocol::uri::split_host_port(host)
        .map(|(h, _)| h)
        .unwrap_or(host);
    bare.to_ascii_lowercase()
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
}

impl Namespace {
    /// Every host name this namespace answers to (lower-case, no port).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts = vec![format!(
            "{}{LOCALHOST_SUFFIX}",
            self.name.to_ascii_lowercase()
        )];
        hosts.extend(self.aliases.iter().map(|a| a.to_ascii_lowercase()));
        if self.default {
            hosts.extend(["localhost", "127.0.0.1", "[::1]", "::1"].map(String::from));
        }
        hosts
    }

    /// Whether `host` (lower-case, no port, not a loopback name) is one of this namespace's
    /// names; the same set as [`Namespace::hosts`] without building it (every request asks).
    pub fn answers_to(&self, host: &str) -> bool {
        let own = host
            .strip_suffix(LOCALHOST_SUFFIX)
            .is_some_and(|n| n.eq_ignore_ascii_case(&self.name));
        own || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(host))
    }

    /// The hybrid connection owning `path` (hybrid connection name plus suffix): the longest
    /// registered prefix on `/` boundaries, case-insensitive (§2.2). Returns it with the
    /// suffix (empty or starting with `/`).
    pub fn resolve_path<'a>(&self, path: &'a str) -> Option<(&HybridConnection, &'a str)> {
        let lower = path.to_ascii_lowercase();
        let mut end = lower.len();
        loop {
            if let Some(hc) = self.hybrid_connections.get(&lower[..end]) {
                return Some((hc, &path[end..]));
            }
            end = lower[..end].rfind('/')?;
        }
    }

    /// Namespace-level rules as [`AuthRule`]s.
    pub fn auth_rules(&self) -> Vec<AuthRule> {
        self.authorization_rules
            .iter()
            .map(|r| r.0.clone())
            .collect()
    }
}

impl Model {
    /// The namespace answering to `host` (a Host header value, port allowed).
    pub fn namespace_for_host(&self, host: &str) -> Option<&Namespace> {
        let host = host_without_port(host);
        if is_loopback_name(&host) {
            return self.default_namespace();
        }
        self.namespaces.values().find(|ns| ns.answers_to(&host))
    }

    /// The namespace marked default, else the first one.
    pub fn default_namespace(&self) -> Option<&Namespace> {
        self.namespaces
            .values()
            .find(|ns| ns.default)
            .or_else(|| self.namespaces.values().next())
    }

    /// Every host name of every namespace (for the server certificate).
    pub fn all_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.namespaces.values().flat_map(|ns| ns.hosts()).collect();
        hosts.extend([
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ]);
        hosts.retain(|h| !h.starts_with('['));
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Refuses a model in which two namespaces claim the same host.
    pub fn check_hosts(&self) -> Result<(), ModelError> {
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        for ns in self.namespaces.values() {
            for host in ns.hosts().into_iter().filter(|h| !is_loopback_name(h)) {
                if let Some(other) = owner.insert(host.clone(), &ns.name) {
                    return Err(ModelError::HostClash(host, other.into(), ns.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// The namespace named `name` (case-insensitive).
    pub fn namespace(&self, name: &str) -> Result<&Namespace, ModelError> {
        self.namespaces
            .get(&name.to_ascii_lowercase())
            .ok_or_else(|| ModelError::NoNamespace(name.into()))
    }

    /// Mutable access to the namespace named `name`.
    pub fn namespace_mut(&mut self, name: &str) -> Result<&mut Namespace, ModelError> {
        self.namespaces
            .get_mut(&name.to_ascii_lowercase())
            .ok_or_else(|| ModelError::NoNamespace(name.into()))
    }
}

/// Creates a rule with the given rights; keys are generated unless given.
pub(crate) fn new_rule(
    name: &str,
    rights: Rights,
    primary: Option<&str>,
    secondary: Option<&str>,
) -> Result<Rule, ModelError> {
    validate_rule_name(name)?;
    if rights == Rights::NONE {
        return Err(ModelError::NoRights(name.into()));
    }
    let key = |given: Option<&str>| match given {
        Some(k) => SasKey::new(k).map_err(|e| ModelError::BadKey(name.into(), e.to_string())),
        None => Ok(SasKey::from_random_bytes(rand::random())),
    };
    Ok(Rule(AuthRule {
        name: name.into(),
        primary_key: key(primary)?,
        secondary_key: key(secondary)?,
        rights,
    }))
}

/// Inserts or replaces a rule by name, keeping the entity under the 12-rule limit.
pub(crate) fn upsert_rule(
    rules: &mut Vec<Rule>,
    owner: &str,
    rule: Rule,
) -> Result<(), ModelError> {
    if let Some(existing) = rules.iter_mut().find(|r| r.0.name == rule.0.name) {
        *existing = rule;
    } else if rules.len() >= MAX_AUTHORIZATION_RULES {
        return Err(ModelError::TooManyRules(owner.into()));
    } else {
        rules.push(rule);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, default: bool) -> Namespace {
        Namespace {
            name: name.into(),
            aliases: vec![format!("{name}.servicebus.windows.net")],
            default,
            authorization_rules: vec![],
            hybrid_connections: BTreeMap::new(),
            created_at: 0,
            arm: ArmPlacement::default(),
        }
    }

    fn hc(name: &str) -> HybridConnection {
        HybridConnection {
            name: name.into(),
            requires_client_authorization: true,
            user_metadata: None,
            authorization_rules: vec![],
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn host_resolution() {
        let mut m = Model::default();
        m.namespaces.insert("contoso".into(), ns("contoso", false));
        m.namespaces.insert("default".into(), ns("default", true));
        assert_eq!(
            m.namespace_for_host("CONTOSO.localhost:9443").unwrap().name,
            "contoso"
        );
        assert_eq!(
            m.namespace_for_host("contoso.servicebus.windows.net")
                .unwrap()
                .name,
            "contoso"
        );
        assert_eq!(
            m.namespace_for_host("localhost:9443").unwrap().name,
            "default"
        );
        assert_eq!(m.namespace_for_host("127.0.0.1").unwrap().name, "default");
        assert_eq!(m.namespace_for_host("[::1]:9443").unwrap().name, "default");
        assert!(m.namespace_for_host("unknown.example").is_none());
        assert!(m.check_hosts().is_ok());
        m.namespaces
            .get_mut("default")
            .unwrap()
            .aliases
            .push("contoso.localhost".into());
        assert!(matches!(m.check_hosts(), Err(ModelError::HostClash(..))));
    }

    #[test]
    fn longest_prefix_resolution() {
        let mut n = ns("contoso", false);
        for name in ["a", "a/b", "microsoft.hybridcompute/machines/x/y/v2"] {
            n.hybrid_connections
                .insert(name.to_ascii_lowercase(), hc(name));
        }
        let (h, suffix) = n.resolve_path("a/b/c/d").unwrap();
        assert_eq!((h.name.as_str(), suffix), ("a/b", "/c/d"));
        let (h, suffix) = n.resolve_path("A").unwrap();
        assert_eq!((h.name.as_str(), suffix), ("a", ""));
        let (h, suffix) = n.resolve_path("a/bc").unwrap();
        assert_eq!((h.name.as_str(), suffix), ("a", "/bc"));
        assert!(
            n.resolve_path("microsoft.hybridcompute/machines/x/y/v2/z")
                .is_some()
        );
        assert!(n.resolve_path("nothing/here").is_none());
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_namespace_name("contoso").is_ok());
        assert!(validate_namespace_name("short").is_err());
        assert!(validate_namespace_name("1abcdef").is_err());
        assert!(validate_hybrid_connection_name("a/b.c_d-e").is_ok());
        assert!(validate_hybrid_connection_name("/a").is_err());
        assert!(validate_hybrid_connection_name("a b").is_err());
        assert!(validate_rule_name("defaultListener").is_ok());
        assert!(validate_rule_name("").is_err());
    }

    #[test]
    fn rules_persist_keys_and_hide_them_in_debug() {
        let rule = new_rule("r", Rights::of(&[Right::Listen]), Some("secret-key"), None).unwrap();
        let json = serde_json::to_string(&rule).unwrap();
        assert!(json.contains("secret-key") && json.contains(r#""rights":["Listen"]"#));
        let back: Rule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rule);
        assert!(!format!("{rule:?}").contains("secret-key"));
        assert!(matches!(
            new_rule("r", Rights::NONE, None, None),
            Err(ModelError::NoRights(_))
        ));
        let mut rules = Vec::new();
        for i in 0..MAX_AUTHORIZATION_RULES {
            upsert_rule(
                &mut rules,
                "hc",
                new_rule(&format!("r{i}"), Rights::ALL, None, None).unwrap(),
            )
            .unwrap();
        }
        let extra = new_rule("r99", Rights::ALL, None, None).unwrap();
        assert!(matches!(
            upsert_rule(&mut rules, "hc", extra),
            Err(ModelError::TooManyRules(_))
        ));
    }
}
