//! Microsoft's own management clients against the `relay-server` binary's ARM endpoint,
//! unchanged: the Python SDKs (`azure-mgmt-relay`, `azure-mgmt-web`, `azure-identity`'s
//! `DefaultAzureCredential` through the App Service managed-identity endpoint), the Azure CLI
//! (service-principal and managed-identity logins, `az relay …`, `az webapp
//! hybrid-connection …`) driving the whole chain with our `hcm` and the shim's `--app` mode,
//! and `@azure/arm-relay` from npm. They need python3 with PyPI, or node with npm, so they are
//! ignored by default; `cargo test --workspace -- --include-ignored` runs them (CI does), and
//! then a missing client fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hc_emulator::chain::banner_value;
use hc_emulator::procs::{self, Proc};
use hc_emulator::servers;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default subscription and tenant of the emulator.
const DEFAULT: &str = relay_server::model::DEFAULT_SUBSCRIPTION;

/// A `relay-server` process with its ARM endpoint.
struct Relay {
    _proc: Proc,
    dir: tempfile::TempDir,
    arm: String,
    ca: PathBuf,
}

fn start_relay(extra: &[&str]) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = vec!["--data-dir", procs::path(&data), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (proc, lines) = Proc::start_logging(
        &procs::binary("relay-server").unwrap(),
        &args,
        dir.path().join("relay.log"),
        Some("Ready."),
        "info,relay_server=debug",
    )
    .unwrap();
    let arm = banner_value(&lines, "Management (Azure Resource Manager): ")
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .expect("the banner names the ARM endpoint");
    Relay {
        _proc: proc,
        ca: data.join(relay_server::CA_FILE),
        dir,
        arm,
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Environment variables a developer's shell may carry that would change what the clients
/// do; removed so the tests see only what they set.
const CLEARED: &[&str] = &[
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_CONFIG_DIR",
    "SSL_CERT_FILE",
];

fn clean(command: &mut Command) -> &mut Command {
    for var in CLEARED {
        command.env_remove(var);
    }
    command
}

#[test]
#[ignore = "needs python3 and PyPI (azure-mgmt-relay, azure-mgmt-web, azure-identity); --include-ignored runs it"]
fn python_management_sdks_run_the_whole_sequence() {
    let venv = integration_tests::python::venv(&[
        "azure-mgmt-relay==2.1.0",
        "azure-mgmt-web==11.0.1",
        "azure-identity==1.27.0",
    ]);
    // Strict mode: DefaultAzureCredential's tokens come from the emulator's managed-identity
    // endpoint and are verified; a forged one is refused.
    let relay = start_relay(&["--arm-strict-auth"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/arm_sdk.py");
    let out = clean(&mut Command::new(venv.join("bin/python")))
        .arg(&script)
        .env("ARM_ENDPOINT", &relay.arm)
        .env("ARM_SUBSCRIPTION", "00000000-0000-0000-0000-00000000aaaa")
        .env("REQUESTS_CA_BUNDLE", &relay.ca)
        .env("IDENTITY_ENDPOINT", format!("{}msi/token", relay.arm))
        .env("IDENTITY_HEADER", "emulator")
        .output()
        .unwrap();
    println!("{}", text(&out));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all steps passed"),
        "{}\n--- relay log\n{}",
        text(&out),
        std::fs::read_to_string(relay.dir.path().join("relay.log")).unwrap_or_default()
    );
}

#[test]
#[ignore = "needs node and npm (@azure/arm-relay); --include-ignored runs it"]
fn arm_relay_from_npm_creates_lists_keys_and_deletes() {
    let dir = integration_tests::node::package_dir("node-arm");
    let relay = start_relay(&[]);
    let out = Command::new("node")
        .arg(dir.join("arm.js"))
        .env("ARM_ENDPOINT", &relay.arm)
        .env("ARM_SUBSCRIPTION", "00000000-0000-0000-0000-00000000bbbb")
        .env("ARM_TOKEN", "emulator-dev-token")
        .env("NODE_EXTRA_CA_CERTS", &relay.ca)
        .output()
        .expect("node is needed");
    println!("{}", text(&out));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all steps passed"),
        "{}",
        text(&out)
    );
}

/// The Azure CLI in its own configuration directory, trusting the emulator's CA.
struct Az {
    bin: PathBuf,
    config: PathBuf,
    ca: PathBuf,
    identity: Option<String>,
}

impl Az {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        clean(&mut command)
            .args(args)
            .env("AZURE_CONFIG_DIR", &self.config)
            .env("REQUESTS_CA_BUNDLE", &self.ca)
            .env("AZURE_CORE_COLLECT_TELEMETRY", "false")
            .env("AZURE_CORE_INSTANCE_DISCOVERY", "false")
            .env("AZURE_CORE_NO_COLOR", "true")
            .env("AZURE_CORE_ONLY_SHOW_ERRORS", "true")
            .env("AZURE_CORE_OUTPUT", "json");
        if let Some(endpoint) = &self.identity {
            command
                .env("IDENTITY_ENDPOINT", endpoint)
                .env("IDENTITY_HEADER", "emulator");
        }
        command
    }

    /// Runs `az ARGS` (on a blocking thread); its stdout as JSON (Null when empty). Fails
    /// the test with az's output when it fails.
    async fn run(&self, args: &[&str]) -> Value {
        let out = self.output(args).await;
        assert!(
            out.status.success(),
            "az {}: {}",
            args.join(" "),
            text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap_or(Value::String(stdout.trim().to_owned()))
        }
    }

    async fn output(&self, args: &[&str]) -> Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().expect("az runs"))
            .await
            .unwrap()
    }
}

