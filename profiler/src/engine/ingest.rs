//! Ingest: what happens to every sample before it is counted.
//!
//! - **Identity.** A sample names its process by (pid, start time). The
//!   first sample of a process registers it: a pidfd (to learn of its exit
//!   without polling `/proc`), a snapshot of its mappings with its binaries
//!   opened, its name and container labels. Another start time under a
//!   known pid is a new process: the old one is finished first.
//! - **Exit, race-free.** A pidfd that turns readable at a tick marks its
//!   process as exiting; it is dropped only at the next tick. Every sample
//!   the process took was committed to the ring before it exited, and the
//!   capture drains the ring before each tick, so by then all of them have
//!   been counted against the right process.
//! - **Leaf fix-up** ([`LeafFixer`]): the caller a frameless leaf hides
//!   from frame pointers.
//! - **Normalization of new stacks** ([`MappingCache`]): against the
//!   mappings of that moment, re-reading them once if an address misses
//!   (a `dlopen` or `exec`); the stack is cut at the first address in no
//!   executable mapping (a frame-pointer walk through code without frame
//!   pointers reads garbage there), and the cut is counted.
//! - **Unwind tables** for the BPF unwinder are requested for new
//!   processes and reloaded when their mappings change.
//!
//! All of it runs on the capture thread, with no lock held: `/proc` reads
//! and file opens never delay anyone who reads the store.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use profiler_ebpf::abi::{GoLabels, Sample};

use super::identity::{ProcKey, ProcMeta};
use super::normalize::{MappingCache, UserMaps};
use crate::capture::clock::mono_now;
use crate::golabels::{GoLabelSet, GoLabeling};
use crate::process::container::{self, Labels};
use crate::process::events::ProcEvent;
use crate::process::exits::{pidfd_open, ExitSet};
use crate::process::{Binary, BinaryKey, Process, ProcessTable};
use crate::unwind::leaf::LeafFixer;
use crate::unwind::worker::TableWorker;

/// Where a new process's container and pod labels come from. The default
/// reads its cgroup; the agent adds the kubelet's names.
pub trait Labeler: Send {
    fn labels_of(&mut self, pid: u32) -> Labels;
}

/// Container and pod IDs from `/proc/PID/cgroup`, no names.
pub struct CgroupLabeler;

impl Labeler for CgroupLabeler {
    fn labels_of(&mut self, pid: u32) -> Labels {
        let ids = container::ids_of(pid);
        Labels {
            container_id: ids.container_id.unwrap_or_default(),
            pod_uid: ids.pod_uid.unwrap_or_default(),
            ..Labels::default()
        }
    }
}

/// One sample, ready for a store.
pub struct Ingested<'a> {
    pub meta: Arc<ProcMeta>,
    pub tid: u32,
    /// The sampled thread's name, as the kernel reported it.
    pub thread: &'a [u8],
    /// User frames, innermost first, after the leaf fix-up.
    pub user: Cow<'a, [u64]>,
    /// Kernel frames, innermost first.
    pub kernel: &'a [u64],
    /// CLOCK_MONOTONIC ns.
    pub time_ns: u64,
    /// The sample's weight: ns of CPU for cpu-clock, cycles for the PMU,
    /// ns waited off CPU.
    pub weight: u64,
    /// On CPU, or which kind of wait (off-CPU records).
    pub state: super::state::ThreadState,
    /// How many times the process's mappings changed so far: a stack
    /// normalized with a miss under an older generation is worth another
    /// try.
    pub maps_gen: u32,
    /// The process's mapping epoch at the sample's time (see
    /// [`Process::epoch_at`]): part of the stack's identity.
    pub epoch: u32,
    /// The goroutine's pprof labels (Go processes registered for them):
    /// part of the stack's identity.
    pub go: Option<Arc<GoLabelSet>>,
}

/// A stack's user frames as they go into profiles.
#[derive(Clone)]
pub struct Normalized {
    /// The frames kept (a prefix of the sampled ones), with mappings.
    pub maps: UserMaps,
    /// Some kept address is in no known mapping (a process gone before we
    /// saw it; a mapping newer than the last snapshot we could take).
    pub missed: bool,
    /// Frames were dropped after the first address in no executable
    /// mapping.
    pub truncated: bool,
    pub maps_gen: u32,
}

