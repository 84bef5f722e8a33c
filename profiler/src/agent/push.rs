//! Pushing profiles to Grafana Pyroscope's HTTP ingest API.
//!
//! The contract (Pyroscope's server API reference): `POST /ingest` with
//! query parameters `name` (application name with labels, as in
//! `app{key=value,...}`), `from` and `until` (UNIX seconds) and
//! `format=pprof`, and the pprof profile (gzipped is fine) as the body.
//! With `format=pprof` the server takes the sample types from the profile
//! itself, so `sampleRate` and `units` are informational.
//!
//! Profiles wait in a bounded queue: when the backend is slow or down, the
//! oldest are dropped (and counted), so a dead backend costs a fixed amount
//! of memory and never the node. Each profile is retried with exponential
//! backoff on network errors, 408, 429 and 5xx; other 4xx answers are
//! permanent failures.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::metrics::Counters;
use crate::engine::identity::ProcMeta;

/// Where the application name of a pushed profile comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AppNameFrom {
    /// `<namespace>/<pod>` for pod processes, else the executable name.
    Pod,
    /// The executable's file name.
    Exe,
    /// The process name (comm).
    Comm,
}

/// What one pushed profile covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PushPer {
    Process,
    /// One profile per container; processes outside containers still get
    /// one each.
    Container,
}

/// One profile waiting to be sent.
pub struct Item {
    /// `app{labels}` as Pyroscope parses it.
    pub name: String,
    pub from: i64,
    pub until: i64,
    pub body: Vec<u8>,
}

/// Settings from the command line.
pub struct PushConfig {
    /// Full ingest URL (`.../ingest`).
    pub url: reqwest::Url,
    pub headers: reqwest::header::HeaderMap,
    pub queue_cap: usize,
    pub frequency: u64,
}

/// Attempts per profile, and the backoff between them (doubling, capped).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Profiles sent in parallel: enough for hundreds of processes per window
/// against a backend with some latency.
pub const WORKERS: usize = 2;

/// The queue and its HTTP client.
pub struct Pusher {
    cfg: PushConfig,
    client: reqwest::Client,
    queue: Mutex<VecDeque<Item>>,
    /// Profiles taken off the queue and not yet sent or given up on.
    in_flight: AtomicUsize,
    notify: Notify,
    counters: Arc<Counters>,
}

