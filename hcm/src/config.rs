//! The HCM's configuration: `{data-dir}/connections.json`, one entry per hybrid connection,
//! written atomically with mode 0600 (it holds keys). `hcm add` and `hcm remove` edit it;
//! `hcm run` watches it and applies changes without a restart.
//!
//! ```json
//! {"connections":[{"connectionString":"Endpoint=sb://…/;SharedAccessKeyName=defaultListener;SharedAccessKey=…;EntityPath=db",
//!                  "endpoint":null,"listeners":1,"caFile":"/path/ca.pem"}]}
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use hc_protocol::{ConnectionString, Credential};
use serde::{Deserialize, Serialize};

/// File name of the configuration.
pub const CONFIG_FILE: &str = "connections.json";

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Configured hybrid connections.
    #[serde(default)]
    pub connections: Vec<Entry>,
}

/// One hybrid connection to serve.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// The gateway connection string (Listen key and `EntityPath`). A secret.
    pub connection_string: String,
    /// `host:port` overriding the endpoint from `userMetadata`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Control channels to keep open (each counts as a listener on the relay).
    #[serde(default = "one")]
    pub listeners: u32,
    /// Extra CA file to trust for this relay (the emulator's `ca.pem`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key())
            .field("endpoint", &self.endpoint)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// A new entry, checking the connection string the way the portal's gateway string looks.
    pub fn new(
        connection_string: &str,
        endpoint: Option<String>,
        listeners: u32,
        ca_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let cs = ConnectionString::parse(connection_string).context("invalid connection string")?;
        if cs.entity_path.as_deref().is_none_or(str::is_empty) {
            bail!(
                "the connection string has no EntityPath; use the hybrid connection's gateway connection string (…;EntityPath=NAME)"
            );
        }
        if cs.credential.is_none() {
            bail!(
                "the connection string has no SharedAccessKeyName/SharedAccessKey or SharedAccessSignature; a listener needs a Listen key"
            );
        }
        if let Some(e) = &endpoint {
            hc_protocol::metadata::Endpoint::parse(e)?;
        }
        if listeners == 0
            || listeners > hc_protocol::limits::MAX_LISTENERS_PER_HYBRID_CONNECTION as u32
        {
            bail!("--listeners must be 1 to 25, got {listeners}");
        }
        Ok(Entry {
            connection_string: connection_string.trim().to_owned(),
            endpoint,
            listeners,
            ca_file,
        })
    }

    /// The parsed connection string (checked when the entry was made).
    pub fn parsed(&self) -> anyhow::Result<ConnectionString> {
        ConnectionString::parse(&self.connection_string)
            .context("invalid connection string in connections.json")
    }

    /// Hybrid connection name (`EntityPath`).
    pub fn name(&self) -> String {
        self.parsed()
            .ok()
            .and_then(|c| c.entity_path)
            .unwrap_or_default()
    }

    /// Namespace host.
    pub fn namespace(&self) -> String {
        self.parsed()
            .map(|c| c.namespace_host())
            .unwrap_or_default()
    }

    /// Unique key: `{namespace}/{name}`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.name())
    }

    /// The rule name used (never the key).
    pub fn key_name(&self) -> String {
        match self.parsed().ok().and_then(|c| c.credential) {
            Some(Credential::Key { name, .. }) => name,
            Some(Credential::Signature(_)) => "(SharedAccessSignature)".into(),
            None => String::new(),
        }
    }
}

impl Config {
    /// Loads `{dir}/connections.json`; an absent file is an empty configuration.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid HCM configuration", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes `{dir}/connections.json` atomically, readable by its owner only.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = serde_json::to_vec_pretty(self)?;
        crate::write_atomically(&dir.join(CONFIG_FILE), &json)
            .with_context(|| format!("cannot write {}", dir.join(CONFIG_FILE).display()))
    }

    /// The entry called `name`: `namespace/name`, or just `name` when that is unambiguous.
    pub fn find(&self, name: &str) -> anyhow::Result<usize> {
        let matches: Vec<usize> = self
            .connections
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.key().eq_ignore_ascii_case(name) || e.name().eq_ignore_ascii_case(name)
            })
            .map(|(i, _)| i)
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => bail!("no hybrid connection named '{name}' is configured (see 'hcm list')"),
            _ => bail!("'{name}' is configured in several namespaces; use namespace/name"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str = "Endpoint=sb://contoso.servicebus.windows.net/;SharedAccessKeyName=defaultListener;SharedAccessKey=c2VjcmV0;EntityPath=db";

    #[test]
    fn entries_are_checked_and_keyed() {
        let e = Entry::new(CS, Some("localhost:5432".into()), 1, None).unwrap();
        assert_eq!(
            (e.key(), e.name(), e.key_name()),
            (
                "contoso.servicebus.windows.net/db".into(),
                "db".into(),
                "defaultListener".into()
            )
        );
        assert!(!format!("{e:?}").contains("c2VjcmV0"));
        assert!(
            Entry::new(
                "Endpoint=sb://h/;SharedAccessKeyName=a;SharedAccessKey=b",
                None,
                1,
                None
            )
            .unwrap_err()
            .to_string()
            .contains("EntityPath")
        );
        assert!(Entry::new(CS, Some("nope".into()), 1, None).is_err());
        assert!(Entry::new(CS, None, 26, None).is_err());
    }

    #[test]
    fn save_load_find() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.connections.push(Entry::new(CS, None, 2, None).unwrap());
        c.save(dir.path()).unwrap();
        let loaded = Config::load(dir.path()).unwrap();
        assert_eq!(loaded, c);
        assert_eq!(loaded.find("db").unwrap(), 0);
        assert_eq!(loaded.find("contoso.servicebus.windows.net/db").unwrap(), 0);
        assert!(loaded.find("other").is_err());
    }
}
