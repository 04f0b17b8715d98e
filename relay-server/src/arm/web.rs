//! Microsoft.Web's side of hybrid connections (ARM.md §3): the relays a site (or slot) uses,
//! the plan-level views of them, the plan's hybrid connection limit, and just enough of sites
//! and plans to link an app to its plan. A site needs no record to have relays (`az webapp
//! hybrid-connection add` works for any app name); a plan is needed for plan-level views and
//! limits.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::groups::ensure_group;
use super::{
    ArmError, ArmRequest, ArmResult, Scope, empty, kw, list, method_not_allowed, ok, opt_str,
    unknown,
};
use crate::model::{self, DEFAULT_LOCATION, Model, ModelError, Plan, Site, WebRelay, arm_key};
use crate::state::RelayState;

fn site_id(subscription: &str, group: &str, site: &str) -> String {
    format!(
        "{}/providers/Microsoft.Web/sites/{site}",
        Scope::group_id(subscription, group)
    )
}

fn plan_id(subscription: &str, group: &str, plan: &str) -> String {
    format!(
        "{}/providers/Microsoft.Web/serverfarms/{plan}",
        Scope::group_id(subscription, group)
    )
}

/// Where a site relay lives in its path: the site (and slot) part.
fn owner_id(w: &WebRelay) -> String {
    let site = site_id(&w.subscription, &w.resource_group, &w.site);
    match &w.slot {
        Some(slot) => format!("{site}/slots/{slot}"),
        None => site,
    }
}

/// The location shown for a site's relay: the site's, else its namespace's.
fn location_of(model: &Model, w: &WebRelay) -> String {
    model
        .sites
        .get(&arm_key(&[&w.subscription, &w.resource_group, &w.site]))
        .map(|s| s.location.clone())
        .or_else(|| {
            model
                .namespaces
                .get(&w.namespace.to_ascii_lowercase())
                .map(|n| n.arm.location.clone())
        })
        .unwrap_or_else(|| DEFAULT_LOCATION.into())
}

/// A site relay as ARM shows it; the Send key only when `with_key` (PUT answers; GET does
/// not return it, ARM.md §3.1).
fn relay_json(model: &Model, w: &WebRelay, with_key: bool) -> Value {
    let (kind, name) = match &w.slot {
        Some(slot) => (
            "Microsoft.Web/sites/slots/hybridConnectionNamespaces/relays",
            format!("{}/{slot}/{}/{}", w.site, w.namespace, w.relay),
        ),
        None => (
            "Microsoft.Web/sites/hybridConnectionNamespaces/relays",
            format!("{}/{}/{}", w.site, w.namespace, w.relay),
        ),
    };
    json!({
        "id": format!("{}/hybridConnectionNamespaces/{}/relays/{}", owner_id(w), w.namespace, w.relay),
        "name": name,
        "type": kind,
        "kind": null,
        "location": location_of(model, w),
        "properties": properties(w, with_key),
    })
}

fn properties(w: &WebRelay, with_key: bool) -> Value {
    json!({
        "serviceBusNamespace": w.namespace,
        "relayName": w.relay,
        "relayArmUri": w.relay_arm_uri,
        "hostname": w.hostname,
        "port": w.port,
        "sendKeyName": w.send_key_name,
        "sendKeyValue": if with_key { w.send_key_value.as_ref().map(|k| k.expose().to_owned()) } else { None },
        "serviceBusSuffix": w.service_bus_suffix,
    })
}

