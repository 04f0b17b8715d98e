//! The model behind a lock, persisted to `{data-dir}/state.json` after every change with an
//! atomic write (temp file, fsync, rename, fsync of the directory), so a restart or a
//! `kill -9` keeps every namespace, hybrid connection and key. Without a data directory
//! (in-process test emulators) the model lives in memory only.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

pub(crate) use hc_process::write_atomically;

use crate::model::{Model, ModelError};

/// File name of the persisted model.
pub(crate) const STATE_FILE: &str = "state.json";

/// Why the model could not be loaded, changed or saved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the state file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state file is not valid JSON of the expected shape.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The change itself was refused.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The shared, persisted model.
#[derive(Debug)]
pub(crate) struct Store {
    model: RwLock<Model>,
    path: Option<PathBuf>,
}

impl Store {
    /// A store that keeps the model in memory only.
    pub(crate) fn in_memory(model: Model) -> Self {
        Store {
            model: RwLock::new(model),
            path: None,
        }
    }

    /// Loads `{dir}/state.json` (an empty model when absent).
    pub(crate) fn load(dir: &Path) -> Result<Model, StoreError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Model::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// A store persisting to `{dir}/state.json`; writes `model` there at once.
    pub(crate) fn persistent(dir: &Path, model: Model) -> Result<Self, StoreError> {
        let store = Store {
            model: RwLock::new(model),
            path: Some(dir.join(STATE_FILE)),
        };
        store.save(&store.read())?;
        Ok(store)
    }

    /// A read guard on the model; hold it briefly.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Model> {
        self.model
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to a copy of the model; on success the copy is saved and replaces it.
    pub(crate) fn update<T>(
        &self,
        change: impl FnOnce(&mut Model) -> Result<T, ModelError>,
    ) -> Result<T, StoreError> {
        let mut guard = self
            .model
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = guard.clone();
        let out = change(&mut next)?;
        next.check_hosts()?;
        self.save(&next)?;
        *guard = next;
        Ok(out)
    }

    fn save(&self, model: &Model) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(model).map_err(|e| io(std::io::Error::other(e)))?;
        write_atomically(path, &json).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ensure_default_namespace;

    #[test]
    fn survives_reload_and_refuses_bad_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::default();
        ensure_default_namespace(&mut model, 1).unwrap();
        let store = Store::persistent(dir.path(), model).unwrap();
        let key = store
            .read()
            .namespace("default")
            .unwrap()
            .authorization_rules[0]
            .0
            .primary_key
            .clone();
        let reloaded = Store::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.namespace("default").unwrap().authorization_rules[0]
                .0
                .primary_key,
            key
        );
        let err = store
            .update(|m| m.namespace_mut("nope").map(|_| ()))
            .unwrap_err();
        assert!(err.to_string().contains("'nope' does not exist"));
        assert!(!dir.path().join(".state.json.tmp").exists());
    }

    #[test]
    fn corrupt_state_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = Store::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("state.json is corrupt"), "{err}");
    }
}
