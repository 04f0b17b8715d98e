//! Microsoft.Relay (ARM.md §2): namespaces, their authorization rules, hybrid connections and
//! theirs, keys, name availability and the operations list. Status codes are the ones the
//! clients accept (ARM.md §1.4): rule and hybrid connection PUTs answer 200 only, namespace
//! PUT 201 on create and 200 on update, DELETE 200, or 204 when there was nothing.
//!
//! Every change goes through the relay's store, so it is live on the data plane at once: a
//! new namespace answers at `{name}.localhost`, a listed key authenticates, a regenerated key
//! stops authenticating new connections, and a deleted hybrid connection or namespace closes
//! its listeners with 1001 (PROTOCOL.md §5.5).

use hc_protocol::frame::close_code;
use hc_protocol::{AuthRule, Rights, SasKey};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::groups::ensure_group;
use super::{
    ArmError, ArmRequest, ArmResult, Scope, empty, kw, list, method_not_allowed, now, ok, opt_str,
    tags, time, unknown,
};
use crate::model::{self, ArmPlacement, HybridConnection, Model, ModelError, Namespace, Rule};
use crate::state::RelayState;

/// The type names ARM gives each resource.
const NAMESPACE_TYPE: &str = "Microsoft.Relay/Namespaces";
const HC_TYPE: &str = "Microsoft.Relay/Namespaces/HybridConnections";
const NS_RULE_TYPE: &str = "Microsoft.Relay/Namespaces/AuthorizationRules";
const HC_RULE_TYPE: &str = "Microsoft.Relay/Namespaces/HybridConnections/AuthorizationRules";

/// The resource id of a namespace.
fn namespace_id(ns: &Namespace) -> String {
    format!(
        "{}/providers/Microsoft.Relay/namespaces/{}",
        Scope::group_id(&ns.arm.subscription, &ns.arm.resource_group),
        ns.name
    )
}

/// The resource id of a hybrid connection.
pub(super) fn hybrid_connection_id(ns: &Namespace, hc: &HybridConnection) -> String {
    format!("{}/hybridConnections/{}", namespace_id(ns), hc.name)
}

/// The host name a namespace's clients use: `{name}.servicebus.windows.net` with
/// `--azure-host-names` (when the namespace answers to it), else `{name}.localhost`.
fn data_host(state: &RelayState, ns: &Namespace) -> String {
    let azure = format!("{}.servicebus.windows.net", ns.name.to_ascii_lowercase());
    if state.options.arm.azure_host_names
        && ns.aliases.iter().any(|a| a.eq_ignore_ascii_case(&azure))
    {
        azure
    } else {
        format!(
            "{}{}",
            ns.name.to_ascii_lowercase(),
            model::LOCALHOST_SUFFIX
        )
    }
}

/// `host[:port]` of the data plane for `ns` (no port when it is 443 or not known yet).
fn data_authority(state: &RelayState, ns: &Namespace) -> String {
    let host = data_host(state, ns);
    match state.data_port.load(std::sync::atomic::Ordering::Relaxed) {
        0 | 443 => host,
        port => format!("{host}:{port}"),
    }
}

/// `serviceBusEndpoint`: where the namespace's data plane is.
fn service_bus_endpoint(state: &RelayState, ns: &Namespace) -> String {
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}/", data_authority(state, ns))
}

/// A connection string for a key, as our `hcm add` and sender take it (`ws://` when the
/// data plane is plain).
fn connection_string(
    state: &RelayState,
    ns: &Namespace,
    hc: Option<&str>,
    rule: &str,
    key: &SasKey,
) -> String {
    let scheme = if state.tls.is_some() { "sb" } else { "ws" };
    let mut cs = format!(
        "Endpoint={scheme}://{}/;SharedAccessKeyName={rule};SharedAccessKey={}",
        data_authority(state, ns),
        key.expose()
    );
    if let Some(hc) = hc.filter(|_| state.options.arm.entity_path_in_keys) {
        cs.push_str(";EntityPath=");
        cs.push_str(hc);
    }
    cs
}