impl Pusher {
    pub fn new(cfg: PushConfig, counters: Arc<Counters>) -> anyhow::Result<Pusher> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("rprof-bpf/", env!("CARGO_PKG_VERSION")))
            .default_headers(cfg.headers.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot create the push HTTP client: {e}"))?;
        Ok(Pusher {
            cfg,
            client,
            queue: Mutex::new(VecDeque::new()),
            in_flight: AtomicUsize::new(0),
            notify: Notify::new(),
            counters,
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Profiles waiting.
    pub fn queued(&self) -> usize {
        self.queue().len()
    }

    /// Profiles waiting or being sent.
    pub fn pending(&self) -> usize {
        self.queued() + self.in_flight.load(Ordering::Relaxed)
    }

    /// Queues a profile, dropping the oldest ones beyond the cap.
    pub fn enqueue(&self, item: Item) {
        {
            let mut q = self.queue();
            q.push_back(item);
            while q.len() > self.cfg.queue_cap {
                q.pop_front();
                Counters::inc(&self.counters.push_dropped);
            }
        }
        self.notify.notify_one();
    }

    /// Sends queued profiles until `stop` turns true.
    pub async fn worker(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let next = {
                let mut q = self.queue();
                let item = q.pop_front();
                if item.is_some() {
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                }
                item
            };
            let Some(item) = next else {
                tokio::select! {
                    _ = self.notify.notified() => continue,
                    _ = stop.changed() => return,
                }
            };
            let stopped = tokio::select! {
                _ = self.send_with_retries(item) => false,
                _ = stop.changed() => true,
            };
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            if stopped {
                return;
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    async fn send_with_retries(&self, item: Item) {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            match self.send(&item).await {
                Ok(()) => {
                    Counters::inc(&self.counters.push_success);
                    return;
                }
                Err(Failure::Permanent(why)) => {
                    tracing::warn!("push of {} rejected: {why}", item.name);
                    break;
                }
                Err(Failure::Retry(why)) if attempt < ATTEMPTS => {
                    Counters::inc(&self.counters.push_retries);
                    if attempt == 1 {
                        tracing::warn!("push of {} failed ({why}); retrying", item.name);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(Failure::Retry(why)) => {
                    tracing::warn!(
                        "giving up on {} after {ATTEMPTS} attempts: {why}",
                        item.name
                    );
                }
            }
        }
        Counters::inc(&self.counters.push_failures);
    }

    async fn send(&self, item: &Item) -> Result<(), Failure> {
        let mut url = self.cfg.url.clone();
        url.query_pairs_mut()
            .append_pair("name", &item.name)
            .append_pair("from", &item.from.to_string())
            .append_pair("until", &item.until.to_string())
            .append_pair("format", "pprof")
            .append_pair("sampleRate", &self.cfg.frequency.to_string())
            .append_pair("spyName", "rprof-bpf");
        let resp = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(item.body.clone())
            .send()
            .await
            .map_err(|e| Failure::Retry(error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let why = format!(
            "HTTP {status}: {}",
            text.trim().chars().take(200).collect::<String>()
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(Failure::Retry(why))
        } else {
            Err(Failure::Permanent(why))
        }
    }
}

enum Failure {
    Retry(String),
    Permanent(String),
}

/// An error and its sources, one line: reqwest's own message alone hides
/// the cause ("error sending request").
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s = format!("{s}: {c}");
        cur = c.source();
    }
    s
}

/// The ingest URL for a `--push-url`: `/ingest` is appended unless the URL
/// already ends with it.
pub fn ingest_url(base: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base).map_err(|e| format!("--push-url {base:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "--push-url {base:?}: only http and https are supported"
        ));
    }
    if !url.path().trim_end_matches('/').ends_with("/ingest") {
        let path = format!("{}/ingest", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// `name` for Pyroscope: the application name and labels, values reduced
/// to characters every Pyroscope version accepts.
pub fn app_name(metas: &[&ProcMeta], per: PushPer, from: AppNameFrom, node: &str) -> String {
    let Some(first) = metas.first() else {
        return "unknown{}".into();
    };
    let l = first.labels();
    let app = match from {
        AppNameFrom::Pod if !l.pod.is_empty() => format!("{}/{}", l.namespace, l.pod),
        AppNameFrom::Pod | AppNameFrom::Exe => first.exe_name().to_owned(),
        AppNameFrom::Comm => first.comm.clone(),
    };
    let mut labels: Vec<(&str, String)> = Vec::new();
    if !node.is_empty() {
        labels.push(("node", node.to_owned()));
    }
    if per == PushPer::Process || l.container_id.is_empty() {
        labels.push(("pid", first.pid().to_string()));
        labels.push(("process", first.comm.clone()));
        labels.push(("exe", first.exe_name().to_owned()));
    }
    for (k, v) in [
        ("container_id", &l.container_id),
        ("namespace", &l.namespace),
        ("pod", &l.pod),
        ("container", &l.container),
    ] {
        if !v.is_empty() {
            labels.push((k, v.clone()));
        }
    }
    let body: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={}", clean(&v)))
        .collect();
    format!("{}{{{}}}", clean(&app), body.join(","))
}

fn clean(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if c.is_empty() {
        "unknown".into()
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::labels::Labels;
    use crate::engine::identity::ProcKey;

    fn meta(comm: &str, exe: &str, labels: Labels) -> ProcMeta {
        let key = ProcKey {
            pid: 42,
            start_ns: 1,
        };
        ProcMeta::new(key, 1, comm.into(), exe.into(), labels)
    }

    #[test]
    fn names_and_labels() {
        let host = meta("my prog", "/usr/bin/prog", Labels::default());
        assert_eq!(
            app_name(&[&host], PushPer::Process, AppNameFrom::Pod, "n1"),
            "prog{node=n1,pid=42,process=my_prog,exe=prog}"
        );
        assert_eq!(
            app_name(&[&host], PushPer::Process, AppNameFrom::Comm, ""),
            "my_prog{pid=42,process=my_prog,exe=prog}"
        );
        let pod = meta(
            "app",
            "/app",
            Labels {
                container_id: "ab".repeat(32),
                pod_uid: "u".into(),
                namespace: "shop".into(),
                pod: "cart-1".into(),
                container: "main".into(),
            },
        );
        let name = app_name(&[&pod], PushPer::Container, AppNameFrom::Pod, "n1");
        assert_eq!(
            name,
            format!(
                "shop/cart-1{{node=n1,container_id={},namespace=shop,pod=cart-1,container=main}}",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn ingest_urls() {
        assert_eq!(
            ingest_url("http://p:4040").unwrap().as_str(),
            "http://p:4040/ingest"
        );
        assert_eq!(
            ingest_url("https://p/prefix/").unwrap().as_str(),
            "https://p/prefix/ingest"
        );
        assert_eq!(
            ingest_url("http://p/ingest").unwrap().as_str(),
            "http://p/ingest"
        );
        assert!(ingest_url("ftp://p").is_err());
        assert!(ingest_url("not a url").is_err());
    }
}
