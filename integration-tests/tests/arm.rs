//! The management plane (ARM.md) over real HTTPS with a Rust client: the statuses and shapes
//! the official clients depend on, authentication, identity endpoints, and that what ARM
//! makes is live on the data plane (keys authenticate listeners, regenerated keys stop,
//! deletes close listeners with 1001) and survives a restart. The official clients themselves
//! run in `arm_clients.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use hc_client::listener::{ControlChannel, ControlEvent, ListenerConfig};
use hc_client::relay::RelayEndpoint;
use hc_client::token::TokenProvider;
use hc_protocol::ConnectionString;
use integration_tests::arm::Arm;
use relay_server::{ArmOptions, ConfigFile, Emulator, Relay, RelayOptions};
use serde_json::{Value, json};

const SUB: &str = "00000000-0000-0000-0000-00000000aaaa";

/// `/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Relay/namespaces/{ns}{rest}?api-version=…`
fn ns_path(rg: &str, ns: &str, rest: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Relay/namespaces/{ns}{rest}?api-version=2017-04-01"
    )
}

async fn emulator(arm: ArmOptions) -> (Emulator, Arm) {
    let options = RelayOptions {
        arm,
        ..Default::default()
    };
    let emulator = Emulator::start(&ConfigFile::default(), true, options)
        .await
        .unwrap();
    let client = Arm::new(
        emulator.management_addr.unwrap(),
        emulator.ca_pem.as_deref().unwrap(),
    );
    (emulator, client)
}

