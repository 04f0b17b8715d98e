//! CI runs the benchmark harness for a few seconds to check that it works and reports every
//! figure; its timings are not checked (speed is judged by running `bench` itself).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_benchmark_harness_runs_and_reports_every_figure() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--json", "--idle-tunnels", "50"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for run in ["direct", "plain", "tls"] {
        for key in [
            "upload_mib_s",
            "download_mib_s",
            "parallel8_upload_mib_s",
            "rtt_p50_us",
            "rtt_p99_us",
            "open_alone_p50_us",
            "open_p50_ms",
            "open_p99_ms",
            "tunnels_per_s",
        ] {
            assert!(
                v[run][key].as_f64().is_some_and(|x| x > 0.0),
                "{run}.{key} in {v}"
            );
        }
        assert_eq!(v[run]["open_errors"], 0, "{run}");
    }
    assert!(v["direct"]["cpu_us_per_tunnel"].is_null());
    for run in ["plain", "tls"] {
        assert_eq!(
            (
                v[run]["idle"]["tunnels"].as_u64(),
                v[run]["idle"]["errors"].as_u64()
            ),
            (Some(50), Some(0)),
            "{v}"
        );
        assert!(v[run]["upload_mib_s_ratio"].as_f64().is_some());
        // The tunnel's processes used some CPU for the bytes and the tunnels.
        for key in ["cpu_us_per_mib", "cpu_us_per_tunnel"] {
            assert!(
                v[run][key].as_f64().is_some_and(|x| x > 0.0),
                "{run}.{key} in {v}"
            );
        }
    }
}
