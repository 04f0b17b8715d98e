//! A local, offline Azure Relay Hybrid Connections emulator, usable as a binary
//! (`relay-server`) or in-process from tests ([`Emulator`]).
//!
//! Layout, with imports flowing one way (`server` -> `routes` -> endpoints -> state):
//! `server` accepts connections (TCP, TLS, HTTP/1.1); `routes` dispatches by path;
//! `rendezvous` serves listen/connect/accept (with `control` running a listener's control
//! channel, `lifecycle` its timing, and `pump` a tunnel's frames); `http` is HTTP request
//! mode; `runtime_info` the management GET; `target` resolves and authorizes;
//! `registry` is the live state, `state` what all tasks share; `model`/`config`/`store`
//! hold the durable namespaces, hybrid connections and keys, `certs` the TLS material;
//! `error` renders every failure in one place. Frames are `hc-ws`'s endpoint; protocol
//! details come from `hc-protocol`.

#![warn(unreachable_pub)]

mod arm;
mod certs;
mod config;
mod control;
mod error;
pub mod fault;
mod faults_api;
mod head_case;
mod http;
mod lifecycle;
pub mod model;
mod pump;
mod registry;
mod rendezvous;
mod routes;
mod runtime_info;
mod server;
mod state;
mod status;
mod store;
mod target;
mod telemetry;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use hc_protocol::frame::close_code;
use hc_protocol::{ConnectionString, Credential};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use certs::CA_FILE;
pub use config::ConfigFile;
pub use fault::{FaultError, FaultInfo, FaultKind, FaultSpec};
pub use model::{Model, ModelError};
pub use state::{ArmOptions, RelayOptions, now_unix};
pub use store::StoreError;

use certs::TlsMaterial;
use state::RelayState;
use store::Store;

/// A handle on a relay: serve it, inspect it, change its namespaces.
#[derive(Debug, Clone)]
pub struct Relay {
    state: Arc<RelayState>,
}

impl Relay {
    /// A relay over `store`; `tls` `None` serves plain ws/http; `management_tls` serves the
    /// ARM endpoint.
    pub(crate) fn new(
        store: Store,
        tls: Option<Arc<rustls::ServerConfig>>,
        management_tls: Option<Arc<rustls::ServerConfig>>,
        token_key: state::TokenKey,
        options: RelayOptions,
    ) -> Self {
        let registry: Arc<registry::Registry> = Arc::default();
        let telemetry = telemetry::Telemetry::new(registry.clone());
        let faults = Arc::new(fault::Faults::new(&telemetry.registry));
        let started = options.clock.unix_now();
        let state = RelayState {
            store,
            registry,
            options,
            tls,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            management_tls,
            token_key,
            data_port: Default::default(),
            telemetry,
            tls_check: Default::default(),
            started,
            faults,
        };
        Relay {
            state: Arc::new(state),
        }
    }

    /// A relay with `config` applied to an in-memory model (the default namespace when it
    /// lists none), serving plain ws/http, with times from `options.clock`: for
    /// [`Relay::serve_connection`] over in-memory pipes (tests in virtual time), or
    /// [`Relay::serve`]. Nothing is written to disk.
    pub fn in_memory(config: &ConfigFile, options: RelayOptions) -> anyhow::Result<Relay> {
        let model = model_from(config, options.clock.unix_now())?;
        let relay = Relay::new(
            Store::in_memory(model),
            None,
            None,
            state::TokenKey(rand::random()),
            options,
        );
        relay.add_config_faults(config)?;
        Ok(relay)
    }

