//! `rprof-bpf --pid P --seconds N -o FILE`: the recorder, a thin front end
//! over the engine. It checks what can be checked, captures into a
//! [`Totals`] store until the deadline, a signal or the targets' exit,
//! then resolves, encodes and writes the file atomically.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};

use crate::capture::{
    Capture, CaptureConfig, CaptureError, CaptureStats, Event, StopReason, Unwind,
};
use crate::engine::encode::{self, Header, LabelPolicy, ReadyStack};
use crate::engine::ingest::{CgroupLabeler, Ingest};
use crate::engine::resolve::{Pending, ResolveLimits, Resolver};
use crate::engine::store::totals::Totals;
use crate::engine::{Driven, Engine, FrontEnd};
use crate::pprof;
use crate::preflight::{self, PreflightError};
use crate::symbolize::debuginfod::Debuginfod;
use crate::symbolize::kernel::Kallsyms;
use crate::unwind::loader::UnwindStats;
use crate::unwind::worker::TableWorker;

/// Everything `record` needs from the command line.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub pids: Vec<u32>,
    pub seconds: u64,
    pub frequency: u64,
    pub event: Event,
    pub user_only: bool,
    pub no_symbolize: bool,
    /// Debuginfod servers for binaries without debug info here (opt-in).
    pub debuginfod: Option<crate::symbolize::debuginfod::Config>,
    pub output: PathBuf,
    pub quiet: bool,
    pub ring_bytes: u32,
    pub unwind: Unwind,
    pub unwind_rows: u32,
    /// The command line, recorded in the profile's comment.
    pub command: String,
    /// A numeric `goid` label on Go processes' samples (`--go-goid`).
    pub go_goid: bool,
}

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Bad input (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// What this machine or our privileges lack.
    #[error("{0}")]
    Environment(String),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

impl RecordError {
    /// The process exit code: 2 for usage errors, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            RecordError::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl From<PreflightError> for RecordError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Usage(m) => RecordError::Usage(m),
            PreflightError::Environment(m) => RecordError::Environment(m),
        }
    }
}

/// What a finished recording reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub samples: u64,
    pub lost: u64,
    pub processes: usize,
    /// Stacks cut at an address in no executable mapping.
    pub truncated: u64,
    /// Share (0..1) of sampled user frames in anonymous executable memory
    /// (JIT code): they keep their addresses, nothing can name them.
    pub anon_frames: f64,
    pub bytes: usize,
    pub stop: StopReason,
    /// Mean BPF program run time per invocation in ns, when the kernel's
    /// BPF statistics are on.
    pub bpf_ns_per_run: Option<f64>,
}

/// Runs the pipeline end to end.
pub fn run(opts: &RecordOptions) -> Result<Summary, RecordError> {
    preflight::check_frequency(opts.frequency)?;
    preflight::check_output(&opts.output)?;
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    preflight::check_pids(&opts.pids)?;
    crate::process::raise_fd_limit();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RecordError::Runtime)?;
    rt.block_on(record(opts))
}

