//! Health, readiness and Prometheus metrics, served the same way by every binary:
//! `GET /healthz` (the process answers), `GET /readyz` (200 when the binary says it is ready,
//! else 503 with the reasons) and `GET /metrics` (Prometheus text format 0.0.4, encoded by the
//! `prometheus` crate). The relay mounts the same handlers in its own router; the HCM and the
//! shim serve them on `--metrics-listen` with [`serve`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder as _, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

pub use prometheus;

/// The `Content-Type` of the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a binary tells the health endpoints.
pub trait Health: Send + Sync + 'static {
    /// `Ok` when ready to serve, else every reason it is not (one per line on `/readyz`).
    fn ready(&self) -> Result<(), Vec<String>>;
    /// The metrics to expose.
    fn registry(&self) -> &Registry;
}

/// A `'static` reference is as good a `Health` as what it points at (a process-wide one can
/// be handed to [`serve`] as it is).
impl<H: Health + ?Sized> Health for &'static H {
    fn ready(&self) -> Result<(), Vec<String>> {
        (**self).ready()
    }
    fn registry(&self) -> &Registry {
        (**self).registry()
    }
}

/// The registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only for metric families that are malformed by construction.
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The answer to `GET /healthz`, `/readyz` or `/metrics`, or `None` for any other path.
pub fn answer(health: &dyn Health, method: &Method, path: &str) -> Option<Response<String>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let (status, content_type, body) = match path {
        "/healthz" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => match health.ready() {
            Ok(()) => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready:\n{}\n", why.join("\n")),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            METRICS_CONTENT_TYPE,
            encode(health.registry()),
        ),
        _ => return None,
    };
    let mut r = Response::new(if method == Method::HEAD {
        String::new()
    } else {
        body
    });
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Some(r)
}

/// Longest `?wait=` a `/readyz` request may ask for.
pub const MAX_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The seconds a `/readyz?wait=SECONDS` asks to hold the answer, bounded by
/// [`MAX_READY_WAIT`]; `None` without a usable `wait`.
pub fn ready_wait(query: Option<&str>) -> Option<std::time::Duration> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait="))?;
    let seconds: f64 = value
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)?;
    Some(std::time::Duration::from_secs_f64(seconds).min(MAX_READY_WAIT))
}