/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/…`.
pub(super) fn group_level(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    rest: &[&str],
) -> ArmResult {
    match rest {
        [s, app] if kw(s, "sites") => site(state, r, scope, app),
        [s, app, h] if kw(s, "sites") && kw(h, "hybridConnectionRelays") => {
            site_relays(state, r, scope, app, None)
        }
        [s, app, n, ns, rl, relay]
            if kw(s, "sites") && kw(n, "hybridConnectionNamespaces") && kw(rl, "relays") =>
        {
            site_relay(state, r, scope, app, None, ns, relay)
        }
        [s, app, sl, slot, h]
            if kw(s, "sites") && kw(sl, "slots") && kw(h, "hybridConnectionRelays") =>
        {
            site_relays(state, r, scope, app, Some(slot))
        }
        [s, app, sl, slot, n, ns, rl, relay]
            if kw(s, "sites")
                && kw(sl, "slots")
                && kw(n, "hybridConnectionNamespaces")
                && kw(rl, "relays") =>
        {
            site_relay(state, r, scope, app, Some(slot), ns, relay)
        }
        [f, plan] if kw(f, "serverfarms") => plan_resource(state, r, scope, plan),
        [f, plan, h] if kw(f, "serverfarms") && kw(h, "hybridConnectionRelays") => {
            r.only(Method::GET)?;
            let model = state.store.read();
            find_plan(&model, scope, plan)?;
            list(
                plan_relays(&model, scope, plan)
                    .iter()
                    .map(|w| plan_relay_json(&model, scope, plan, w))
                    .collect(),
            )
        }
        [f, plan, l, limit]
            if kw(f, "serverfarms")
                && kw(l, "hybridConnectionPlanLimits")
                && kw(limit, "limit") =>
        {
            r.only(Method::GET)?;
            plan_limit(state, scope, plan)
        }
        [f, plan, n, ns, rl, relay, more @ ..]
            if kw(f, "serverfarms") && kw(n, "hybridConnectionNamespaces") && kw(rl, "relays") =>
        {
            plan_relay(state, r, scope, plan, ns, relay, more)
        }
        _ => Err(unknown(r)),
    }
}

/// `GET|PUT|DELETE …/sites/{app}`: the site record that links an app to its plan.
fn site(state: &RelayState, r: &ArmRequest, scope: &Scope, name: &str) -> ArmResult {
    let key = arm_key(&[&scope.subscription, &scope.group, name]);
    match r.method {
        Method::GET => {
            let model = state.store.read();
            let site = model.sites.get(&key).ok_or_else(|| site_not_found(name))?;
            ok(&site_json(site))
        }
        Method::PUT => {
            let body = r.json()?;
            let location = opt_str(&body, "location")?
                .ok_or_else(|| ArmError::bad_request("'location' is required."))?
                .to_owned();
            let farm = body
                .get("properties")
                .map(|p| opt_str(p, "serverFarmId"))
                .transpose()?
                .flatten()
                .map(str::to_owned);
            let site = Site {
                subscription: scope.subscription.clone(),
                resource_group: scope.group.clone(),
                name: name.to_owned(),
                location: location.clone(),
                server_farm_id: farm,
            };
            let stored = state.store.update(|m| {
                let site = m.sites.get(&key).map_or(site.clone(), |old| Site {
                    name: old.name.clone(),
                    ..site.clone()
                });
                m.sites.insert(key.clone(), site.clone());
                ensure_group(m, &scope.subscription, &scope.group, &location);
                Ok(site)
            })?;
            ok(&site_json(&stored))
        }
        Method::DELETE => {
            let removed = state.store.update(|m| {
                let removed = m.sites.remove(&key).is_some();
                m.web_relays.retain(|_, w| {
                    !(scope.holds(&w.subscription, &w.resource_group)
                        && w.site.eq_ignore_ascii_case(name))
                });
                Ok(removed)
            })?;
            empty(if removed {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            })
        }
        _ => Err(method_not_allowed(r)),
    }
}

fn site_not_found(name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The Resource 'Microsoft.Web/sites/{name}' was not found."),
    )
}

fn site_json(site: &Site) -> Value {
    let host = format!("{}.azurewebsites.net", site.name.to_ascii_lowercase());
    json!({
        "id": site_id(&site.subscription, &site.resource_group, &site.name),
        "name": site.name,
        "type": "Microsoft.Web/sites",
        "kind": "app",
        "location": site.location,
        "properties": {
            "serverFarmId": site.server_farm_id,
            "state": "Running",
            "defaultHostName": host,
            "hostNames": [host],
            "enabledHostNames": [host],
            "provisioningState": "Succeeded",
        },
    })
}

/// `GET …/sites/{app}[/slots/{slot}]/hybridConnectionRelays`: `{"value": […]}` (the CLI
/// reads `value`, ARM.md §3.1).
fn site_relays(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    app: &str,
    slot: Option<&str>,
) -> ArmResult {
    r.only(Method::GET)?;
    let model = state.store.read();
    list(
        model
            .web_relays
            .values()
            .filter(|w| {
                scope.holds(&w.subscription, &w.resource_group)
                    && w.site.eq_ignore_ascii_case(app)
                    && same_slot(w.slot.as_deref(), slot)
            })
            .map(|w| relay_json(&model, w, false))
            .collect(),
    )
}

fn same_slot(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// `port` as a number or a string of one (the CLI sends a string, ARM.md §1.9).
fn port(value: &Value) -> Result<Option<u16>, ArmError> {
    let bad = || ArmError::bad_request("'properties.port' must be a port number (1-65535).");
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or_else(bad),
        Value::String(s) => s
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(Some)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn relay_not_found(ns: &str, relay: &str) -> ArmError {
    ArmError::not_found(format!(
        "Hybrid connection {relay} in namespace {ns} is not configured for this app."
    ))
}

/// `GET|PUT|PATCH|DELETE …/sites/{app}[/slots/{slot}]/hybridConnectionNamespaces/{ns}/relays/{relay}`.
fn site_relay(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    app: &str,
    slot: Option<&str>,
    ns: &str,
    relay: &str,
) -> ArmResult {
    let key = model::web_relay_key(&scope.subscription, &scope.group, app, slot, ns, relay);
    match r.method {
        Method::GET => {
            let model = state.store.read();
            let w = model
                .web_relays
                .get(&key)
                .ok_or_else(|| relay_not_found(ns, relay))?;
            ok(&relay_json(&model, w, false))
        }
        Method::PUT | Method::PATCH => {
            let body = r.json()?;
            let empty_properties = json!({});
            let p = body.get("properties").unwrap_or(&empty_properties);
            let hostname = opt_str(p, "hostname")?.map(str::to_owned);
            let port = port(p.get("port").unwrap_or(&Value::Null))?;
            let send_key_name = opt_str(p, "sendKeyName")?.map(str::to_owned);
            let send_key_value = opt_str(p, "sendKeyValue")?
                .filter(|k| !k.is_empty())
                .map(|k| {
                    hc_protocol::SasKey::new(k).map_err(|e| {
                        ArmError::bad_request(format!(
                            "'properties.sendKeyValue' is not a usable key: {e}."
                        ))
                    })
                })
                .transpose()?;
            let arm_uri = opt_str(p, "relayArmUri")?.map(str::to_owned);
            let suffix = opt_str(p, "serviceBusSuffix")?.map(str::to_owned);
            let is_put = r.method == Method::PUT;
            if is_put && (hostname.as_deref().is_none_or(str::is_empty) || port.is_none()) {
                return Err(ArmError::bad_request(
                    "'properties.hostname' and 'properties.port' are required: the endpoint the app reaches.",
                ));
            }
            let stored = state
                .store
                .update(|m| {
                    let existing = m.web_relays.get(&key).cloned();
                    if existing.is_none() && !is_put {
                        return Ok(None);
                    }
                    let mut w = existing.clone().unwrap_or_else(|| WebRelay {
                        subscription: scope.subscription.clone(),
                        resource_group: scope.group.clone(),
                        site: app.to_owned(),
                        slot: slot.map(str::to_owned),
                        namespace: ns.to_owned(),
                        relay: relay.to_owned(),
                        relay_arm_uri: None,
                        hostname: String::new(),
                        port: 0,
                        send_key_name: model::SENDER_RULE.to_owned(),
                        send_key_value: None,
                        service_bus_suffix: None,
                    });
                    if let Some(h) = &hostname {
                        w.hostname = h.clone();
                    }
                    if let Some(p) = port {
                        w.port = p;
                    }
                    if let Some(n) = &send_key_name {
                        w.send_key_name = n.clone();
                    }
                    if arm_uri.is_some() {
                        w.relay_arm_uri = arm_uri.clone();
                    }
                    if suffix.is_some() {
                        w.service_bus_suffix = suffix.clone();
                    }
                    // The key given, else the rule's current key in the relay model (what the
                    // portal would look up).
                    w.send_key_value = send_key_value
                        .clone()
                        .or_else(|| super::relay::send_key(m, ns, relay, &w.send_key_name))
                        .or(w.send_key_value.take());
                    if existing.is_none() {
                        check_plan_limit(m, &w)?;
                    }
                    m.web_relays.insert(key.clone(), w.clone());
                    ensure_group(m, &scope.subscription, &scope.group, DEFAULT_LOCATION);
                    Ok(Some(w))
                })?
                .ok_or_else(|| relay_not_found(ns, relay))?;
            let model = state.store.read();
            ok(&relay_json(&model, &stored, true))
        }
        Method::DELETE => {
            // 200 whether or not it was there: the Python SDK accepts nothing else (ARM.md §1.4).
            state.store.update(|m| Ok(m.web_relays.remove(&key)))?;
            empty(StatusCode::OK)
        }
        _ => Err(method_not_allowed(r)),
    }
}

/// Refuses a new relay for an app that already uses as many as its plan allows.
fn check_plan_limit(m: &Model, w: &WebRelay) -> Result<(), ModelError> {
    let Some(plan) = plan_of_site(m, &w.subscription, &w.resource_group, &w.site) else {
        return Ok(());
    };
    let limit = plan.hybrid_connection_limit();
    let used = m
        .web_relays
        .values()
        .filter(|x| {
            x.subscription.eq_ignore_ascii_case(&w.subscription)
                && x.resource_group.eq_ignore_ascii_case(&w.resource_group)
                && x.site.eq_ignore_ascii_case(&w.site)
                && same_slot(x.slot.as_deref(), w.slot.as_deref())
        })
        .count();
    if used >= limit {
        return Err(ModelError::PlanLimit(plan.name.clone(), limit));
    }
    Ok(())
}

/// The plan a site record names, if both exist.
fn plan_of_site<'m>(m: &'m Model, sub: &str, group: &str, site: &str) -> Option<&'m Plan> {
    let farm = m
        .sites
        .get(&arm_key(&[sub, group, site]))?
        .server_farm_id
        .as_ref()?;
    m.plans
        .values()
        .find(|p| plan_id(&p.subscription, &p.resource_group, &p.name).eq_ignore_ascii_case(farm))
}

fn find_plan<'m>(model: &'m Model, scope: &Scope, plan: &str) -> Result<&'m Plan, ArmError> {
    model
        .plans
        .get(&arm_key(&[&scope.subscription, &scope.group, plan]))
        .ok_or_else(|| {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                format!("The Resource 'Microsoft.Web/serverfarms/{plan}' under resource group '{}' was not found.", scope.group),
            )
        })
}

/// The relays of every site on a plan.
fn plan_relays<'m>(model: &'m Model, scope: &Scope, plan: &str) -> Vec<&'m WebRelay> {
    let id = plan_id(&scope.subscription, &scope.group, plan);
    model
        .web_relays
        .values()
        .filter(|w| {
            model
                .sites
                .get(&arm_key(&[&w.subscription, &w.resource_group, &w.site]))
                .and_then(|s| s.server_farm_id.as_ref())
                .is_some_and(|farm| farm.eq_ignore_ascii_case(&id))
        })
        .collect()
}

fn plan_relay_json(model: &Model, scope: &Scope, plan: &str, w: &WebRelay) -> Value {
    json!({
        "id": format!("{}/hybridConnectionNamespaces/{}/relays/{}", plan_id(&scope.subscription, &scope.group, plan), w.namespace, w.relay),
        "name": format!("{plan}/{}/{}", w.namespace, w.relay),
        "type": "Microsoft.Web/serverfarms/hybridConnectionNamespaces/relays",
        "kind": null,
        "location": location_of(model, w),
        "properties": properties(w, false),
    })
}

/// Tier of an App Service SKU name (`B1` Basic, `S2` Standard, `P1v3` PremiumV3, …).
fn tier_for(sku: &str) -> String {
    let upper = sku.to_ascii_uppercase();
    let tier = match upper.chars().next() {
        Some('F') => "Free",
        Some('D') => "Shared",
        Some('B') => "Basic",
        Some('S') => "Standard",
        Some('I') if upper.ends_with("V2") => "IsolatedV2",
        Some('I') => "Isolated",
        Some('P') if upper.ends_with("V3") => "PremiumV3",
        Some('P') if upper.ends_with("V2") => "PremiumV2",
        Some('P') => "Premium",
        Some('Y') => "Dynamic",
        Some('E') => "ElasticPremium",
        _ => "Standard",
    };
    tier.to_owned()
}

fn plan_json(model: &Model, plan: &Plan) -> Value {
    let id = plan_id(&plan.subscription, &plan.resource_group, &plan.name);
    let sites = model
        .sites
        .values()
        .filter(|s| {
            s.server_farm_id
                .as_ref()
                .is_some_and(|f| f.eq_ignore_ascii_case(&id))
        })
        .count();
    json!({
        "id": id,
        "name": plan.name,
        "type": "Microsoft.Web/serverfarms",
        "kind": "app",
        "location": plan.location,
        "sku": {
            "name": plan.sku_name,
            "tier": plan.sku_tier,
            "size": plan.sku_name,
            "family": plan.sku_name.chars().next().map(String::from).unwrap_or_default(),
            "capacity": 1,
        },
        "properties": {"status": "Ready", "numberOfSites": sites, "provisioningState": "Succeeded"},
    })
}

/// `GET|PUT|DELETE …/serverfarms/{plan}`.
fn plan_resource(state: &RelayState, r: &ArmRequest, scope: &Scope, name: &str) -> ArmResult {
    let key = arm_key(&[&scope.subscription, &scope.group, name]);
    match r.method {
        Method::GET => {
            let model = state.store.read();
            let plan = find_plan(&model, scope, name)?;
            ok(&plan_json(&model, plan))
        }
        Method::PUT => {
            let body = r.json()?;
            let location = opt_str(&body, "location")?
                .ok_or_else(|| ArmError::bad_request("'location' is required."))?
                .to_owned();
            let sku = body.get("sku").cloned().unwrap_or(json!({"name": "S1"}));
            let sku_name = opt_str(&sku, "name")?.unwrap_or("S1").to_owned();
            let sku_tier = opt_str(&sku, "tier")?
                .map(str::to_owned)
                .unwrap_or_else(|| tier_for(&sku_name));
            let plan = Plan {
                subscription: scope.subscription.clone(),
                resource_group: scope.group.clone(),
                name: name.to_owned(),
                location: location.clone(),
                sku_name,
                sku_tier,
            };
            state.store.update(|m| {
                m.plans.insert(key.clone(), plan.clone());
                ensure_group(m, &scope.subscription, &scope.group, &location);
                Ok(())
            })?;
            let model = state.store.read();
            ok(&plan_json(&model, &plan))
        }
        Method::DELETE => {
            let removed = state.store.update(|m| Ok(m.plans.remove(&key).is_some()))?;
            empty(if removed {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            })
        }
        _ => Err(method_not_allowed(r)),
    }
}

/// `GET …/serverfarms/{plan}/hybridConnectionPlanLimits/limit`.
fn plan_limit(state: &RelayState, scope: &Scope, plan: &str) -> ArmResult {
    let model = state.store.read();
    let found = find_plan(&model, scope, plan)?;
    let mut used: Vec<(String, String)> = plan_relays(&model, scope, plan)
        .iter()
        .map(|w| {
            (
                w.namespace.to_ascii_lowercase(),
                w.relay.to_ascii_lowercase(),
            )
        })
        .collect();
    used.sort();
    used.dedup();
    ok(&json!({
        "id": format!("{}/hybridConnectionPlanLimits/limit", plan_id(&scope.subscription, &scope.group, plan)),
        "name": "limit",
        "type": "Microsoft.Web/serverfarms/hybridConnectionPlanLimits",
        "properties": {"current": used.len(), "maximum": found.hybrid_connection_limit()},
    }))
}

/// `…/serverfarms/{plan}/hybridConnectionNamespaces/{ns}/relays/{relay}[/listKeys|/sites]`.
fn plan_relay(
    state: &RelayState,
    r: &ArmRequest,
    scope: &Scope,
    plan: &str,
    ns: &str,
    relay: &str,
    rest: &[&str],
) -> ArmResult {
    let matching = |model: &Model| -> Result<Vec<WebRelay>, ArmError> {
        find_plan(model, scope, plan)?;
        Ok(plan_relays(model, scope, plan)
            .into_iter()
            .filter(|w| w.namespace.eq_ignore_ascii_case(ns) && w.relay.eq_ignore_ascii_case(relay))
            .cloned()
            .collect())
    };
    match (rest, &r.method) {
        ([], &Method::GET) => {
            let model = state.store.read();
            let found = matching(&model)?;
            let w = found.first().ok_or_else(|| relay_not_found(ns, relay))?;
            ok(&plan_relay_json(&model, scope, plan, w))
        }
        ([], &Method::DELETE) => {
            let keys: Vec<String> = matching(&state.store.read())?
                .iter()
                .map(WebRelay::key)
                .collect();
            state.store.update(|m| {
                for key in &keys {
                    m.web_relays.remove(key);
                }
                Ok(())
            })?;
            empty(if keys.is_empty() {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::OK
            })
        }
        ([k], &Method::POST) if kw(k, "listKeys") => {
            let model = state.store.read();
            let found = matching(&model)?;
            let w = found.first().ok_or_else(|| relay_not_found(ns, relay))?;
            let key = w
                .send_key_value
                .clone()
                .or_else(|| super::relay::send_key(&model, ns, relay, &w.send_key_name));
            ok(&json!({
                "id": format!("{}/hybridConnectionNamespaces/{}/relays/{}", plan_id(&scope.subscription, &scope.group, plan), w.namespace, w.relay),
                "name": w.relay,
                "type": "Microsoft.Web/serverfarms/hybridConnectionNamespaces/relays",
                "properties": {"sendKeyName": w.send_key_name, "sendKeyValue": key.map(|k| k.expose().to_owned())},
            }))
        }
        ([s], &Method::GET) if kw(s, "sites") => {
            let model = state.store.read();
            let found = matching(&model)?;
            let mut sites: Vec<Value> = found
                .iter()
                .map(|w| json!({"name": w.site, "id": site_id(&w.subscription, &w.resource_group, &w.site)}))
                .collect();
            sites.dedup();
            list(sites)
        }
        ([] | [_], _) => Err(method_not_allowed(r)),
        _ => Err(unknown(r)),
    }
}