async fn record(opts: &RecordOptions) -> Result<Summary, RecordError> {
    let config = CaptureConfig {
        pids: opts.pids.clone(),
        frequency: opts.frequency,
        event: opts.event,
        kernel: !opts.user_only,
        ring_bytes: opts.ring_bytes,
        unwind: opts.unwind,
        unwind_rows: opts.unwind_rows,
        process_events: true,
        off_cpu: false,
        sweep_every: None,
    };
    let mut ingest = Ingest::new(Box::new(CgroupLabeler));
    if !opts.pids.is_empty() {
        ingest.track_only(&opts.pids);
    }
    // Snapshot the targets before the first sample: a process that exits
    // early still gets its binaries opened.
    for &pid in &opts.pids {
        ingest.prewarm(pid);
    }
    let mut capture = Capture::load(config)?;
    if let Some(mut u) = capture.take_unwinder() {
        // The targets' tables go in before the first sample; later
        // processes get theirs from the worker thread.
        for p in opts.pids.iter().filter_map(|&pid| ingest.snapshot(pid)) {
            if let Err(e) = u.load_process(p) {
                tracing::warn!("{e}");
            }
        }
        match TableWorker::start(u) {
            Ok(w) => ingest.set_tables(w),
            Err(e) => tracing::warn!(
                "cannot start the unwind table thread ({e}); new processes are unwound with frame pointers"
            ),
        }
    }
    // Goroutine labels of Go processes: the targets registered now.
    if let Some(go) = crate::golabels::GoLabeling::from_capture(&mut capture, opts.go_goid) {
        ingest.set_go(go);
    }
    // Installed before sampling starts: from here on Ctrl-C stops the
    // capture and still writes the profile.
    let mut sigint = signal(SignalKind::interrupt()).map_err(CaptureError::Ring)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(CaptureError::Ring)?;
    capture.attach()?;
    let started = Instant::now();
    let start_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);

    eprintln!(
        "Profiling {} for {}s at {} Hz on {} (Ctrl-C to stop early)",
        describe_targets(&opts.pids),
        opts.seconds,
        opts.frequency,
        capture.event.name()
    );
    let total = Duration::from_secs(opts.seconds);
    let mut sink = Driven {
        engine: Engine::new(ingest, Totals::new()),
        front: Progress {
            targets: opts.pids.clone(),
            bar: progress_bar(opts.seconds, opts.quiet),
            started,
            total,
        },
    };
    let deadline = tokio::time::Instant::now() + total;
    let stop = async move {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => StopReason::Deadline,
            _ = sigint.recv() => StopReason::Signal("SIGINT"),
            _ = sigterm.recv() => StopReason::Signal("SIGTERM"),
        }
    };
    let stop = capture.run_until(stop, &mut sink).await?;
    sink.front.bar.finish_and_clear();
    let stats = capture.stats();
    let event = capture.event;
    let duration = started.elapsed();
    // Detaches everything before the (possibly long) symbolization.
    drop(capture);
    let Engine { mut ingest, store } = sink.engine;
    let unwind_stats = ingest.take_tables().and_then(TableWorker::finish);
    if let (Some(st), false) = (unwind_stats, opts.quiet) {
        print_unwind_stats(&st);
    }
    report_stop(stop, duration, stats.lost);
    if stats.lost_events > 0 {
        tracing::warn!(
            "{} process events were lost (a per-CPU ring was full): mappings of processes created then may be unknown",
            stats.lost_events
        );
    }

    let truncated = ingest.stats().truncated_stacks;
    let header = Header {
        event,
        frequency: opts.frequency,
        start_unix_nanos: start_unix,
        duration_nanos: duration.as_nanos() as i64,
        command: opts.command.clone(),
        lost: stats.lost,
        truncated,
        bpf_run_ns: stats.bpf_run_ns,
        bpf_run_cnt: stats.bpf_run_cnt,
        rate_limited: stats.offcpu_rate_limited,
        notes: ingest
            .go()
            .and_then(|g| g.decoder.stats().comment())
            .into_iter()
            .collect(),
    };
    let symbolize = !opts.no_symbolize;
    let kallsyms = (symbolize && !opts.user_only)
        .then(Kallsyms::load)
        .flatten();
    let debuginfod = opts.debuginfod.clone().map(Debuginfod::new);
    let ready = resolve_all(&store, symbolize, debuginfod);
    let anon_frames = anonymous_share(&ready);
    let refs: Vec<&ReadyStack> = ready.iter().collect();
    let profile = encode::build(&refs, &header, kallsyms.as_ref(), LabelPolicy::Process);
    let bytes = write_output(&profile, &opts.output)?;
    if !opts.quiet && OutputKind::of(&opts.output) == OutputKind::Pprof {
        match crate::report::top_table(&profile, 10) {
            Ok(table) => eprint!("{table}"),
            Err(e) => eprintln!("(no summary table: {e})"),
        }
    }

    Ok(Summary {
        samples: store.samples(),
        lost: stats.lost,
        processes: store.processes(),
        truncated,
        anon_frames,
        bytes,
        stop,
        bpf_ns_per_run: (stats.bpf_run_cnt > 0)
            .then(|| stats.bpf_run_ns as f64 / stats.bpf_run_cnt as f64),
    })
}

/// What the recorder does at each tick: a progress bar, and the end of
/// the targets.
struct Progress {
    targets: Vec<u32>,
    bar: ProgressBar,
    started: Instant,
    total: Duration,
}

