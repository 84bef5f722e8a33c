//! `rprof-bpf agent`: the node agent, run once per node (a Kubernetes
//! DaemonSet).
//!
//! One BPF capture of the whole machine runs for the agent's lifetime and
//! feeds one rolling window ([`window`]). Everything the agent offers is cut
//! from that window, never from a capture of its own:
//!
//! - HTTP ([`http`]): `/debug/pprof/profile` like Go's `net/http/pprof`,
//!   for a pid, a container, a pod or the node; an index page; `/metrics`;
//!   `/healthz`;
//! - push ([`push`]): one profile per process (or container) per window to
//!   Pyroscope's `/ingest`;
//! - files ([`files`]): one profile per process per window in a directory
//!   of bounded size.
//!
//! Threads and locks: the capture loop folds samples into the window under
//! its mutex (microseconds per sample). Symbolization and encoding happen
//! on one symbolizer thread ([`resolve::SymThread`]), which takes the
//! window's lock only briefly to copy out what it needs, so a slow DWARF
//! parse never stalls the capture. A janitor task symbolizes the stacks of
//! exited processes there and then releases their binaries.

pub mod files;
pub mod goprofiles;
pub mod http;
pub mod kubeapi;
pub mod labels;
pub mod metrics;
pub mod profile;
pub mod push;
pub mod resolve;
pub mod window;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};

use crate::capture::{Capture, CaptureConfig, Event, StopReason};
use crate::preflight::{self, PreflightError};
use crate::symbolize::Symbolizer;
use metrics::Counters;
use profile::ReadyStack;
use push::{AppNameFrom, PushPer, Pusher};
use resolve::{PendingLoc, Sym, SymThread};
use window::{mono_now, mono_to_unix_ns, Filter, Locs, ProcId, ProcMeta, Window};

/// `rprof-bpf agent` options.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Address of the HTTP server. Loopback by default: anything else
    /// exposes every process's profile to whoever reaches the port, so pair
    /// it with --token-file.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Samples per second per CPU.
    #[arg(short = 'F', long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub frequency: u64,
    /// The event that drives sampling.
    #[arg(long, value_enum, default_value_t = Event::CpuClock)]
    pub event: Event,
    /// Capture user stacks only, no kernel frames.
    #[arg(long)]
    pub user_only: bool,
    /// How long samples stay in memory (e.g. 120s, 5m).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub retain: Duration,
    /// Memory cap of the sample window; the oldest samples go first beyond it (e.g. 64MiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub max_memory: u64,
    /// Cap on symbolized addresses kept in the cache.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub symbol_cache_entries: u64,
    /// Memory that parsed symbol tables and debug info may keep between
    /// symbolizations; beyond it they are dropped and parsed again when
    /// needed (less memory, more CPU).
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub symbolizer_memory: u64,
    /// Length of the push and file windows (e.g. 15s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub window: Duration,
    /// Pyroscope server to push to (its /ingest endpoint), e.g. http://pyroscope:4040.
    #[arg(long)]
    pub push_url: Option<String>,
    /// One pushed profile per process or per container.
    #[arg(long, value_enum, default_value_t = PushPer::Process)]
    pub push_per: PushPer,
    /// Where the pushed application name comes from.
    #[arg(long, value_enum, default_value_t = AppNameFrom::Pod)]
    pub app_name_from: AppNameFrom,
    /// Extra header on every push, as "Name: value" (repeatable), e.g. "X-Scope-OrgID: team-a".
    #[arg(long, value_name = "HEADER")]
    pub push_header: Vec<String>,
    /// Profiles waiting to be pushed at most; the oldest are dropped beyond.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub push_queue: u64,
    /// Write one pprof per process per window into this directory.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Total size of --output-dir profiles; the oldest are deleted beyond (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub max_disk: u64,
    /// File holding a bearer token that every request but /healthz must present.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve /metrics without the token (for annotation-based Prometheus
    /// scraping, which cannot send one). Profiles stay protected.
    #[arg(long)]
    pub metrics_no_auth: bool,
    /// Profile requests served at once; more get 429.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_concurrent_profiles: u64,
    /// The kubelet's pod log directory (named <namespace>_<pod>_<uid>).
    #[arg(long, default_value = "/var/log/pods")]
    pub pods_log_dir: PathBuf,
    /// The kubelet's container log links (<pod>_<namespace>_<container>-<id>.log).
    #[arg(long, default_value = "/var/log/containers")]
    pub containers_log_dir: PathBuf,
    /// Node name for pushed labels and --kube-api; defaults to $NODE_NAME
    /// (set it from the downward API), else the host name (not for --kube-api).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Fall back to the Kubernetes API server for pod and container names
    /// the kubelet's directories do not give: list this node's pods (needs
    /// RBAC to list pods, and the service account token mounted).
    #[arg(long)]
    pub kube_api: bool,
    /// API server base URL; implies --kube-api. Default:
    /// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT.
    #[arg(long, value_name = "URL")]
    pub kube_api_url: Option<String>,
    /// Bearer token for the API server (re-read before every request).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub kube_token_file: PathBuf,
    /// CA bundle the API server's certificate must chain to (https).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    pub kube_ca_file: PathBuf,
    /// Shortest time between two pod lists: misses within it share one list.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub kube_api_interval: Duration,
    /// Ring buffer size in KiB (a power of two, at least 4). Default: 2 s
    /// of samples from every CPU (1 MiB at 100 Hz on 2 CPUs).
    #[arg(long, value_parser = parse_ring_kib)]
    pub ring_size: Option<u32>,
    /// How log lines are written to stderr: `text`, or `json` for log
    /// collectors (one object per line).
    #[arg(long, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
}

