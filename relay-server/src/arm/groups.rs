//! Subscriptions and resource groups (ARM.md §4.1). Any subscription id is served; the
//! configured one is listed first. A resource group exists when it was created (`PUT`) or
//! holds a resource; putting a resource into a group that does not exist creates it, as a
//! convenience for tests (Azure would answer 404). Deleting a group deletes what it holds.

use std::collections::BTreeSet;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{
    ArmError, ArmRequest, ArmResult, Scope, empty, list, method_not_allowed, ok, opt_str, tags,
};
use crate::model::{Model, ResourceGroup, arm_key};
use crate::state::RelayState;

fn subscription_json(state: &RelayState, id: &str) -> Value {
    json!({
        "id": format!("/subscriptions/{id}"),
        "subscriptionId": id,
        "tenantId": state.options.arm.tenant,
        "displayName": "Relay emulator",
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
    })
}

/// Every subscription the model mentions, the configured one first.
fn known_subscriptions(state: &RelayState, model: &Model) -> Vec<String> {
    let default = state.options.arm.subscription.clone();
    let mut others: BTreeSet<String> = BTreeSet::new();
    others.extend(
        model
            .namespaces
            .values()
            .map(|n| n.arm.subscription.clone()),
    );
    others.extend(
        model
            .resource_groups
            .values()
            .map(|g| g.subscription.clone()),
    );
    others.extend(model.sites.values().map(|s| s.subscription.clone()));
    others.extend(model.plans.values().map(|p| p.subscription.clone()));
    others.retain(|s| !s.eq_ignore_ascii_case(&default));
    std::iter::once(default).chain(others).collect()
}

/// `GET /subscriptions`.
pub(super) fn subscriptions(state: &RelayState, r: &ArmRequest) -> ArmResult {
    r.only(Method::GET)?;
    let model = state.store.read();
    let values = known_subscriptions(state, &model)
        .iter()
        .map(|s| subscription_json(state, s))
        .collect();
    list(values)
}

/// `GET /subscriptions/{sub}`: any id.
pub(super) fn subscription(state: &RelayState, r: &ArmRequest, sub: &str) -> ArmResult {
    r.only(Method::GET)?;
    ok(&subscription_json(state, sub))
}

/// A group as ARM shows it, with its stored spelling.
fn group_json(group: &ResourceGroup) -> Value {
    json!({
        "id": Scope::group_id(&group.subscription, &group.name),
        "name": group.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": group.location,
        "tags": group.tags,
        "managedBy": null,
        "properties": {"provisioningState": "Succeeded"},
    })
}

/// Every group of `sub`: created ones and those implied by a resource in them.
fn groups_of(model: &Model, sub: &str) -> Vec<ResourceGroup> {
    let mut found: std::collections::BTreeMap<String, ResourceGroup> = model
        .resource_groups
        .values()
        .filter(|g| g.subscription.eq_ignore_ascii_case(sub))
        .map(|g| (g.name.to_ascii_lowercase(), g.clone()))
        .collect();
    let implied = model
        .namespaces
        .values()
        .map(|n| (&n.arm.subscription, &n.arm.resource_group, &n.arm.location))
        .chain(
            model
                .sites
                .values()
                .map(|s| (&s.subscription, &s.resource_group, &s.location)),
        )
        .chain(
            model
                .plans
                .values()
                .map(|p| (&p.subscription, &p.resource_group, &p.location)),
        );
    for (s, g, location) in implied {
        if s.eq_ignore_ascii_case(sub) {
            found
                .entry(g.to_ascii_lowercase())
                .or_insert_with(|| ResourceGroup {
                    subscription: s.clone(),
                    name: g.clone(),
                    location: location.clone(),
                    tags: Default::default(),
                });
        }
    }
    found.into_values().collect()
}

/// The group `sub`/`name`, if it exists.
pub(super) fn find_group(model: &Model, sub: &str, name: &str) -> Option<ResourceGroup> {
    groups_of(model, sub)
        .into_iter()
        .find(|g| g.name.eq_ignore_ascii_case(name))
}