fn namespace_json(state: &RelayState, ns: &Namespace) -> Value {
    let updated = ns.arm.updated_at.max(ns.created_at);
    json!({
        "id": namespace_id(ns),
        "name": ns.name,
        "type": NAMESPACE_TYPE,
        "location": ns.arm.location,
        "tags": ns.arm.tags,
        "sku": {"name": ns.arm.sku, "tier": ns.arm.sku},
        "properties": {
            "provisioningState": "Succeeded",
            "status": "Active",
            "createdAt": time(ns.created_at),
            "updatedAt": time(updated),
            "serviceBusEndpoint": service_bus_endpoint(state, ns),
            "metricId": format!("{}:{}", ns.arm.subscription, ns.name.to_ascii_lowercase()),
            "publicNetworkAccess": "Enabled",
            "minimumTlsVersion": "1.2",
            "privateEndpointConnections": [],
        },
    })
}

fn hybrid_connection_json(state: &RelayState, ns: &Namespace, hc: &HybridConnection) -> Value {
    let listeners = state
        .registry
        .listener_count(&(ns.name.to_ascii_lowercase(), hc.name.to_ascii_lowercase()));
    let mut properties = json!({
        "createdAt": time(hc.created_at),
        "updatedAt": time(hc.updated_at),
        "listenerCount": listeners,
        "requiresClientAuthorization": hc.requires_client_authorization,
    });
    if let Some(metadata) = &hc.user_metadata {
        properties["userMetadata"] = json!(metadata);
    }
    json!({
        "id": hybrid_connection_id(ns, hc),
        "name": hc.name,
        "type": HC_TYPE,
        "location": ns.arm.location,
        "properties": properties,
    })
}

/// Whose rules a path addresses.
#[derive(Debug, Clone, Copy)]
enum Owner<'a> {
    Namespace(&'a str),
    HybridConnection(&'a str, &'a str),
}

impl Owner<'_> {
    fn hc(&self) -> Option<&str> {
        match self {
            Owner::Namespace(_) => None,
            Owner::HybridConnection(_, hc) => Some(hc),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Owner::Namespace(ns) | Owner::HybridConnection(ns, _) => ns,
        }
    }
}

fn rule_json(ns: &Namespace, owner_id: &str, rule_type: &str, rule: &AuthRule) -> Value {
    json!({
        "id": format!("{owner_id}/authorizationRules/{}", rule.name),
        "name": rule.name,
        "type": rule_type,
        "location": ns.arm.location,
        "properties": {"rights": rule.rights.to_vec().iter().map(|r| r.as_str()).collect::<Vec<_>>()},
    })
}

fn keys_json(state: &RelayState, ns: &Namespace, hc: Option<&str>, rule: &AuthRule) -> Value {
    json!({
        "primaryConnectionString": connection_string(state, ns, hc, &rule.name, &rule.primary_key),
        "secondaryConnectionString": connection_string(state, ns, hc, &rule.name, &rule.secondary_key),
        "primaryKey": rule.primary_key.expose(),
        "secondaryKey": rule.secondary_key.expose(),
        "keyName": rule.name,
    })
}

/// The namespace `name` if it sits in `scope`.
fn namespace_in<'m>(
    model: &'m Model,
    scope: &Scope,
    name: &str,
) -> Result<&'m Namespace, ModelError> {
    model
        .namespaces
        .get(&name.to_ascii_lowercase())
        .filter(|ns| scope.holds(&ns.arm.subscription, &ns.arm.resource_group))
        .ok_or_else(|| ModelError::NoNamespace(name.into()))
}

fn namespace_in_mut<'m>(
    model: &'m mut Model,
    scope: &Scope,
    name: &str,
) -> Result<&'m mut Namespace, ModelError> {
    model
        .namespaces
        .get_mut(&name.to_ascii_lowercase())
        .filter(|ns| scope.holds(&ns.arm.subscription, &ns.arm.resource_group))
        .ok_or_else(|| ModelError::NoNamespace(name.into()))
}