/// Counters of what ingest did.
#[derive(Clone, Copy, Debug, Default)]
pub struct IngestStats {
    pub samples: u64,
    /// Samples whose user stack the kernel could not read.
    pub user_stack_errors: u64,
    /// Stacks cut at an address in no executable mapping: new stacks cut
    /// here, and samples the BPF unwinder cut (`FLAG_FP_TRUNCATED`).
    pub truncated_stacks: u64,
    /// Processes registered, and those gone before we could read them.
    pub processes: u64,
    pub vanished: u64,
    /// Of those gone before we could read them, the ones named anyway
    /// from the kernel's process events.
    pub named_from_events: u64,
    /// Processes finished (exited, or their pid reused).
    pub exited: u64,
    /// Processes running now (with a pidfd).
    pub live: u64,
    pub open_binaries: u64,
}

/// One process that is (or just was) running.
struct LiveProc {
    meta: Arc<ProcMeta>,
    /// We hold a pidfd for it (it is in the exit set); false: gone before
    /// we could open one, dropped at the next tick.
    alive: bool,
    /// When its life began as the process table knows it (0: older than
    /// the capture), which names that life among the pid's.
    born_ns: u64,
    mappings: MappingCache,
    /// Seen exited at the last tick: dropped at the next one.
    exiting: bool,
}

/// How `/proc/PID/stat`'s start time (boot-time clock ticks) relates to
/// the BPF program's (monotonic ns), to check that the process a pid names
/// now is the one that was sampled.
struct StartClock {
    boot_minus_mono_ns: i128,
    tick_ns: u64,
}

impl StartClock {
    fn now() -> StartClock {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes into a valid local timespec.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_ns = if ticks > 0 {
            1_000_000_000 / ticks as u64
        } else {
            10_000_000
        };
        StartClock {
            boot_minus_mono_ns: read(libc::CLOCK_BOOTTIME) - read(libc::CLOCK_MONOTONIC),
            tick_ns,
        }
    }

    /// Whether a start time in ticks is the one in ns (unknown ns: yes).
    fn matches(&self, start_ticks: u64, start_ns: u64) -> bool {
        if start_ns == 0 {
            return true;
        }
        let boot = start_ns as i128 + self.boot_minus_mono_ns;
        let ticks = start_ticks as i128 * self.tick_ns as i128;
        (boot - ticks).abs() <= 2 * self.tick_ns as i128
    }
}

/// How long a binary no process maps stays open, so that programs run
/// again and again (a shell, a compiler) keep what the symbolizer knows.
const LINGER: Duration = Duration::from_secs(60);

/// How long exited processes and replaced mappings are kept: longer than
/// any sample can wait in the ring buffer (2 s for the agent's).
const KEEP_NS: u64 = 5_000_000_000;

/// The ingest stage and the live process state behind it.
pub struct Ingest {
    table: ProcessTable,
    live: HashMap<u32, LiveProc>,
    leaf: LeafFixer,
    leaf_reset: Option<(Duration, Instant)>,
    tables: Option<TableWorker>,
    /// Pids whose tables were loaded before the capture started.
    prewarmed: HashMap<u32, u64>,
    labeler: Box<dyn Labeler>,
    /// Go processes' goroutine labels, when the front end asked for them.
    go: Option<GoLabeling>,
    /// The live processes' pidfds, by pid. `None` if the kernel refused an
    /// epoll set: then exits are only noticed by pid reuse.
    exits: Option<ExitSet>,
    clock: StartClock,
    unused_since: HashMap<BinaryKey, Instant>,
    /// Running processes whose mappings changed since the last tick.
    reload: std::collections::HashSet<u32>,
    stats: IngestStats,
}

impl Ingest {
    pub fn new(labeler: Box<dyn Labeler>) -> Ingest {
        Ingest {
            table: ProcessTable::new(),
            live: HashMap::new(),
            leaf: LeafFixer::new(),
            leaf_reset: None,
            tables: None,
            prewarmed: HashMap::new(),
            labeler,
            go: None,
            exits: ExitSet::new()
                .map_err(|e| tracing::warn!("cannot watch processes for exit: {e}"))
                .ok(),
            clock: StartClock::now(),
            unused_since: HashMap::new(),
            reload: std::collections::HashSet::new(),
            stats: IngestStats::default(),
        }
    }