    /// A relay over a data directory, as `relay-server` runs: `state.json` (created when
    /// missing), `config` applied on top, the default namespace when there is none, and the CA
    /// and server certificate kept there (TLS unless `plain`).
    pub fn open(
        data_dir: &std::path::Path,
        config: Option<&ConfigFile>,
        plain: bool,
        options: RelayOptions,
    ) -> anyhow::Result<Relay> {
        use anyhow::Context as _;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        match hc_process::remove_stale_temp_files(data_dir) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(removed = n, dir = %data_dir.display(), "removed temporary files left by an interrupted write")
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %data_dir.display(), "cannot look for leftover temporary files")
            }
        }
        let mut model = Store::load(data_dir)?;
        if let Some(config) = config {
            config.apply(&mut model, now_unix())?;
        }
        config::ensure_default_namespace(&mut model, now_unix())?;
        let material = TlsMaterial::load_or_create(data_dir, &model.all_hosts())
            .context("preparing TLS certificates")?;
        let server_config = material.server_config()?;
        let tls = (!plain).then(|| server_config.clone());
        let token_key = arm::load_or_create_token_key(data_dir)?;
        let relay = Relay::new(
            Store::persistent(data_dir, model)?,
            tls,
            Some(server_config),
            token_key,
            options,
        );
        if !plain {
            let _ = relay.state.tls_check.set(certs::TlsCheck::new(&material));
        }
        if let Some(config) = config {
            relay.add_config_faults(config)?;
        }
        Ok(relay)
    }

    /// The faults a config file lists, active from now.
    fn add_config_faults(&self, config: &ConfigFile) -> anyhow::Result<()> {
        for (i, spec) in config.faults.iter().enumerate() {
            self.add_fault(spec.clone()).map_err(|e| {
                anyhow::anyhow!("config file: fault {} ({}): {e}", i + 1, spec.kind.as_str())
            })?;
        }
        Ok(())
    }

    /// Injects a fault (see [`fault`]): checked, applied at once to what is live and matches,
    /// and active for its duration or count, or until cleared.
    pub fn add_fault(&self, spec: FaultSpec) -> Result<FaultInfo, FaultError> {
        fault::add(&self.state, spec)
    }

    /// The active faults, oldest first.
    pub fn faults(&self) -> Vec<FaultInfo> {
        self.state.faults.list().0
    }

    /// A fault by id (`f1`), active or among the last ended ones.
    pub fn fault(&self, id: &str) -> Option<FaultInfo> {
        self.state.faults.get(id)
    }

    /// Ends a fault now; `None` when no active fault has that id.
    pub fn clear_fault(&self, id: &str) -> Option<FaultInfo> {
        let lift = self.state.faults.get(id).and_then(|f| f.spec.namespace);
        self.state
            .faults
            .clear(|f| f.id == id, lift.as_deref())
            .into_iter()
            .next()
    }

    /// Ends every fault now; returns how many were active.
    pub fn clear_faults(&self) -> usize {
        self.state.faults.clear(|_| true, None).len()
    }

    /// Serves on an already bound listener until `shutdown` completes, then closes every
    /// connection (listeners and tunnels get Close 1001) within the shutdown grace period.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        server::serve(self.state.clone(), listener, shutdown).await
    }

    /// Serves the management plane, an Azure Resource Manager endpoint for Microsoft.Relay
    /// and Microsoft.Web plus the identity endpoints its clients need (ARM.md), over HTTPS on
    /// an already bound listener, until the relay shuts down. Fails at once when the relay
    /// has no TLS material (an in-memory relay).
    pub async fn serve_management(&self, listener: TcpListener) -> std::io::Result<()> {
        let Some(tls) = self.state.management_tls.clone() else {
            return Err(std::io::Error::other(
                "the ARM endpoint needs TLS material (a data directory or an Emulator with TLS)",
            ));
        };
        server::serve_management(self.state.clone(), listener, tls).await
    }

    /// Serves one connection over any byte stream, as plain HTTP/1.1 (no TLS): a test can
    /// hand the relay one end of `tokio::io::duplex` and run a client on the other, with no
    /// socket and, if it likes, with tokio's time paused. The connection is tracked like the
    /// ones `serve` accepts.
    pub fn serve_connection<IO>(&self, io: IO, peer: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.state
            .tracker
            .spawn(server::serve_io(self.state.clone(), io, peer));
    }

    /// Starts shutting down (same as the `serve` shutdown future completing).
    pub fn shutdown(&self) {
        self.state.cancel.cancel();
    }

    /// The options it runs with.
    pub fn options(&self) -> &RelayOptions {
        &self.state.options
    }

    /// A copy of the current model.
    pub fn model(&self) -> Model {
        self.state.store.read().clone()
    }

    /// Listeners connected to a hybrid connection.
    pub fn listener_count(&self, namespace: &str, hybrid_connection: &str) -> usize {
        self.state.registry.listener_count(&(
            namespace.to_ascii_lowercase(),
            hybrid_connection.to_ascii_lowercase(),
        ))
    }

    /// Connections counted against a namespace's quota.
    pub fn connection_count(&self, namespace: &str) -> usize {
        self.state
            .registry
            .connection_count(&namespace.to_ascii_lowercase())
    }

    /// Senders waiting for a listener.
    pub fn pending_rendezvous(&self) -> usize {
        self.state.registry.pending_count()
    }

    /// Creates or updates a hybrid connection (with App Service's default rules when new).
    pub fn put_hybrid_connection(
        &self,
        namespace: &str,
        name: &str,
        requires_client_authorization: bool,
        user_metadata: Option<String>,
    ) -> Result<(), StoreError> {
        let now = now_unix();
        self.state.store.update(|m| {
            model::validate_hybrid_connection_name(name)?;
            let ns = m.namespace_mut(namespace)?;
            let hc = ns
                .hybrid_connections
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| config::empty_hybrid_connection(name, now));
            hc.requires_client_authorization = requires_client_authorization;
            hc.user_metadata = user_metadata;
            hc.updated_at = now;
            config::ensure_app_service_rules(hc)
        })
    }

    /// Deletes a hybrid connection; its listeners are closed with 1001 (§5.5).
    pub fn delete_hybrid_connection(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        self.state.store.update(|m| {
            let ns = m.namespace_mut(namespace)?;
            ns.hybrid_connections
                .remove(&name.to_ascii_lowercase())
                .map(|_| ())
                .ok_or_else(|| ModelError::NoHybridConnection(namespace.into(), name.into()))
        })?;
        let key = (namespace.to_ascii_lowercase(), name.to_ascii_lowercase());
        self.state.registry.close_listeners(
            &key,
            close_code::GOING_AWAY,
            "The hybrid connection was deleted.",
        );
        Ok(())
    }

    /// A connection string for a rule, as the portal shows it: `Endpoint=sb://{host}/` with
    /// the rule's primary key, and `EntityPath` when a hybrid connection is named.
    pub fn connection_string(
        &self,
        namespace: &str,
        hybrid_connection: Option<&str>,
        rule: &str,
        endpoint_host: &str,
    ) -> Result<ConnectionString, ModelError> {
        let model = self.state.store.read();
        let ns = model.namespace(namespace)?;
        let entity = match hybrid_connection {
            Some(hc) => Some(
                ns.hybrid_connections
                    .get(&hc.to_ascii_lowercase())
                    .ok_or_else(|| ModelError::NoHybridConnection(namespace.into(), hc.into()))?,
            ),
            None => None,
        };
        let rules = entity
            .map(|e| &e.authorization_rules)
            .into_iter()
            .flatten()
            .chain(&ns.authorization_rules);
        let found = rules
            .into_iter()
            .find(|r| r.0.name == rule)
            .ok_or_else(|| ModelError::BadRuleName(rule.into()))?;
        Ok(ConnectionString {
            endpoint: format!("sb://{endpoint_host}/"),
            entity_path: entity.map(|e| e.name.clone()),
            credential: Some(Credential::Key {
                name: found.0.name.clone(),
                key: found.0.primary_key.clone(),
            }),
            operation_timeout: None,
            authentication: None,
        })
    }
}