/// A bad combination of options: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses `120s`, `5m`, `1h`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 120s, 5m, 500ms)"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Parses `64MiB`, `1GiB`, `500M`, `100k` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("{s:?}: must be more than zero and fit 64 bits"))
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let kib: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of KiB"))?;
    if kib < 4 || !kib.is_power_of_two() || kib > 1 << 20 {
        return Err("the ring size must be a power of two between 4 and 1048576 KiB".into());
    }
    Ok(kib)
}

/// State shared by the capture loop, the HTTP server and the background
/// tasks.
pub struct Shared {
    pub window: Mutex<Window>,
    pub sym: SymThread,
    pub counters: Arc<Counters>,
    /// Monotonic ns up to which every sample is in the window.
    pub drained: watch::Sender<u64>,
    /// Monotonic ns of the capture loop's last tick, for /healthz.
    pub last_tick: AtomicU64,
    pub event: Event,
    pub frequency: u64,
    pub token: Option<String>,
    pub metrics_no_auth: bool,
    pub profile_slots: Arc<Semaphore>,
    pub max_profiles: usize,
    pub window_cap: u64,
    pub sym_cap: u64,
    pub pusher: Option<Arc<Pusher>>,
    pub push_per: PushPer,
    pub app_from: AppNameFrom,
    pub node: String,
    pub files: Option<files::FileSink>,
}

