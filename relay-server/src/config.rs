//! The declarative configuration file (JSON) and how it is merged into the durable model.
//!
//! The file lists namespaces, their hybrid connections and rules. At every start it is
//! applied on top of `state.json`: listed entities are created or updated, keys given in the
//! file win, keys left out are generated once and then kept (they live in `state.json`).
//! Nothing is deleted by leaving it out of the file. Unknown fields are errors, so a typo
//! names itself. An example is in the README.

use hc_protocol::Rights;
use serde::Deserialize;

use crate::model::{
    self, DEFAULT_NAMESPACE, HybridConnection, LISTENER_RULE, Model, ModelError, Namespace,
    ROOT_RULE, Rule, SAMPLE_HYBRID_CONNECTION, SENDER_RULE,
};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Namespaces to create or update.
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    /// Faults active from the start (durations count from then), as `POST /$faults` takes
    /// them.
    #[serde(default)]
    pub faults: Vec<crate::fault::FaultSpec>,
}

/// One namespace in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceConfig {
    /// 6-50 letters, digits, hyphens.
    pub name: String,
    /// Extra host names, e.g. `contoso.servicebus.windows.net` for users who map it to loopback.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Answers to `localhost` and IP literals.
    #[serde(default)]
    pub default: bool,
    /// Namespace-level rules; `RootManageSharedAccessKey` is added when none is listed.
    #[serde(default)]
    pub authorization_rules: Vec<RuleConfig>,
    /// Hybrid connections.
    #[serde(default)]
    pub hybrid_connections: Vec<HybridConnectionConfig>,
}

/// One hybrid connection in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HybridConnectionConfig {
    /// Path, e.g. `db` or `team/db`.
    pub name: String,
    /// Whether senders need a token (default true).
    #[serde(default = "yes")]
    pub requires_client_authorization: bool,
    /// Shorthand for the App Service `userMetadata`: `host:port`.
    pub endpoint: Option<String>,
    /// Raw `userMetadata` (used when `endpoint` is absent).
    pub user_metadata: Option<String>,
    /// Entity rules; `defaultListener` and `defaultSender` are added when none is listed.
    #[serde(default)]
    pub authorization_rules: Vec<RuleConfig>,
}

/// One rule in the file.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// Rule name (the token's `skn`).
    pub name: String,
    /// `Listen`, `Send`, `Manage`.
    pub rights: Vec<String>,
    /// Fixed primary key; generated once when absent.
    pub primary_key: Option<String>,
    /// Fixed secondary key; generated once when absent.
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for RuleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleConfig")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

fn yes() -> bool {
    true
}

impl ConfigFile {
    /// Parses the file's text; errors carry serde's line and column.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Creates or updates everything the file lists.
    pub fn apply(&self, model: &mut Model, now: u64) -> Result<(), ModelError> {
        for ns in &self.namespaces {
            apply_namespace(model, ns, now)?;
        }
        model.check_hosts()
    }
}

fn rule_from_config(existing: &[Rule], rc: &RuleConfig) -> Result<Rule, ModelError> {
    let rights = model::parse_rights(&rc.rights)?;
    let old = existing.iter().find(|r| r.0.name == rc.name);
    let primary = rc
        .primary_key
        .as_deref()
        .or(old.map(|r| r.0.primary_key.expose()));
    let secondary = rc
        .secondary_key
        .as_deref()
        .or(old.map(|r| r.0.secondary_key.expose()));
    model::new_rule(&rc.name, rights, primary, secondary)
}

fn apply_rules(
    rules: &mut Vec<Rule>,
    owner: &str,
    configs: &[RuleConfig],
) -> Result<(), ModelError> {
    for rc in configs {
        let rule = rule_from_config(rules, rc)?;
        model::upsert_rule(rules, owner, rule)?;
    }
    Ok(())
}

