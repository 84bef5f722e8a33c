//! `rprof-bpf --pid P --seconds N -o FILE`: the whole pipeline for the
//! command line. Checks first, then capture, then normalize, symbolize,
//! encode and write.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use profiler_ebpf::abi::Sample;

use crate::aggregate::Aggregate;
use crate::capture::{Capture, CaptureConfig, Event, StopReason, Unwind};
use crate::encode::{self, Meta};
use crate::pprof;
use crate::preflight::{self, PreflightError};
use crate::process::exits::ExitWatch;
use crate::process::ProcessTable;
use crate::symbolize::Symbolizer;
use crate::unwind::leaf::LeafFixer;
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
    pub output: PathBuf,
    pub quiet: bool,
    pub ring_bytes: u32,
    pub unwind: Unwind,
    pub unwind_rows: u32,
    /// The command line, recorded in the profile's comment.
    pub command: String,
}

/// Why recording failed, split by exit code.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Bad input: exit code 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Runtime(String),
}

impl From<PreflightError> for RecordError {
    fn from(e: PreflightError) -> Self {
        match e {
            PreflightError::Usage(m) => RecordError::Usage(m),
            PreflightError::Environment(m) => RecordError::Runtime(m),
        }
    }
}

/// What a finished recording reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub samples: u64,
    pub lost: u64,
    pub processes: usize,
    pub bytes: usize,
    pub stop: StopReason,
    /// Mean BPF program run time per invocation in ns, when the kernel's
    /// BPF statistics are on.
    pub bpf_ns_per_run: Option<f64>,
    /// User stacks cut at a garbage return address.
    pub truncated_stacks: u64,
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
        .map_err(|e| RecordError::Runtime(format!("cannot start the async runtime: {e}")))?;
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
    };
    let mut live = Live::new();
    // Snapshot the targets before the first sample: a process that exits
    // early still gets its binaries opened.
    for &pid in &opts.pids {
        live.observe(pid);
    }
    let runtime = |e: crate::capture::CaptureError| RecordError::Runtime(e.to_string());
    let mut capture = Capture::load(config).map_err(runtime)?;
    if let Some(mut u) = capture.take_unwinder() {
        // The targets' tables go in before the first sample; later
        // processes get theirs from the worker thread.
        for p in opts.pids.iter().filter_map(|&pid| live.procs.get(pid)) {
            if let Err(e) = u.load_process(p) {
                eprintln!("warning: {e}");
            }
        }
        match TableWorker::start(u) {
            Ok(w) => live.unwinder = Some(w),
            Err(e) => eprintln!("warning: cannot start the unwind table thread ({e}); new processes are unwound with frame pointers"),
        }
    }
    capture.attach().map_err(runtime)?;
    let started = Instant::now();
    let start_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);

    let target = if opts.pids.is_empty() {
        "all processes".to_owned()
    } else {
        let list: Vec<String> = opts.pids.iter().map(u32::to_string).collect();
        format!("pid {}", list.join(","))
    };
    eprintln!(
        "Profiling {target} for {}s at {} Hz on {} (Ctrl-C to stop early)",
        opts.seconds,
        opts.frequency,
        capture.event.name()
    );
    let bar = progress_bar(opts.seconds, opts.quiet);

    let total = Duration::from_secs(opts.seconds);
    // Both callbacks need the state; they never run at the same time.
    let live = RefCell::new(live);
    let stop = capture
        .run(
            total,
            |s| live.borrow_mut().add(s),
            |stats| {
                // The ring was drained just before: every sample of a
                // process that has exited is in, so it can be retired.
                live.borrow_mut().retire_exited();
                let elapsed = started.elapsed().min(total);
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(format!("{} samples", stats.samples));
            },
        )
        .await
        .map_err(|e| RecordError::Runtime(e.to_string()))?;
    bar.finish_and_clear();
    let Live {
        procs,
        agg,
        unwinder,
        sanitizer,
        ..
    } = live.into_inner();
    let stats = capture.stats();
    let event = capture.event;
    let unwind_stats = unwinder.and_then(TableWorker::finish);
    if let (Some(st), false) = (unwind_stats, opts.quiet) {
        eprintln!("unwind tables: {st}");
    }
    let duration = started.elapsed();
    // Detaches everything before the (possibly long) symbolization.
    drop(capture);

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
    if stats.lost > 0 {
        eprintln!(
            "warning: {} samples were lost because the ring buffer was full; try a larger --ring-size or a lower --frequency",
            stats.lost
        );
    }

    let meta = Meta {
        event,
        frequency: opts.frequency,
        start_unix_nanos: start_unix,
        duration_nanos: duration.as_nanos() as i64,
        command: opts.command.clone(),
        lost: stats.lost,
        bpf_run_ns: stats.bpf_run_ns,
        bpf_run_cnt: stats.bpf_run_cnt,
    };
    let mut symbolizer = (!opts.no_symbolize).then(|| Symbolizer::new(!opts.user_only));
    let profile = encode::build(&agg, &procs, symbolizer.as_mut(), &meta);
    let bytes = write_output(&profile, &opts.output)?;
    if !opts.quiet && OutputKind::of(&opts.output) == OutputKind::Pprof {
        match crate::report::top_table(&profile, 10) {
            Ok(table) => eprint!("{table}"),
            Err(e) => eprintln!("(no summary table: {e})"),
        }
    }

    Ok(Summary {
        samples: agg.samples(),
        lost: stats.lost,
        processes: agg.pids().len(),
        bytes,
        stop,
        bpf_ns_per_run: (stats.bpf_run_cnt > 0)
            .then(|| stats.bpf_run_ns as f64 / stats.bpf_run_cnt as f64),
        truncated_stacks: sanitizer.truncated(),
    })
}

