//! Capture: load the BPF program, attach it to a perf event on every CPU and
//! drain its ring buffer.
//!
//! The public surface is [`Capture::start`] (or [`Capture::load`] then
//! [`Capture::attach`]), which does everything that can fail up front, and
//! [`Capture::run_until`], which hands typed samples to a [`Sink`] until
//! the front end's stop condition.

pub mod clock;
mod event;
mod offcpu;
pub mod ring;

pub use event::Event;

use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::PerfEvent;
use aya::{Ebpf, EbpfLoader};
use profiler_ebpf::abi::{self, GoLabels, Sample};
use tokio::io::unix::AsyncFd;

use crate::process::events::{ProcEvent, ProcEvents};
use crate::unwind::loader::Unwinder;
use std::ops::ControlFlow;
use tokio::io::Interest;
use tokio::time::{interval, MissedTickBehavior};

/// What to capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Processes to sample (tgids); empty means every process.
    pub pids: Vec<u32>,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// The event that drives sampling (`off-cpu` and `wall` turn the
    /// off-CPU programs on; `wall` also samples on the CPU clock).
    pub event: Event,
    /// Turns the off-CPU programs on next to an on-CPU event (the agent).
    pub off_cpu: bool,
    /// Sweeps threads still off CPU this often (the agent), besides once
    /// at the end of the capture.
    pub sweep_every: Option<Duration>,
    /// Whether to capture kernel stacks too.
    pub kernel: bool,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// How user stacks are unwound.
    pub unwind: Unwind,
    /// Capacity of the shared unwind-row array (16 bytes a row).
    pub unwind_rows: u32,
    /// Follow the kernel's process events (fork, exec, mmap, exit), so
    /// that every process's mappings are known with the time they applied.
    pub process_events: bool,
}

/// How user stacks are unwound in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Unwind {
    /// Frame pointers only (`bpf_get_stack`): cheapest, but broken by code
    /// built without them.
    Fp,
    /// `.eh_frame` tables only: stop where no table covers the code.
    Dwarf,
    /// Tables where a binary has them, frame pointers elsewhere (Go code,
    /// hand-written assembly).
    Auto,
}

/// Why a capture could not start. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the BPF program failed: {0}\nhint: the kernel needs BPF, BTF, ring buffers and bpf_loop (Linux 5.17+), and we need CAP_BPF and CAP_PERFMON (or root)")]
    Load(String),
    #[error("attaching the {event} event on CPU {cpu} failed: {reason}\nhint: check /proc/sys/kernel/perf_event_paranoid and that we have CAP_PERFMON (or root)")]
    Attach {
        cpu: u32,
        event: &'static str,
        reason: String,
    },
    #[error("cannot list online CPUs: {0}")]
    Cpus(String),
    #[error("reading the ring buffer failed: {0}")]
    Ring(#[from] std::io::Error),
}

impl CaptureError {
    fn attach(cpu: u32, event: Event, e: impl std::error::Error) -> Self {
        CaptureError::Attach {
            cpu,
            event: event.name(),
            reason: root_cause(&e),
        }
    }
}

/// The innermost cause of an error chain, which is where aya puts the errno.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg = format!("{msg}: {s}");
        cur = s.source();
    }
    msg
}

/// Why [`Capture::run_until`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The requested duration elapsed.
    Deadline,
    /// SIGINT or SIGTERM.
    Signal(&'static str),
    /// Every target process exited.
    TargetsExited,
}

/// Where a capture hands its samples: the engine, wrapped by a front end.
pub trait Sink {
    /// One sample, as read from the ring buffer, with its goroutine's
    /// labels for a registered Go process's record.
    fn sample(&mut self, s: &Sample, go: Option<&GoLabels>);

    /// One of the kernel's process events (fork, exec, mmap, exit), each
    /// before the samples read with it.
    fn event(&mut self, e: &ProcEvent) {
        let _ = e;
    }

    /// A few times a second, right after the ring was drained, and once
    /// more after the capture stopped. `Break` stops the capture.
    fn tick(&mut self, stats: &CaptureStats) -> ControlFlow<StopReason> {
        let _ = stats;
        ControlFlow::Continue(())
    }
}

/// Counters the capture keeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureStats {
    /// Records read from the ring buffer.
    pub samples: u64,
    /// Samples the kernel side could not queue (ring buffer full).
    pub lost: u64,
    /// Process events the kernel could not queue.
    pub lost_events: u64,
    /// Total time the BPF program ran and how often, when the kernel keeps
    /// these statistics (`sysctl kernel.bpf_stats_enabled=1`); else zero.
    pub bpf_run_ns: u64,
    pub bpf_run_cnt: u64,
    /// Waits the off-CPU rate limit did not record (their CPU's period
    /// was raised; the weights of those recorded are scaled to match).
    pub offcpu_rate_limited: u64,
    /// Run time and count of the off-CPU scheduler program.
    pub offcpu_run_ns: u64,
    pub offcpu_run_cnt: u64,
}