/// Sends `data` through `addr`, half-closes, and reads until EOF (bounded).
async fn round_trip(addr: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(data).await?;
    tcp.shutdown().await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no answer within 20 s"))??;
    Ok(got)
}

/// Waits (up to `limit`) until `check` holds, re-checking every 200 ms: for state that only
/// another process's output shows.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 and PyPI (azure-cli); --include-ignored runs it"]
async fn azure_cli_drives_the_whole_chain() {
    let venv =
        tokio::task::spawn_blocking(|| integration_tests::python::venv(&["azure-cli==2.91.0"]))
            .await
            .unwrap();
    let relay = start_relay(&["--arm-strict-auth"]);
    let work = relay.dir.path();
    let echo = servers::echo_server().await;
    let mut az = Az {
        bin: venv.join("bin/az"),
        config: work.join("azure"),
        ca: relay.ca.clone(),
        identity: None,
    };
    let ok = |v: &Value, field: &str, want: &str| {
        assert_eq!(v[field].as_str(), Some(want), "{field} in {v}");
    };

    // Log in offline: the emulator as a cloud, a service principal against its token endpoint.
    az.run(&[
        "cloud",
        "register",
        "-n",
        "RelayEmulator",
        "--endpoint-resource-manager",
        &relay.arm,
    ])
    .await;
    az.run(&["cloud", "set", "-n", "RelayEmulator"]).await;
    let accounts = az
        .run(&[
            "login",
            "--service-principal",
            "-u",
            "00000000-0000-0000-0000-000000000003",
            "-p",
            "any-secret",
            "--tenant",
            DEFAULT,
        ])
        .await;
    assert_eq!(accounts[0]["id"], DEFAULT, "{accounts}");

    // Namespace, hybrid connection naming the echo server, rules and keys.
    az.run(&["group", "create", "-n", "rg1", "-l", "westus"])
        .await;
    let ns = az
        .run(&[
            "relay",
            "namespace",
            "create",
            "-g",
            "rg1",
            "-n",
            "e2e-relay",
        ])
        .await;
    ok(&ns, "provisioningState", "Succeeded");
    ok(&ns, "location", "westus");
    let metadata = format!(r#"[{{"key":"endpoint","value":"{echo}"}}]"#);
    let hc = az
        .run(&[
            "relay",
            "hyco",
            "create",
            "-g",
            "rg1",
            "--namespace-name",
            "e2e-relay",
            "-n",
            "db",
            "--requires-client-authorization",
            "true",
            "--user-metadata",
            &metadata,
        ])
        .await;
    ok(&hc, "userMetadata", &metadata);
    let rule = az
        .run(&[
            "relay",
            "hyco",
            "authorization-rule",
            "create",
            "-g",
            "rg1",
            "--namespace-name",
            "e2e-relay",
            "--hybrid-connection-name",
            "db",
            "-n",
            "defaultListener",
            "--rights",
            "Listen",
        ])
        .await;
    assert_eq!(rule["rights"], serde_json::json!(["Listen"]));
    let rule_args = [
        "-g",
        "rg1",
        "--namespace-name",
        "e2e-relay",
        "--hybrid-connection-name",
        "db",
        "-n",
        "defaultListener",
    ];
    let listed = az
        .run(
            &[
                &["relay", "hyco", "authorization-rule", "keys", "list"][..],
                &rule_args,
            ]
            .concat(),
        )
        .await;
    let renewed = az
        .run(
            &[
                &[
                    "relay",
                    "hyco",
                    "authorization-rule",
                    "keys",
                    "renew",
                    "--key",
                    "PrimaryKey",
                ][..],
                &rule_args,
            ]
            .concat(),
        )
        .await;
    assert_ne!(renewed["primaryKey"], listed["primaryKey"]);
    let listen_cs = renewed["primaryConnectionString"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        listen_cs.starts_with("Endpoint=sb://e2e-relay.localhost:")
            && listen_cs.ends_with(";EntityPath=db"),
        "{listen_cs}"
    );
    let root = az
        .run(&[
            "relay",
            "namespace",
            "authorization-rule",
            "keys",
            "list",
            "-g",
            "rg1",
            "--namespace-name",
            "e2e-relay",
            "-n",
            "RootManageSharedAccessKey",
        ])
        .await;
    ok(&root, "keyName", "RootManageSharedAccessKey");
    ok(
        &az.run(&["relay", "namespace", "exists", "-n", "e2e-relay"])
            .await,
        "reason",
        "NameInUse",
    );
    let names = az
        .run(&["relay", "namespace", "list", "--query", "[].name"])
        .await;
    assert!(
        names.as_array().unwrap().iter().any(|n| n == "e2e-relay"),
        "{names}"
    );

    // Our HCM with the listed (renewed) string, as printed; the relay counts its listener.
    let hcm_dir = work.join("hcm");
    let add = Command::new(procs::binary("hcm").unwrap())
        .args([
            "--data-dir",
            procs::path(&hcm_dir),
            "add",
            &listen_cs,
            "--ca-file",
            procs::path(&relay.ca),
        ])
        .output()
        .unwrap();
    assert!(add.status.success(), "hcm add: {}", text(&add));
    let (_hcm, _) = Proc::start(
        &procs::binary("hcm").unwrap(),
        &[
            "--data-dir",
            procs::path(&hcm_dir),
            "run",
            "--min-backoff",
            "0.05",
            "--max-backoff",
            "0.5",
        ],
        work.join("hcm.log"),
        None,
    )
    .unwrap();
    let show = [
        "relay",
        "hyco",
        "show",
        "-g",
        "rg1",
        "--namespace-name",
        "e2e-relay",
        "-n",
        "db",
        "--query",
        "listenerCount",
    ];
    until(
        "the HCM's listener counted",
        Duration::from_secs(30),
        || async { az.run(&show).await == 1 },
    )
    .await;

    // App Service's side: the CLI adds the hybrid connection to an app (it creates
    // defaultSender and takes the endpoint from userMetadata).
    let added = az
        .run(&[
            "webapp",
            "hybrid-connection",
            "add",
            "-g",
            "rg1",
            "-n",
            "myapp",
            "--namespace",
            "e2e-relay",
            "--hybrid-connection",
            "db",
        ])
        .await;
    assert_eq!(
        added["port"].as_u64(),
        Some(u64::from(echo.port())),
        "{added}"
    );
    let app_list = az
        .run(&[
            "webapp",
            "hybrid-connection",
            "list",
            "-g",
            "rg1",
            "-n",
            "myapp",
        ])
        .await;
    assert_eq!(app_list.as_array().map(Vec::len), Some(1), "{app_list}");

    // The shim reads the app's resources (no config file) with the managed identity.
    let identity = format!("{}msi/token", relay.arm);
    let forward = format!("127.0.0.1:0={echo}");
    let (shim, banner) = Proc::start_with_env(
        &procs::binary("app-side-shim").unwrap(),
        &[
            "--ca-file",
            procs::path(&relay.ca),
            "run",
            "--app",
            "myapp",
            "--arm-endpoint",
            &relay.arm,
            "--subscription",
            DEFAULT,
            "--resource-group",
            "rg1",
            "--forward",
            &forward,
            "--app-refresh",
            "0.5",
        ],
        &[
            ("IDENTITY_ENDPOINT", &identity),
            ("IDENTITY_HEADER", "emulator"),
        ],
        work.join("shim.log"),
        Some("Ready."),
    )
    .unwrap();
    let app_line = banner_value(&banner, "App myapp: ").unwrap();
    assert_eq!(app_line, format!("{echo} via e2e-relay.localhost/db"));
    let local = banner_value(&banner, "Forwarding ")
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        round_trip(&local, &data).await.unwrap(),
        data,
        "bytes through shim -> relay -> hcm -> echo"
    );

    // Managed-identity login works too.
    az.identity = Some(identity.clone());
    az.run(&["logout"]).await;
    az.run(&["login", "--identity"]).await;
    ok(
        &az.run(&["relay", "namespace", "show", "-g", "rg1", "-n", "e2e-relay"])
            .await,
        "name",
        "e2e-relay",
    );

    // Removing the app's hybrid connection: the shim stops tunnelling to it.
    az.run(&[
        "webapp",
        "hybrid-connection",
        "remove",
        "-g",
        "rg1",
        "-n",
        "myapp",
        "--namespace",
        "e2e-relay",
        "--hybrid-connection",
        "db",
    ])
    .await;
    until(
        "the shim dropped the endpoint",
        Duration::from_secs(20),
        || async {
            shim.log_text()
                .contains("the app's hybrid connections changed")
        },
    )
    .await;
    assert!(
        round_trip(&local, b"after removal")
            .await
            .map_or(true, |got| got.is_empty())
    );

    // Deletes: the hybrid connection (its listener is closed), the namespace.
    az.run(&[
        "relay",
        "hyco",
        "delete",
        "-g",
        "rg1",
        "--namespace-name",
        "e2e-relay",
        "-n",
        "db",
    ])
    .await;
    let missing = az.output(&show[..show.len() - 2]).await;
    assert!(
        !missing.status.success() && text(&missing).contains("NotFound"),
        "{}",
        text(&missing)
    );
    az.run(&[
        "relay",
        "namespace",
        "delete",
        "-g",
        "rg1",
        "-n",
        "e2e-relay",
    ])
    .await;
    let exists = az
        .run(&["relay", "namespace", "exists", "-n", "e2e-relay"])
        .await;
    assert_eq!(exists["nameAvailable"], true, "{exists}");
    drop(shim);
}