/// The ring buffer size that holds half a second of samples from every CPU
/// at `frequency`: the reader drains it every 200 ms and is woken at a
/// quarter full, so that leaves room for a busy moment without mapping
/// megabytes nobody uses. A power of two between 256 KiB and 64 MiB.
pub fn default_ring_bytes(frequency: u64) -> u32 {
    ring_bytes_for(frequency, 500)
}

/// The ring buffer size that holds `millis` ms of samples from every CPU
/// at `frequency`, as a power of two between 256 KiB and 64 MiB. Its
/// pages are mapped twice into our address space (so a record can be read
/// across the wrap), so each byte counts twice in our RSS once written.
pub fn ring_bytes_for(frequency: u64, millis: u64) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let record = std::mem::size_of::<profiler_ebpf::abi::Sample>() as u64 + 8;
    let want = cpus * frequency.max(1) * record * millis / 1000;
    want.clamp(256 << 10, 64 << 20)
        .next_power_of_two()
        .min(64 << 20) as u32
}

/// What the capture builds up as samples arrive.
struct Live {
    procs: ProcessTable,
    agg: Aggregate,
    leaf: LeafFixer,
    unwinder: Option<TableWorker>,
    sanitizer: crate::unwind::sanitize::Sanitizer,
    exits: ExitWatch,
    /// The start time of the process behind each pid, from its samples.
    starts: HashMap<u32, u64>,
}

impl Live {
    fn new() -> Live {
        Live {
            procs: ProcessTable::new(),
            agg: Aggregate::new(),
            leaf: LeafFixer::new(),
            unwinder: None,
            sanitizer: Default::default(),
            exits: ExitWatch::new(),
            starts: HashMap::new(),
        }
    }

    /// Snapshots a process on first sight and watches it for exit. False
    /// if it is already gone.
    fn observe(&mut self, pid: u32) -> bool {
        if self.procs.get(pid).is_some() {
            return true;
        }
        if self.procs.observe(pid).is_none() {
            return false;
        }
        self.exits.watch(pid);
        true
    }

    fn add(&mut self, s: &Sample) {
        // Another start time under a known pid: the pid was reused, and
        // this sample is the new process's first.
        let known = self.starts.insert(s.pid, s.start_ns);
        if known.is_some_and(|t| t != s.start_ns) {
            self.retire(s.pid);
        }
        if self.procs.get(s.pid).is_none() && self.observe(s.pid) {
            self.load_tables(s.pid);
        }
        let user = self
            .leaf
            .user_stack(&mut self.procs, s.pid, s.user_stack(), s.user_sp_word);
        let (user, refreshed) = self
            .sanitizer
            .user_stack(&mut self.procs, s.pid, user, s.flags);
        if refreshed {
            self.load_tables(s.pid);
        }
        self.agg.add(s, &user);
        if let Some(u) = &mut self.unwinder {
            u.touch(s.pid);
        }
    }

    /// Files exited processes away from their pids, so that a new process
    /// reusing one is never merged with them, and frees their unwind state.
    fn retire_exited(&mut self) {
        for pid in self.exits.take_exited() {
            self.retire(pid);
        }
    }

    /// Moves a process that is gone out of the way of its pid's next user.
    fn retire(&mut self, pid: u32) {
        if let Some(alias) = self.procs.retire(pid) {
            self.agg.rekey(pid, alias);
        }
        self.exits.forget(pid);
        if let Some(u) = &self.unwinder {
            u.remove(pid);
        }
    }

    /// Queues a process's unwind tables.
    fn load_tables(&mut self, pid: u32) {
        if let (Some(u), Some(p)) = (&self.unwinder, self.procs.get(pid)) {
            u.load(p);
        }
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
    let runtime = |e: String| RecordError::Runtime(format!("cannot write {}: {e}", path.display()));
    let bytes = match OutputKind::of(path) {
        OutputKind::Pprof => pprof::encode_gzip(profile),
        OutputKind::FlameGraph => {
            let mut out = Vec::new();
            let title =
                crate::report::default_title(profile).map_err(|e| runtime(e.to_string()))?;
            crate::report::write_flamegraph(profile, &title, &mut out)
                .map_err(|e| runtime(e.to_string()))?;
            out
        }
        OutputKind::Collapsed => {
            let mut out = Vec::new();
            crate::report::write_collapsed(profile, &mut out)
                .map_err(|e| runtime(e.to_string()))?;
            out
        }
    };
    pprof::write_file_atomic(path, &bytes).map_err(|e| runtime(e.to_string()))?;
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
