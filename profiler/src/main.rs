//! The `rprof-bpf` command line. Parsing and exit codes only; the work is in
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rprof_bpf::capture::Event;
use rprof_bpf::goruntime::cli::{GoProfileArgs, GoProfileKind, GoroutineArgs};
use rprof_bpf::record::{self, RecordError, RecordOptions};

/// eBPF-based CPU profiler that writes pprof.
///
/// With no subcommand, profiles the given processes (or every process) and
/// writes a pprof profile readable by `go tool pprof`, Pyroscope or Parca.
#[derive(Parser, Debug)]
#[command(name = "rprof-bpf", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a pprof file: top table, flame graph, collapsed stacks.
    Report(rprof_bpf::report::ReportArgs),
    /// Name the frames of a raw (--no-symbolize) profile from files found by build ID.
    Symbolize(rprof_bpf::offline::SymbolizeArgs),
    /// Node agent: profile every process continuously; serve, push and write profiles.
    Agent(Box<rprof_bpf::agent::AgentArgs>),
    /// Go heap profile (in-use and allocated memory) read from a running Go process.
    Heap(GoProfileArgs),
    /// Go allocs profile: the heap profile with alloc_space shown by default.
    Allocs(GoProfileArgs),
    /// Go mutex contention profile read from a running Go process.
    Mutex(GoProfileArgs),
    /// Go block (blocking events) profile read from a running Go process.
    Block(GoProfileArgs),
    /// Go goroutine profile (every goroutine's stack) of a running Go process.
    Goroutine(GoroutineArgs),
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// Processes to profile, as a comma-separated list; all processes if absent.
    #[arg(short, long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// How long to profile.
    #[arg(short, long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Samples per second per CPU.
    #[arg(short = 'F', long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    frequency: u64,
    /// The event that drives sampling.
    #[arg(long, value_enum, default_value_t = Event::CpuClock)]
    event: Event,
    /// Capture user stacks only, no kernel frames.
    #[arg(long)]
    user_only: bool,
    /// Write addresses, mappings and build IDs only; name frames later.
    #[arg(long)]
    no_symbolize: bool,
    /// Fetch debug files by build ID from debuginfod servers, after the
    /// capture, for binaries with no debug info on this machine. With no
    /// URL, the servers in DEBUGINFOD_URLS. Repeatable.
    #[arg(long, value_name = "URL", num_args = 0..=1, conflicts_with = "no_symbolize")]
    debuginfod: Option<Vec<String>>,
    /// Output file.
    #[arg(short, long, default_value = "cpu.pb.gz")]
    output: PathBuf,
    /// No progress bar and no summary table.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    unwind: rprof_bpf::unwind::options::UnwindArgs,
    /// Ring buffer size in KiB (a power of two, at least 4). Default: half
    /// a second of samples at the chosen frequency on every CPU.
    #[arg(long, value_parser = rprof_bpf::capture::ring::parse_ring_kib)]
    ring_size: Option<u32>,
    /// Add each Go sample's goroutine id as a numeric `goid` label (high
    /// cardinality: one stack per goroutine).
    #[arg(long)]
    go_goid: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Some(Command::Agent(a)) => a.log_format,
        _ => rprof_bpf::logging::LogFormat::Text,
    };
    rprof_bpf::logging::init(log_format, tracing::Level::INFO);
    let result = match cli.command {
        Some(Command::Report(args)) => rprof_bpf::report::run(&args),
        Some(Command::Symbolize(args)) => rprof_bpf::offline::run(&args),
        Some(Command::Agent(args)) => rprof_bpf::agent::run(&args),
        Some(Command::Heap(a)) => go_profile_main(GoProfileKind::Heap, a),
        Some(Command::Allocs(a)) => go_profile_main(GoProfileKind::Allocs, a),
        Some(Command::Mutex(a)) => go_profile_main(GoProfileKind::Mutex, a),
        Some(Command::Block(a)) => go_profile_main(GoProfileKind::Block, a),
        Some(Command::Goroutine(a)) => goroutine_main(a),
        None => record_main(cli.record),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rprof-bpf: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn go_profile_main(kind: GoProfileKind, a: GoProfileArgs) -> anyhow::Result<()> {
    let output = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.pb.gz", kind.name())));
    let opts = rprof_bpf::goruntime::cli::CaptureOptions {
        enable: a.enable,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Default::default()
    };
    Ok(rprof_bpf::goruntime::cli::run(
        kind, a.pid, &output, a.quiet, &opts,
    )?)
}

fn goroutine_main(a: GoroutineArgs) -> anyhow::Result<()> {
    let opts = rprof_bpf::goruntime::cli::CaptureOptions {
        no_pause: a.no_pause,
        max_pause: Some(std::time::Duration::from_millis(a.max_pause_ms)),
        details: a.details,
        hold_pause: a.hold_pause_ms.map(std::time::Duration::from_millis),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Default::default()
    };
    let kind = GoProfileKind::Goroutine;
    Ok(rprof_bpf::goruntime::cli::run(
        kind, a.pid, &a.output, a.quiet, &opts,
    )?)
}

/// The one mapping from errors to exit codes: 2 for usage errors (a bad
/// flag, an unknown pid, an unwritable output, a bad server URL), 1 for
/// everything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(r) = e.downcast_ref::<RecordError>() {
        return r.exit_code();
    }
    if let Some(f) = e.downcast_ref::<rprof_bpf::goruntime::cli::Failure>() {
        return f.code;
    }
    let usage = e.is::<rprof_bpf::agent::UsageError>()
        || e.is::<rprof_bpf::symbolize::debuginfod::ConfigError>();
    if usage {
        2
    } else {
        1
    }
}

fn record_main(a: RecordArgs) -> anyhow::Result<()> {
    use rprof_bpf::symbolize::debuginfod;
    let debuginfod = match a.debuginfod.as_deref() {
        Some(urls) => Some(debuginfod::Config::for_flag(
            urls,
            &debuginfod::process_env,
        )?),
        None => None,
    };
    let opts = RecordOptions {
        pids: a.pid,
        seconds: a.seconds,
        frequency: a.frequency,
        event: a.event,
        user_only: a.user_only,
        no_symbolize: a.no_symbolize,
        debuginfod,
        output: a.output,
        quiet: a.quiet,
        ring_bytes: a.ring_size.map_or_else(
            || rprof_bpf::capture::ring::default_ring_bytes(a.frequency),
            |kib| kib * 1024,
        ),
        unwind: a.unwind.unwind,
        unwind_rows: a.unwind.rows(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        go_goid: a.go_goid,
    };
    let s = record::run(&opts)?;
    let mut truncated = if s.truncated > 0 {
        format!(", {} stacks truncated", s.truncated)
    } else {
        String::new()
    };
    if s.anon_frames >= 0.0005 {
        truncated.push_str(&format!(
            ", {:.1}% of user frames in anonymous memory",
            100.0 * s.anon_frames
        ));
    }
    eprintln!(
        "rprof-bpf: {} samples, {} lost, {} process{}{truncated} -> {} ({})",
        s.samples,
        s.lost,
        s.processes,
        if s.processes == 1 { "" } else { "es" },
        opts.output.display(),
        human_size(s.bytes)
    );
    if let Some(ns) = s.bpf_ns_per_run {
        eprintln!("rprof-bpf: BPF program cost {:.2} us per run", ns / 1000.0);
    }
    Ok(())
}

fn human_size(n: usize) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}
