"""Microsoft's Python management SDKs against the emulator's ARM endpoint (ARM.md §7.1).

Run by integration-tests/tests/arm_clients.rs with ARM_ENDPOINT, ARM_SUBSCRIPTION,
REQUESTS_CA_BUNDLE and IDENTITY_ENDPOINT/IDENTITY_HEADER set, against a relay in strict
authentication mode: DefaultAzureCredential gets its tokens from the emulator's App Service
managed-identity endpoint, unchanged. Every field the clients read is checked; the script
prints one line per step and exits non-zero at the first failure.
"""

import os
import sys
import time

from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.mgmt.relay import RelayAPIMgmtClient
from azure.mgmt.relay.models import AuthorizationRule, CheckNameAvailability, RegenerateAccessKeyParameters
from azure.mgmt.relay.models import HybridConnection as RelayHybridConnection
from azure.mgmt.relay.models import RelayNamespace, RelayUpdateParameters, Sku
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import AppServicePlan, HybridConnection, Site, SkuDescription

BASE = os.environ["ARM_ENDPOINT"]
SUB = os.environ["ARM_SUBSCRIPTION"]
CA = os.environ["REQUESTS_CA_BUNDLE"]
RG = "rg1"
NS = "contoso-relay"
HC = "hc1"
METADATA = '[{"key":"endpoint","value":"sqlhost:1433"}]'


def step(text):
    print(f"ok: {text}", flush=True)


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


credential = DefaultAzureCredential()
relay = RelayAPIMgmtClient(credential, SUB, base_url=BASE, connection_verify=CA, polling_interval=1)
web = WebSiteManagementClient(credential, SUB, base_url=BASE, connection_verify=CA, polling_interval=1)

