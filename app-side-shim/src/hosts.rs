//! Hostname mode's hosts-file entries: a marked block written into a file the user names (or
//! the system hosts file when asked), removed on exit. The rest of the file is kept as it was.
//!
//! Each shim process has a block of its own, marked with its process id, so two shims that
//! write the same file never remove each other's entries; a block whose process is gone (a
//! `kill -9`) is removed by the next shim that writes the file.
//!
//! Writes are atomic: the new text goes to a temporary file next to the hosts file, which is
//! then renamed over it, so a reader sees the old file or the new one, never half of one.
//! Where the hosts file is a mount point (a container's `/etc/hosts`, a bind mount) a rename
//! is refused, and the file is rewritten in place instead. Every read-modify-write holds an
//! exclusive lock on the file's directory, so concurrent shims take turns.

use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Start of every block's first line; the owner follows.
const BEGIN_PREFIX: &str = "# BEGIN app-side-shim";
/// Start of every block's last line.
const END_PREFIX: &str = "# END app-side-shim";

/// The first line of this process's block.
pub fn begin_line(pid: u32) -> String {
    format!("{BEGIN_PREFIX} pid={pid}: hybrid connection endpoints (removed when the shim exits)")
}

/// The last line of this process's block.
pub fn end_line(pid: u32) -> String {
    format!("{END_PREFIX} pid={pid}")
}

/// A written block; dropping it removes the block again.
#[derive(Debug)]
pub struct HostsBlock {
    path: PathBuf,
    pid: u32,
}

/// The process id a block line names; `None` for blocks of older versions, which named none.
fn owner(line: &str, prefix: &str) -> Option<Option<u32>> {
    let rest = line.trim().strip_prefix(prefix)?;
    let pid = rest.trim_start().strip_prefix("pid=").map(|r| {
        r.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    Some(pid.and_then(|p| p.parse().ok()))
}

fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// `text` without the blocks for which `drop_block(owner)` says yes.
fn without_blocks(text: &str, drop_block: impl Fn(Option<u32>) -> bool) -> String {
    let mut out = String::new();
    let mut inside: Option<bool> = None;
    for line in text.lines() {
        match (inside, owner(line, BEGIN_PREFIX), owner(line, END_PREFIX)) {
            (None, Some(who), _) => {
                let dropped = drop_block(who);
                inside = Some(dropped);
                if !dropped {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            (Some(dropped), _, Some(_)) => {
                inside = None;
                if !dropped {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            (Some(true), _, _) => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Runs `change` on the file's text under the directory lock and writes the result.
fn rewrite(path: &Path, change: impl FnOnce(String) -> String) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let lock = File::open(&dir)?;
    lock.lock()?;
    let (existing, permissions) = match std::fs::read_to_string(path) {
        Ok(t) => (t, std::fs::metadata(path).ok().map(|m| m.permissions())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(e),
    };
    let text = change(existing);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "hosts".into());
    let tmp = dir.join(format!(".{name}.app-side-shim.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Some(p) = permissions {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    match written {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            // A mount point cannot be renamed over: write in place.
            if matches!(e.raw_os_error(), Some(16) | Some(18)) {
                tracing::debug!(path = %path.display(), "hosts file is a mount point; rewriting it in place");
                std::fs::write(path, text)
            } else {
                Err(e)
            }
        }
    }
}

impl HostsBlock {
    /// Writes `address name` lines for `entries` into `path` (created if missing), replacing
    /// this process's block and the blocks of processes that are gone.
    pub fn write(path: &Path, entries: &[(IpAddr, String)]) -> std::io::Result<HostsBlock> {
        let pid = std::process::id();
        rewrite(path, |existing| {
            let mut text =
                without_blocks(&existing, |who| who.is_none_or(|p| p == pid || !alive(p)));
            text.push_str(&begin_line(pid));
            text.push('\n');
            for (ip, name) in entries {
                text.push_str(&format!("{ip}\t{name}\n"));
            }
            text.push_str(&end_line(pid));
            text.push('\n');
            text
        })?;
        Ok(HostsBlock {
            path: path.to_owned(),
            pid,
        })
    }

    /// Removes this process's block now.
    pub fn remove(&self) -> std::io::Result<()> {
        let pid = self.pid;
        rewrite(&self.path, |text| {
            without_blocks(&text, |who| who == Some(pid))
        })
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
        assert_eq!(text.matches(BEGIN_PREFIX).count(), 1);
        assert!(
            text.starts_with("127.0.0.1 localhost\n")
                && text.contains("127.77.0.1\tapi.corp")
                && !text.contains("db.corp")
        );
        drop(block);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    }

    #[test]
    fn other_live_processes_blocks_stay_and_dead_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        // pid 1 is alive on Linux; u32::MAX - 1 is not a process.
        let dead = u32::MAX - 1;
        let text = format!(
            "127.0.0.1 localhost\n{}\n127.77.0.9\tother.corp\n{}\n{}\n127.77.0.8\tstale.corp\n{}\n{BEGIN_PREFIX}: hybrid connection endpoints (removed when the shim exits)\n127.77.0.7\told.corp\n{END_PREFIX}\n",
            begin_line(1),
            end_line(1),
            begin_line(dead),
            end_line(dead)
        );
        std::fs::write(&path, text).unwrap();
        let block = HostsBlock::write(
            &path,
            &[("127.77.0.1".parse().unwrap(), "mine.corp".into())],
        )
        .unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(
            now.contains("other.corp") && now.contains("mine.corp"),
            "{now}"
        );
        assert!(
            !now.contains("stale.corp") && !now.contains("old.corp"),
            "{now}"
        );
        drop(block);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(
            after.contains("other.corp") && !after.contains("mine.corp"),
            "{after}"
        );
    }
}
