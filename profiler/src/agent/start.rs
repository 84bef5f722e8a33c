//! Starting the agent: checks, the capture, the shared state, the tasks;
//! then the capture loop until SIGINT or SIGTERM, and an orderly stop.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};

use super::args::{AgentArgs, UsageError};
use super::capture_loop::{self, KubeLabeler};
use super::metrics::Counters;
use super::push::{self, Pusher};
use super::shared::Shared;
use super::symthread::{SymState, SymThread};
use super::{files, http, kubeapi, labels, windows};
use crate::capture::clock::mono_now;
use crate::capture::{Capture, CaptureConfig, StopReason};
use crate::engine::identity::lock;
use crate::engine::ingest::Ingest;
use crate::engine::resolve::ResolveLimits;
use crate::engine::store::window::Window;
use crate::preflight::{self, PreflightError};
use crate::unwind::worker::TableWorker;

/// Samples the ring buffer holds by default, in ms of every CPU at the
/// sampling rate: the capture loop drains it every 200 ms, and a few
/// times that covers a moment when its runtime is busy. Larger costs
/// twice its size in RSS for nothing (the pages are mapped twice).
const RING_MILLIS: u64 = 2000;

/// How often threads still off CPU are swept into the window (with
/// `--off-cpu`): a wait still going at the end of a request counts up to
/// the last sweep.
const OFFCPU_SWEEP: Duration = Duration::from_secs(1);

/// How long a stopping agent keeps pushing queued profiles.
const SHUTDOWN_PUSH_GRACE: Duration = Duration::from_secs(5);

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
    if args.event.off_cpu() {
        return Err(UsageError(format!(
            "--event {}: the agent samples on cpu-clock or cycles; add --off-cpu and ask for event=off-cpu or event=wall per request",
            args.event.name()
        ))
        .into());
    }
    preflight::check_frequency(args.frequency).map_err(preflight_error)?;
    preflight::check_privileges().map_err(preflight_error)?;
    preflight::check_kernel().map_err(preflight_error)?;
    if token.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} without --token-file: anyone who reaches this port can profile every process on the node",
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
    let mut capture = Capture::load(CaptureConfig {
        pids: Vec::new(),
        frequency: args.frequency,
        event: args.event,
        kernel: !args.user_only,
        ring_bytes: args.ring_size.map_or_else(
            || crate::capture::ring::ring_bytes_for(args.frequency, RING_MILLIS),
            |kib| kib * 1024,
        ),
        unwind: args.unwind.unwind,
        unwind_rows: args.unwind.rows(),
        process_events: true,
        off_cpu: args.off_cpu,
        sweep_every: args.off_cpu.then_some(OFFCPU_SWEEP),
    })?;
    let tables = match capture.take_unwinder().map(TableWorker::start) {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            tracing::warn!("cannot start the unwind table thread ({e}); stacks are unwound with frame pointers");
            None
        }
        None => None,
    };
    let go = crate::golabels::GoLabeling::from_capture(&mut capture, args.go_goid);
    capture.attach()?;

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
    let mut kube = labels::Kubelet::new(args.pods_log_dir.clone(), args.containers_log_dir.clone());
    let kube_api = match kube_api {
        Some(cfg) => {
            let api = Arc::new(kubeapi::KubeApi::new(cfg, counters.clone())?);
            kube = kube.with_api(api.clone());
            Some(api)
        }
        None => None,
    };
    let kube = Arc::new(Mutex::new(kube));
    let health = super::health::Health::new();
    let shared = Arc::new(Shared {
        window: Mutex::new(Window::new(
            args.retain,
            usize::try_from(args.max_memory).unwrap_or(usize::MAX),
        )),
        kube: kube.clone(),
        sym: {
            let limits = ResolveLimits {
                symbolize: true,
                cache_entries: args.symbol_cache_entries as usize,
                parsed_memory: usize::try_from(args.symbolizer_memory).unwrap_or(usize::MAX),
            };
            let (kernel, c) = (!args.user_only, counters.clone());
            SymThread::spawn(health.symbolizer.clone(), move || {
                SymState::new(limits, kernel, c)
            })
            .map_err(|e| anyhow::anyhow!("cannot start the symbolizer thread: {e}"))?
        },
        counters,
        drained: watch::channel(0).0,
        last_tick: AtomicU64::new(mono_now()),
        health,
        event: capture.event,
        off_cpu: args.off_cpu,
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
    let janitor = tokio::spawn(windows::janitor(shared.clone(), stop_rx.clone()));
    shared.health.watch("janitor", janitor);
    if let Some(api) = kube_api {
        let s = shared.clone();
        let relabel = move || labels::relabel(&lock(&s.window).processes(), &s.kube);
        let refresher = tokio::spawn(kubeapi::refresher(api, relabel, stop_rx.clone()));
        shared.health.watch("API-server refresher", refresher);
    }
    let windows = (shared.pusher.is_some() || shared.files.is_some()).then(|| {
        let task = tokio::spawn(windows::window_loop(
            shared.clone(),
            args.window,
            stop_rx.clone(),
        ));
        shared.health.watch("window", task)
    });
    // Pushers stop last, after the final window is queued.
    let (push_stop_tx, push_stop_rx) = watch::channel(false);
    if let Some(p) = &shared.pusher {
        for _ in 0..push::WORKERS {
            let pusher = tokio::spawn(p.clone().worker(push_stop_rx.clone()));
            shared.health.watch("push", pusher);
        }
    }
    tracing::info!(
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
    let mut ingest = Ingest::new(Box::new(KubeLabeler(kube)));
    if let Some(w) = tables {
        ingest.set_tables(w);
    }
    if let Some(g) = go {
        ingest.set_go(g);
    }
    let mut sink = capture_loop::sink(ingest, shared.clone());
    let reason = capture.run_until(stop, &mut sink).await?;
    if let StopReason::Signal(sig) = reason {
        tracing::info!("rprof-bpf agent: {sig}: stopping");
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
            tracing::warn!("{} profiles not pushed before shutdown", p.pending());
        }
    }
    let _ = push_stop_tx.send(true);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_header_lines() {
        let h = push_headers(&["X-Scope-OrgID: team-a".into()]).unwrap();
        assert_eq!(h.get("x-scope-orgid").unwrap(), "team-a");
        assert!(push_headers(&["no colon".into()]).is_err());
        assert!(push_headers(&["bad name: v".into()]).is_err());
    }
}