/// A loaded (and, after [`Capture::attach`], attached) program and its
/// ring buffer.
pub struct Capture {
    /// Owns the program and its perf-event links: dropping it detaches.
    bpf: Ebpf,
    /// The unwind maps, until [`Capture::take_unwinder`] hands them out.
    unwinder: Option<Unwinder>,
    ring: AsyncFd<RingBuf<MapData>>,
    /// The kernel's process events, when available.
    events: Option<ProcEvents>,
    /// Samples of one drain, held while the process events up to them are
    /// handed over first.
    batch: Vec<(Sample, Option<Box<GoLabels>>)>,
    /// The event actually in use (cycles may have fallen back to cpu-clock).
    pub event: Event,
    config: CaptureConfig,
    stats: CaptureStats,
}

/// How often progress is reported and targets are checked for exit; also
/// the longest a record waits in the ring before it is read.
const TICK: Duration = Duration::from_millis(200);

impl Capture {
    /// Loads the program, fills the pid filter and attaches to every online
    /// CPU. Sampling starts when this returns.
    pub fn start(config: CaptureConfig) -> Result<Capture, CaptureError> {
        let mut c = Capture::load(config)?;
        c.attach()?;
        Ok(c)
    }

    /// Whether the off-CPU programs run.
    fn off_cpu(&self) -> bool {
        self.config.off_cpu || self.config.event.off_cpu()
    }

    /// Loads the program and its maps without attaching it, so that unwind
    /// tables can be loaded before the first sample.
    pub fn load(config: CaptureConfig) -> Result<Capture, CaptureError> {
        let filter = u8::from(!config.pids.is_empty());
        let kernel = u8::from(config.kernel);
        let wakeup = u64::from(config.ring_bytes / 4);
        let dwarf = u8::from(config.unwind != Unwind::Fp);
        let fp_fallback = u8::from(config.unwind != Unwind::Dwarf);
        // Without tables, the table maps shrink to one entry: their full
        // size is allocated in the kernel up front.
        let (rows, procs) = if dwarf == 1 {
            (config.unwind_rows.max(1), abi::MAX_PROCS)
        } else {
            (1, 1)
        };
        // EbpfLoader::new() reads the kernel's BTF, which the program's
        // CO-RE relocations (the task_struct fields behind a sample's
        // process start time) are resolved against.
        let period = 1_000_000_000 / config.frequency.max(1);
        let budget = offcpu::BUDGET_PER_WINDOW;
        let mut bpf = EbpfLoader::new()
            // The off-CPU task storage maps: aya creates them but has no
            // handle type for them (only the BPF side uses them).
            .allow_unsupported_maps()
            .override_global(abi::GLOBAL_OFFCPU_PERIOD, &period, true)
            .override_global(abi::GLOBAL_OFFCPU_BUDGET, &budget, true)
            .override_global(abi::GLOBAL_FILTER_PIDS, &filter, true)
            .override_global(abi::GLOBAL_SELF_TGID, &std::process::id(), true)
            .override_global(abi::GLOBAL_CAPTURE_KERNEL, &kernel, true)
            .override_global(abi::GLOBAL_WAKEUP_BYTES, &wakeup, true)
            .override_global(abi::GLOBAL_DWARF_UNWIND, &dwarf, true)
            .override_global(abi::GLOBAL_FP_FALLBACK, &fp_fallback, true)
            .map_max_entries(abi::MAP_SAMPLES, config.ring_bytes)
            .map_max_entries(abi::MAP_UNWIND_ROWS, rows)
            .map_max_entries(abi::MAP_PROCS, procs)
            .load(profiler_ebpf::OBJECT)
            .map_err(|e| CaptureError::Load(root_cause(&e)))?;

        let unwinder = if dwarf == 1 {
            let rows_map = bpf.take_map(abi::MAP_UNWIND_ROWS);
            let procs_map = bpf.take_map(abi::MAP_PROCS);
            match (rows_map, procs_map) {
                (Some(r), Some(p)) => Some(Unwinder::new(r, rows, p).map_err(CaptureError::Load)?),
                _ => return Err(CaptureError::Load("the unwind maps are missing".into())),
            }
        } else {
            None
        };

        if !config.pids.is_empty() {
            let map = bpf
                .map_mut(abi::MAP_TARGETS)
                .ok_or_else(|| CaptureError::Load("the targets map is missing".into()))?;
            let mut targets: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(map).map_err(|e| CaptureError::Load(root_cause(&e)))?;
            for &pid in &config.pids {
                targets
                    .insert(pid, 1, 0)
                    .map_err(|e| CaptureError::Load(root_cause(&e)))?;
            }
        }

        let ring = bpf
            .take_map(abi::MAP_SAMPLES)
            .ok_or_else(|| CaptureError::Load("the samples ring buffer is missing".into()))?;
        let ring = RingBuf::try_from(ring).map_err(|e| CaptureError::Load(root_cause(&e)))?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd holds it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| CaptureError::Ring(std::io::Error::other(e.to_string())))?;

