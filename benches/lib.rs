//! Small measuring helpers shared by cellbox's benchmarks: repeated timings,
//! medians and a Markdown table with ratios to a peer.

use std::time::{Duration, Instant};

/// Timings of one measured operation.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    times: Vec<Duration>,
}

impl Sample {
    /// The `q` quantile (0.5 = median).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.times.clone();
        sorted.sort();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index]
    }

    pub fn p50(&self) -> Duration {
        self.quantile(0.5)
    }

    pub fn runs(&self) -> usize {
        self.times.len()
    }
}

/// Times `runs` calls of `f` (after `warmup` untimed ones).
pub async fn measure(name: &str, warmup: usize, runs: usize, mut f: impl AsyncFnMut()) -> Sample {
    eprintln!("measuring: {name} ({runs} runs)");
    for _ in 0..warmup {
        f().await;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await;
        times.push(started.elapsed());
    }
    Sample {
        name: name.to_string(),
        times,
    }
}

impl Sample {
    /// A sample from timings measured elsewhere (a peer process), in seconds.
    pub fn from_secs(name: &str, secs: &[f64]) -> Sample {
        Sample {
            name: name.to_string(),
            times: secs.iter().map(|s| Duration::from_secs_f64(*s)).collect(),
        }
    }
}

/// Like [`measure`], for operations with set-up or clean-up that must not
/// count: `f` returns the time of the part that matters.
pub async fn measure_part(
    name: &str,
    warmup: usize,
    runs: usize,
    mut f: impl AsyncFnMut() -> Duration,
) -> Sample {
    eprintln!("measuring: {name} ({runs} runs)");
    for _ in 0..warmup {
        f().await;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(f().await);
    }
    Sample {
        name: name.to_string(),
        times,
    }
}

/// Formats a duration in the unit that suits it.
pub fn human(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else {
        format!("{:.2} ms", micros / 1000.0)
    }
}

/// The Python of E2B's official SDK, installed from PyPI into the cache on
/// first use (`tests/e2b/install_sdk.sh`).
pub fn e2b_sdk_python() -> std::path::PathBuf {
    use std::process::{Command, Stdio};
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2b/install_sdk.sh");
    let output = Command::new("sh")
        .arg(script)
        .arg("python")
        .env("CELLBOX_CACHE_DIR", cellbox::default_cache_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("sh");
    assert!(output.status.success(), "installing the E2B SDK failed");
    std::path::PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// Runs a peer script of `benches/peers/` with E2B's SDK Python (its
/// arguments and environment already on `command`) and reads the JSON it
/// prints.
pub async fn run_sdk_peer(command: &mut tokio::process::Command) -> serde_json::Value {
    let output = command
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .expect("running the SDK");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("timings")
}

/// Runs the peer script `script` of `benches/peers/` with `python` (its
/// packages installed) and `args`, against a `cellbox serve` started in this
/// process for it on the API port (E2B's variables point the SDK there),
/// and returns the timing lists (seconds, by name) that the script prints.
pub async fn run_peer_against_serve(
    python: &std::path::Path,
    script: &str,
    args: &[String],
    api_key: &str,
) -> std::collections::BTreeMap<String, Vec<f64>> {
    use cellbox::serve::{DEFAULT_API_PORT, ServeConfig, serve};
    let snapshots = std::env::temp_dir().join(format!("cellbox-bench-{}", std::process::id()));
    let config = ServeConfig {
        code_port: None,
        envd_port: None,
        snapshot_dir: snapshots.clone(),
        ..ServeConfig::new(api_key)
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config, async {
        let _ = stopped.await;
    }));
    let url = format!("http://localhost:{DEFAULT_API_PORT}");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(script);
    let printed = run_sdk_peer(
        tokio::process::Command::new(python)
            .arg(script)
            .args(args)
            .env("E2B_API_URL", &url)
            .env("E2B_SANDBOX_URL", &url)
            .env("E2B_API_KEY", api_key),
    )
    .await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&snapshots);
    serde_json::from_value(printed).expect("timings")
}

/// A Markdown table of samples, each with its ratio to `peer`'s median.
pub fn table(samples: &[&Sample], peer: &Sample) -> String {
    let mut out =
        String::from("| measurement | runs | p50 | p90 | vs peer (p50) |\n|---|---|---|---|---|\n");
    for sample in samples.iter().copied().chain([peer]) {
        let ratio = sample.p50().as_secs_f64() / peer.p50().as_secs_f64();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            sample.name,
            sample.runs(),
            human(sample.p50()),
            human(sample.quantile(0.9)),
            ratio_text(ratio)
        ));
    }
    out
}

/// A ratio with enough digits to tell small ones apart.
fn ratio_text(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.4}×")
    } else {
        format!("{ratio:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_table() {
        let sample = Sample {
            name: "a".into(),
            times: (1..=5).map(Duration::from_millis).collect(),
        };
        assert_eq!(sample.p50(), Duration::from_millis(3));
        assert_eq!(sample.quantile(1.0), Duration::from_millis(5));
        let text = table(&[&sample], &sample);
        assert!(
            text.contains("| a | 5 | 3.00 ms | 5.00 ms | 1.00× |"),
            "{text}"
        );
        assert_eq!(human(Duration::from_micros(250)), "250 µs");
        assert_eq!(ratio_text(0.0016), "0.0016×");
    }
}