    /// Forgets the leaf verdicts every `every`: they are keyed by process
    /// and would otherwise grow with every process that ever ran (for a
    /// front end that runs for ever).
    pub fn reset_leaf_every(&mut self, every: Duration) {
        self.leaf_reset = Some((every, Instant::now()));
    }

    /// Hands new processes' unwind tables to `worker`.
    pub fn set_tables(&mut self, worker: TableWorker) {
        self.tables = Some(worker);
    }

    /// Reads Go processes' goroutine labels from here on: processes
    /// snapshotted before the capture ([`Ingest::prewarm`]) are registered
    /// now, the others at their first sample (and again after an exec).
    pub fn set_go(&mut self, mut go: GoLabeling) {
        for &pid in self.prewarmed.keys() {
            go.procs.register(pid);
        }
        self.go = Some(go);
    }

    /// The Go label side, if set (for its counters).
    pub fn go(&self) -> Option<&GoLabeling> {
        self.go.as_ref()
    }

    /// Takes the table worker back (at the end of a capture).
    pub fn take_tables(&mut self) -> Option<TableWorker> {
        self.tables.take()
    }

    /// Follows only these processes' events (a `--pid` capture): the rest
    /// of the machine's forks and execs cost nothing.
    pub fn track_only(&mut self, pids: &[u32]) {
        self.table.track_only(pids);
    }

    /// Snapshots a process named on the command line before sampling
    /// starts, so one that exits early still has its binaries opened.
    /// Returns its snapshot, or `None` if it is gone.
    pub fn prewarm(&mut self, pid: u32) -> Option<&Process> {
        let ticks = crate::process::start_ticks(pid)?;
        self.prewarmed.insert(pid, ticks);
        self.table.observe(pid)
    }

    /// A process's snapshot, if it is running and was read.
    pub fn snapshot(&self, pid: u32) -> Option<&Process> {
        self.table.get(pid)
    }

    /// Counters so far.
    pub fn stats(&self) -> IngestStats {
        IngestStats {
            live: self.live.values().filter(|p| p.alive).count() as u64,
            open_binaries: self.table.binary_count() as u64,
            ..self.stats
        }
    }