/// 404 for a namespace, in ARM's words.
fn namespace_not_found(scope: &Scope, name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.Relay/namespaces/{name}' under resource group '{}' was not found.",
            scope.group
        ),
    )
}

/// Maps "no namespace" to ARM's ResourceNotFound, the rest as usual.
fn in_scope(scope: &Scope, e: ModelError) -> ArmError {
    match e {
        ModelError::NoNamespace(name) => namespace_not_found(scope, &name),
        ModelError::NoHybridConnection(_, hc) => {
            ArmError::not_found(format!("HybridConnection {hc} does not exist."))
        }
        ModelError::NoRule(_, rule) => {
            ArmError::not_found(format!("AuthorizationRule {rule} does not exist."))
        }
        other => other.into(),
    }
}

fn store_error(scope: &Scope, e: crate::store::StoreError) -> ArmError {
    match e {
        crate::store::StoreError::Model(m) => in_scope(scope, m),
        other => other.into(),
    }
}

/// Closes the listeners of every hybrid connection of a namespace that was deleted.
pub(super) fn close_namespace_listeners(state: &RelayState, ns: &Namespace) {
    for hc in ns.hybrid_connections.values() {
        state.registry.close_listeners(
            &(ns.name.to_ascii_lowercase(), hc.name.to_ascii_lowercase()),
            close_code::GOING_AWAY,
            "The namespace was deleted.",
        );
    }
}

/// `/subscriptions/{sub}/providers/Microsoft.Relay/…`.
pub(super) fn subscription_level(
    state: &RelayState,
    r: &ArmRequest,
    sub: &str,
    rest: &[&str],
) -> ArmResult {
    match rest {
        [c] if kw(c, "checkNameAvailability") => {
            r.only(Method::POST)?;
            check_name_availability(state, r)
        }
        [n] if kw(n, "namespaces") => {
            r.only(Method::GET)?;
            let model = state.store.read();
            list(
                model
                    .namespaces
                    .values()
                    .filter(|ns| ns.arm.subscription.eq_ignore_ascii_case(sub))
                    .map(|ns| namespace_json(state, ns))
                    .collect(),
            )
        }
        _ => Err(unknown(r)),
    }
}

