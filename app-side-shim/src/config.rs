//! The shim's configuration: the app's hybrid connections with the fields App Service keeps
//! for each (the Microsoft.Web `HybridConnection` resource, PROTOCOL.md §12.2), or a plain
//! connection string, plus an optional App Service plan whose limit is enforced.
//!
//! ```json
//! {
//!   "plan": "Standard",
//!   "caFile": "/home/me/.local/share/hc-emulator/ca.pem",
//!   "hybridConnections": [
//!     {"serviceBusNamespace": "contoso", "relayName": "db", "hostname": "db.corp", "port": 5432,
//!      "sendKeyName": "defaultSender", "sendKeyValue": "…", "serviceBusSuffix": ".servicebus.windows.net"},
//!     {"connectionString": "Endpoint=sb://localhost:9443/;SharedAccessKeyName=defaultSender;SharedAccessKey=…;EntityPath=api",
//!      "hostname": "api.corp", "port": 8080}
//!   ]
//! }
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::sender::HybridConnection;

/// App Service plans and how many hybrid connections each allows (PROTOCOL.md §12.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
pub enum Plan {
    /// 5 per plan.
    Basic,
    /// 25 per plan.
    Standard,
    /// Premium v1-v3: 220 per app.
    Premium,
    /// IsolatedV2: 220 per app.
    Isolated,
}

impl Plan {
    /// Hybrid connections allowed.
    pub fn limit(self) -> usize {
        match self {
            Plan::Basic => 5,
            Plan::Standard => 25,
            Plan::Premium | Plan::Isolated => 220,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShimConfig {
    /// Enforce this plan's limit (off when absent).
    #[serde(default)]
    pub plan: Option<Plan>,
    /// Extra CA file to trust for the relay.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The app's hybrid connections.
    #[serde(default)]
    pub hybrid_connections: Vec<EntryConfig>,
}

/// One hybrid connection as App Service keeps it, or as a connection string.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryConfig {
    /// Namespace name.
    pub service_bus_namespace: Option<String>,
    /// Hybrid connection name.
    pub relay_name: Option<String>,
    /// Endpoint host name the app uses.
    pub hostname: String,
    /// Endpoint port the app uses.
    pub port: u16,
    /// Send rule name.
    pub send_key_name: Option<String>,
    /// Send key (a secret).
    pub send_key_value: Option<String>,
    /// Namespace host suffix (`.servicebus.windows.net`; `.localhost:9443` for the emulator).
    pub service_bus_suffix: Option<String>,
    /// Instead of the fields above: a connection string with `EntityPath`.
    pub connection_string: Option<String>,
}

impl std::fmt::Debug for EntryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryConfig")
            .field("service_bus_namespace", &self.service_bus_namespace)
            .field("relay_name", &self.relay_name)
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("send_key_name", &self.send_key_name)
            .finish_non_exhaustive()
    }
}

/// A hybrid connection ready to use, with the endpoint the app addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// The app-side endpoint host (lower-case).
    pub hostname: String,
    /// The app-side endpoint port.
    pub port: u16,
    /// How to reach it.
    pub hc: HybridConnection,
}

impl Target {
    /// `namespace/relay`.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.hc.namespace(), self.hc.path())
    }

    /// `hostname:port`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }
}

impl ShimConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid shim configuration", path.display()))
    }

    /// Every entry resolved, after checking the plan limit.
    pub fn targets(
        &self,
        plan_override: Option<Plan>,
        extra_ca: Option<&Path>,
    ) -> anyhow::Result<Vec<Arc<Target>>> {
        let tls = hc_client::tls::client_config(self.ca_file.as_deref().or(extra_ca))?;
        let targets: Vec<Arc<Target>> = self
            .hybrid_connections
            .iter()
            .map(|e| e.resolve(tls.clone()).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        if let Some(plan) = plan_override.or(self.plan) {
            let distinct: BTreeSet<String> = targets.iter().map(|t| t.describe()).collect();
            if distinct.len() > plan.limit() {
                bail!(
                    "the {plan:?} plan allows {} hybrid connections, but {} are configured",
                    plan.limit(),
                    distinct.len()
                );
            }
        }
        let mut seen = BTreeSet::new();
        for t in &targets {
            if !seen.insert(t.endpoint()) {
                bail!("endpoint {} is configured twice", t.endpoint());
            }
        }
        Ok(targets)
    }
}

impl EntryConfig {
    fn resolve(&self, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Target> {
        let hostname = self.hostname.trim().to_ascii_lowercase();
        if hostname.is_empty() || self.port == 0 {
            bail!("every hybrid connection needs a hostname and a port (1-65535)");
        }
        let what = || format!("hybrid connection for {hostname}:{}", self.port);
        let hc = match (
            &self.connection_string,
            &self.service_bus_namespace,
            &self.relay_name,
        ) {
            (Some(cs), None, None) => {
                HybridConnection::from_connection_string(cs, tls).with_context(what)?
            }
            (None, Some(ns), Some(relay)) => {
                let suffix = self
                    .service_bus_suffix
                    .as_deref()
                    .unwrap_or(".servicebus.windows.net");
                let endpoint = format!("sb://{ns}{suffix}/");
                match (&self.send_key_name, &self.send_key_value) {
                    (Some(name), Some(key)) => {
                        HybridConnection::with_key(&endpoint, relay, name, key, tls)
                            .with_context(what)?
                    }
                    (None, None) => {
                        HybridConnection::anonymous(&endpoint, relay, tls).with_context(what)?
                    }
                    _ => bail!(
                        "{}: sendKeyName and sendKeyValue must be given together",
                        what()
                    ),
                }
            }
            _ => bail!(
                "{}: give either connectionString, or serviceBusNamespace and relayName",
                what()
            ),
        };
        Ok(Target {
            hostname,
            port: self.port,
            hc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> String {
        format!(
            r#"{{"serviceBusNamespace":"contoso","relayName":"hc{i}","hostname":"h{i}.corp","port":{},"sendKeyName":"s","sendKeyValue":"k"}}"#,
            1000 + i
        )
    }

    #[test]
    fn app_service_fields_and_plan_limits() {
        let six = (0..6).map(entry).collect::<Vec<_>>().join(",");
        let cfg: ShimConfig = serde_json::from_str(&format!(
            r#"{{"plan":"Basic","hybridConnections":[{six}]}}"#
        ))
        .unwrap();
        let err = cfg.targets(None, None).unwrap_err().to_string();
        assert!(
            err.contains("Basic plan allows 5 hybrid connections, but 6 are configured"),
            "{err}"
        );
        let targets = cfg.targets(Some(Plan::Standard), None).unwrap();
        assert_eq!(targets[0].describe(), "contoso.servicebus.windows.net/hc0");
        assert_eq!(targets[0].endpoint(), "h0.corp:1000");
        assert!(!format!("{:?}", cfg.hybrid_connections[0]).contains("\"k\""));
    }

    #[test]
    fn errors_name_the_entry() {
        let cfg: ShimConfig = serde_json::from_str(
            r#"{"hybridConnections":[{"hostname":"db","port":5432,"relayName":"x"}]}"#,
        )
        .unwrap();
        assert!(
            cfg.targets(None, None)
                .unwrap_err()
                .to_string()
                .contains("db:5432")
        );
        assert!(serde_json::from_str::<ShimConfig>(r#"{"hybridConections":[]}"#).is_err());
    }
}