# Namespaces.
started = time.monotonic()
ns = relay.namespaces.begin_create_or_update(
    RG, NS, RelayNamespace(location="westus", sku=Sku(name="Standard", tier="Standard"), tags={"env": "dev"})
).result()
expect(time.monotonic() - started < 10, "namespace create completed without polling delays")
expect(ns.name == NS and ns.provisioning_state == "Succeeded", f"created: {ns}")
expect(ns.sku.name == "Standard" and ns.tags == {"env": "dev"}, f"sku and tags: {ns}")
expect(ns.id == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Relay/namespaces/{NS}", ns.id)
expect(ns.service_bus_endpoint.startswith(f"https://{NS}.localhost:"), ns.service_bus_endpoint)
expect(ns.created_at is not None and ns.updated_at is not None, "timestamps parse")
step("namespace created (201, Succeeded, Standard)")
ns = relay.namespaces.begin_create_or_update(RG, NS, RelayNamespace(location="westus", sku=Sku(name="Standard"))).result()
expect(ns.name == NS, "second create is an update")
ns = relay.namespaces.get(RG, NS)
expect(ns.location == "westus" and ns.status == "Active", f"get: {ns}")
ns = relay.namespaces.update(RG, NS, RelayUpdateParameters(tags={"a": "b"}))
expect(ns.tags == {"a": "b"}, f"patched tags: {ns.tags}")
step("namespace updated, read, patched")
expect(NS in [n.name for n in relay.namespaces.list_by_resource_group(RG)], "listed by group")
expect(NS in [n.name for n in relay.namespaces.list()], "listed by subscription")
check = relay.namespaces.check_name_availability(CheckNameAvailability(name=NS))
expect(not check.name_available and check.reason == "NameInUse", f"name check: {check}")
expect(relay.namespaces.check_name_availability(CheckNameAvailability(name="free-name-1")).name_available, "free name")
step("namespaces listed; name availability checked")

# Namespace rules and keys.
rules = {r.name: r for r in relay.namespaces.list_authorization_rules(RG, NS)}
expect(sorted(rules["RootManageSharedAccessKey"].rights) == ["Listen", "Manage", "Send"], f"root rule: {rules}")
rule = relay.namespaces.create_or_update_authorization_rule(RG, NS, "nsrule", AuthorizationRule(rights=["Listen", "Send"]))
expect(sorted(rule.rights) == ["Listen", "Send"], f"rule: {rule}")
expect(relay.namespaces.get_authorization_rule(RG, NS, "nsrule").name == "nsrule", "rule get")
keys = relay.namespaces.list_keys(RG, NS, "RootManageSharedAccessKey")
expect(keys.primary_connection_string.startswith(f"Endpoint=sb://{NS}.localhost:"), keys.primary_connection_string)
expect(len(keys.primary_key) == 44 and keys.key_name == "RootManageSharedAccessKey", "root keys")
before = relay.namespaces.list_keys(RG, NS, "nsrule")
renewed = relay.namespaces.regenerate_keys(RG, NS, "nsrule", RegenerateAccessKeyParameters(key_type="PrimaryKey"))
expect(renewed.primary_key != before.primary_key and renewed.secondary_key == before.secondary_key, "regenerated")
explicit = "dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdGtleTEyMzQ="
renewed = relay.namespaces.regenerate_keys(
    RG, NS, "nsrule", RegenerateAccessKeyParameters(key_type="SecondaryKey", key=explicit)
)
expect(renewed.secondary_key == explicit, "explicit key stored")
step("namespace rules: root, create, get, listKeys, regenerateKeys (random and explicit)")

# Hybrid connections.
hc = relay.hybrid_connections.create_or_update(
    RG, NS, HC, RelayHybridConnection(requires_client_authorization=True, user_metadata=METADATA)
)
expect(hc.name == HC and hc.user_metadata == METADATA and hc.requires_client_authorization, f"hc: {hc}")
expect(hc.listener_count == 0, f"listener count: {hc.listener_count}")
expect(relay.hybrid_connections.get(RG, NS, HC).user_metadata == METADATA, "hc get")
expect([h.name for h in relay.hybrid_connections.list_by_namespace(RG, NS)] == [HC], "hc list")
rule = relay.hybrid_connections.create_or_update_authorization_rule(
    RG, NS, HC, "defaultListener", AuthorizationRule(rights=["Listen"])
)
expect(rule.rights == ["Listen"], f"hc rule: {rule}")
expect([r.name for r in relay.hybrid_connections.list_authorization_rules(RG, NS, HC)] == ["defaultListener"], "hc rules")
expect(relay.hybrid_connections.get_authorization_rule(RG, NS, HC, "defaultListener").rights == ["Listen"], "hc rule get")
keys = relay.hybrid_connections.list_keys(RG, NS, HC, "defaultListener")
expect(keys.primary_connection_string.endswith(f";EntityPath={HC}"), keys.primary_connection_string)
renewed = relay.hybrid_connections.regenerate_keys(
    RG, NS, HC, "defaultListener", RegenerateAccessKeyParameters(key_type="PrimaryKey")
)
expect(renewed.primary_key != keys.primary_key, "hc key regenerated")
step("hybrid connection and its rule: create, get, list, listKeys (EntityPath), regenerateKeys")

operations = list(relay.operations.list())
expect(any(o.name == "Microsoft.Relay/namespaces/write" for o in operations), "operations listed")
try:
    relay.hybrid_connections.get(RG, NS, "nope")
    raise AssertionError("404 expected")
except ResourceNotFoundError as e:
    expect("nope" in str(e) and e.error.code == "NotFound", str(e))
step("operations listed; a missing hybrid connection is ResourceNotFoundError")

# Microsoft.Web.
created = web.web_apps.create_or_update_hybrid_connection(
    RG, "myapp", NS, HC,
    HybridConnection(
        service_bus_namespace=NS, relay_name=HC,
        relay_arm_uri=f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Relay/namespaces/{NS}/hybridConnections/{HC}",
        hostname="sqlhost", port=1433, send_key_name="defaultSender", send_key_value="k",
        service_bus_suffix=".servicebus.windows.net",
    ),
)
expect(created.hostname == "sqlhost" and created.port == 1433 and created.send_key_value == "k", f"web hc: {created}")
got = web.web_apps.get_hybrid_connection(RG, "myapp", NS, HC)
expect(got.relay_name == HC and got.service_bus_namespace == NS and not got.send_key_value, f"web hc get: {got}")
listed = web.web_apps.list_hybrid_connections(RG, "myapp")
expect(listed["value"][0]["properties"]["hostname"] == "sqlhost", f"site list: {listed}")
step("site hybrid connection: PUT, GET (no key), list (value)")
plan = web.app_service_plans.begin_create_or_update(
    RG, "myplan", AppServicePlan(location="westus", sku=SkuDescription(name="S1", tier="Standard"))
).result()
expect(plan.name == "myplan" and plan.sku.tier == "Standard", f"plan: {plan}")
site = web.web_apps.begin_create_or_update(RG, "myapp", Site(location="westus", server_farm_id=plan.id)).result()
expect(site.server_farm_id == plan.id, f"site: {site}")
limit = web.app_service_plans.get_hybrid_connection_plan_limit(RG, "myplan")
expect(limit.current == 1 and limit.maximum == 25, f"limit: {limit}")
expect([h.relay_name for h in web.app_service_plans.list_hybrid_connections(RG, "myplan")] == [HC], "plan relays")
key = web.app_service_plans.list_hybrid_connection_keys(RG, "myplan", NS, HC)
expect(key.send_key_name == "defaultSender" and key.send_key_value == "k", f"plan key: {key}")
expect(web.app_service_plans.get_hybrid_connection(RG, "myplan", NS, HC).hostname == "sqlhost", "plan relay get")
apps = list(web.app_service_plans.list_web_apps_by_hybrid_connection(RG, "myplan", NS, HC))
expect(len(apps) == 1 and "myapp" in str(apps[0]), f"apps by hybrid connection: {apps}")
step("plan: create, site on it, limit 1/25, relays, keys, apps")

# Deletes, and 204s that are not errors.
web.web_apps.delete_hybrid_connection(RG, "myapp", NS, HC)
relay.hybrid_connections.delete_authorization_rule(RG, NS, HC, "defaultListener")
relay.hybrid_connections.delete(RG, NS, HC)
relay.hybrid_connections.delete(RG, NS, HC)
relay.namespaces.delete_authorization_rule(RG, NS, "nsrule")
relay.namespaces.begin_delete(RG, NS).result()
relay.namespaces.begin_delete(RG, NS).result()
try:
    relay.namespaces.get(RG, NS)
    raise AssertionError("404 expected after delete")
except ResourceNotFoundError:
    pass
step("deletes (200, then 204)")

# A token the emulator did not issue: ClientAuthenticationError in strict mode.
class Forged:
    def get_token(self, *scopes, **kwargs):
        return AccessToken("forged-token", int(time.time()) + 3600)


forged = RelayAPIMgmtClient(Forged(), SUB, base_url=BASE, connection_verify=CA)
try:
    list(forged.namespaces.list())
    raise AssertionError("401 expected")
except ClientAuthenticationError as e:
    expect(e.status_code == 401, str(e))
step("a forged token is ClientAuthenticationError")
print("all steps passed", flush=True)
sys.exit(0)