        let prog: &mut PerfEvent = bpf
            .program_mut(profiler_ebpf::PROGRAM)
            .ok_or_else(|| CaptureError::Load("the sampling program is missing".into()))?
            .try_into()
            .map_err(|e| CaptureError::Load(root_cause(&e)))?;
        prog.load()
            .map_err(|e| CaptureError::Load(root_cause(&e)))?;
        if config.off_cpu || config.event.off_cpu() {
            offcpu::load(&mut bpf)?;
        }

        let events = config.process_events.then(open_events).flatten();
        Ok(Capture {
            bpf,
            unwinder,
            ring,
            events,
            batch: Vec::new(),
            event: config.event,
            config,
            stats: CaptureStats::default(),
        })
    }

    /// Attaches the loaded program to the event on every online CPU:
    /// sampling starts.
    pub fn attach(&mut self) -> Result<(), CaptureError> {
        let prog: &mut PerfEvent = self
            .bpf
            .program_mut(profiler_ebpf::PROGRAM)
            .ok_or_else(|| CaptureError::Load("the sampling program is missing".into()))?
            .try_into()
            .map_err(|e| CaptureError::Load(root_cause(&e)))?;
        let cpus = aya::util::online_cpus()
            .map_err(|(path, e)| CaptureError::Cpus(format!("{path}: {e}")))?;
        if let Some(clock) = self.config.event.clock() {
            let used = event::attach_all(prog, clock, self.config.frequency, &cpus)?;
            if used != clock {
                self.event = used;
            }
        }
        if self.off_cpu() {
            offcpu::attach(&mut self.bpf)?;
        }
        Ok(())
    }

    /// Sends a record of every target thread still off CPU (see
    /// `offcpu.h`); the next drain reads them.
    pub fn sweep(&mut self) -> Result<(), CaptureError> {
        if self.off_cpu() {
            offcpu::sweep(&mut self.bpf)?;
        }
        Ok(())
    }

    /// The unwind maps (with `Unwind::Dwarf`/`Auto`), for the caller to fill
    /// as processes appear. Taken once.
    pub fn take_unwinder(&mut self) -> Option<Unwinder> {
        self.unwinder.take()
    }

    /// The `go_procs` map (Go processes whose records carry goroutine
    /// labels), for [`crate::golabels::procs::GoProcs`]. Taken once.
    pub fn take_go_procs(&mut self) -> Option<aya::maps::Map> {
        self.bpf.take_map(abi::MAP_GO_PROCS)
    }

    /// Drains samples into `sink` until `stop` completes (its output is
    /// the returned reason) or the sink's tick asks to stop. The sink's
    /// tick runs a few times a second, right after a drain, with the
    /// running counters (lost samples included). Signal handling is the
    /// front end's: it goes into `stop`.
    pub async fn run_until(
        &mut self,
        stop: impl std::future::Future<Output = StopReason>,
        sink: &mut impl Sink,
    ) -> Result<StopReason, CaptureError> {
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut last_sweep = std::time::Instant::now();

        let reason = loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    take(guard.get_inner_mut(), &mut self.batch);
                    guard.clear_ready();
                    self.hand_over(sink);
                }
                _ = tick.tick() => {
                    // Records are queued without waking us (see wakeup_bytes
                    // in the BPF program), so the tick is what reads them.
                    if self.config.sweep_every.is_some_and(|e| last_sweep.elapsed() >= e) {
                        last_sweep = std::time::Instant::now();
                        if let Err(e) = self.sweep() {
                            tracing::warn!("{e}");
                        }
                    }
                    self.drain(sink);
                    self.stats.lost = self.read_lost();
                    self.stats.offcpu_rate_limited = offcpu::rate_limited(&self.bpf);
                    if let ControlFlow::Break(r) = sink.tick(&self.stats) {
                        break r;
                    }
                }
                r = &mut stop => break r,
            }
        };
        (self.stats.bpf_run_ns, self.stats.bpf_run_cnt) =
            self.read_run_stats(profiler_ebpf::PROGRAM);
        if self.off_cpu() {
            (self.stats.offcpu_run_ns, self.stats.offcpu_run_cnt) =
                self.read_run_stats(abi::PROG_OFFCPU_SWITCH);
            // Threads still off CPU count up to now, with their stacks.
            if let Err(e) = self.sweep() {
                tracing::warn!("{e}");
            }
        }
        self.detach();
        self.drain(sink);
        self.stats.lost = self.read_lost();
        self.stats.offcpu_rate_limited = offcpu::rate_limited(&self.bpf);
        // The last tick: what was drained after the stop is in.
        let _ = sink.tick(&self.stats);
        Ok(reason)
    }

    /// Reads the ring, then hands everything to the sink.
    fn drain(&mut self, sink: &mut impl Sink) {
        take(self.ring.get_mut(), &mut self.batch);
        self.hand_over(sink);
    }

    /// Hands the sink the process events first, then the samples taken:
    /// every event a sample depends on (the mmap of the code it ran) was
    /// queued before the sample was, so reading the events after the
    /// samples and handing them over first leaves none behind.
    fn hand_over(&mut self, sink: &mut impl Sink) {
        if let Some(ev) = &mut self.events {
            ev.drain(|e| sink.event(e));
            self.stats.lost_events = ev.lost();
        }
        for (s, go) in self.batch.drain(..) {
            self.stats.samples += 1;
            sink.sample(&s, go.as_deref());
        }
    }

    /// Final counters.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Raw fd of the ring buffer (diagnostics).
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }

    /// Stops sampling: unloading the program drops its perf-event links.
    fn detach(&mut self) {
        if let Some(p) = self.bpf.program_mut(profiler_ebpf::PROGRAM) {
            if let Ok(prog) = <&mut PerfEvent>::try_from(p) {
                let _ = prog.unload();
            }
        }
        offcpu::detach(&mut self.bpf);
    }

    /// The program's run time and run count from its fdinfo. The kernel
    /// only counts while `kernel.bpf_stats_enabled` is set.
    fn read_run_stats(&self, program: &str) -> (u64, u64) {
        let fd = self
            .bpf
            .program(program)
            .and_then(|p| p.fd().ok())
            .map(|fd| std::os::fd::AsFd::as_fd(fd).as_raw_fd());
        let Some(fd) = fd else { return (0, 0) };
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            return (0, 0);
        };
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (field("run_time_ns:"), field("run_cnt:"))
    }

    /// Sum of the per-CPU drop counters.
    fn read_lost(&self) -> u64 {
        let Some(map) = self.bpf.map(abi::MAP_DROPS) else {
            return 0;
        };
        let Ok(drops) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// Takes every record now in the ring into `batch`.
fn take(ring: &mut RingBuf<MapData>, batch: &mut Vec<(Sample, Option<Box<GoLabels>>)>) {
    while let Some(item) = ring.next() {
        if let Some(s) = Sample::from_bytes(&item) {
            batch.push((s, GoLabels::from_record(&item)));
        }
    }
}

/// The process events, if the kernel lets us have them; without them,
/// mappings come from `/proc` alone (and short-lived processes go unnamed).
fn open_events() -> Option<ProcEvents> {
    let cpus = match aya::util::online_cpus() {
        Ok(c) => c,
        Err((path, e)) => {
            tracing::warn!("cannot list online CPUs ({path}: {e}); process events are off");
            return None;
        }
    };
    ProcEvents::open(&cpus)
        .map_err(|e| {
            tracing::warn!("{e}; mappings come from /proc alone, so processes that exit within a drain go unnamed")
        })
        .ok()
}

/// A sample as the BPF program would send it, for unit tests of the stages
/// after capture: user frames only (innermost first), a 10 ms period,
/// start time 1 and the thread name `comm`.
#[cfg(test)]
pub(crate) fn test_sample(pid: u32, tid: u32, time_ns: u64, user: &[u64], comm: &str) -> Sample {
    let mut s = Sample {
        pid,
        tid,
        cpu: 0,
        flags: 0,
        time_ns,
        period: 10_000_000,
        start_ns: 1,
        user_sp_word: 0,
        user_frames: user.len() as u32,
        kernel_frames: 0,
        comm: [0; abi::COMM_LEN],
        user_stack: [0; abi::MAX_FRAMES],
        kernel_stack: [0; abi::MAX_FRAMES],
        state: abi::STATE_ON_CPU,
        syscall: -1,
    };
    s.user_stack[..user.len()].copy_from_slice(user);
    s.comm[..comm.len()].copy_from_slice(comm.as_bytes());
    s
}