/// Waits until `health` is ready or `wait` has passed (checked every 20 ms), so a client can
/// ask once and get the answer when it is known.
pub async fn until_ready(health: &dyn Health, wait: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while health.ready().is_err() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` (plain HTTP/1.1, no
/// authentication: bind it to loopback unless the network is trusted) until `stop` completes.
/// Every other path gets 404.
pub async fn serve(
    listener: TcpListener,
    health: Arc<dyn Health>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let health = health.clone();
                async move {
                    if req.uri().path() == "/readyz"
                        && let Some(wait) = ready_wait(req.uri().query())
                    {
                        until_ready(health.as_ref(), wait).await;
                    }
                    let r = answer(health.as_ref(), req.method(), req.uri().path()).unwrap_or_else(
                        || {
                            let mut r = Response::new(
                                "not found: this endpoint serves /healthz, /readyz and /metrics\n"
                                    .to_owned(),
                            );
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        },
                    );
                    Ok::<_, Infallible>(r.map(|b| Full::new(Bytes::from(b))))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
        });
    }
}

/// `process_open_fds`, `process_max_fds`, `process_resident_memory_bytes` and
/// `process_start_time_seconds` (the names Prometheus client libraries use), read from
/// `/proc/self` at each scrape; absent where `/proc` is not.
#[derive(Debug)]
pub struct ProcessCollector {
    open_fds: IntGauge,
    max_fds: IntGauge,
    resident: IntGauge,
    start_time: IntGauge,
    descs: Vec<Desc>,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCollector {
    /// A collector for this process.
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| {
            IntGauge::with_opts(Opts::new(name, help)).expect("metric names are valid")
        };
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
        );
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
        );
        let descs = [&open_fds, &max_fds, &resident, &start_time]
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .collect();
        ProcessCollector {
            open_fds,
            max_fds,
            resident,
            start_time,
            descs,
        }
    }
}

/// Open descriptors of this process, from `/proc/self/fd`.
pub fn open_fds() -> Option<i64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as i64)
}

/// Resident memory of this process in bytes, from `/proc/self/status`.
pub fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if let Some(n) = open_fds() {
            self.open_fds.set(n);
            out.extend(self.open_fds.collect());
        }
        if let Ok(limit) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            self.max_fds.set(i64::try_from(limit.0).unwrap_or(i64::MAX));
            out.extend(self.max_fds.collect());
        }
        if let Some(bytes) = resident_memory_bytes() {
            self.resident.set(bytes);
            out.extend(self.resident.collect());
        }
        out.extend(self.start_time.collect());
        out
    }
}

/// A registry with the process figures already in it.
pub fn registry_with_process() -> Registry {
    let registry = Registry::new();
    // A fresh registry holds no other collector, so the names cannot clash.
    let _ = registry.register(Box::new(ProcessCollector::new()));
    registry
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and every field).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("'{s}' is not a log format: use text or json")),
        }
    }
}

/// What a [`ReadCounters`] reads at each scrape: a count per label value.
type ReadFn = dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync;

/// A counter with one label whose values are read at each scrape (for counts kept
/// elsewhere, such as the warm-connection pools of `hc-client`).
pub struct ReadCounters {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    read: Box<ReadFn>,
    desc: Vec<Desc>,
}

impl std::fmt::Debug for ReadCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCounters")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadCounters {
    /// `name{label=...}` with `help`, its values from `read`.
    pub fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        read: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
    ) -> Self {
        let desc = Self::vec(name, help, label)
            .desc()
            .into_iter()
            .cloned()
            .collect();
        ReadCounters {
            name,
            help,
            label,
            read: Box::new(read),
            desc,
        }
    }

    fn vec(name: &str, help: &str, label: &str) -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
    }
}

impl Collector for ReadCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.desc.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let v = Self::vec(self.name, self.help, self.label);
        for (value, count) in (self.read)() {
            v.with_label_values(&[value]).inc_by(count);
        }
        v.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Registry, bool);
    impl Health for Fixed {
        fn ready(&self) -> Result<(), Vec<String>> {
            if self.1 {
                Ok(())
            } else {
                Err(vec!["channel a is down".into(), "channel b is down".into()])
            }
        }
        fn registry(&self) -> &Registry {
            &self.0
        }
    }

    #[test]
    fn answers_health_readiness_and_metrics() {
        let registry = registry_with_process();
        let ready = Fixed(registry.clone(), true);
        let r = answer(&ready, &Method::GET, "/healthz").unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            answer(&ready, &Method::GET, "/readyz").unwrap().status(),
            StatusCode::OK
        );
        let not = Fixed(registry, false);
        let r = answer(&not, &Method::GET, "/readyz").unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.body().contains("channel b is down"), "{}", r.body());
        let m = answer(&ready, &Method::GET, "/metrics").unwrap();
        assert!(
            m.body()
                .contains("# TYPE process_resident_memory_bytes gauge")
        );
        assert!(m.body().contains("process_open_fds "), "{}", m.body());
        assert!(answer(&ready, &Method::POST, "/metrics").is_none());
        assert!(answer(&ready, &Method::GET, "/other").is_none());
    }

    #[test]
    fn ready_waits_are_bounded() {
        assert_eq!(
            ready_wait(Some("wait=2")),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(ready_wait(Some("a=1&wait=1e9")), Some(MAX_READY_WAIT));
        assert_eq!(ready_wait(Some("wait=-1")), None);
        assert_eq!(ready_wait(Some("wait=NaN")), None);
        assert_eq!(ready_wait(None), None);
    }

    #[test]
    fn log_formats_parse_and_name_the_bad_one() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().unwrap_err().contains("'xml'"));
    }
}