/// Records a group (when it does not exist yet) for a resource put into it.
pub(super) fn ensure_group(model: &mut Model, sub: &str, name: &str, location: &str) {
    if find_group(model, sub, name).is_none() {
        model.resource_groups.insert(
            arm_key(&[sub, name]),
            ResourceGroup {
                subscription: sub.to_owned(),
                name: name.to_owned(),
                location: location.to_owned(),
                tags: Default::default(),
            },
        );
    }
}

/// `GET /subscriptions/{sub}/resourceGroups`.
pub(super) fn list_groups(state: &RelayState, r: &ArmRequest, sub: &str) -> ArmResult {
    r.only(Method::GET)?;
    let model = state.store.read();
    list(groups_of(&model, sub).iter().map(group_json).collect())
}

fn group_not_found(name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceGroupNotFound",
        format!("Resource group '{name}' could not be found."),
    )
}

/// `GET|HEAD|PUT|PATCH|DELETE /subscriptions/{sub}/resourceGroups/{name}`.
pub(super) fn resource_group(
    state: &RelayState,
    r: &ArmRequest,
    sub: &str,
    name: &str,
) -> ArmResult {
    match r.method {
        Method::GET => {
            let model = state.store.read();
            let group = find_group(&model, sub, name).ok_or_else(|| group_not_found(name))?;
            ok(&group_json(&group))
        }
        Method::HEAD => {
            let model = state.store.read();
            let status = if find_group(&model, sub, name).is_some() {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::NOT_FOUND
            };
            empty(status)
        }
        Method::PUT | Method::PATCH => {
            let body = r.json()?;
            let location = opt_str(&body, "location")?.map(str::to_owned);
            let new_tags = tags(&body)?;
            let is_put = r.method == Method::PUT;
            let (group, created) = state
                .store
                .update(|m| {
                    let existing = find_group(m, sub, name);
                    let created = existing.is_none();
                    let mut group = match existing {
                        Some(g) => g,
                        None if is_put => ResourceGroup {
                            subscription: sub.to_owned(),
                            name: name.to_owned(),
                            location: String::new(),
                            tags: Default::default(),
                        },
                        None => return Ok(None),
                    };
                    if let Some(location) = &location {
                        group.location = location.clone();
                    }
                    if let Some(tags) = &new_tags {
                        group.tags = tags.clone();
                    }
                    m.resource_groups
                        .insert(arm_key(&[sub, name]), group.clone());
                    Ok(Some((group, created)))
                })?
                .ok_or_else(|| group_not_found(name))?;
            if group.location.is_empty() {
                return Err(ArmError::bad_request(
                    "'location' is required to create a resource group.",
                ));
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(super::json_response(status, &group_json(&group)))
        }
        Method::DELETE => {
            let deleted = state.store.update(|m| {
                if find_group(m, sub, name).is_none() {
                    return Ok(None);
                }
                let scope = Scope::new(sub, name);
                m.resource_groups.remove(&arm_key(&[sub, name]));
                let namespaces: Vec<String> = m
                    .namespaces
                    .values()
                    .filter(|n| scope.holds(&n.arm.subscription, &n.arm.resource_group))
                    .map(|n| n.name.to_ascii_lowercase())
                    .collect();
                let namespaces = namespaces
                    .iter()
                    .filter_map(|ns| m.namespaces.remove(ns))
                    .collect::<Vec<_>>();
                m.sites
                    .retain(|_, s| !scope.holds(&s.subscription, &s.resource_group));
                m.plans
                    .retain(|_, p| !scope.holds(&p.subscription, &p.resource_group));
                m.web_relays
                    .retain(|_, w| !scope.holds(&w.subscription, &w.resource_group));
                Ok(Some(namespaces))
            })?;
            match deleted {
                Some(namespaces) => {
                    for ns in &namespaces {
                        super::relay::close_namespace_listeners(state, ns);
                    }
                    empty(StatusCode::OK)
                }
                None => Err(group_not_found(name)),
            }
        }
        _ => Err(method_not_allowed(r)),
    }
}