#[tokio::test]
async fn namespaces_answer_with_the_statuses_and_shapes_clients_accept() {
    let (_emulator, arm) = emulator(ArmOptions::default()).await;
    // The CLI sends only a location: sku defaults to Standard; 201, no polling headers.
    let created = arm
        .call(
            "PUT",
            &ns_path("rg1", "contoso-relay", ""),
            Some(json!({"location": "westus", "tags": {"env": "dev"}})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created.headers.get("azure-asyncoperation").is_none()
            && created.headers.get("location").is_none()
    );
    assert_eq!(
        created.headers["content-type"],
        "application/json; charset=utf-8"
    );
    let ns = &created.body;
    assert_eq!(
        ns["id"],
        format!(
            "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Relay/namespaces/contoso-relay"
        )
    );
    assert_eq!(
        (
            ns["sku"]["name"].as_str(),
            ns["properties"]["provisioningState"].as_str(),
            ns["tags"]["env"].as_str()
        ),
        (Some("Standard"), Some("Succeeded"), Some("dev"))
    );
    assert!(
        ns["properties"]["createdAt"]
            .as_str()
            .unwrap()
            .ends_with(".0000000Z")
    );
    // Again: an update, 200. Lower-case `resourcegroups` and other spellings find it.
    let again = arm
        .call(
            "PUT",
            &ns_path("rg1", "contoso-relay", ""),
            Some(json!({"location": "westus", "sku": {"name": "Standard"}})),
        )
        .await;
    assert_eq!(again.status, 200);
    let lower = format!(
        "/subscriptions/{SUB}/resourcegroups/RG1/providers/microsoft.relay/Namespaces/CONTOSO-relay?api-version=2026-01-01"
    );
    let got = arm.call("GET", &lower, None).await;
    assert_eq!(
        (got.status, got.body["name"].as_str()),
        (200, Some("contoso-relay"))
    );
    // RootManageSharedAccessKey comes with every namespace.
    let keys = arm
        .call(
            "POST",
            &ns_path(
                "rg1",
                "contoso-relay",
                "/authorizationRules/RootManageSharedAccessKey/listKeys",
            ),
            None,
        )
        .await;
    assert_eq!(keys.status, 200);
    assert!(
        keys.body["primaryConnectionString"]
            .as_str()
            .unwrap()
            .starts_with("Endpoint=sb://contoso-relay.localhost:")
    );
    assert_eq!(keys.body["primaryKey"].as_str().unwrap().len(), 44);
    // Lists by group and by subscription; name availability.
    let by_group = arm
        .call("GET", &format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Relay/namespaces?api-version=1"), None)
        .await;
    assert_eq!(
        (
            by_group.body["value"].as_array().unwrap().len(),
            &by_group.body["nextLink"]
        ),
        (1, &Value::Null)
    );
    let by_sub = arm
        .call(
            "GET",
            &format!("/subscriptions/{SUB}/providers/Microsoft.Relay/namespaces?api-version=1"),
            None,
        )
        .await;
    assert_eq!(by_sub.body["value"][0]["name"], "contoso-relay");
    let check_path = format!(
        "/subscriptions/{SUB}/providers/Microsoft.Relay/checkNameAvailability?api-version=1"
    );
    let check = |name: &str| arm.call("POST", &check_path, Some(json!({"name": name})));
    assert_eq!(check("contoso-relay").await.body["reason"], "NameInUse");
    assert_eq!(check("no").await.body["reason"], "InvalidName");
    assert_eq!(
        check("fresh-name").await.body,
        json!({"nameAvailable": true, "reason": "None", "message": ""})
    );
    // Names are global: the same name in another group is a conflict.
    let clash = arm
        .call(
            "PUT",
            &ns_path("rg2", "contoso-relay", ""),
            Some(json!({"location": "westus"})),
        )
        .await;
    assert_eq!(
        (clash.status, clash.body["error"]["code"].as_str()),
        (409, Some("Conflict"))
    );
    // PATCH tags.
    let patched = arm
        .call(
            "PATCH",
            &ns_path("rg1", "contoso-relay", ""),
            Some(json!({"tags": {"a": "b"}})),
        )
        .await;
    assert_eq!(
        (patched.status, &patched.body["tags"]),
        (200, &json!({"a": "b"}))
    );
    // The zero-config namespace is there too, in its own group.
    let default = arm
        .call("GET", &format!("/subscriptions/{}/resourceGroups/relay-emulator/providers/Microsoft.Relay/namespaces/default?api-version=1", relay_server::model::DEFAULT_SUBSCRIPTION), None)
        .await;
    assert_eq!(default.status, 200, "{}", default.body);
    // DELETE: 200, then 204; then GET is a 404 with an ARM error body.
    assert_eq!(
        arm.call("DELETE", &ns_path("rg1", "contoso-relay", ""), None)
            .await
            .status,
        200
    );
    assert_eq!(
        arm.call("DELETE", &ns_path("rg1", "contoso-relay", ""), None)
            .await
            .status,
        204
    );
    let gone = arm
        .call("GET", &ns_path("rg1", "contoso-relay", ""), None)
        .await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.body["error"]["code"], "ResourceNotFound");
    assert!(
        gone.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("contoso-relay")
    );
}

/// A listener's control channel opened with a connection string.
async fn listen(cs: &str, ca_pem: &str) -> Result<ControlChannel, hc_client::Error> {
    let parsed = ConnectionString::parse(cs).unwrap();
    let tls = integration_tests::client_tls(ca_pem);
    let endpoint = RelayEndpoint::from_endpoint(&parsed.endpoint, tls).unwrap();
    let config = ListenerConfig {
        endpoint,
        path: parsed.entity_path.clone().unwrap(),
        tokens: TokenProvider::from_connection_string(&parsed, Duration::from_secs(600)),
        tracking_id: "arm-test".into(),
    };
    ControlChannel::open(&config).await
}

#[tokio::test]
async fn what_arm_makes_is_live_on_the_data_plane() {
    let (emulator, arm) = emulator(ArmOptions::default()).await;
    assert_eq!(
        arm.call(
            "PUT",
            &ns_path("rg1", "live-relay", ""),
            Some(json!({"location": "westus"}))
        )
        .await
        .status,
        201
    );
    let hc = arm
        .call(
            "PUT",
            &ns_path("rg1", "live-relay", "/hybridConnections/db"),
            Some(json!({"properties": {"requiresClientAuthorization": true, "userMetadata": "[{\"key\":\"endpoint\",\"value\":\"db:5432\"}]"}})),
        )
        .await;
    assert_eq!(
        (hc.status, hc.body["properties"]["listenerCount"].as_u64()),
        (200, Some(0))
    );
    let rule_path = ns_path(
        "rg1",
        "live-relay",
        "/hybridConnections/db/authorizationRules/defaultListener",
    );
    let rule = arm
        .call(
            "PUT",
            &rule_path,
            Some(json!({"properties": {"rights": ["Listen"]}})),
        )
        .await;
    assert_eq!(
        (rule.status, &rule.body["properties"]["rights"]),
        (200, &json!(["Listen"]))
    );
    let keys_path = ns_path(
        "rg1",
        "live-relay",
        "/hybridConnections/db/authorizationRules/defaultListener/listKeys",
    );
    let keys = arm.call("POST", &keys_path, None).await.body;
    let cs = keys["primaryConnectionString"].as_str().unwrap().to_owned();
    assert!(cs.ends_with(";EntityPath=db"), "{cs}");
    // The listed string works as printed: TLS at the new name, the key authenticates.
    let mut channel = listen(&cs, &arm.ca_pem)
        .await
        .expect("listener with the listed key");
    let hc = arm
        .call(
            "GET",
            &ns_path("rg1", "live-relay", "/hybridConnections/db"),
            None,
        )
        .await;
    assert_eq!(hc.body["properties"]["listenerCount"], 1);
    // A repeated PUT (as the CLI does for defaultSender) keeps the keys.
    arm.call(
        "PUT",
        &rule_path,
        Some(json!({"properties": {"rights": ["Listen"]}})),
    )
    .await;
    assert_eq!(
        arm.call("POST", &keys_path, None).await.body["primaryKey"],
        keys["primaryKey"]
    );
    // Regenerated: the old key stops authenticating new connections; an explicit value is kept.
    let regen = arm
        .call(
            "POST",
            &keys_path.replace("/listKeys", "/regenerateKeys"),
            Some(json!({"keyType": "PrimaryKey"})),
        )
        .await;
    assert_eq!(regen.status, 200);
    assert_ne!(regen.body["primaryKey"], keys["primaryKey"]);
    assert!(
        listen(&cs, &arm.ca_pem)
            .await
            .unwrap_err()
            .is_unauthorized()
    );
    listen(
        regen.body["primaryConnectionString"].as_str().unwrap(),
        &arm.ca_pem,
    )
    .await
    .expect("the new key works");
    let explicit = "dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdGtleTEyMzQ=";
    let regen = arm
        .call(
            "POST",
            &keys_path.replace("/listKeys", "/regenerateKeys"),
            Some(json!({"keyType": "SecondaryKey", "key": explicit})),
        )
        .await;
    assert_eq!(regen.body["secondaryKey"], explicit);
    let bad = arm
        .call(
            "POST",
            &keys_path.replace("/listKeys", "/regenerateKeys"),
            Some(json!({"keyType": "TertiaryKey"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    // Deleting the hybrid connection closes the listener with 1001.
    assert_eq!(
        arm.call(
            "DELETE",
            &ns_path("rg1", "live-relay", "/hybridConnections/db"),
            None
        )
        .await
        .status,
        200
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match channel.next_event().await {
                Ok(ControlEvent::Closed { code, .. }) => return code,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(1001));
    assert_eq!(
        arm.call(
            "DELETE",
            &ns_path("rg1", "live-relay", "/hybridConnections/db"),
            None
        )
        .await
        .status,
        204
    );
    let missing = arm
        .call(
            "GET",
            &ns_path("rg1", "live-relay", "/hybridConnections/nope"),
            None,
        )
        .await;
    assert_eq!(
        (missing.status, missing.body["error"]["message"].as_str()),
        (404, Some("HybridConnection nope does not exist."))
    );
    // A namespace-level rule's string has no EntityPath; with one added it listens on any
    // hybrid connection, and deleting the namespace closes that listener with 1001 too.
    arm.call(
        "PUT",
        &ns_path("rg1", "live-relay", "/hybridConnections/other"),
        Some(json!({})),
    )
    .await;
    let root = arm
        .call(
            "POST",
            &ns_path(
                "rg1",
                "live-relay",
                "/authorizationRules/RootManageSharedAccessKey/listKeys",
            ),
            None,
        )
        .await
        .body;
    let root_cs = root["primaryConnectionString"].as_str().unwrap();
    assert!(!root_cs.contains("EntityPath"));
    let mut channel = listen(&format!("{root_cs};EntityPath=other"), &arm.ca_pem)
        .await
        .unwrap();
    assert_eq!(emulator.relay.listener_count("live-relay", "other"), 1);
    assert_eq!(
        arm.call("DELETE", &ns_path("rg1", "live-relay", ""), None)
            .await
            .status,
        200
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(ControlEvent::Closed { code, .. }) = channel.next_event().await {
                return code;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(1001));
    assert!(emulator.relay.model().namespace("live-relay").is_err());
}

#[tokio::test]
async fn authentication_and_bad_requests_are_named() {
    let (first, mut arm) = emulator(ArmOptions::default()).await;
    let path = ns_path("rg1", "auth-relay", "");
    arm.token = None;
    let missing = arm.call("GET", &path, None).await;
    assert_eq!(
        (missing.status, missing.body["error"]["code"].as_str()),
        (401, Some("AuthenticationFailed"))
    );
    assert!(missing.headers.get("www-authenticate").is_none());
    let basic = arm
        .call_raw("GET", &path, &[("authorization", "Basic eDp5")], vec![])
        .await;
    assert_eq!(
        (basic.status, basic.body["error"]["code"].as_str()),
        (401, Some("AuthenticationFailedInvalidHeader"))
    );
    arm.token = Some("anything".into());
    let no_version = arm
        .call("GET", &path.replace("?api-version=2017-04-01", ""), None)
        .await;
    assert_eq!(
        (no_version.status, no_version.body["error"]["code"].as_str()),
        (400, Some("MissingApiVersionParameter"))
    );
    let bad_json = arm
        .call_raw("PUT", &path, &[], b"{\"location\":".to_vec())
        .await;
    assert!(
        bad_json.status == 400
            && bad_json.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("not valid JSON")
    );
    let no_location = arm.call("PUT", &path, Some(json!({}))).await;
    assert!(
        no_location.status == 400
            && no_location.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'location'")
    );
    let bad_name = arm
        .call(
            "PUT",
            &ns_path("rg1", "1bad", ""),
            Some(json!({"location": "x"})),
        )
        .await;
    assert!(
        bad_name.status == 400
            && bad_name.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'1bad'")
    );
    assert_eq!(
        arm.call("PUT", &path, Some(json!({"location": "westus"})))
            .await
            .status,
        201
    );
    let bad_rights = arm
        .call(
            "PUT",
            &ns_path("rg1", "auth-relay", "/authorizationRules/r"),
            Some(json!({"properties": {"rights": ["Read"]}})),
        )
        .await;
    assert!(
        bad_rights.status == 400
            && bad_rights.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'Read'")
    );
    let elsewhere = arm.call("GET", &ns_path("rg1", "default", ""), None).await;
    assert_eq!(elsewhere.status, 404, "the default namespace is not in rg1");
    let unknown = arm
        .call(
            "GET",
            "/subscriptions/x/providers/Microsoft.Storage/accounts?api-version=1",
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
    drop(first);

    // Strict mode: only tokens the emulator issued, unexpired.
    let (_strict, mut arm) = emulator(ArmOptions {
        strict_auth: true,
        ..Default::default()
    })
    .await;
    let refused = arm
        .call("GET", "/subscriptions?api-version=2022-12-01", None)
        .await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    arm.token = None;
    let issued = arm
        .call_raw(
            "POST",
            "/tenant-1/oauth2/v2.0/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"client_id=app-1&grant_type=client_credentials&client_secret=s&scope=https%3A%2F%2Fmanagement.core.windows.net%2F%2F.default".to_vec(),
        )
        .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    let token = issued.body["access_token"].as_str().unwrap().to_owned();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "https://management.core.windows.net/");
    assert_eq!(claims["appid"], "app-1");
    assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    arm.token = Some(token);
    let subs = arm
        .call("GET", "/subscriptions?api-version=2022-12-01", None)
        .await;
    assert_eq!(subs.status, 200);
    assert_eq!(
        subs.body["value"][0]["subscriptionId"],
        relay_server::model::DEFAULT_SUBSCRIPTION
    );
}

#[tokio::test]
async fn identity_endpoints_serve_clients_offline() {
    let (_emulator, mut arm) = emulator(ArmOptions::default()).await;
    arm.token = None;
    let metadata = arm
        .call("GET", "/metadata/endpoints?api-version=2022-09-01", None)
        .await;
    let base = format!("https://localhost:{}/", arm.addr.port());
    assert_eq!(metadata.body["resourceManager"], base);
    assert_eq!(metadata.body["authentication"]["loginEndpoint"], base);
    assert_eq!(metadata.body["authentication"]["identityProvider"], "AAD");
    assert_eq!(metadata.body["authentication"]["tenant"], "common");
    assert!(
        !metadata.body["microsoftGraphResourceId"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let openid = arm
        .call("GET", "/t1/v2.0/.well-known/openid-configuration", None)
        .await;
    assert_eq!(
        openid.body["token_endpoint"],
        format!("https://localhost:{}/t1/oauth2/v2.0/token", arm.addr.port())
    );
    let msi = arm
        .call(
            "GET",
            "/msi/token?api-version=2019-08-01&resource=https://management.azure.com",
            None,
        )
        .await;
    assert_eq!(msi.status, 400, "X-IDENTITY-HEADER is required");
    let msi = arm
        .call_raw(
            "GET",
            "/msi/token?api-version=2019-08-01&resource=https://management.azure.com",
            &[("x-identity-header", "h")],
            vec![],
        )
        .await;
    assert_eq!(msi.status, 200);
    assert!(
        msi.body["expires_on"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(msi.body["token_type"], "Bearer");
    let imds = arm
        .call(
            "GET",
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            None,
        )
        .await;
    assert_eq!(imds.status, 400, "Metadata: true is required");
    let imds = arm
        .call_raw(
            "GET",
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x",
            &[("metadata", "true")],
            vec![],
        )
        .await;
    assert_eq!(imds.status, 200);
    let bad_grant = arm
        .call_raw(
            "POST",
            "/t1/oauth2/v2.0/token",
            &[],
            b"grant_type=device_code&client_id=x".to_vec(),
        )
        .await;
    assert_eq!(
        (bad_grant.status, bad_grant.body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    arm.token = Some("t".into());
    let tenants = arm
        .call("GET", "/tenants?api-version=2022-12-01", None)
        .await;
    assert_eq!(
        tenants.body["value"][0]["tenantId"],
        relay_server::model::DEFAULT_SUBSCRIPTION
    );
    // Resource groups: 404 until made; PUT 201 then 200; listed; HEAD.
    let rg = format!("/subscriptions/{SUB}/resourcegroups/group-a?api-version=2024-11-01");
    assert_eq!(arm.call("GET", &rg, None).await.status, 404);
    assert_eq!(
        arm.call("PUT", &rg, Some(json!({"location": "westus"})))
            .await
            .status,
        201
    );
    let got = arm.call("GET", &rg, None).await;
    assert_eq!(
        (got.body["location"].as_str(), got.body["id"].as_str()),
        (
            Some("westus"),
            Some(format!("/subscriptions/{SUB}/resourceGroups/group-a").as_str())
        )
    );
    assert_eq!(arm.call("HEAD", &rg, None).await.status, 204);
    assert_eq!(arm.call("DELETE", &rg, None).await.status, 200);
    assert_eq!(arm.call("HEAD", &rg, None).await.status, 404);
}

fn web_path(rest: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/web-rg/providers/Microsoft.Web/{rest}?api-version=2025-05-01"
    )
}

#[tokio::test]
async fn app_service_relays_plans_and_limits() {
    let (_emulator, arm) = emulator(ArmOptions::default()).await;
    arm.call(
        "PUT",
        &ns_path("rg1", "web-relay", ""),
        Some(json!({"location": "westus"})),
    )
    .await;
    arm.call(
        "PUT",
        &ns_path("rg1", "web-relay", "/hybridConnections/hc1"),
        Some(json!({"properties": {}})),
    )
    .await;
    arm.call(
        "PUT",
        &ns_path(
            "rg1",
            "web-relay",
            "/hybridConnections/hc1/authorizationRules/defaultSender",
        ),
        Some(json!({"properties": {"rights": ["Send"]}})),
    )
    .await;
    // As the CLI sends it: port as a string, the key in the body.
    let relay_path = web_path("sites/myapp/hybridConnectionNamespaces/web-relay/relays/hc1");
    let put = arm
        .call(
            "PUT",
            &relay_path,
            Some(json!({"properties": {"serviceBusNamespace": "web-relay", "relayName": "hc1", "relayArmUri": "x", "hostname": "sqlhost", "port": "1434", "sendKeyName": "defaultSender", "sendKeyValue": "k", "serviceBusSuffix": ".servicebus.windows.net"}})),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(
        (
            put.body["properties"]["port"].as_u64(),
            put.body["properties"]["sendKeyValue"].as_str()
        ),
        (Some(1434), Some("k"))
    );
    let got = arm.call("GET", &relay_path, None).await;
    assert_eq!(
        (got.status, &got.body["properties"]["sendKeyValue"]),
        (200, &Value::Null)
    );
    assert_eq!(got.body["name"], "myapp/web-relay/hc1");
    let listed = arm
        .call("GET", &web_path("sites/myapp/hybridConnectionRelays"), None)
        .await;
    assert_eq!(listed.body["value"].as_array().unwrap().len(), 1);
    let bad_port = arm
        .call(
            "PUT",
            &relay_path,
            Some(json!({"properties": {"hostname": "h", "port": "http"}})),
        )
        .await;
    assert!(
        bad_port.status == 400
            && bad_port.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'properties.port'")
    );
    // A Basic plan allows 5 per app.
    assert_eq!(
        arm.call(
            "PUT",
            &web_path("serverfarms/myplan"),
            Some(json!({"location": "westus", "sku": {"name": "B1"}}))
        )
        .await
        .status,
        200
    );
    let farm = format!(
        "/subscriptions/{SUB}/resourceGroups/web-rg/providers/Microsoft.Web/serverfarms/myplan"
    );
    assert_eq!(
        arm.call(
            "PUT",
            &web_path("sites/myapp"),
            Some(json!({"location": "westus", "properties": {"serverFarmId": farm}}))
        )
        .await
        .status,
        200
    );
    for i in 2..=5 {
        let path = web_path(&format!(
            "sites/myapp/hybridConnectionNamespaces/web-relay/relays/hc{i}"
        ));
        let put = arm
            .call(
                "PUT",
                &path,
                Some(json!({"properties": {"hostname": "h", "port": 1}})),
            )
            .await;
        assert_eq!(put.status, 200);
    }
    let sixth = arm
        .call(
            "PUT",
            &web_path("sites/myapp/hybridConnectionNamespaces/web-relay/relays/hc6"),
            Some(json!({"properties": {"hostname": "h", "port": 1}})),
        )
        .await;
    assert!(
        sixth.status == 400
            && sixth.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("allows 5"),
        "{}",
        sixth.body
    );
    let limit = arm
        .call(
            "GET",
            &web_path("serverfarms/myplan/hybridConnectionPlanLimits/limit"),
            None,
        )
        .await;
    assert_eq!(
        limit.body["properties"],
        json!({"current": 5, "maximum": 5})
    );
    let plan_relays = arm
        .call(
            "GET",
            &web_path("serverfarms/myplan/hybridConnectionRelays"),
            None,
        )
        .await;
    assert_eq!(plan_relays.body["value"].as_array().unwrap().len(), 5);
    let keys = arm
        .call(
            "POST",
            &web_path(
                "serverfarms/myplan/hybridConnectionNamespaces/web-relay/relays/hc1/listKeys",
            ),
            None,
        )
        .await;
    assert_eq!(
        keys.body["properties"],
        json!({"sendKeyName": "defaultSender", "sendKeyValue": "k"})
    );
    // Without a key in the body, the relay's key of the named rule is looked up.
    let sender_key = arm
        .call(
            "POST",
            &ns_path(
                "rg1",
                "web-relay",
                "/hybridConnections/hc1/authorizationRules/defaultSender/listKeys",
            ),
            None,
        )
        .await
        .body["primaryKey"]
        .clone();
    let other = arm
        .call(
            "PUT",
            &web_path("sites/otherapp/hybridConnectionNamespaces/web-relay/relays/hc1"),
            Some(json!({"properties": {"hostname": "h", "port": 1}})),
        )
        .await;
    assert_eq!(other.body["properties"]["sendKeyValue"], sender_key);
    let sites = arm
        .call(
            "GET",
            &web_path("serverfarms/myplan/hybridConnectionNamespaces/web-relay/relays/hc1/sites"),
            None,
        )
        .await;
    assert_eq!(sites.body["value"][0]["name"], "myapp");
    // DELETE answers 200, also when there is nothing (the Python SDK accepts only 200).
    assert_eq!(arm.call("DELETE", &relay_path, None).await.status, 200);
    assert_eq!(arm.call("DELETE", &relay_path, None).await.status, 200);
    assert_eq!(arm.call("GET", &relay_path, None).await.status, 404);
}

#[tokio::test]
async fn what_arm_makes_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: std::path::PathBuf| async move {
        let relay = Relay::open(&dir, None, false, RelayOptions::default()).unwrap();
        let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let management = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = management.local_addr().unwrap();
        let serving = relay.clone();
        let task = tokio::spawn(async move { serving.serve(data, std::future::pending()).await });
        let serving = relay.clone();
        tokio::spawn(async move { serving.serve_management(management).await });
        (relay, task, addr)
    };
    let (relay, task, addr) = start(dir.path().to_owned()).await;
    let ca = std::fs::read_to_string(dir.path().join(relay_server::CA_FILE)).unwrap();
    let arm = Arm::new(addr, &ca);
    arm.call(
        "PUT",
        &ns_path("rg1", "kept-relay", ""),
        Some(json!({"location": "westus"})),
    )
    .await;
    arm.call(
        "PUT",
        &ns_path("rg1", "kept-relay", "/hybridConnections/db"),
        Some(json!({"properties": {"userMetadata": "m"}})),
    )
    .await;
    let before = arm
        .call(
            "POST",
            &ns_path(
                "rg1",
                "kept-relay",
                "/authorizationRules/RootManageSharedAccessKey/listKeys",
            ),
            None,
        )
        .await
        .body;
    relay.shutdown();
    task.await.unwrap().unwrap();
    let (relay, _task, addr) = start(dir.path().to_owned()).await;
    let arm = Arm::new(addr, &ca);
    let hc = arm
        .call(
            "GET",
            &ns_path("rg1", "kept-relay", "/hybridConnections/db"),
            None,
        )
        .await;
    assert_eq!(
        (hc.status, hc.body["properties"]["userMetadata"].as_str()),
        (200, Some("m"))
    );
    let after = arm
        .call(
            "POST",
            &ns_path(
                "rg1",
                "kept-relay",
                "/authorizationRules/RootManageSharedAccessKey/listKeys",
            ),
            None,
        )
        .await
        .body;
    assert_eq!(after["primaryKey"], before["primaryKey"]);
    relay.shutdown();
}
