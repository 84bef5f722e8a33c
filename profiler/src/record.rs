//! `rprof-bpf --pid P --seconds N -o FILE`: the whole pipeline for the
//! command line. Checks first, then capture, then normalize, symbolize,
//! encode and write.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::aggregate::Aggregate;
use crate::capture::{Capture, CaptureConfig, Event, StopReason};
use crate::encode::{self, Meta};
use crate::pprof;
use crate::preflight::{self, PreflightError};
use crate::process::ProcessTable;
use crate::symbolize::Symbolizer;
use crate::unwind::leaf::LeafFixer;

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
}

/// Runs the pipeline end to end.
pub fn run(opts: &RecordOptions) -> Result<Summary, RecordError> {
    preflight::check_frequency(opts.frequency)?;
    preflight::check_output(&opts.output)?;
    preflight::check_privileges()?;
    preflight::check_kernel()?;
    preflight::check_pids(&opts.pids)?;
    raise_fd_limit();

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
    };
    let mut procs = ProcessTable::new();
    // Snapshot the targets before the first sample: a process that exits
    // early still gets its binaries opened.
    for &pid in &opts.pids {
        procs.observe(pid);
    }
    let mut capture = Capture::start(config).map_err(|e| RecordError::Runtime(e.to_string()))?;
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

    let mut agg = Aggregate::new();
    let mut leaf = LeafFixer::new();
    let total = Duration::from_secs(opts.seconds);
    let stop = capture
        .run(
            total,
            |s| {
                let user = leaf.user_stack(&mut procs, s.pid, s.user_stack(), s.user_sp_word);
                if agg.add(s, &user) {
                    crate::normalize::check_stack(&mut procs, s.pid, &user);
                }
            },
            |stats| {
                let elapsed = started.elapsed().min(total);
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(format!("{} samples", stats.samples));
            },
        )
        .await
        .map_err(|e| RecordError::Runtime(e.to_string()))?;
    bar.finish_and_clear();
    let stats = capture.stats();
    let event = capture.event;
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
    };
    let mut symbolizer = (!opts.no_symbolize).then(|| Symbolizer::new(!opts.user_only));
    let profile = encode::build(&agg, &procs, symbolizer.as_mut(), &meta);
    let bytes = pprof::encode_gzip(&profile);
    pprof::write_file_atomic(&opts.output, &bytes).map_err(|e| {
        RecordError::Runtime(format!("cannot write {}: {e}", opts.output.display()))
    })?;

    Ok(Summary {
        samples: agg.samples(),
        lost: stats.lost,
        processes: agg.pids().len(),
        bytes: bytes.len(),
        stop,
    })
}

/// Every binary of every profiled process stays open until symbolization:
/// a system-wide capture on a busy node can need more descriptors than the
/// usual soft limit of 1024, so take the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
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