/// `config` applied to an empty model, plus the default namespace when it lists none.
fn model_from(config: &ConfigFile, now: u64) -> anyhow::Result<Model> {
    let mut model = Model::default();
    config.apply(&mut model, now)?;
    config::ensure_default_namespace(&mut model, now)?;
    Ok(model)
}

/// An in-process emulator for tests, the way Azurite serves storage tests: bound to
/// 127.0.0.1 on a port the OS picks, with its own CA when TLS is on, stopped on drop.
#[derive(Debug)]
pub struct Emulator {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The relay handle.
    pub relay: Relay,
    /// The CA certificate (PEM) to trust, when TLS is on.
    pub ca_pem: Option<String>,
    /// The ARM endpoint's address (`https://localhost:{port}/`), when TLS is on.
    pub management_addr: Option<SocketAddr>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Emulator {
    /// Starts an emulator with `config` applied to an in-memory model (the zero-config
    /// default namespace when `config` lists none).
    pub async fn start(
        config: &ConfigFile,
        tls: bool,
        options: RelayOptions,
    ) -> anyhow::Result<Emulator> {
        let model = model_from(config, options.clock.unix_now())?;
        let material = if tls {
            Some(TlsMaterial::generate(&model.all_hosts())?)
        } else {
            None
        };
        let server_config = material.as_ref().map(|m| m.server_config()).transpose()?;
        let relay = Relay::new(
            Store::in_memory(model),
            server_config.clone(),
            server_config,
            state::TokenKey(rand::random()),
            options,
        );
        if let Some(material) = &material {
            let _ = relay.state.tls_check.set(certs::TlsCheck::new(material));
        }
        relay.add_config_faults(config)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let serving = relay.clone();
        let task =
            tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let management_addr = if tls {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let serving = relay.clone();
            tokio::spawn(async move { serving.serve_management(listener).await });
            Some(addr)
        } else {
            None
        };
        Ok(Emulator {
            addr,
            relay,
            ca_pem: material.map(|m| m.ca_pem),
            management_addr,
            task: Some(task),
        })
    }

    /// `localhost:{port}`, the Host for the default namespace.
    pub fn authority(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }

    /// Shuts down and waits until every connection is closed (or the grace period ends).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.relay.shutdown();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.relay.shutdown();
    }
}