/// Locks a mutex; a panic elsewhere while holding it leaves data that is
/// still consistent enough to serve (counts and caches), so poisoning is
/// ignored.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Resolves the stacks matching `filter` in `[t0, t1)` and hands them,
    /// with the kernel symbolizer, to `f` (which builds profiles). Runs on
    /// the symbolizer thread, which owns `sym`.
    pub fn with_ready<R>(
        &self,
        sym: &mut Sym,
        filter: &Filter,
        t0: u64,
        t1: u64,
        f: impl FnOnce(&[ReadyStack], &HashMap<ProcId, Arc<ProcMeta>>, Option<&Symbolizer>) -> R,
    ) -> R {
        let sel = lock(&self.window).select(filter, t0, t1);
        let mut ready = Vec::with_capacity(sel.stacks.len());
        let mut pending = Vec::new();
        let mut waiting = Vec::new();
        for s in sel.stacks {
            let mk = |user| ReadyStack {
                proc: s.key.proc,
                tid: s.key.tid,
                thread: s.thread.clone(),
                kernel: s.key.kernel.clone(),
                user,
                samples: s.samples,
                weight: s.weight,
            };
            match s.locs {
                Locs::Ready(r) => ready.push(mk(r)),
                Locs::Pending(p) => {
                    pending.push((s.key.proc, p));
                    waiting.push((s.id, s.key.clone(), mk(Arc::from(Vec::new()))));
                }
            }
        }
        if !pending.is_empty() {
            let resolved = sym.resolve(pending);
            let mut store = Vec::with_capacity(resolved.len());
            for ((id, key, mut r), locs) in waiting.into_iter().zip(resolved) {
                store.push((id, key, locs.clone()));
                r.user = locs;
                ready.push(r);
            }
            lock(&self.window).store(store);
        }
        let kernel = if ready.iter().any(|s| !s.kernel.is_empty()) {
            sym.kernel()
        } else {
            None
        };
        f(&ready, &sel.procs, kernel)
    }

    /// Lost samples so far.
    pub fn lost(&self) -> u64 {
        lock(&self.window).capture.lost
    }

    /// Waits until every sample before `t1` is in the window (at most a
    /// few ticks after `t1`).
    pub async fn wait_drained(&self, t1: u64) {
        let mut rx = self.drained.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|&d| d >= t1)).await;
    }

    /// The values `/metrics` reads from the window and elsewhere.
    pub fn gauges(&self) -> metrics::Gauges {
        let (live, procs, samples, stacks, binaries, bytes, capture) = {
            let w = lock(&self.window);
            let (a, b, c, d, e) = w.sizes();
            (a, b, c, d, e, w.bytes(), w.capture)
        };
        metrics::Gauges {
            samples: capture.samples,
            lost: capture.lost,
            processes_tracked: live as u64,
            processes_in_window: procs as u64,
            window_samples: samples as u64,
            window_stacks: stacks as u64,
            window_bytes: bytes as u64,
            window_bytes_limit: self.window_cap,
            open_binaries: binaries as u64,
            symbol_cache_limit: self.sym_cap,
            push_queue: self.pusher.as_ref().map_or(0, |p| p.queued() as u64),
            output_bytes: self.files.as_ref().map_or(0, |f| f.total()),
            profile_requests_in_flight: (self.max_profiles - self.profile_slots.available_permits())
                as u64,
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(args: &AgentArgs) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| {
                UsageError(format!("cannot read --token-file {}: {e}", p.display()))
            })?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                return Err(UsageError(format!("--token-file {} is empty", p.display())).into());
            }
            Some(t)
        }
        None => None,
    };
    let want_windows = args.push_url.is_some() || args.output_dir.is_some();
    if want_windows && args.retain < args.window + Duration::from_secs(1) {
        return Err(UsageError(format!(
            "--retain ({:?}) must be longer than --window ({:?})",
            args.retain, args.window
        ))
        .into());
    }
    if args.window < Duration::from_secs(1) {
        return Err(UsageError("--window must be at least 1s".into()).into());
    }
    let push = match &args.push_url {
        Some(u) => Some(push::ingest_url(u).map_err(UsageError)?),
        None => None,
    };
    let headers = push_headers(&args.push_header)?;
    let kube_api = kube_api_config(args).map_err(UsageError)?;
    preflight::check_frequency(args.frequency).map_err(preflight_error)?;
    preflight::check_privileges().map_err(preflight_error)?;
    preflight::check_kernel().map_err(preflight_error)?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        eprintln!(
            "rprof-bpf agent: warning: listening on {} without --token-file: anyone who reaches this port can profile every process on the node",
            args.listen
        );
    }
    crate::process::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("rprof-agent")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(agent_main(args, token, push, headers, kube_api))
}

/// The API server fallback's settings, if `--kube-api` or `--kube-api-url`
/// asks for it; every file it needs is checked now.
fn kube_api_config(args: &AgentArgs) -> Result<Option<kubeapi::ApiConfig>, String> {
    if !args.kube_api && args.kube_api_url.is_none() {
        return Ok(None);
    }
    let base = match &args.kube_api_url {
        Some(u) => kubeapi::parse_base(u)?,
        None => kubeapi::ApiConfig::in_cluster_url(
            std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            std::env::var("KUBERNETES_SERVICE_PORT").ok(),
        )?,
    };
    // The host name is often not the node's name in the API: no guessing.
    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or(
            "--kube-api needs the node's name: --node-name, or NODE_NAME from the downward API (fieldRef spec.nodeName)",
        )?;
    let cfg = kubeapi::ApiConfig {
        base,
        node,
        token_file: args.kube_token_file.clone(),
        ca_file: Some(args.kube_ca_file.clone()),
        interval: args.kube_api_interval,
    };
    cfg.check_files()?;
    Ok(Some(cfg))
}

fn preflight_error(e: PreflightError) -> anyhow::Error {
    match e {
        PreflightError::Usage(m) => UsageError(m).into(),
        PreflightError::Environment(m) => anyhow::anyhow!(m),
    }
}