fn check_name_availability(state: &RelayState, r: &ArmRequest) -> ArmResult {
    let body = r.json()?;
    let name =
        opt_str(&body, "name")?.ok_or_else(|| ArmError::bad_request("'name' is required."))?;
    let (available, reason, message) = if let Err(e) = model::validate_namespace_name(name) {
        (
            false,
            "InvalidName",
            format!("{}.", super::capitalized(&e.to_string())),
        )
    } else if state
        .store
        .read()
        .namespaces
        .contains_key(&name.to_ascii_lowercase())
    {
        (
            false,
            "NameInUse",
            format!("The specified name {name} is already in use."),
        )
    } else {
        (true, "None", String::new())
    };
    ok(&json!({"nameAvailable": available, "reason": reason, "message": message}))
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Relay/…`.
pub(super) fn group_level(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    rest: &[&str],
) -> ArmResult {
    let rest = match rest {
        [n, rest @ ..] if kw(n, "namespaces") => rest,
        _ => return Err(unknown(r)),
    };
    match rest {
        [] => {
            r.only(Method::GET)?;
            let model = state.store.read();
            list(
                model
                    .namespaces
                    .values()
                    .filter(|ns| scope.holds(&ns.arm.subscription, &ns.arm.resource_group))
                    .map(|ns| namespace_json(state, ns))
                    .collect(),
            )
        }
        [ns] => namespace(state, r, scope, ns),
        [ns, a, more @ ..] if kw(a, "authorizationRules") => {
            rules(state, r, scope, Owner::Namespace(ns), more)
        }
        [ns, h] if kw(h, "hybridConnections") => {
            r.only(Method::GET)?;
            let model = state.store.read();
            let ns = namespace_in(&model, scope, ns).map_err(|e| in_scope(scope, e))?;
            list(
                ns.hybrid_connections
                    .values()
                    .map(|hc| hybrid_connection_json(state, ns, hc))
                    .collect(),
            )
        }
        [ns, h, hc] if kw(h, "hybridConnections") => hybrid_connection(state, r, scope, ns, hc),
        [ns, h, hc, a, more @ ..] if kw(h, "hybridConnections") && kw(a, "authorizationRules") => {
            rules(state, r, scope, Owner::HybridConnection(ns, hc), more)
        }
        _ => Err(unknown(r)),
    }
}

/// `GET|PUT|PATCH|DELETE …/namespaces/{name}`.
fn namespace(state: &RelayState, r: &ArmRequest, scope: &Scope, name: &str) -> ArmResult {
    match r.method {
        Method::GET => {
            let model = state.store.read();
            let ns = namespace_in(&model, scope, name).map_err(|e| in_scope(scope, e))?;
            ok(&namespace_json(state, ns))
        }
        Method::PUT => put_namespace(state, r, scope, name),
        Method::PATCH => {
            let body = r.json()?;
            let new_tags = tags(&body)?;
            let sku = sku_name(&body)?;
            let now = now(state);
            let ns = state
                .store
                .update(|m| {
                    let ns = namespace_in_mut(m, scope, name)?;
                    if let Some(tags) = new_tags {
                        ns.arm.tags = tags;
                    }
                    if let Some(sku) = sku {
                        ns.arm.sku = sku;
                    }
                    ns.arm.updated_at = now;
                    Ok(ns.clone())
                })
                .map_err(|e| store_error(scope, e))?;
            ok(&namespace_json(state, &ns))
        }
        Method::DELETE => {
            let removed = state
                .store
                .update(|m| {
                    let found = namespace_in(m, scope, name).is_ok();
                    Ok(found
                        .then(|| m.namespaces.remove(&name.to_ascii_lowercase()))
                        .flatten())
                })
                .map_err(|e| store_error(scope, e))?;
            match removed {
                Some(ns) => {
                    close_namespace_listeners(state, &ns);
                    empty(StatusCode::OK)
                }
                None => empty(StatusCode::NO_CONTENT),
            }
        }
        _ => Err(method_not_allowed(r)),
    }
}

/// `sku.name` of a body (Basic is refused: it has no Hybrid Connections), if given.
fn sku_name(body: &Value) -> Result<Option<String>, ArmError> {
    let Some(sku) = body.get("sku").filter(|s| !s.is_null()) else {
        return Ok(None);
    };
    let name = opt_str(sku, "name")?.unwrap_or("Standard");
    if !name.eq_ignore_ascii_case("Standard") {
        return Err(ArmError::bad_request(format!(
            "SKU '{name}' is not supported: Relay namespaces are Standard."
        )));
    }
    Ok(Some("Standard".to_owned()))
}

fn put_namespace(state: &RelayState, r: &ArmRequest, scope: &Scope, name: &str) -> ArmResult {
    let body = r.json()?;
    let location = opt_str(&body, "location")?
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            ArmError::bad_request("'location' is required.").with_field_code("LocationRequired")
        })?
        .to_owned();
    let new_tags = tags(&body)?;
    let sku = sku_name(&body)?;
    let now = now(state);
    let azure_names = state.options.arm.azure_host_names;
    let (ns, created) = state
        .store
        .update(|m| {
            model::validate_namespace_name(name)?;
            let key = name.to_ascii_lowercase();
            if let Some(existing) = m.namespaces.get_mut(&key) {
                if !scope.holds(&existing.arm.subscription, &existing.arm.resource_group) {
                    return Err(ModelError::NamespaceNameTaken(name.into()));
                }
                existing.arm.location = location.clone();
                if let Some(tags) = &new_tags {
                    existing.arm.tags = tags.clone();
                }
                if let Some(sku) = &sku {
                    existing.arm.sku = sku.clone();
                }
                existing.arm.updated_at = now;
                return Ok((existing.clone(), false));
            }
            let mut ns = crate::config::empty_namespace(name, now);
            ns.arm = ArmPlacement {
                subscription: scope.subscription.clone(),
                resource_group: scope.group.clone(),
                location: location.clone(),
                tags: new_tags.clone().unwrap_or_default(),
                sku: sku.clone().unwrap_or_else(|| "Standard".into()),
                updated_at: now,
            };
            if azure_names {
                ns.aliases.push(format!("{key}.servicebus.windows.net"));
            }
            crate::config::ensure_root_rule(&mut ns)?;
            m.namespaces.insert(key, ns.clone());
            ensure_group(m, &scope.subscription, &scope.group, &location);
            Ok((ns, true))
        })
        .map_err(|e| store_error(scope, e))?;
    let status = if created {
        tracing::info!(namespace = %ns.name, group = %scope.group, "namespace created through ARM");
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(super::json_response(status, &namespace_json(state, &ns)))
}

impl ArmError {
    fn with_field_code(mut self, code: &str) -> Self {
        self.code = code.into();
        self
    }
}

/// `GET|PUT|DELETE …/hybridConnections/{name}`.
fn hybrid_connection(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    ns_name: &str,
    name: &str,
) -> ArmResult {
    match r.method {
        Method::GET => {
            let model = state.store.read();
            let ns = namespace_in(&model, scope, ns_name).map_err(|e| in_scope(scope, e))?;
            let hc = ns
                .hybrid_connections
                .get(&name.to_ascii_lowercase())
                .ok_or_else(|| {
                    in_scope(
                        scope,
                        ModelError::NoHybridConnection(ns_name.into(), name.into()),
                    )
                })?;
            ok(&hybrid_connection_json(state, ns, hc))
        }
        Method::PUT => {
            let body = r.json()?;
            let empty_properties = json!({});
            let properties = body.get("properties").unwrap_or(&empty_properties);
            let requires_auth = match properties.get("requiresClientAuthorization") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(ArmError::bad_request(
                        "'properties.requiresClientAuthorization' must be true or false.",
                    ));
                }
            };
            let metadata = opt_str(properties, "userMetadata")?.map(str::to_owned);
            if metadata.as_ref().is_some_and(|m| m.len() > 1024) {
                return Err(ArmError::bad_request(
                    "'properties.userMetadata' is longer than 1024 characters.",
                ));
            }
            let now = now(state);
            let (ns, hc) = state
                .store
                .update(|m| {
                    model::validate_hybrid_connection_name(name)?;
                    if name.contains('/') {
                        return Err(ModelError::BadHybridConnectionName(name.into()));
                    }
                    let ns = namespace_in_mut(m, scope, ns_name)?;
                    let hc = ns
                        .hybrid_connections
                        .entry(name.to_ascii_lowercase())
                        .or_insert_with(|| crate::config::empty_hybrid_connection(name, now));
                    if let Some(requires) = requires_auth {
                        hc.requires_client_authorization = requires;
                    }
                    hc.user_metadata = metadata.clone();
                    hc.updated_at = now;
                    let hc = hc.clone();
                    Ok((ns.clone(), hc))
                })
                .map_err(|e| store_error(scope, e))?;
            ok(&hybrid_connection_json(state, &ns, &hc))
        }
        Method::DELETE => {
            let removed = state
                .store
                .update(|m| {
                    let ns = namespace_in_mut(m, scope, ns_name)?;
                    Ok(ns.hybrid_connections.remove(&name.to_ascii_lowercase()))
                })
                .map_err(|e| store_error(scope, e))?;
            match removed {
                Some(hc) => {
                    state.registry.close_listeners(
                        &(ns_name.to_ascii_lowercase(), hc.name.to_ascii_lowercase()),
                        close_code::GOING_AWAY,
                        "The hybrid connection was deleted.",
                    );
                    empty(StatusCode::OK)
                }
                None => empty(StatusCode::NO_CONTENT),
            }
        }
        _ => Err(method_not_allowed(r)),
    }
}

/// The rules of `owner`, mutable, inside a store update.
fn rules_mut<'m>(
    m: &'m mut Model,
    scope: &Scope,
    owner: Owner<'_>,
) -> Result<&'m mut Vec<Rule>, ModelError> {
    let ns = namespace_in_mut(m, scope, owner.namespace())?;
    match owner {
        Owner::Namespace(_) => Ok(&mut ns.authorization_rules),
        Owner::HybridConnection(ns_name, hc) => ns
            .hybrid_connections
            .get_mut(&hc.to_ascii_lowercase())
            .map(|h| &mut h.authorization_rules)
            .ok_or_else(|| ModelError::NoHybridConnection(ns_name.into(), hc.into())),
    }
}

/// The owner's id and rule type, and the namespace, for rendering.
fn owner_view(
    model: &Model,
    scope: &Scope,
    owner: Owner<'_>,
) -> Result<(Namespace, String, &'static str, Vec<Rule>), ModelError> {
    let ns = namespace_in(model, scope, owner.namespace())?;
    match owner {
        Owner::Namespace(_) => Ok((
            ns.clone(),
            namespace_id(ns),
            NS_RULE_TYPE,
            ns.authorization_rules.clone(),
        )),
        Owner::HybridConnection(ns_name, hc) => {
            let h = ns
                .hybrid_connections
                .get(&hc.to_ascii_lowercase())
                .ok_or_else(|| ModelError::NoHybridConnection(ns_name.into(), hc.into()))?;
            Ok((
                ns.clone(),
                hybrid_connection_id(ns, h),
                HC_RULE_TYPE,
                h.authorization_rules.clone(),
            ))
        }
    }
}

/// `…/authorizationRules[/{rule}[/listKeys|/regenerateKeys]]` of a namespace or a hybrid
/// connection.
fn rules(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    owner: Owner<'_>,
    rest: &[&str],
) -> ArmResult {
    let view = |model: &Model| owner_view(model, scope, owner).map_err(|e| in_scope(scope, e));
    match rest {
        [] => {
            r.only(Method::GET)?;
            let (ns, id, kind, rules) = view(&state.store.read())?;
            list(
                rules
                    .iter()
                    .map(|rule| rule_json(&ns, &id, kind, &rule.0))
                    .collect(),
            )
        }
        [rule] => match r.method {
            Method::GET => {
                let (ns, id, kind, rules) = view(&state.store.read())?;
                let found = find_rule(&rules, owner, rule).map_err(|e| in_scope(scope, e))?;
                ok(&rule_json(&ns, &id, kind, &found.0))
            }
            Method::PUT => put_rule(state, r, scope, owner, rule),
            Method::DELETE => {
                let removed = state
                    .store
                    .update(|m| {
                        let rules = rules_mut(m, scope, owner)?;
                        let before = rules.len();
                        rules.retain(|x| !x.0.name.eq_ignore_ascii_case(rule));
                        Ok(rules.len() != before)
                    })
                    .map_err(|e| store_error(scope, e))?;
                empty(if removed {
                    StatusCode::OK
                } else {
                    StatusCode::NO_CONTENT
                })
            }
            _ => Err(method_not_allowed(r)),
        },
        [rule, action] if kw(action, "listKeys") => {
            r.only(Method::POST)?;
            let (ns, _, _, rules) = view(&state.store.read())?;
            let found = find_rule(&rules, owner, rule).map_err(|e| in_scope(scope, e))?;
            ok(&keys_json(
                state,
                &ns,
                owner_hc_name(&ns, owner).as_deref(),
                &found.0,
            ))
        }
        [rule, action] if kw(action, "regenerateKeys") => {
            r.only(Method::POST)?;
            regenerate(state, r, scope, owner, rule)
        }
        _ => Err(unknown(r)),
    }
}

/// The stored spelling of the owner's hybrid connection name.
fn owner_hc_name(ns: &Namespace, owner: Owner<'_>) -> Option<String> {
    owner.hc().map(|hc| {
        ns.hybrid_connections
            .get(&hc.to_ascii_lowercase())
            .map_or_else(|| hc.to_owned(), |h| h.name.clone())
    })
}

fn find_rule<'r>(rules: &'r [Rule], owner: Owner<'_>, name: &str) -> Result<&'r Rule, ModelError> {
    rules
        .iter()
        .find(|r| r.0.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            ModelError::NoRule(owner.hc().unwrap_or(owner.namespace()).into(), name.into())
        })
}

/// PUT of a rule: rights replaced, existing keys kept (the CLI puts `defaultSender` on every
/// `webapp hybrid-connection add`, ARM.md §3.3).
fn put_rule(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    owner: Owner<'_>,
    name: &str,
) -> ArmResult {
    let body = r.json()?;
    let rights = body
        .get("properties")
        .and_then(|p| p.get("rights"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ArmError::bad_request(
                "'properties.rights' is required: a list of Listen, Send and Manage.",
            )
        })?;
    let names = rights
        .iter()
        .map(|v| {
            v.as_str().map(str::to_owned).ok_or_else(|| {
                ArmError::bad_request("'properties.rights' must be a list of strings.")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rights = model::parse_rights(&names).map_err(ArmError::from)?;
    if rights == Rights::NONE {
        return Err(ArmError::bad_request(
            "'properties.rights' must name at least one right.",
        ));
    }
    state
        .store
        .update(|m| {
            let rules = rules_mut(m, scope, owner)?;
            match rules
                .iter_mut()
                .find(|x| x.0.name.eq_ignore_ascii_case(name))
            {
                Some(existing) => existing.0.rights = rights,
                None => {
                    let rule = model::new_rule(name, rights, None, None)?;
                    model::upsert_rule(rules, owner.hc().unwrap_or(owner.namespace()), rule)?;
                }
            }
            Ok(())
        })
        .map_err(|e| store_error(scope, e))?;
    let (ns, id, kind, rules) =
        owner_view(&state.store.read(), scope, owner).map_err(|e| in_scope(scope, e))?;
    let found = find_rule(&rules, owner, name).map_err(|e| in_scope(scope, e))?;
    ok(&rule_json(&ns, &id, kind, &found.0))
}

/// `regenerateKeys {"keyType": "PrimaryKey"|"SecondaryKey", "key": optional value}`.
fn regenerate(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    owner: Owner<'_>,
    name: &str,
) -> ArmResult {
    let body = r.json()?;
    let key_type = opt_str(&body, "keyType")?.unwrap_or_default();
    let primary = if key_type.eq_ignore_ascii_case("PrimaryKey") {
        true
    } else if key_type.eq_ignore_ascii_case("SecondaryKey") {
        false
    } else {
        return Err(ArmError::bad_request(format!(
            "'keyType' must be PrimaryKey or SecondaryKey, not '{key_type}'."
        )));
    };
    let new_key = match opt_str(&body, "key")? {
        Some(given) => SasKey::new(given)
            .map_err(|e| ArmError::bad_request(format!("'key' is not a usable key: {e}.")))?,
        None => SasKey::from_random_bytes(rand::random()),
    };
    state
        .store
        .update(|m| {
            let rules = rules_mut(m, scope, owner)?;
            let found = rules
                .iter_mut()
                .find(|x| x.0.name.eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    ModelError::NoRule(owner.hc().unwrap_or(owner.namespace()).into(), name.into())
                })?;
            if primary {
                found.0.primary_key = new_key.clone();
            } else {
                found.0.secondary_key = new_key.clone();
            }
            Ok(())
        })
        .map_err(|e| store_error(scope, e))?;
    tracing::info!(rule = name, primary, "key regenerated through ARM");
    let (ns, _, _, rules) =
        owner_view(&state.store.read(), scope, owner).map_err(|e| in_scope(scope, e))?;
    let found = find_rule(&rules, owner, name).map_err(|e| in_scope(scope, e))?;
    ok(&keys_json(
        state,
        &ns,
        owner_hc_name(&ns, owner).as_deref(),
        &found.0,
    ))
}

/// `GET /providers/Microsoft.Relay/operations` (names from the spec's example).
pub(super) fn operations(r: &ArmRequest) -> ArmResult {
    r.only(Method::GET)?;
    let op = |name: &str, resource: &str, operation: &str| {
        json!({
            "name": format!("Microsoft.Relay/{name}"),
            "display": {
                "provider": "Microsoft Azure Relay",
                "resource": resource,
                "operation": operation,
                "description": operation,
            },
            "isDataAction": false,
            "origin": "user,system",
        })
    };
    list(vec![
        op(
            "checkNameAvailability/action",
            "Namespace",
            "Check Namespace Name Availability",
        ),
        op(
            "namespaces/write",
            "Namespace",
            "Create Or Update Namespace",
        ),
        op("namespaces/read", "Namespace", "Get Namespace Resource"),
        op("namespaces/delete", "Namespace", "Delete Namespace"),
        op(
            "namespaces/authorizationRules/write",
            "Namespace Authorization Rules",
            "Create or Update Namespace Authorization Rule",
        ),
        op(
            "namespaces/authorizationRules/read",
            "Namespace Authorization Rules",
            "Get Namespace Authorization Rules",
        ),
        op(
            "namespaces/authorizationRules/delete",
            "Namespace Authorization Rules",
            "Delete Namespace Authorization Rule",
        ),
        op(
            "namespaces/authorizationRules/listkeys/action",
            "Namespace Authorization Rules",
            "List Namespace Authorization Rule Keys",
        ),
        op(
            "namespaces/authorizationRules/regenerateKeys/action",
            "Namespace Authorization Rules",
            "Regenerate Namespace Authorization Rule Keys",
        ),
        op(
            "namespaces/HybridConnections/write",
            "HybridConnections",
            "Create or Update HybridConnection",
        ),
        op(
            "namespaces/HybridConnections/read",
            "HybridConnections",
            "Get HybridConnection",
        ),
        op(
            "namespaces/HybridConnections/delete",
            "HybridConnections",
            "Delete HybridConnection",
        ),
        op(
            "namespaces/HybridConnections/authorizationRules/write",
            "HybridConnection Authorization Rules",
            "Create or Update HybridConnection Authorization Rule",
        ),
        op(
            "namespaces/HybridConnections/authorizationRules/read",
            "HybridConnection Authorization Rules",
            "Get HybridConnection Authorization Rule",
        ),
        op(
            "namespaces/HybridConnections/authorizationRules/delete",
            "HybridConnection Authorization Rules",
            "Delete HybridConnection Authorization Rule",
        ),
        op(
            "namespaces/HybridConnections/authorizationRules/listkeys/action",
            "HybridConnection Authorization Rules",
            "List HybridConnection Authorization Rule Keys",
        ),
        op(
            "namespaces/HybridConnections/authorizationRules/regeneratekeys/action",
            "HybridConnection Authorization Rules",
            "Regenerate HybridConnection Authorization Rule Keys",
        ),
        op("operations/read", "Operations", "Get Operations"),
    ])
}

/// The namespace and hybrid connection a relay ARM URI names (for `web`), if they exist.
pub(super) fn send_key(model: &Model, namespace: &str, hc: &str, rule: &str) -> Option<SasKey> {
    let ns = model.namespaces.get(&namespace.to_ascii_lowercase())?;
    let entity = ns.hybrid_connections.get(&hc.to_ascii_lowercase());
    entity
        .map(|h| &h.authorization_rules)
        .into_iter()
        .flatten()
        .chain(&ns.authorization_rules)
        .find(|r| r.0.name.eq_ignore_ascii_case(rule))
        .map(|r| r.0.primary_key.clone())
}