impl FrontEnd<Totals> for Progress {
    fn tick(&mut self, _: &mut Engine<Totals>, stats: &CaptureStats) -> ControlFlow<StopReason> {
        let elapsed = self.started.elapsed().min(self.total);
        self.bar.set_position(elapsed.as_millis() as u64);
        self.bar.set_message(format!("{} samples", stats.samples));
        let all_gone =
            !self.targets.is_empty() && self.targets.iter().all(|&p| !crate::process::is_alive(p));
        if all_gone {
            ControlFlow::Break(StopReason::TargetsExited)
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Every stack of the capture, named (or with mappings only).
fn resolve_all(store: &Totals, symbolize: bool, debuginfod: Option<Debuginfod>) -> Vec<ReadyStack> {
    let mut resolver =
        Resolver::new(ResolveLimits::unbounded(symbolize)).with_debuginfod(debuginfod);
    let entries: Vec<_> = store.stacks().iter().map(|(_, e)| e).collect();
    let empty: crate::engine::normalize::UserMaps = Arc::from(Vec::new());
    let pending: Vec<Pending<'_>> = entries
        .iter()
        .map(|e| {
            let maps = e.user_maps().unwrap_or(&empty);
            Pending {
                addrs: &e.key.user[..maps.len()],
                maps,
            }
        })
        .collect();
    let resolved = resolver.resolve(&pending);
    entries
        .into_iter()
        .zip(resolved)
        .map(|(e, user)| ReadyStack {
            key: e.key.clone(),
            meta: e.meta.clone(),
            thread: e.thread.clone(),
            user,
            samples: e.samples,
            weight: e.weight,
        })
        .collect()
}

/// Of all sampled user frames, the share in executable memory backed by
/// no file.
fn anonymous_share(stacks: &[ReadyStack]) -> f64 {
    let (mut all, mut anon) = (0u64, 0u64);
    for s in stacks {
        for loc in s.user.iter() {
            all += s.samples;
            if loc.mapping.as_ref().is_some_and(|m| !m.entry.is_file()) {
                anon += s.samples;
            }
        }
    }
    anon as f64 / all.max(1) as f64
}

fn describe_targets(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "all processes".to_owned();
    }
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    format!("pid {}", list.join(","))
}

fn print_unwind_stats(st: &UnwindStats) {
    eprintln!("unwind tables: {st}");
}

/// Says why the capture ended early, and what it lost.
fn report_stop(stop: StopReason, duration: Duration, lost: u64) {
    match stop {
        StopReason::Deadline => {}
        StopReason::Signal(sig) => eprintln!(
            "{sig}: stopping after {:.1}s and writing what was captured",
            duration.as_secs_f64()
        ),
        StopReason::TargetsExited => eprintln!(
            "the target process exited after {:.1}s; writing what was captured",
            duration.as_secs_f64()
        ),
    }
    if lost > 0 {
        tracing::warn!(
            "{lost} samples were lost because the ring buffer was full; try a larger --ring-size or a lower --frequency"
        );
    }
}

/// What `-o` asks for, by its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// Anything else: gzipped pprof.
    Pprof,
    /// `.svg`: an interactive flame graph.
    FlameGraph,
    /// `.txt` or `.folded`: collapsed stacks.
    Collapsed,
}

impl OutputKind {
    pub fn of(path: &std::path::Path) -> OutputKind {
        match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => OutputKind::FlameGraph,
            Some("txt" | "folded") => OutputKind::Collapsed,
            _ => OutputKind::Pprof,
        }
    }
}

/// Writes the profile in the form the output's extension asks for,
/// atomically. Returns the size written.
fn write_output(profile: &pprof::Profile, path: &std::path::Path) -> Result<usize, RecordError> {
    let fail = |message: String| RecordError::Write {
        path: path.to_owned(),
        message,
    };
    let bytes = match OutputKind::of(path) {
        OutputKind::Pprof => pprof::encode_gzip(profile),
        OutputKind::FlameGraph => {
            let mut out = Vec::new();
            let title = crate::report::default_title(profile).map_err(|e| fail(e.to_string()))?;
            crate::report::write_flamegraph(profile, &title, &mut out)
                .map_err(|e| fail(e.to_string()))?;
            out
        }
        OutputKind::Collapsed => {
            let mut out = Vec::new();
            crate::report::write_collapsed(profile, &mut out).map_err(|e| fail(e.to_string()))?;
            out
        }
    };
    pprof::write_file_atomic(path, &bytes).map_err(|e| fail(e.to_string()))?;
    Ok(bytes.len())
}

/// A bar of elapsed over total time with the sample count, on stderr.
/// Hidden when stderr is not a terminal or with --quiet.
fn progress_bar(seconds: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar =
        ProgressBar::with_draw_target(Some(seconds * 1000), ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{prefix} {msg}")
        .map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_prefix(format!("{seconds}s"));
    bar
}