/// `--push-header "Name: value"` lines as a header map.
fn push_headers(lines: &[String]) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut map = reqwest::header::HeaderMap::new();
    for l in lines {
        let bad = || UsageError(format!("--push-header {l:?}: expected \"Name: value\""));
        let (k, v) = l.split_once(':').ok_or_else(bad)?;
        let k = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
        let v = reqwest::header::HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
        map.append(k, v);
    }
    Ok(map)
}

async fn agent_main(
    args: &AgentArgs,
    token: Option<String>,
    push_url: Option<reqwest::Url>,
    headers: reqwest::header::HeaderMap,
    kube_api: Option<kubeapi::ApiConfig>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let files = match &args.output_dir {
        Some(d) => Some(
            files::FileSink::open(d, args.max_disk, counters.clone())
                .map_err(|e| UsageError(format!("cannot use --output-dir {}: {e}", d.display())))?,
        ),
        None => None,
    };
    let pusher = match push_url {
        Some(url) => Some(Arc::new(Pusher::new(
            push::PushConfig {
                url,
                headers,
                queue_cap: args.push_queue as usize,
                frequency: args.frequency,
            },
            counters.clone(),
        )?)),
        None => None,
    };
    let mut capture = Capture::start(CaptureConfig {
        pids: Vec::new(),
        frequency: args.frequency,
        event: args.event,
        kernel: !args.user_only,
        ring_bytes: args.ring_size.map_or_else(
            || crate::record::ring_bytes_for(args.frequency, RING_MILLIS),
            |kib| kib * 1024,
        ),
        // Unwind tables are bump-allocated for a bounded capture; the agent
        // runs forever, so it walks frame pointers.
        unwind: crate::capture::Unwind::Fp,
        unwind_rows: 1,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let want_windows = args.push_url.is_some() || args.output_dir.is_some();
    let mut kube = labels::Kubelet::new(args.pods_log_dir.clone(), args.containers_log_dir.clone());
    let kube_api = match kube_api {
        Some(cfg) => {
            let api = Arc::new(kubeapi::KubeApi::new(cfg, counters.clone())?);
            kube = kube.with_api(api.clone());
            Some(api)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        window: Mutex::new(Window::new(
            args.retain,
            usize::try_from(args.max_memory).unwrap_or(usize::MAX),
            kube,
            want_windows,
            counters.clone(),
        )),
        sym: {
            let (cap, kernel, budget, c) = (
                args.symbol_cache_entries as usize,
                !args.user_only,
                usize::try_from(args.symbolizer_memory).unwrap_or(usize::MAX),
                counters.clone(),
            );
            SymThread::spawn(move || Sym::new(cap, kernel, budget, c))
                .map_err(|e| anyhow::anyhow!("cannot start the symbolizer thread: {e}"))?
        },
        counters,
        drained: watch::channel(0).0,
        last_tick: AtomicU64::new(mono_now()),
        event: capture.event,
        frequency: args.frequency,
        token,
        metrics_no_auth: args.metrics_no_auth,
        profile_slots: Arc::new(Semaphore::new(args.max_concurrent_profiles as usize)),
        max_profiles: args.max_concurrent_profiles as usize,
        window_cap: args.max_memory,
        sym_cap: args.symbol_cache_entries,
        pusher,
        push_per: args.push_per,
        app_from: args.app_name_from,
        node,
        files,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(http::serve(listener, shared.clone(), stop_rx.clone()));
    tokio::spawn(janitor(shared.clone(), stop_rx.clone()));
    if let Some(api) = kube_api {
        let s = shared.clone();
        let relabel = move || lock(&s.window).relabel();
        tokio::spawn(kubeapi::refresher(api, relabel, stop_rx.clone()));
    }
    let windows = (shared.pusher.is_some() || shared.files.is_some())
        .then(|| tokio::spawn(window_loop(shared.clone(), args.window, stop_rx.clone())));
    // Pushers stop last, after the final window is queued.
    let (push_stop_tx, push_stop_rx) = watch::channel(false);
    if let Some(p) = &shared.pusher {
        for _ in 0..push::WORKERS {
            tokio::spawn(p.clone().worker(push_stop_rx.clone()));
        }
    }
    eprintln!(
        "rprof-bpf agent: profiling every process at {} Hz on {}; serving http://{local}/debug/pprof/",
        args.frequency,
        capture.event.name()
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = sigint.recv() => StopReason::Signal("SIGINT"),
            _ = sigterm.recv() => StopReason::Signal("SIGTERM"),
        }
    };
    let reason = capture
        .run_until(
            stop,
            |s| lock(&shared.window).add(s),
            |stats| {
                let now = mono_now();
                lock(&shared.window).tick(stats);
                shared.drained.send_replace(Window::drained_through(now));
                shared.last_tick.store(now, Ordering::Relaxed);
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let StopReason::Signal(sig) = reason {
        eprintln!("rprof-bpf agent: {sig}: stopping");
    }
    // Everything is drained: let the last (partial) window be written.
    shared.drained.send_replace(u64::MAX);
    let _ = stop_tx.send(true);
    if let Some(w) = windows {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    if let Some(p) = &shared.pusher {
        // A few seconds to send what is queued; a dead backend does not
        // hold up the shutdown longer.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_PUSH_GRACE;
        while p.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if p.pending() > 0 {
            eprintln!(
                "rprof-bpf agent: {} profiles not pushed before shutdown",
                p.pending()
            );
        }
    }
    let _ = push_stop_tx.send(true);
    Ok(())
}

/// Every second: symbolizes the stacks of processes that exited, then
/// drops their snapshots, and returns freed heap to the system after the
/// window shrank. Every ten seconds (if something exited): closes binaries
/// nobody maps any more.
async fn janitor(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut exits_since_prune = false;
    let mut high_water = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        let prune = n.is_multiple_of(10);
        let s = shared.clone();
        let do_prune = prune && exits_since_prune;
        let (had_exits, hw) = shared
            .sym
            .run(move |sym| janitor_pass(&s, sym, do_prune, high_water))
            .await
            .unwrap_or((false, high_water));
        high_water = hw;
        exits_since_prune = (exits_since_prune && !prune) || had_exits;
    }
}

/// Heap the window must have given back before the janitor trims: trimming
/// walks every arena, so not for small change.
const TRIM_AFTER: usize = 256 << 10;

/// One janitor pass. `high_water` is the window's largest size since the
/// last trim. Returns whether processes had exited, and the new high water.
fn janitor_pass(shared: &Shared, sym: &mut Sym, prune: bool, high_water: usize) -> (bool, usize) {
    let exited = lock(&shared.window).take_exited();
    let had = !exited.is_empty();
    if had {
        let mut pending = Vec::new();
        let mut keys = Vec::new();
        for x in &exited {
            for (sid, key) in &x.stacks {
                pending.push((x.proc, PendingLoc::for_stack(x.process.as_ref(), &key.user)));
                keys.push((*sid, key.clone()));
            }
        }
        let resolved = sym.resolve(pending);
        // The snapshots go now, on the symbolizer thread (see resolve).
        drop(exited);
        let store = keys
            .into_iter()
            .zip(resolved)
            .map(|((sid, key), locs)| (sid, key, locs))
            .collect();
        lock(&shared.window).store(store);
    }
    if prune {
        let closed = lock(&shared.window).prune_binaries();
        shared
            .counters
            .binaries_closed
            .fetch_add(closed.len() as u64, Ordering::Relaxed);
        sym.forget(&closed);
    }
    let bytes = lock(&shared.window).bytes();
    if bytes + TRIM_AFTER < high_water {
        trim_heap();
        return (had, bytes);
    }
    (had, high_water.max(bytes))
}

/// What symbolizing a binary makes us hold: its parsed state on the heap,
/// and the pages of its debug sections, read through a mapping of the
/// file, in our RSS (`/proc/self/statm`'s resident shared pages). `None`
/// where either cannot be read.
pub(crate) fn memory_in_use() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    heap_in_use()?.checked_add(pages.checked_mul(page)?)
}

/// Bytes handed out by the allocator, in every arena and in blocks it
/// mapped on its own; `None` where glibc is not there to say.
fn heap_in_use() -> Option<usize> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 has no preconditions; it only reads the
        // allocator's statistics under its locks.
        let m = unsafe { libc::mallinfo2() };
        Some(m.uordblks.saturating_add(m.hblkhd))
    }
    #[cfg(not(target_env = "gnu"))]
    {
        None
    }
}

/// Hands freed heap memory back to the system. glibc keeps what a burst of
/// short-lived processes made us allocate (per-thread arenas), so without
/// this the agent's RSS would stay at its high-water mark after the burst
/// has aged out of the window.
pub(crate) fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every `--window`: one profile per process (or container) of the last
/// window, to the push queue and the output directory. On shutdown, once
/// more for the partial window.
async fn window_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut t0 = mono_now();
    let mut lost0 = shared.lost();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let t1 = mono_now();
        shared.wait_drained(t1).await;
        let lost1 = shared.lost();
        let s = shared.clone();
        let lost = lost1.saturating_sub(lost0);
        let _ = shared
            .sym
            .run(move |sym| window_job(&s, sym, t0, t1, lost))
            .await;
        t0 = t1;
        lost0 = lost1;
        if last {
            return;
        }
    }
}

