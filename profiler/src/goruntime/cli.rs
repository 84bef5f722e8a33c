//! `rprof-bpf heap|allocs|mutex|block|goroutine --pid P -o FILE`, and the
//! one entry point the agent shares ([`capture`]).

use std::path::PathBuf;

use crate::pprof::Profile;

use super::contention;
use super::heap::{self, HeapView};
use super::mprof::Kind;
use super::{GoProcess, GoRuntimeError};

/// Which Go runtime profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoProfileKind {
    Heap,
    Allocs,
    Mutex,
    Block,
    Goroutine,
}

impl GoProfileKind {
    /// The name `net/http/pprof` serves it under.
    pub fn name(self) -> &'static str {
        match self {
            GoProfileKind::Heap => "heap",
            GoProfileKind::Allocs => "allocs",
            GoProfileKind::Mutex => "mutex",
            GoProfileKind::Block => "block",
            GoProfileKind::Goroutine => "goroutine",
        }
    }

    pub fn from_name(name: &str) -> Option<GoProfileKind> {
        [
            GoProfileKind::Heap,
            GoProfileKind::Allocs,
            GoProfileKind::Mutex,
            GoProfileKind::Block,
            GoProfileKind::Goroutine,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// Flags of the heap, allocs, mutex and block commands.
#[derive(clap::Args, Debug, Clone)]
pub struct GoProfileArgs {
    /// The Go process.
    #[arg(short, long)]
    pub pid: u32,
    /// Output file (default: heap.pb.gz, allocs.pb.gz, ...).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// If the profile is off in the target, turn it on by writing its rate
    /// into the process (MemProfileRate = 524288, or a block/mutex rate of
    /// 1). This CHANGES THE TARGET; without the flag nothing is written.
    #[arg(long)]
    pub enable: bool,
    /// No summary line.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Flags of the goroutine command.
#[derive(clap::Args, Debug, Clone)]
pub struct GoroutineArgs {
    /// The Go process.
    #[arg(short, long)]
    pub pid: u32,
    /// Output file.
    #[arg(short, long, default_value = "goroutine.pb.gz")]
    pub output: PathBuf,
    /// Read without stopping the process: zero impact, but goroutines may
    /// change under the read (the profile's comments say so).
    #[arg(long)]
    pub no_pause: bool,
    /// Longest the process may stay stopped, in milliseconds; past it the
    /// threads are resumed and the read fails.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub max_pause_ms: u64,
    /// Also label each goroutine with what Go prints at debug=2: its wait
    /// reason (go_wait_reason), minutes waiting (go_wait_minutes) and the
    /// function that created it (go_created_by). Splits samples further
    /// than Go's own debug=0 profile.
    #[arg(long)]
    pub details: bool,
    /// Testing only: stay stopped this long after the read.
    #[arg(long, hide = true)]
    pub hold_pause_ms: Option<u64>,
    /// No summary line.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What a capture did, for the summary line.
#[derive(Debug, Default)]
pub struct CaptureSummary {
    pub samples: usize,
    /// How long the process was stopped (goroutine profiles).
    pub pause: Option<std::time::Duration>,
    pub goroutines: usize,
    pub version: String,
}

/// Options of one capture.
#[derive(Clone, Debug, Default)]
pub struct CaptureOptions {
    pub enable: bool,
    pub no_pause: bool,
    pub max_pause: Option<std::time::Duration>,
    /// Goroutines: debug=2-style labels.
    pub details: bool,
    /// Goroutines, tests only: stay stopped this long after the read.
    pub hold_pause: Option<std::time::Duration>,
    /// The command line, for the profile's comments.
    pub command: String,
}

/// The outcome of a capture: a profile, or (with `--enable`) the fact that
/// profiling was just turned on and has no data yet.
pub enum Captured {
    Profile(Box<Profile>, CaptureSummary),
    Enabled(String),
}

/// Reads one Go runtime profile of `pid`.
pub fn capture(
    pid: u32,
    kind: GoProfileKind,
    opts: &CaptureOptions,
) -> Result<Captured, GoRuntimeError> {
    let p = GoProcess::open(pid)?;
    let mut comments = Vec::new();
    if !opts.command.is_empty() {
        comments.push(opts.command.clone());
    }
    comments.push(format!(
        "read from the memory of process {pid} ({}, {}) by rprof-bpf",
        p.exe, p.version_string
    ));
    let mut summary = CaptureSummary {
        version: p.version_string.clone(),
        ..Default::default()
    };
    let profile = match kind {
        GoProfileKind::Heap | GoProfileKind::Allocs => {
            let state = p.mem_profiling()?;
            if state.rate == 0 {
                if !opts.enable {
                    return Err(p.mem_profiling_off(&state));
                }
                p.enable_mem_profiling(&state)?;
                return Ok(Captured::Enabled(format!(
                    "memory profiling was off in process {pid} ({}); set MemProfileRate to {} \
                     in the process: allocations are sampled from now on, read the profile again later",
                    p.exe,
                    heap::DEFAULT_MEM_PROFILE_RATE
                )));
            }
            let (buckets, form) = p.mem_buckets()?;
            let view = if kind == GoProfileKind::Allocs {
                HeapView::Allocs
            } else {
                HeapView::Heap
            };
            heap::encode(&p, &buckets, form, state.rate, view, &comments)
        }
        GoProfileKind::Mutex | GoProfileKind::Block => {
            let k = if kind == GoProfileKind::Mutex {
                Kind::Mutex
            } else {
                Kind::Block
            };
            let state = p.contention(k)?;
            let buckets = p.block_buckets(k)?;
            if state.rate == 0 && buckets.is_empty() {
                if !opts.enable {
                    return Err(p.contention_off(&state));
                }
                p.enable_contention(&state)?;
                return Ok(Captured::Enabled(format!(
                    "{} profiling was off in process {pid} ({}); set its rate to {} in the \
                     process: events are recorded from now on, read the profile again later",
                    k.profile_name(),
                    p.exe,
                    contention::ENABLE_RATE
                )));
            }
            let (tps, measured_by_target) = p.ticks_per_second();
            if !measured_by_target {
                comments.push(
                    "delay converted with a CPU tick rate measured by rprof-bpf (the target never measured its own)"
                        .into(),
                );
            }
            contention::encode(&p, &state, &buckets, tps, &comments)
        }
        GoProfileKind::Goroutine => {
            let (profile, g) = super::goroutines::capture(&p, opts, &comments)?;
            summary.pause = g.pause;
            summary.goroutines = g.goroutines;
            profile
        }
    };
    summary.samples = profile.sample.len();
    Ok(Captured::Profile(Box::new(profile), summary))
}

/// A command's failure: the exit code and the message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// Runs a command: capture, write (temp file, rename), summary line.
pub fn run(
    kind: GoProfileKind,
    pid: u32,
    output: &std::path::Path,
    quiet: bool,
    opts: &CaptureOptions,
) -> Result<(), Failure> {
    let captured = capture(pid, kind, opts).map_err(|e| Failure {
        code: if e.is_usage() { 2 } else { 1 },
        message: e.to_string(),
    })?;
    let (profile, s) = match captured {
        Captured::Enabled(msg) => {
            eprintln!("rprof-bpf: {msg}");
            return Ok(());
        }
        Captured::Profile(p, s) => (p, s),
    };
    let bytes = crate::pprof::encode_gzip(&profile);
    crate::pprof::write_file_atomic(output, &bytes).map_err(|e| Failure {
        code: 1,
        message: format!("cannot write {}: {e}", output.display()),
    })?;
    if !quiet {
        let mut line = format!(
            "rprof-bpf: {} profile of process {pid} ({}): {} samples",
            kind.name(),
            s.version,
            s.samples
        );
        if kind == GoProfileKind::Goroutine {
            line.push_str(&format!(", {} goroutines", s.goroutines));
            match s.pause {
                Some(d) => line.push_str(&format!(", paused {:.2} ms", d.as_secs_f64() * 1e3)),
                None => line.push_str(", not paused (--no-pause)"),
            }
        }
        eprintln!("{line} -> {}", output.display());
    }
    Ok(())
}
