//! What every binary shows a user at the command line: `--help` with examples and the exit
//! statuses, one-shot commands that print their answer and no log lines, and errors printed
//! as one `error: …` line (with causes) and the documented status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use hc_emulator::procs;

/// Runs a workspace binary as a user would: no log filter or backtrace from the environment.
fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(procs::binary(binary).unwrap())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_help_has_examples_and_exit_statuses() {
    let helps: [(&str, &[&str]); 6] = [
        ("relay-server", &["--help"]),
        ("relay-server", &["fault", "--help"]),
        ("hcm", &["--help"]),
        ("app-side-shim", &["--help"]),
        ("up", &["--help"]),
        ("bench", &["--help"]),
    ];
    for (binary, args) in helps {
        let out = run(binary, args);
        let help = stdout(&out);
        assert!(out.status.success(), "{binary}: {}", stderr(&out));
        assert!(
            help.contains("\nExamples:\n") && help.contains("\nExit status"),
            "{binary} --help:\n{help}"
        );
        // Every example line runs this binary (or builds it first).
        let examples = help
            .split("\nExamples:\n")
            .nth(1)
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap();
        for line in examples
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!(
                words.contains(&binary) || words.iter().any(|w| w.ends_with(&format!("/{binary}"))),
                "{binary}: example '{line}' does not run it"
            );
        }
    }
}

/// A log line as `init_logging` writes it: a timestamp, then the level.
fn has_log_line(text: &str) -> bool {
    text.lines().any(|l| {
        ["  INFO ", "  WARN ", " ERROR ", " DEBUG ", " TRACE "]
            .iter()
            .any(|level| l.contains(level))
            && l.starts_with(|c: char| c.is_ascii_digit())
    })
}

#[test]
fn one_shot_commands_print_no_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shim.json");
    std::fs::write(&config, r#"{"hybridConnections": []}"#).unwrap();
    let shim_config = config.to_str().unwrap();
    let data = dir.path().join("hcm");
    let hcm_data = data.to_str().unwrap();

    let tcpping = run("app-side-shim", &["-c", shim_config, "tcpping", "db:5432"]);
    assert_eq!(tcpping.status.code(), Some(2));
    assert_eq!(
        stderr(&tcpping),
        "error: 'db:5432' is not a configured endpoint or relay name (configured: none)\n"
    );
    let list = run("hcm", &["--data-dir", hcm_data, "list"]);
    assert!(list.status.success());
    assert!(
        !has_log_line(&stdout(&list)) && stderr(&list).is_empty(),
        "{}{}",
        stdout(&list),
        stderr(&list)
    );
    let bad_filter = run("hcm", &["--data-dir", hcm_data, "--log", "x=nope", "list"]);
    assert!(
        bad_filter.status.code() == Some(2) && stderr(&bad_filter).starts_with("error: --log: "),
        "{}",
        stderr(&bad_filter)
    );
}

#[test]
fn errors_are_one_line_with_causes_and_the_documented_status() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.json");
    let relay = run(
        "relay-server",
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            missing.to_str().unwrap(),
        ],
    );
    let err = stderr(&relay);
    assert_eq!(relay.status.code(), Some(1), "{err}");
    // The server logs its start (info) before it reads the file; the error is the last line.
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot read config file ")
            && last.contains("missing.json: No such file")
            && !err.contains("backtrace"),
        "{err}"
    );
    let up = run("up", &["--endpoint", "nope"]);
    let err = stderr(&up);
    assert_eq!(up.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: --endpoint 'nope': ") && err.lines().count() == 1,
        "{err}"
    );
    // A bad command line: clap's usage error, status 2, naming the flag.
    let usage = run("hcm", &["run", "--max-tunnels", "many"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(
        stderr(&usage).contains("--max-tunnels"),
        "{}",
        stderr(&usage)
    );
    let add = run(
        "hcm",
        &[
            "--data-dir",
            dir.path().join("hcm").to_str().unwrap(),
            "add",
            "Endpoint=sb://x/;SharedAccessKeyName=a",
        ],
    );
    assert_eq!(add.status.code(), Some(1));
    assert!(
        stderr(&add).starts_with("error: invalid connection string: ")
            && stderr(&add).contains("SharedAccessKey"),
        "{}",
        stderr(&add)
    );
}