    /// Identifies a sample's process and fixes up its user stack.
    /// `go`: the goroutine's labels of a Go process's record.
    pub fn ingest<'a>(&mut self, s: &'a Sample, go: Option<&GoLabels>) -> Ingested<'a> {
        self.stats.samples += 1;
        if s.flags & profiler_ebpf::abi::FLAG_USER_STACK_ERR != 0 {
            self.stats.user_stack_errors += 1;
        }
        if s.flags & profiler_ebpf::abi::FLAG_FP_TRUNCATED != 0 {
            self.stats.truncated_stacks += 1;
        }
        if let Some(w) = &mut self.tables {
            w.touch(s.pid);
        }
        let key = ProcKey {
            pid: s.pid,
            start_ns: s.start_ns,
        };
        let known = self
            .live
            .get(&s.pid)
            .map(|p| p.meta.key.start_ns == s.start_ns);
        match known {
            Some(true) => {}
            Some(false) => {
                // The pid was reused: every sample of the old process came
                // before this one in the ring, so it is done.
                self.finish(s.pid);
                self.register(key, s.comm(), s.time_ns);
            }
            None => self.register(key, s.comm(), s.time_ns),
        }
        let go = match (&mut self.go, go) {
            (Some(g), Some(labels)) => g.decoder.decode(labels),
            _ => None,
        };
        let p = self.live.get(&s.pid);
        let process = self.table.at(s.pid, s.time_ns);
        let maps_gen = process.map_or(0, |p| p.history.gen);
        let epoch = process.map_or(0, |p| p.epoch_at(s.time_ns));
        let user =
            self.leaf
                .user_stack(process, (s.pid, s.start_ns), s.user_stack(), s.user_sp_word);
        let (meta, maps_gen) = match p {
            Some(p) => (p.meta.clone(), maps_gen),
            // register() always inserts; unreachable in practice.
            None => (
                Arc::new(ProcMeta::new(
                    key,
                    0,
                    String::new(),
                    String::new(),
                    Labels::default(),
                )),
                0,
            ),
        };
        Ingested {
            meta,
            tid: s.tid,
            thread: s.comm(),
            user,
            kernel: s.kernel_stack(),
            time_ns: s.time_ns,
            weight: s.period,
            state: super::state::ThreadState::of(s),
            maps_gen,
            epoch,
            go,
        }
    }

    /// Registers the process behind a sample's first appearance.
    fn register(&mut self, key: ProcKey, thread_comm: &[u8], time_ns: u64) {
        let pid = key.pid;
        // The pidfd first: if the start time read after it is the sample's,
        // the pidfd refers to the sampled process.
        let pidfd = pidfd_open(pid);
        let ticks = crate::process::start_ticks(pid);
        let same = ticks.is_some_and(|t| self.clock.matches(t, key.start_ns));
        let pidfd = pidfd.filter(|_| same);
        let alive = match (pidfd, &mut self.exits) {
            (Some(fd), Some(exits)) => exits.watch(u64::from(pid), fd),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if alive && self.prewarmed.get(&pid).is_some_and(|&t| Some(t) != ticks) {
            // Snapshotted before the capture, but that was another process.
            self.prewarmed.remove(&pid);
            self.table.remove(pid);
        }
        // The process's life as the kernel's events told it, at the
        // sample's time; else (older than the capture) a /proc snapshot,
        // if it is still the sampled process.
        let from_events = self.table.at(pid, time_ns).is_some_and(|p| p.born_ns > 0);
        let process = if from_events {
            self.table.at(pid, time_ns)
        } else if alive {
            self.table.observe(pid)
        } else {
            None
        };
        let born_ns = process.map_or(0, |p| p.born_ns);
        let (comm, exe) = match process {
            Some(p) => (
                p.comm.clone(),
                p.exe
                    .as_ref()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            None => (
                String::from_utf8_lossy(thread_comm).into_owned(),
                String::new(),
            ),
        };
        let labels = if alive {
            self.labeler.labels_of(pid)
        } else {
            Labels::default()
        };
        if let (Some(g), true) = (&mut self.go, alive) {
            g.procs.register(pid);
        }
        if let (Some(w), Some(p), true) = (&self.tables, process, alive) {
            if self.prewarmed.remove(&pid).is_none() {
                w.load(p);
            }
        }
        self.stats.processes += 1;
        if !alive {
            self.stats.vanished += 1;
            if process.is_some() {
                self.stats.named_from_events += 1;
            }
        }
        let meta = ProcMeta::new(key, ticks.filter(|_| same).unwrap_or(0), comm, exe, labels);
        self.live.insert(
            pid,
            LiveProc {
                meta: Arc::new(meta),
                exiting: !alive,
                alive,
                born_ns,
                mappings: MappingCache::default(),
            },
        );
    }

    /// Drops a process that is done: its snapshot, its tables, its pidfd.
    /// Its stacks keep their mappings (and so its binaries).
    fn finish(&mut self, pid: u32) {
        let Some(p) = self.live.remove(&pid) else {
            return;
        };
        p.meta.mark_exited();
        self.stats.exited += 1;
        if let Some(exits) = &mut self.exits {
            exits.forget(u64::from(pid));
        }
        // Forgotten once no late sample can need it (see `prune`).
        self.table.exited(pid, p.born_ns, mono_now());
        if let Some(w) = &self.tables {
            w.remove(pid);
        }
        if let Some(g) = &mut self.go {
            g.procs.forget(pid);
        }
    }

    /// Normalizes a new stack of `key`'s process, sampled at `time_ns`
    /// (see the module docs).
    pub fn normalize(&mut self, key: ProcKey, user: &[u64], time_ns: u64) -> Normalized {
        // Address 0 is never code: a frame-pointer walk that read it went
        // past the outermost frame, even in a process we know nothing of.
        let zero = user.iter().position(|&a| a == 0);
        let user = &user[..zero.unwrap_or(user.len())];
        let mut n = self.normalize_mapped(key, user, time_ns);
        if zero.is_some() && !n.truncated {
            n.truncated = true;
            self.stats.truncated_stacks += 1;
        }
        n
    }

    fn normalize_mapped(&mut self, key: ProcKey, user: &[u64], t: u64) -> Normalized {
        let Some(p) = self.live.get_mut(&key.pid).filter(|p| p.meta.key == key) else {
            // Already finished: nothing to read the addresses against.
            return Normalized {
                maps: vec![None; user.len()].into(),
                missed: !user.is_empty(),
                truncated: false,
                maps_gen: 0,
            };
        };
        let (mut maps, mut missed) = p
            .mappings
            .normalize(key, self.table.at(key.pid, t), user, t);
        if missed && p.alive && self.table.refresh(key.pid) {
            // Mappings we were not told of (a process older than the
            // capture, lost events): read them again, and give the unwinder
            // the new ones too.
            (maps, missed) = p
                .mappings
                .normalize(key, self.table.at(key.pid, t), user, t);
            if let (Some(w), Some(now)) = (&self.tables, self.table.get(key.pid)) {
                w.load(now);
            }
        }
        // Cut at the first return address in no executable mapping when
        // the sampled PC itself was mapped: past it, a frame-pointer walk
        // through code without frame pointers read garbage. (A stack whose
        // very first address is unknown keeps its addresses: nothing says
        // they are wrong.)
        let mut truncated = false;
        if missed && maps.first().is_some_and(Option::is_some) {
            if let Some(cut) = maps.iter().position(Option::is_none) {
                truncated = true;
                self.stats.truncated_stacks += 1;
                maps = maps[..cut].to_vec().into();
                missed = false;
            }
        }
        Normalized {
            maps,
            missed,
            truncated,
            maps_gen: self.table.at(key.pid, t).map_or(0, |p| p.history.gen),
        }
    }

    /// Applies one of the kernel's process events to the process table;
    /// a running process whose mappings changed gets its unwind tables
    /// again at the next tick.
    pub fn event(&mut self, e: &ProcEvent) {
        self.table.apply(e);
        let pid = match e {
            ProcEvent::Mmap(m) => m.pid,
            ProcEvent::Comm {
                pid, exec: true, ..
            } => *pid,
            _ => return,
        };
        if let (Some(g), ProcEvent::Comm { exec: true, .. }) = (&mut self.go, e) {
            // Another program: Go with another layout, or not Go.
            if self.live.get(&pid).is_some_and(|p| p.alive) {
                g.procs.register(pid);
            }
        }
        // A target loaded before the capture may not have been sampled yet
        // (a dlopen after a sleep): it needs the new mappings' tables too.
        if self.live.get(&pid).is_some_and(|p| p.alive) || self.prewarmed.contains_key(&pid) {
            self.reload.insert(pid);
        }
    }

    /// Runs at every capture tick, right after the ring was drained: drops
    /// the processes seen exiting at the last tick, then marks those whose
    /// pidfd says they exited since; reloads changed unwind tables; forgets
    /// what no sample can need any more.
    pub fn tick(&mut self) {
        for pid in std::mem::take(&mut self.reload) {
            if let (Some(w), Some(p)) = (&self.tables, self.table.get(pid)) {
                w.load(p);
            }
        }
        self.table.prune(mono_now().saturating_sub(KEEP_NS));
        let done: Vec<u32> = self
            .live
            .iter()
            .filter(|(_, p)| p.exiting)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in done {
            self.finish(pid);
        }
        // As the process table: a burst must not leave its capacity behind.
        if self.live.capacity() > 4 * self.live.len() + 64 {
            self.live.shrink_to(2 * self.live.len());
        }
        let exited = self
            .exits
            .as_mut()
            .map(ExitSet::take_exited)
            .unwrap_or_default();
        for token in exited {
            let Ok(pid) = u32::try_from(token) else {
                continue;
            };
            if let Some(p) = self.live.get_mut(&pid) {
                p.exiting = true;
            }
        }
        if let Some((every, since)) = self.leaf_reset {
            if since.elapsed() >= every {
                self.leaf = LeafFixer::new();
                self.leaf_reset = Some((every, Instant::now()));
            }
        }
    }

    /// Whether a process is running (for `--pid` targets).
    pub fn is_running(&self, pid: u32) -> bool {
        self.live.get(&pid).is_some_and(|p| p.alive && !p.exiting)
    }

    /// The binaries that no process and no stack has needed for a while,
    /// taken out of the table. The caller drops them once nothing that
    /// knows them by their `/proc/self/fd/N` path (the symbolizer) can be
    /// confused by the fd number's next owner.
    pub fn prune_binaries(&mut self) -> Vec<Arc<Binary>> {
        let now = Instant::now();
        let mut unused = HashMap::new();
        let since = &self.unused_since;
        let closed = self.table.prune_binaries(|k| {
            let t = *since.get(k).unwrap_or(&now);
            unused.insert(*k, t);
            now.duration_since(t) < LINGER
        });
        for b in &closed {
            unused.remove(&b.key);
        }
        // Binaries in use again drop out of the map here.
        self.unused_since = unused;
        closed
    }
}

impl ProcMeta {
    /// Marks the process as exited (the index page shows it apart).
    pub(crate) fn mark_exited(&self) {
        self.exited.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, start_ns: u64, user: &[u64]) -> Sample {
        let mut s = crate::capture::test_sample(pid, pid, 0, user, "test");
        s.start_ns = start_ns;
        s
    }

    /// Our own start time as the BPF program would report it.
    fn own_start_ns() -> u64 {
        let clock = StartClock::now();
        let ticks = crate::process::start_ticks(std::process::id()).unwrap();
        let ns = ticks as i128 * clock.tick_ns as i128 - clock.boot_minus_mono_ns;
        ns as u64
    }

    #[test]
    fn a_sample_registers_its_process_once() {
        let me = std::process::id();
        let start = own_start_ns();
        let mut ing = Ingest::new(Box::new(CgroupLabeler));
        let a = ing.ingest(&sample(me, start, &[0x10]), None).meta;
        let b = ing.ingest(&sample(me, start, &[0x20]), None).meta;
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.start_ticks > 0, "matched against /proc");
        assert!(!a.comm.is_empty());
        assert_eq!(ing.stats().processes, 1);
        assert_eq!(ing.stats().vanished, 0);
    }

    #[test]
    fn another_start_time_is_another_process() {
        let me = std::process::id();
        let start = own_start_ns();
        let mut ing = Ingest::new(Box::new(CgroupLabeler));
        let a = ing.ingest(&sample(me, start, &[0x10]), None).meta;
        let b = ing
            .ingest(&sample(me, start + 10_000_000_000, &[0x10]), None)
            .meta;
        assert_ne!(a.key, b.key);
        assert!(a.exited(), "the old process is finished");
        assert_eq!(b.start_ticks, 0, "/proc shows another process than sampled");
        assert_eq!(ing.stats().processes, 2);
    }

    #[inline(never)]
    fn marker() -> u64 {
        marker as *const () as u64
    }

    #[test]
    fn stacks_are_cut_at_the_first_address_in_no_mapping() {
        let me = std::process::id();
        let start = own_start_ns();
        let mut ing = Ingest::new(Box::new(CgroupLabeler));
        let here = marker();
        let s = sample(me, start, &[here, here, 0x8, here]);
        let key = ing.ingest(&s, None).meta.key;
        let n = ing.normalize(key, &[here, here, 0x8, here], 0);
        assert_eq!(n.maps.len(), 2, "cut at 0x8");
        assert!(n.truncated && !n.missed);
        assert!(n.maps.iter().all(Option::is_some));
        assert_eq!(ing.stats().truncated_stacks, 1);
        let whole = ing.normalize(key, &[here], 0);
        assert!(!whole.truncated && !whole.missed);
    }

    #[test]
    fn address_zero_is_never_a_frame_even_of_an_unknown_process() {
        let mut ing = Ingest::new(Box::new(CgroupLabeler));
        // A pid that does not exist: nothing is known of its mappings.
        let key = ing
            .ingest(&sample(u32::MAX - 7, 5, &[0x10, 0x20, 0, 0x30]), None)
            .meta
            .key;
        let n = ing.normalize(key, &[0x10, 0x20, 0, 0x30], 0);
        assert_eq!(n.maps.len(), 2);
        assert!(n.truncated && n.missed);
    }

    #[test]
    fn exit_is_noticed_at_one_tick_and_finished_at_the_next() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(20));
        let clock = StartClock::now();
        let ticks = crate::process::start_ticks(pid).unwrap();
        let start = (ticks as i128 * clock.tick_ns as i128 - clock.boot_minus_mono_ns) as u64;
        let mut ing = Ingest::new(Box::new(CgroupLabeler));
        let meta = ing.ingest(&sample(pid, start, &[0x10]), None).meta;
        assert!(ing.is_running(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        ing.tick();
        assert!(!ing.is_running(pid), "exiting");
        assert!(!meta.exited(), "not finished before the next drain");
        // A late sample still finds its process.
        let late = ing.ingest(&sample(pid, start, &[0x20]), None).meta;
        assert!(Arc::ptr_eq(&meta, &late));
        ing.tick();
        assert!(meta.exited());
        assert_eq!(ing.stats().live, 0);
    }
}
