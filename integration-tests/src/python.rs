//! Python packages from PyPI for conformance tests (Microsoft's management SDKs, the Azure
//! CLI), in a virtual environment the test makes with `python3 -m venv` and `pip install`.
//! Environments are kept between runs under `$XDG_CACHE_HOME/hc-emulator` (else
//! `~/.cache/hc-emulator`), one per package list, and are used only once complete. A failed
//! install fails the test, naming what was missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("hc-emulator")
}

/// A virtual environment holding exactly `packages` (pinned `name==version` specs), made on
/// first use. Its `bin/` has `python`, `pip` and the packages' commands.
pub fn venv(packages: &[&str]) -> PathBuf {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let digest = Sha256::digest(packages.join("\n").as_bytes());
    let key: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let dir = cache_dir().join(format!("venv-{key}"));
    let complete = dir.join(".complete");
    if complete.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("."))).expect("cache directory");
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&dir),
        "python3 with the venv module is needed (Debian: python3 python3-venv)",
    );
    run(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--disable-pip-version-check", "--no-input", "-q"])
            .args(packages),
        &format!(
            "pip install {} failed (PyPI reachable?)",
            packages.join(" ")
        ),
    );
    std::fs::write(&complete, packages.join("\n")).expect("marker file");
    dir
}

fn run(command: &mut Command, what: &str) {
    match command.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{what}: {e}"),
    }
}