fn apply_namespace(model: &mut Model, cfg: &NamespaceConfig, now: u64) -> Result<(), ModelError> {
    model::validate_namespace_name(&cfg.name)?;
    if cfg.default {
        model
            .namespaces
            .values_mut()
            .for_each(|ns| ns.default = false);
    }
    let ns = model
        .namespaces
        .entry(cfg.name.to_ascii_lowercase())
        .or_insert_with(|| empty_namespace(&cfg.name, now));
    ns.aliases = cfg.aliases.iter().map(|a| a.to_ascii_lowercase()).collect();
    ns.default = cfg.default;
    apply_rules(
        &mut ns.authorization_rules,
        &cfg.name,
        &cfg.authorization_rules,
    )?;
    ensure_root_rule(ns)?;
    for hc in &cfg.hybrid_connections {
        apply_hybrid_connection(ns, hc, now)?;
    }
    Ok(())
}

fn apply_hybrid_connection(
    ns: &mut Namespace,
    cfg: &HybridConnectionConfig,
    now: u64,
) -> Result<(), ModelError> {
    model::validate_hybrid_connection_name(&cfg.name)?;
    let metadata = match (&cfg.endpoint, &cfg.user_metadata) {
        (Some(endpoint), _) => Some(model::endpoint_metadata(&cfg.name, endpoint)?),
        (None, metadata) => metadata.clone(),
    };
    let hc = ns
        .hybrid_connections
        .entry(cfg.name.to_ascii_lowercase())
        .or_insert_with(|| empty_hybrid_connection(&cfg.name, now));
    if hc.requires_client_authorization != cfg.requires_client_authorization
        || hc.user_metadata != metadata
    {
        hc.updated_at = now;
    }
    hc.requires_client_authorization = cfg.requires_client_authorization;
    hc.user_metadata = metadata;
    apply_rules(
        &mut hc.authorization_rules,
        &cfg.name,
        &cfg.authorization_rules,
    )?;
    ensure_app_service_rules(hc)
}

/// A namespace with no rules or hybrid connections yet.
pub(crate) fn empty_namespace(name: &str, now: u64) -> Namespace {
    Namespace {
        name: name.into(),
        aliases: vec![],
        default: false,
        authorization_rules: vec![],
        hybrid_connections: Default::default(),
        created_at: now,
        arm: Default::default(),
    }
}

/// A hybrid connection with no rules yet, requiring client authorization.
pub(crate) fn empty_hybrid_connection(name: &str, now: u64) -> HybridConnection {
    HybridConnection {
        name: name.into(),
        requires_client_authorization: true,
        user_metadata: None,
        authorization_rules: vec![],
        created_at: now,
        updated_at: now,
    }
}

/// Adds `RootManageSharedAccessKey` (all rights) when the namespace has no rule (§3.4).
pub(crate) fn ensure_root_rule(ns: &mut Namespace) -> Result<(), ModelError> {
    if ns.authorization_rules.is_empty() {
        ns.authorization_rules
            .push(model::new_rule(ROOT_RULE, Rights::ALL, None, None)?);
    }
    Ok(())
}

/// Adds `defaultListener` (Listen) and `defaultSender` (Send) when the entity has no rule,
/// as App Service does (§12.1).
pub(crate) fn ensure_app_service_rules(hc: &mut HybridConnection) -> Result<(), ModelError> {
    use hc_protocol::Right;
    if hc.authorization_rules.is_empty() {
        hc.authorization_rules.push(model::new_rule(
            LISTENER_RULE,
            Rights::of(&[Right::Listen]),
            None,
            None,
        )?);
        hc.authorization_rules.push(model::new_rule(
            SENDER_RULE,
            Rights::of(&[Right::Send]),
            None,
            None,
        )?);
    }
    Ok(())
}