/// Encodes one window and hands the profiles to the sinks.
fn window_job(shared: &Shared, sym: &mut Sym, t0: u64, t1: u64, lost: u64) {
    let start_ns = mono_to_unix_ns(t0);
    let header = |what: String| profile::Header {
        event: shared.event,
        frequency: shared.frequency,
        start_unix_ns: start_ns,
        duration_ns: (t1 - t0) as i64,
        description: what,
        lost,
    };
    let from = start_ns.div_euclid(1_000_000_000);
    let until = (start_ns + (t1 - t0) as i64)
        .div_euclid(1_000_000_000)
        .max(from + 1);
    shared.with_ready(sym, &Filter::All, t0, t1, |ready, procs, kernel| {
        let mut by_proc: HashMap<ProcId, Vec<&ReadyStack>> = HashMap::new();
        for s in ready {
            by_proc.entry(s.proc).or_default().push(s);
        }
        let per_container = shared.push_per == PushPer::Container;
        for (proc, stacks) in &by_proc {
            let Some(meta) = procs.get(proc) else {
                continue;
            };
            let needs = shared.files.is_some() || (shared.pusher.is_some() && !per_container);
            if !needs {
                continue;
            }
            let p = profile::build(
                stacks,
                procs,
                kernel,
                &header(format!("window pid={} process={}", meta.pid, meta.comm)),
            );
            let bytes = crate::pprof::encode_gzip(&p);
            if let Some(files) = &shared.files {
                files.write(from, meta.pid, &meta.comm, &bytes);
            }
            if let (Some(pusher), false) = (&shared.pusher, per_container) {
                pusher.enqueue(push::Item {
                    name: push::app_name(&[meta], PushPer::Process, shared.app_from, &shared.node),
                    from,
                    until,
                    body: bytes,
                });
            }
        }
        if let (Some(pusher), true) = (&shared.pusher, per_container) {
            // Container processes grouped by container; the rest alone.
            let mut groups: HashMap<String, Vec<ProcId>> = HashMap::new();
            for proc in by_proc.keys() {
                let Some(meta) = procs.get(proc) else {
                    continue;
                };
                let key = if meta.labels.container_id.is_empty() {
                    format!("pid:{proc}")
                } else {
                    meta.labels.container_id.clone()
                };
                groups.entry(key).or_default().push(*proc);
            }
            for (key, members) in groups {
                let stacks: Vec<&ReadyStack> = members
                    .iter()
                    .flat_map(|p| by_proc.get(p).into_iter().flatten().copied())
                    .collect();
                let metas: Vec<&ProcMeta> = members
                    .iter()
                    .filter_map(|p| procs.get(p).map(|m| &**m))
                    .collect();
                let p = profile::build(&stacks, procs, kernel, &header(format!("window {key}")));
                pusher.enqueue(push::Item {
                    name: push::app_name(&metas, PushPer::Container, shared.app_from, &shared.node),
                    from,
                    until,
                    body: crate::pprof::encode_gzip(&p),
                });
            }
        }
    });
    if let Some(files) = &shared.files {
        files.rotate();
    }
}

/// Samples the ring buffer holds by default, in ms of every CPU at the
/// sampling rate: the capture loop drains it every 200 ms, and a few
/// times that covers a moment when its runtime is busy. Larger costs
/// twice its size in RSS for nothing (the pages are mapped twice).
const RING_MILLIS: u64 = 2000;

/// How long a stopping agent keeps pushing queued profiles.
const SHUTDOWN_PUSH_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100k"), Ok(100 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn push_header_lines() {
        let h = push_headers(&["X-Scope-OrgID: team-a".into()]).unwrap();
        assert_eq!(h.get("x-scope-orgid").unwrap(), "team-a");
        assert!(push_headers(&["no colon".into()]).is_err());
        assert!(push_headers(&["bad name: v".into()]).is_err());
    }
}
