//! `run --app NAME`: the app's hybrid connections read from App Service's own resources, as
//! the platform does (ARM.md §3): `GET sites/{app}/hybridConnectionRelays` for the endpoints
//! and relays, then the relay's `listKeys` for the Send key the entry names (that GET does
//! not return keys; Terraform derives them the same way, ARM.md §3.1). Works against the
//! emulator's ARM endpoint and against Azure.
//!
//! The bearer token comes from the App Service managed-identity endpoint
//! (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, as on App Service itself) or from
//! `--arm-token`; managed-identity tokens are fetched again before they expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use hc_client::relay::RelayEndpoint;
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::warn;

use crate::config::Target;
use crate::sender::HybridConnection;

/// API versions sent (what `az` and the SDKs send, ARM.md §1.3).
const WEB_API: &str = "2022-03-01";
const RELAY_API: &str = "2017-04-01";
/// Audience of the management token.
const MANAGEMENT_RESOURCE: &str = "https://management.azure.com/";

/// Where an app's hybrid connections are and how to ask. `Debug` shows no token.
#[derive(Clone)]
pub struct AppOptions {
    /// ARM endpoint, e.g. `https://localhost:9444/` or `https://management.azure.com/`.
    pub arm_endpoint: String,
    /// Subscription id.
    pub subscription: String,
    /// Resource group of the app.
    pub resource_group: String,
    /// App (site) name.
    pub app: String,
    /// Deployment slot, if any.
    pub slot: Option<String>,
    /// A bearer token to use instead of the managed-identity endpoint.
    pub token: Option<String>,
}

impl std::fmt::Debug for AppOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppOptions")
            .field("arm_endpoint", &self.arm_endpoint)
            .field("subscription", &self.subscription)
            .field("resource_group", &self.resource_group)
            .field("app", &self.app)
            .field("slot", &self.slot)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How tokens are obtained.
enum Credential {
    Static(String),
    ManagedIdentity {
        endpoint: RelayEndpoint,
        target: String,
        header: String,
        cached: Mutex<Option<(String, u64)>>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Static(_) => "Credential::Static(<redacted>)",
            Credential::ManagedIdentity { .. } => "Credential::ManagedIdentity",
        })
    }
}

/// Reads an app's hybrid connections from ARM.
#[derive(Debug)]
pub struct AppSource {
    options: AppOptions,
    arm: RelayEndpoint,
    credential: Credential,
    relay_tls: Arc<rustls::ClientConfig>,
}

