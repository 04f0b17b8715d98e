//! The Hybrid Connection Manager: the listener side of the tunnel, run inside the network
//! that holds the endpoint. It connects outbound only, to the relay, and forwards every
//! relayed connection to one fixed TCP `host:port` per hybrid connection.
//!
//! `config` (connections.json), `status` (status.json and the live board), `worker` (one
//! hybrid connection), `service` (`hcm run`), `cli` (the verbs). The wire work is done by
//! `hc-client`.

pub mod cli;
pub mod config;
pub mod service;
pub mod status;
pub mod worker;

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` so that a crash leaves the old or the new file, owner-only.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file"), std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
