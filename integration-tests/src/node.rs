//! Microsoft's Node clients as conformance peers: `node peer.js MODE URL` in a package folder
//! (`node` for hyco-ws, `node-https` for hyco-https), installed with `npm install` on first use
//! (a failed install fails the test), printing one JSON object per line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

/// `integration-tests/{folder}`, with its npm packages installed (once per process).
pub fn package_dir(folder: &str) -> PathBuf {
    static INSTALLED: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(folder);
    let mut done = INSTALLED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let result = done
        .entry(folder.to_owned())
        .or_insert_with(|| install(&dir));
    if let Err(e) = result {
        panic!("cannot install the npm packages in {}: {e}", dir.display());
    }
    dir
}

fn install(dir: &Path) -> Result<(), String> {
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("npm: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A running `node peer.js ARGS…` whose JSON lines arrive on a channel.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    events: mpsc::UnboundedReceiver<Value>,
}

impl Peer {
    /// Starts the peer in `folder` trusting `ca`, with the rule `key` (name, key) and `env`.
    pub fn start(
        folder: &str,
        args: &[&str],
        ca: &Path,
        key: (&str, &str),
        env: &[(&str, &str)],
    ) -> Peer {
        let mut child = Command::new("node")
            .current_dir(package_dir(folder))
            .arg("peer.js")
            .args(args)
            .env("NODE_EXTRA_CA_CERTS", ca)
            .env("HC_KEY_NAME", key.0)
            .env("HC_KEY", key.1)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node is needed for the conformance tests");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Peer { child, events }
    }

    /// The next event (30 s at most).
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), self.events.recv())
            .await
            .expect("the peer said nothing for 30 s")
            .expect("the peer exited")
    }

    /// Events up to and including the first whose `event` is `name`.
    pub async fn until(&mut self, name: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = e["event"] == name;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
