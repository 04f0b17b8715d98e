//! Hostname mode's hosts-file entries: a marked block written into a file the user names (or
//! the system hosts file when asked), replaced if a previous run left one, removed on exit.
//! The rest of the file is kept as it was. The file is rewritten in place, which also works
//! for a bind-mounted `/etc/hosts`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// First line of the block.
pub const BEGIN: &str = "# BEGIN app-side-shim: hybrid connection endpoints (removed when the shim exits)";
/// Last line of the block.
pub const END: &str = "# END app-side-shim";

/// A written block; dropping it removes the block again.
#[derive(Debug)]
pub struct HostsBlock {
    path: PathBuf,
}

/// `text` without any app-side-shim block.
fn without_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        match line.trim() {
            l if l == BEGIN => inside = true,
            l if l == END && inside => inside = false,
            _ if inside => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl HostsBlock {
    /// Writes `address name` lines for `entries` into `path` (created if missing).
    pub fn write(path: &Path, entries: &[(IpAddr, String)]) -> std::io::Result<HostsBlock> {
        let existing = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut text = without_block(&existing);
        text.push_str(BEGIN);
        text.push('\n');
        for (ip, name) in entries {
            text.push_str(&format!("{ip}\t{name}\n"));
        }
        text.push_str(END);
        text.push('\n');
        std::fs::write(path, text)?;
        Ok(HostsBlock { path: path.to_owned() })
    }

    /// Removes the block now.
    pub fn remove(&self) -> std::io::Result<()> {
        let text = std::fs::read_to_string(&self.path)?;
        std::fs::write(&self.path, without_block(&text))
    }
}

impl Drop for HostsBlock {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the hosts-file entries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_added_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let ip: IpAddr = "127.77.0.1".parse().unwrap();
        let first = HostsBlock::write(&path, &[(ip, "db.corp".into())]).unwrap();
        std::mem::forget(first);
        let block = HostsBlock::write(&path, &[(ip, "api.corp".into())]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches(BEGIN).count(), 1);
        assert!(text.starts_with("127.0.0.1 localhost\n") && text.contains("127.77.0.1\tapi.corp") && !text.contains("db.corp"));
        drop(block);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "127.0.0.1 localhost\n");
    }
}
