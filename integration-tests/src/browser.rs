//! Headless Chromium driven through chromedriver's WebDriver protocol (W3C, JSON over
//! HTTP), for tests that look at a page as a user's browser renders it. Debian's `chromium`
//! and `chromium-driver` packages provide both programs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hc_emulator::procs::Proc;
use serde_json::{Value, json};

/// A chromedriver process with one headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    _driver: Proc,
    addr: SocketAddr,
    session: String,
}

/// The Chromium binary: `$CHROME_BIN`, else Debian's.
fn chromium() -> String {
    std::env::var("CHROME_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session.
    pub fn start(dir: &Path) -> anyhow::Result<Browser> {
        let driver_path = hc_emulator::procs::on_path("chromedriver").context(
            "chromedriver is not installed (Debian: apt-get install chromium chromium-driver)",
        )?;
        let (driver, lines) = Proc::start(
            &driver_path,
            &["--port=0"],
            dir.join("chromedriver.log"),
            Some("was started successfully on port"),
        )?;
        let port: u16 = lines
            .last()
            .and_then(|l| l.rsplit(' ').next())
            .map(|p| p.trim_end_matches('.'))
            .and_then(|p| p.parse().ok())
            .context("chromedriver's port")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = dir.join("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,900", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let answer = call(addr, "POST", "/session", Some(&caps))?;
        let session = answer["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {answer}"))?
            .to_owned();
        Ok(Browser {
            _driver: driver,
            addr,
            session,
        })
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        call(
            self.addr,
            method,
            &format!("/session/{}{what}", self.session),
            body,
        )
    }

    /// Opens `url`.
    pub fn open(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(&json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Evaluates `script` until it returns `true` (every 50 ms, `limit` at most); the last
    /// value otherwise.
    pub fn until(&self, script: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let v = self.eval(script)?;
            if v == Value::Bool(true) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("the page never satisfied `{script}`; last: {v}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None)?;
        let text = v.as_str().context("screenshot is base64 text")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(text)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// One WebDriver command: its `value`, or the error WebDriver reported.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let json = body.map(Value::to_string);
    let (status, body) =
        hc_emulator::procs::http_request(addr, method, path, json.as_deref(), None)?;
    let v: Value = serde_json::from_slice(&body).with_context(|| {
        format!(
            "chromedriver answered {status} {:?}",
            String::from_utf8_lossy(&body)
        )
    })?;
    if let Some(error) = v["value"]["error"].as_str() {
        bail!(
            "WebDriver {method} {path}: {error}: {}",
            v["value"]["message"]
        );
    }
    Ok(v["value"].clone())
}