/// The zero-config model: namespace `default` (answering to localhost) with
/// `RootManageSharedAccessKey`, and the hybrid connection `sample` with App Service's rules.
pub(crate) fn ensure_default_namespace(model: &mut Model, now: u64) -> Result<(), ModelError> {
    if !model.namespaces.is_empty() {
        return Ok(());
    }
    let mut ns = empty_namespace(DEFAULT_NAMESPACE, now);
    ns.default = true;
    ensure_root_rule(&mut ns)?;
    let mut hc = empty_hybrid_connection(SAMPLE_HYBRID_CONNECTION, now);
    ensure_app_service_rules(&mut hc)?;
    ns.hybrid_connections
        .insert(SAMPLE_HYBRID_CONNECTION.into(), hc);
    model.namespaces.insert(DEFAULT_NAMESPACE.into(), ns);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "namespaces": [{
        "name": "contoso", "aliases": ["contoso.servicebus.windows.net"], "default": true,
        "authorizationRules": [{"name": "RootManageSharedAccessKey", "rights": ["Manage", "Listen", "Send"], "primaryKey": "fixed-key"}],
        "hybridConnections": [
          {"name": "db", "endpoint": "localhost:5432"},
          {"name": "open", "requiresClientAuthorization": false, "userMetadata": "free text",
           "authorizationRules": [{"name": "lis", "rights": ["Listen"]}]}
        ]
      }]
    }"#;

    #[test]
    fn example_applies_and_keeps_generated_keys() {
        let cfg = ConfigFile::parse(EXAMPLE).unwrap();
        let mut m = Model::default();
        cfg.apply(&mut m, 100).unwrap();
        let ns = m.namespace("contoso").unwrap();
        assert_eq!(
            ns.authorization_rules[0].0.primary_key.expose(),
            "fixed-key"
        );
        let db = &ns.hybrid_connections["db"];
        assert_eq!(
            db.user_metadata.as_deref(),
            Some(r#"[{"key":"endpoint","value":"localhost:5432"}]"#)
        );
        assert_eq!(
            db.authorization_rules
                .iter()
                .map(|r| r.0.name.as_str())
                .collect::<Vec<_>>(),
            ["defaultListener", "defaultSender"]
        );
        let generated = db.authorization_rules[0].0.primary_key.clone();
        let open = &ns.hybrid_connections["open"];
        assert!(!open.requires_client_authorization && open.authorization_rules.len() == 1);
        // Applying again (a restart) keeps the generated keys.
        cfg.apply(&mut m, 200).unwrap();
        assert_eq!(
            m.namespace("contoso").unwrap().hybrid_connections["db"].authorization_rules[0]
                .0
                .primary_key,
            generated
        );
        assert_eq!(
            m.namespace("contoso").unwrap().hybrid_connections["db"].updated_at,
            100
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = ConfigFile::parse(r#"{"namespaces":[{"name":"contoso","hybridConections":[]}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("hybridConections"), "{err}");
        let bad_endpoint = r#"{"namespaces":[{"name":"contoso","hybridConnections":[{"name":"db","endpoint":"nope"}]}]}"#;
        let err = ConfigFile::parse(bad_endpoint)
            .unwrap()
            .apply(&mut Model::default(), 0)
            .unwrap_err();
        assert!(
            err.to_string().contains("'db'") && err.to_string().contains("nope"),
            "{err}"
        );
        let bad_right = r#"{"namespaces":[{"name":"contoso","authorizationRules":[{"name":"r","rights":["Owner"]}]}]}"#;
        let err = ConfigFile::parse(bad_right)
            .unwrap()
            .apply(&mut Model::default(), 0)
            .unwrap_err();
        assert_eq!(err, ModelError::UnknownRight("Owner".into()));
    }

    #[test]
    fn zero_config_default() {
        let mut m = Model::default();
        ensure_default_namespace(&mut m, 5).unwrap();
        let ns = m.namespace_for_host("localhost:9443").unwrap();
        assert_eq!(
            (ns.name.as_str(), ns.authorization_rules[0].0.name.as_str()),
            ("default", ROOT_RULE)
        );
        assert!(ns.hybrid_connections.contains_key("sample"));
        let before = m.namespaces.len();
        ensure_default_namespace(&mut m, 6).unwrap();
        assert_eq!(m.namespaces.len(), before);
    }
}