/// The path and query of an `https://` URL (the error names what is wrong).
fn url_target(url: &str) -> anyhow::Result<String> {
    let parts = hc_protocol::uri::parse(url).map_err(|e| anyhow::anyhow!("'{url}': {e}"))?;
    if !parts
        .scheme
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        bail!("'{url}' is not an https:// URL (management clients send tokens over TLS only)");
    }
    let mut target = parts.path.to_owned();
    if target.is_empty() {
        target.push('/');
    }
    if let Some(q) = parts.query {
        target.push('?');
        target.push_str(q);
    }
    Ok(target)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl AppSource {
    /// Checks the options and finds the credential. `tls` trusts the ARM endpoint and the
    /// relay (the emulator's CA with `--ca-file`).
    pub fn new(options: AppOptions, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Self> {
        let arm = RelayEndpoint::from_endpoint(&options.arm_endpoint, tls.clone())
            .with_context(|| format!("--arm-endpoint '{}'", options.arm_endpoint))?;
        url_target(&options.arm_endpoint).context("--arm-endpoint")?;
        for (what, value) in [
            ("--subscription", &options.subscription),
            ("--resource-group", &options.resource_group),
            ("--app", &options.app),
        ] {
            if value.is_empty() || value.contains(['/', '?', '#', ' ']) {
                bail!("{what} '{value}' is not a resource name");
            }
        }
        let credential = match (
            &options.token,
            std::env::var("IDENTITY_ENDPOINT"),
            std::env::var("IDENTITY_HEADER"),
        ) {
            (Some(token), _, _) => Credential::Static(token.clone()),
            (None, Ok(endpoint), Ok(header)) if !endpoint.is_empty() && !header.is_empty() => {
                let target = url_target(&endpoint).context("IDENTITY_ENDPOINT")?;
                Credential::ManagedIdentity {
                    endpoint: RelayEndpoint::from_endpoint(&endpoint, tls.clone())
                        .context("IDENTITY_ENDPOINT")?,
                    target,
                    header,
                    cached: Mutex::new(None),
                }
            }
            _ => bail!(
                "--app needs a management token: set IDENTITY_ENDPOINT and IDENTITY_HEADER (App Service managed identity; the emulator serves {{arm}}/msi/token) or give --arm-token"
            ),
        };
        Ok(AppSource {
            options,
            arm,
            credential,
            relay_tls: tls,
        })
    }

    /// A management token, from the cache while it has more than five minutes left.
    async fn token(&self) -> anyhow::Result<String> {
        match &self.credential {
            Credential::Static(token) => Ok(token.clone()),
            Credential::ManagedIdentity {
                endpoint,
                target,
                header,
                cached,
            } => {
                let mut cached = cached.lock().await;
                if let Some((token, expires)) = cached.as_ref()
                    && *expires > unix_now() + 300
                {
                    return Ok(token.clone());
                }
                let separator = if target.contains('?') { '&' } else { '?' };
                let target = format!(
                    "{target}{separator}api-version=2019-08-01&resource={}",
                    hc_protocol::uri::query_encode(MANAGEMENT_RESOURCE)
                );
                let io = endpoint.open_namespace().await?;
                let (head, body) = hc_client::handshake::http_get(
                    io,
                    &target,
                    &endpoint.authority(),
                    &[("X-IDENTITY-HEADER", header), ("Metadata", "true")],
                )
                .await?;
                if head.status != 200 {
                    bail!(
                        "the managed-identity endpoint answered {} {}: {}",
                        head.status,
                        head.reason,
                        String::from_utf8_lossy(&body)
                    );
                }
                let json: Value = serde_json::from_slice(&body)
                    .context("the managed-identity endpoint's answer is not JSON")?;
                let token = json["access_token"]
                    .as_str()
                    .context("the managed-identity answer has no access_token")?
                    .to_owned();
                let expires = json["expires_on"]
                    .as_str()
                    .and_then(|e| e.parse().ok())
                    .or_else(|| json["expires_on"].as_u64())
                    .unwrap_or_else(|| unix_now() + 600);
                *cached = Some((token.clone(), expires));
                Ok(token)
            }
        }
    }

    /// One ARM call; the JSON answer, or `None` for a 404.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        api: &str,
    ) -> anyhow::Result<Option<Value>> {
        let token = self.token().await?;
        let base = hc_protocol::uri::parse(&self.options.arm_endpoint)
            .map(|p| p.path.trim_end_matches('/').to_owned())
            .unwrap_or_default();
        let target = format!("{base}{path}?api-version={api}");
        let io = self.arm.open_namespace().await?;
        let bearer = format!("Bearer {token}");
        let (head, body) = hc_client::handshake::http_request(
            io,
            method.clone(),
            &target,
            &self.arm.authority(),
            &[("Authorization", &bearer), ("Accept", "application/json")],
            Vec::new(),
        )
        .await?;
        match head.status {
            200 => Ok(Some(serde_json::from_slice(&body).with_context(|| {
                format!("{method} {path}: the answer is not JSON")
            })?)),
            404 => Ok(None),
            status => {
                let message = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                bail!("{method} {path}: {status} {}: {message}", head.reason)
            }
        }
    }

    fn site_path(&self) -> String {
        let o = &self.options;
        let mut path = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/sites/{}",
            o.subscription, o.resource_group, o.app
        );
        if let Some(slot) = &o.slot {
            path.push_str("/slots/");
            path.push_str(slot);
        }
        path
    }

    /// The app's hybrid connections now. An entry whose key cannot be found is left out
    /// with a warning; failing to read the list at all is an error.
    pub async fn fetch(&self) -> anyhow::Result<Vec<Arc<Target>>> {
        let path = format!("{}/hybridConnectionRelays", self.site_path());
        let list = self
            .call(http::Method::GET, &path, WEB_API)
            .await?
            .with_context(|| format!("app '{}' was not found", self.options.app))?;
        let mut targets = Vec::new();
        for entry in list["value"].as_array().into_iter().flatten() {
            match self.target(&entry["properties"]).await {
                Ok(t) => targets.push(Arc::new(t)),
                Err(e) => {
                    warn!(app = %self.options.app, error = %format!("{e:#}"), "hybrid connection left out")
                }
            }
        }
        Ok(targets)
    }

    async fn target(&self, p: &Value) -> anyhow::Result<Target> {
        let field = |name: &str| p[name].as_str().filter(|s| !s.is_empty());
        let relay = field("relayName").context("an entry has no relayName")?;
        let hostname = field("hostname")
            .with_context(|| format!("{relay}: no hostname"))?
            .to_ascii_lowercase();
        let port = p["port"]
            .as_u64()
            .or_else(|| p["port"].as_str().and_then(|s| s.parse().ok()))
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .with_context(|| format!("{relay}: no port"))?;
        let uri = field("relayArmUri").with_context(|| format!("{relay}: no relayArmUri"))?;
        let rule = field("sendKeyName").unwrap_or("defaultSender");
        // The rule on the hybrid connection, else on its namespace (as Terraform looks).
        let namespace_uri = uri
            .rfind("/hybridConnections/")
            .or_else(|| uri.to_ascii_lowercase().rfind("/hybridconnections/"))
            .map(|i| &uri[..i])
            .with_context(|| format!("{relay}: relayArmUri '{uri}' names no hybrid connection"))?;
        let mut keys = None;
        for owner in [uri, namespace_uri] {
            let path = format!("{owner}/authorizationRules/{rule}/listKeys");
            if let Some(found) = self.call(http::Method::POST, &path, RELAY_API).await? {
                keys = Some(found);
                break;
            }
        }
        let keys = keys.with_context(|| format!("{relay}: no authorization rule '{rule}'"))?;
        let mut cs = keys["primaryConnectionString"]
            .as_str()
            .with_context(|| format!("{relay}: listKeys gave no connection string"))?
            .to_owned();
        if !cs.to_ascii_lowercase().contains("entitypath=") {
            cs = format!("{};EntityPath={relay}", cs.trim_end_matches(';'));
        }
        let hc = HybridConnection::from_connection_string(&cs, self.relay_tls.clone())
            .with_context(|| format!("{relay}: the listed connection string"))?;
        Ok(Target { hostname, port, hc })
    }

    /// How often [`crate::cli`] asks again by default.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
}
