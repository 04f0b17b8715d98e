//! `relay-server fault add|list|clear`: a client of a running relay's `/$faults` API. It
//! finds the relay through the URL the relay wrote into its data directory at start (or
//! `--relay`), trusts the CA there for https, and prints what the relay answered.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use relay_server::FaultSpec;
use relay_server::fault::URL_FILE;
use serde_json::Value;

const FAULT_EXAMPLES: &str = "\
Examples:
  relay-server fault add drop-listeners --close-code 1011      close every listener's control channel
  relay-server fault add refuse-connects --status 503 --hc sample --duration 10
                                                               503 ServerBusy to senders of 'sample' for 10 s
  relay-server fault add cut-tunnels --after-bytes 1000000 --count 1
                                                               cut the next tunnel after 1 MB
  relay-server fault add shape-tunnels --latency-ms 100 --bytes-per-second 1000000
  relay-server fault list
  relay-server fault clear                                     every fault; normal service at once

Exit status: 0 done; 1 the relay refused (the message names the field at fault) or could not
be reached; 2 a bad command line.";

/// Options of `relay-server fault`.
#[derive(Debug, clap::Args)]
#[command(after_help = FAULT_EXAMPLES)]
pub(crate) struct FaultArgs {
    /// The relay's URL, e.g. https://localhost:9443 [default: the URL the relay serving
    /// --data-dir wrote at start].
    #[arg(long, env = "HC_RELAY_URL", global = true)]
    relay: Option<String>,
    /// The running relay's data directory (its URL and CA are read from there) [default:
    /// $XDG_DATA_HOME/hc-emulator or ~/.local/share/hc-emulator].
    #[arg(long, env = "HC_RELAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// CA certificate to trust for an https relay [default: ca.pem in the data directory].
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// For a relay not on this machine: a SAS token with Manage rights
    /// (SharedAccessSignature ...) or a management bearer token the relay issued.
    #[arg(long, env = "HC_RELAY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the relay's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Adds a fault: KIND, then the fields that apply to it (the README lists them).
    Add(Box<FaultSpec>),
    /// Lists the active faults and the last ones that ended.
    List,
    /// Clears one fault by id (`f3`), or every fault.
    Clear {
        /// The fault's id; all faults when left out.
        id: Option<String>,
    },
}

/// Runs the subcommand.
pub(crate) async fn run(args: FaultArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| hc_process::default_data_dir(crate::DATA_DIR_NAME));
    let url = match &args.relay {
        Some(u) => u.trim().to_owned(),
        None => {
            let file = data_dir.join(URL_FILE);
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "cannot read {} to find the relay (is relay-server running with this --data-dir? or give --relay URL)",
                        file.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let ca = args.ca_file.clone().or_else(|| {
        let p = data_dir.join(relay_server::CA_FILE);
        p.exists().then_some(p)
    });
    let (method, target, body) = match &args.action {
        Action::Add(spec) => (
            http::Method::POST,
            "/$faults".to_owned(),
            serde_json::to_vec(spec)?,
        ),
        Action::List => (http::Method::GET, "/$faults".to_owned(), Vec::new()),
        Action::Clear { id: Some(id) } => (
            http::Method::DELETE,
            format!("/$faults/{}", id.trim()),
            Vec::new(),
        ),
        Action::Clear { id: None } => (http::Method::DELETE, "/$faults".to_owned(), Vec::new()),
    };
    let (status, answer) = call(&url, ca, args.token.as_deref(), method, &target, body).await?;
    if !(200..300).contains(&status) {
        let message = answer["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| answer.to_string());
        bail!("the relay at {url} answered {status}: {message}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    match &args.action {
        Action::Add(_) => println!("{}", describe(&answer)),
        Action::List => {
            let active = answer["faults"].as_array().cloned().unwrap_or_default();
            let ended = answer["ended"].as_array().cloned().unwrap_or_default();
            if active.is_empty() {
                println!("No active faults.");
            } else {
                println!("Active:");
                for f in &active {
                    println!("  {}", describe(f));
                }
            }
            if !ended.is_empty() {
                println!("Ended (last {}):", ended.len());
                for f in &ended {
                    println!("  {}", describe(f));
                }
            }
        }
        Action::Clear { id: Some(_) } => println!("Cleared {}", describe(&answer)),
        Action::Clear { id: None } => {
            let n = answer["cleared"].as_array().map_or(0, Vec::len);
            println!("Cleared {n} active fault(s); normal service.");
        }
    }
    Ok(())
}

/// One line about a fault: id, kind, scope, parameters, what it did, whether it lasts.
fn describe(f: &Value) -> String {
    const SKIP: [&str; 11] = [
        "id",
        "kind",
        "namespace",
        "hybridConnection",
        "active",
        "applied",
        "createdAt",
        "expiresAt",
        "remaining",
        "ended",
        "durationSeconds",
    ];
    let scope = format!(
        "{}/{}",
        f["namespace"].as_str().unwrap_or("*"),
        f["hybridConnection"].as_str().unwrap_or("*")
    );
    let params: Vec<String> = f
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect();
    let mut line = format!(
        "{} {} on {scope}",
        f["id"].as_str().unwrap_or("?"),
        f["kind"].as_str().unwrap_or("?")
    );
    if !params.is_empty() {
        line.push_str(&format!(" ({})", params.join(", ")));
    }
    line.push_str(&format!(", applied {}", f["applied"].as_u64().unwrap_or(0)));
    if let Some(d) = f["durationSeconds"].as_f64() {
        line.push_str(&format!(", for {d} s"));
    }
    if let Some(n) = f["remaining"].as_u64() {
        line.push_str(&format!(", {n} left"));
    }
    match f["ended"].as_str() {
        Some(why) => line.push_str(&format!(", ended ({why})")),
        None => line.push_str(", active"),
    }
    line
}

/// One request to the relay; the status and the JSON answer.
async fn call(
    url: &str,
    ca: Option<PathBuf>,
    token: Option<&str>,
    method: http::Method,
    target: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Value)> {
    let tls = hc_client::tls::client_config(ca.as_deref()).map_err(anyhow::Error::msg)?;
    let endpoint =
        hc_client::relay::RelayEndpoint::from_endpoint(url, tls).map_err(anyhow::Error::msg)?;
    let io = endpoint
        .open_namespace()
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is relay-server running at {url}?)"))?;
    let auth;
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(t) = token {
        let t = t.trim();
        if t.starts_with("SharedAccessSignature ") {
            headers.push(("ServiceBusAuthorization", t));
        } else {
            auth = format!("Bearer {}", t.trim_start_matches("Bearer ").trim());
            headers.push(("Authorization", &auth));
        }
    }
    let (head, bytes) = hc_client::handshake::http_request(
        io,
        method,
        target,
        &endpoint.authority(),
        &headers,
        body,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).trim().to_owned()));
    let json = match json {
        Value::String(text) => serde_json::json!({"error": {"message": text}}),
        other => other,
    };
    Ok((head.status, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_reads_as_one_line() {
        let f = serde_json::json!({"id":"f2","kind":"refuseConnects","namespace":"default","status":503,"applied":4,"durationSeconds":10.0,"active":true});
        assert_eq!(
            describe(&f),
            "f2 refuseConnects on default/* (status=503), applied 4, for 10 s, active"
        );
    }
}
