//! The rolling window: every sample of the last `--retain` seconds, by
//! process, with the process state needed to name their frames.
//!
//! Samples are kept as 16-byte events (time, stack, weight) pointing at
//! interned stacks, so a time range can be cut exactly (an HTTP request's
//! `seconds`, a push window) while identical stacks are stored once. Stacks
//! are reference-counted by the events that use them and freed with the
//! last one; processes are freed with their last stack. Memory therefore
//! follows the retention, not the number of processes that ever ran, and a
//! memory cap evicts the oldest samples early if it is reached.
//!
//! A process is identified by (pid, start time): each one gets its own
//! [`ProcId`], and a pidfd tells us, without polling `/proc`, when it exits.
//! The pid then maps to nothing until a new sample brings the next process
//! with that pid, so a reused pid never mixes two processes. An exited
//! process's maps snapshot moves out of the [`ProcessTable`] into its state
//! here until the janitor has symbolized its stacks (see
//! [`Window::take_exited`]); only then are its binaries released.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use profiler_ebpf::abi::Sample;

use super::kubeapi::Missing;
use super::labels::{Kubelet, Labels, Miss};
use super::metrics::Counters;
use super::resolve::{PendingLoc, ResolvedLoc};
use crate::capture::CaptureStats;
use crate::process::exits::{pidfd_open, readable};
use crate::process::{BinaryKey, Process, ProcessTable};
use crate::unwind::chain_end::user_frames;
use crate::unwind::leaf::LeafFixer;

/// One process lifetime, unique for the agent's lifetime.
pub type ProcId = u32;

/// What never changes about a process once seen, but for labels the API
/// server's pod list fills in later (then the whole meta is replaced).
#[derive(Clone, Debug)]
pub struct ProcMeta {
    pub id: ProcId,
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22);
    /// 0 when the process was gone before we could read it.
    pub start_ticks: u64,
    /// Start time as the BPF program reads it (`task->start_time` of the
    /// main thread, CLOCK_MONOTONIC ns): what each sample carries, so a
    /// reused pid is told apart at its first sample.
    pub start_ns: u64,
    /// Process name (`/proc/PID/comm`, else the sampled thread's name).
    pub comm: String,
    /// Executable path as the process sees it; empty if unknown.
    pub exe: String,
    pub labels: Labels,
}

impl ProcMeta {
    /// The executable's file name, else the comm.
    pub fn exe_name(&self) -> &str {
        match self.exe.rsplit('/').next() {
            Some(n) if !n.is_empty() => n,
            _ => &self.comm,
        }
    }
}

/// Where a process is in its life.
enum Life {
    /// Running; the pidfd becomes readable when it exits.
    Live(OwnedFd),
    /// Exited; its maps snapshot (if we had one) waits for the janitor to
    /// symbolize its stacks.
    Exited(Option<Process>),
    /// Exited and symbolized: nothing left but its stacks' resolutions.
    Gone,
}

struct ProcState {
    meta: Arc<ProcMeta>,
    life: Life,
    /// Stacks that belong to this process.
    stacks: u32,
}

/// One distinct stack of one thread of one process.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub proc: ProcId,
    pub tid: u32,
    /// User frames, innermost first, after the frameless-leaf fix-up.
    pub user: Box<[u64]>,
    /// Kernel frames, innermost first.
    pub kernel: Box<[u64]>,
}

struct StackEntry {
    key: Arc<StackKey>,
    /// The thread's name when the stack was first seen. Kept per stack
    /// (stacks are per thread) so that it goes with the stack: a process
    /// churning through threads does not accumulate names.
    thread: Arc<str>,
    /// Events that point here.
    refs: u32,
    /// Its user frames, mapped and named; filled on first use or when its
    /// process exits, whichever comes first.
    resolved: Option<Arc<[ResolvedLoc]>>,
}

/// One sample: 16 bytes.
#[derive(Clone, Copy)]
struct Event {
    /// CLOCK_MONOTONIC ns, as `bpf_ktime_get_ns` reports it.
    time_ns: u64,
    stack: u32,
    /// The event's period (ns of CPU for cpu-clock), saturated.
    weight: u32,
}

/// Which processes a profile covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    /// One process: pid and start time, so a reused pid is not included.
    Pid {
        pid: u32,
        start_ticks: u64,
    },
    /// Every process of a container, by a prefix of its ID (12+ hex digits).
    Container(String),
    /// Every process of a pod.
    Pod {
        namespace: String,
        name: String,
    },
}

impl Filter {
    pub fn matches(&self, m: &ProcMeta) -> bool {
        match self {
            Filter::All => true,
            Filter::Pid { pid, start_ticks } => m.pid == *pid && m.start_ticks == *start_ticks,
            Filter::Container(prefix) => {
                !m.labels.container_id.is_empty() && m.labels.container_id.starts_with(prefix)
            }
            Filter::Pod { namespace, name } => {
                m.labels.namespace == *namespace && m.labels.pod == *name
            }
        }
    }
}

/// A stack selected for a profile, with its counts over the range.
pub struct SelStack {
    pub id: u32,
    pub key: Arc<StackKey>,
    pub samples: u64,
    pub weight: u64,
    pub thread: Arc<str>,
    /// Resolved frames, or what is needed to resolve them.
    pub locs: Locs,
}

/// A stack's user frames, resolved or not yet.
pub enum Locs {
    Ready(Arc<[ResolvedLoc]>),
    Pending(Vec<PendingLoc>),
}

/// Everything a profile of one time range needs, taken out of the window
/// so that symbolization and encoding run without blocking the capture.
pub struct Selection {
    pub stacks: Vec<SelStack>,
    pub procs: HashMap<ProcId, Arc<ProcMeta>>,
}

/// An exited process handed to the janitor: its snapshot and the stacks
/// still to symbolize.
pub struct Exited {
    pub proc: ProcId,
    pub process: Option<Process>,
    pub stacks: Vec<(u32, Arc<StackKey>)>,
}

/// A row of the index page.
pub struct ProcRow {
    pub meta: Arc<ProcMeta>,
    pub live: bool,
    pub samples_per_sec: f64,
}

/// Estimated bytes of bookkeeping per stack (entry, key, index slot) on
/// top of its frames, and per process.
const STACK_BYTES: usize = 200;
const PROC_BYTES: usize = 640;
const LOC_BYTES: usize = std::mem::size_of::<ResolvedLoc>();
/// How long a binary no process maps stays open.
const LINGER: Duration = Duration::from_secs(60);
/// How often the frameless-leaf verdicts are forgotten: they are keyed by
/// pid and would otherwise grow with every process that ever ran.
const LEAF_RESET: Duration = Duration::from_secs(60);
/// Samples can reach the ring buffer slightly after the instant a drain
/// starts; a range is complete once the drain is this much past its end.
const DRAIN_SLACK_NS: u64 = 5_000_000;

/// The rolling window and the process state behind it.
pub struct Window {
    table: ProcessTable,
    leaf: LeafFixer,
    leaf_reset: Instant,
    kube: Kubelet,
    procs: HashMap<ProcId, ProcState>,
    by_pid: HashMap<u32, ProcId>,
    /// Pids whose process was gone at first sight: unmapped at the next
    /// tick, so that their other samples in this drain join them.
    vanished: Vec<u32>,
    next_id: ProcId,
    stacks: Vec<Option<StackEntry>>,
    free: Vec<u32>,
    index: HashMap<Arc<StackKey>, u32>,
    events: VecDeque<Event>,
    stack_bytes: usize,
    retain_ns: u64,
    cap_bytes: usize,
    pins: HashMap<u64, u64>,
    next_pin: u64,
    exited_pending: usize,
    /// When each binary that no process maps was first found unused.
    unused_since: HashMap<BinaryKey, Instant>,
    /// Every sample may still be asked for (push or files are on): exited
    /// processes are always symbolized. Otherwise only requests in flight
    /// can still cover them.
    keep_all: bool,
    counters: Arc<Counters>,
    /// The capture's counters at the last tick.
    pub capture: CaptureStats,
}

impl Window {
    pub fn new(
        retain: Duration,
        cap_bytes: usize,
        kube: Kubelet,
        keep_all: bool,
        counters: Arc<Counters>,
    ) -> Self {
        Window {
            table: ProcessTable::new(),
            leaf: LeafFixer::new(),
            leaf_reset: Instant::now(),
            kube,
            procs: HashMap::new(),
            by_pid: HashMap::new(),
            vanished: Vec::new(),
            next_id: 1,
            stacks: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            events: VecDeque::new(),
            stack_bytes: 0,
            retain_ns: retain.as_nanos() as u64,
            cap_bytes,
            pins: HashMap::new(),
            next_pin: 1,
            exited_pending: 0,
            unused_since: HashMap::new(),
            keep_all,
            counters,
            capture: CaptureStats::default(),
        }
    }

    /// Folds one sample in. Called from the capture loop: cheap except on a
    /// process's first sample, which snapshots it from `/proc`.
    pub fn add(&mut self, s: &Sample) {
        let id = self.proc_for(s);
        let live = self
            .procs
            .get(&id)
            .is_some_and(|p| matches!(p.life, Life::Live(_)));
        let user = if live {
            self.leaf
                .user_stack(&mut self.table, s.pid, user_frames(s), s.user_sp_word)
        } else {
            std::borrow::Cow::Borrowed(user_frames(s))
        };
        let key = StackKey {
            proc: id,
            tid: s.tid,
            user: user.as_ref().into(),
            kernel: s.kernel_stack().into(),
        };
        let sid = match self.index.get(&key) {
            Some(&sid) => sid,
            None => {
                if live {
                    // New addresses: check them against the maps while the
                    // process is alive (a dlopen or exec re-reads them).
                    crate::normalize::check_stack(&mut self.table, s.pid, &key.user);
                }
                self.intern(key, String::from_utf8_lossy(s.comm()).into())
            }
        };
        if let Some(Some(e)) = self.stacks.get_mut(sid as usize) {
            e.refs += 1;
        }
        self.events.push_back(Event {
            time_ns: s.time_ns,
            stack: sid,
            weight: u32::try_from(s.period).unwrap_or(u32::MAX),
        });
    }

    /// The process a sample belongs to, registering it on first sight.
    fn proc_for(&mut self, s: &Sample) -> ProcId {
        if let Some(&id) = self.by_pid.get(&s.pid) {
            let Some(p) = self.procs.get(&id) else {
                return id;
            };
            if p.meta.start_ns == s.start_ns {
                return id;
            }
            // Another start time under this pid: the pid was reused before
            // the old process's pidfd was polled. Retire the old one now,
            // so the new one gets its own state.
            if matches!(p.life, Life::Live(_)) {
                self.mark_exited(id);
            }
            self.by_pid.remove(&s.pid);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        // The pidfd first: if the start time read after it matches the
        // process it refers to, we hold the right process.
        let pidfd = pidfd_open(s.pid);
        let start = start_ticks(s.pid);
        let (comm, exe) = match self.table.observe(s.pid) {
            Some(p) => (
                p.comm.clone(),
                p.exe
                    .as_ref()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            None => (
                String::from_utf8_lossy(s.comm()).into_owned(),
                String::new(),
            ),
        };
        let labels = self.kube.labels_of(s.pid);
        let life = match (pidfd, start) {
            (Some(fd), Some(_)) => Life::Live(fd),
            _ => {
                self.vanished.push(s.pid);
                self.exited_pending += 1;
                Life::Exited(self.table.remove(s.pid))
            }
        };
        let meta = ProcMeta {
            id,
            pid: s.pid,
            start_ticks: start.unwrap_or(0),
            start_ns: s.start_ns,
            comm,
            exe,
            labels,
        };
        self.procs.insert(
            id,
            ProcState {
                meta: Arc::new(meta),
                life,
                stacks: 0,
            },
        );
        self.by_pid.insert(s.pid, id);
        Counters::inc(&self.counters.processes_seen);
        id
    }

    fn intern(&mut self, key: StackKey, thread: Arc<str>) -> u32 {
        self.stack_bytes += STACK_BYTES + 8 * (key.user.len() + key.kernel.len());
        if let Some(p) = self.procs.get_mut(&key.proc) {
            p.stacks += 1;
        }
        let key = Arc::new(key);
        let entry = StackEntry {
            key: key.clone(),
            thread,
            refs: 0,
            resolved: None,
        };
        let sid = match self.free.pop() {
            Some(sid) => {
                self.stacks[sid as usize] = Some(entry);
                sid
            }
            None => {
                self.stacks.push(Some(entry));
                (self.stacks.len() - 1) as u32
            }
        };
        self.index.insert(key, sid);
        sid
    }

    /// Runs a few times a second from the capture loop, right after a
    /// drain: notices exited processes, expires old samples, enforces the
    /// memory cap.
    pub fn tick(&mut self, stats: &CaptureStats) {
        self.capture = *stats;
        self.reap();
        for pid in std::mem::take(&mut self.vanished) {
            if let Some(&id) = self.by_pid.get(&pid) {
                if self
                    .procs
                    .get(&id)
                    .is_some_and(|p| !matches!(p.life, Life::Live(_)))
                {
                    self.by_pid.remove(&pid);
                }
            }
        }
        self.expire();
        if self.leaf_reset.elapsed() >= LEAF_RESET {
            self.leaf = LeafFixer::new();
            self.leaf_reset = Instant::now();
        }
    }

    /// Moves every process whose pidfd says it exited out of the process
    /// table, so its pid is free for the next process.
    fn reap(&mut self) {
        let (ids, fds): (Vec<ProcId>, Vec<RawFd>) = self
            .procs
            .iter()
            .filter_map(|(&id, p)| match &p.life {
                Life::Live(fd) => Some((id, fd.as_raw_fd())),
                _ => None,
            })
            .unzip();
        for (id, gone) in ids.into_iter().zip(readable(&fds)) {
            if gone {
                self.mark_exited(id);
            }
        }
    }

    fn mark_exited(&mut self, id: ProcId) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let pid = p.meta.pid;
        p.life = Life::Exited(self.table.remove(pid));
        self.exited_pending += 1;
        if self.by_pid.get(&pid) == Some(&id) {
            self.by_pid.remove(&pid);
        }
    }

    /// Drops samples older than the retention (or than the oldest pinned
    /// range), then the oldest ones while over the memory cap.
    fn expire(&mut self) {
        let mut cutoff = mono_now().saturating_sub(self.retain_ns);
        if let Some(&oldest) = self.pins.values().min() {
            cutoff = cutoff.min(oldest);
        }
        while self.events.front().is_some_and(|e| e.time_ns < cutoff) {
            if let Some(e) = self.events.pop_front() {
                self.release(e.stack);
            }
        }
        while self.bytes() > self.cap_bytes {
            let Some(e) = self.events.pop_front() else {
                break;
            };
            self.release(e.stack);
            Counters::inc(&self.counters.window_capped_samples);
        }
    }

    /// One event fewer for stack `sid`: frees the stack with its last
    /// event, and its process with its last stack.
    fn release(&mut self, sid: u32) {
        let Some(Some(e)) = self.stacks.get_mut(sid as usize) else {
            return;
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return;
        }
        let Some(e) = self.stacks[sid as usize].take() else {
            return;
        };
        self.free.push(sid);
        self.index.remove(&e.key);
        self.stack_bytes = self.stack_bytes.saturating_sub(
            STACK_BYTES
                + 8 * (e.key.user.len() + e.key.kernel.len())
                + e.resolved.as_ref().map_or(0, |r| r.len() * LOC_BYTES),
        );
        let pid_proc = e.key.proc;
        let Some(p) = self.procs.get_mut(&pid_proc) else {
            return;
        };
        p.stacks = p.stacks.saturating_sub(1);
        if p.stacks > 0 {
            return;
        }
        // No samples left: forget the process. A live one is simply
        // registered again (same pid and start time) if sampled later.
        if let Some(p) = self.procs.remove(&pid_proc) {
            match p.life {
                Life::Live(_) => {
                    self.table.remove(p.meta.pid);
                    if self.by_pid.get(&p.meta.pid) == Some(&pid_proc) {
                        self.by_pid.remove(&p.meta.pid);
                    }
                }
                Life::Exited(_) => self.exited_pending = self.exited_pending.saturating_sub(1),
                Life::Gone => {}
            }
        }
    }

    /// Estimated memory held by the window.
    pub fn bytes(&self) -> usize {
        self.events.len() * std::mem::size_of::<Event>()
            + self.stack_bytes
            + self.procs.len() * PROC_BYTES
    }

    /// Keeps samples from `t0` on past the retention until [`Window::unpin`]:
    /// a 300 s request must not lose its start to a 120 s retention.
    pub fn pin(&mut self, t0: u64) -> u64 {
        let id = self.next_pin;
        self.next_pin += 1;
        self.pins.insert(id, t0);
        id
    }

    pub fn unpin(&mut self, id: u64) {
        self.pins.remove(&id);
    }

    /// The stacks of processes matching `filter` with samples in
    /// `[t0, t1)` (monotonic ns), with their counts.
    pub fn select(&self, filter: &Filter, t0: u64, t1: u64) -> Selection {
        let mut wanted: HashMap<ProcId, bool> = HashMap::new();
        let mut counts: HashMap<u32, (u64, u64)> = HashMap::new();
        for e in &self.events {
            if e.time_ns < t0 || e.time_ns >= t1 {
                continue;
            }
            let Some(Some(st)) = self.stacks.get(e.stack as usize) else {
                continue;
            };
            let ok = *wanted.entry(st.key.proc).or_insert_with(|| {
                self.procs
                    .get(&st.key.proc)
                    .is_some_and(|p| filter.matches(&p.meta))
            });
            if ok {
                let c = counts.entry(e.stack).or_default();
                c.0 += 1;
                c.1 += u64::from(e.weight);
            }
        }
        let mut sel = Selection {
            stacks: Vec::with_capacity(counts.len()),
            procs: HashMap::new(),
        };
        for (sid, (samples, weight)) in counts {
            let Some(Some(st)) = self.stacks.get(sid as usize) else {
                continue;
            };
            let Some(p) = self.procs.get(&st.key.proc) else {
                continue;
            };
            sel.procs.entry(p.meta.id).or_insert_with(|| p.meta.clone());
            let locs = match &st.resolved {
                Some(r) => Locs::Ready(r.clone()),
                None => {
                    let process = match &p.life {
                        Life::Live(_) => self.table.get(p.meta.pid),
                        Life::Exited(proc_) => proc_.as_ref(),
                        Life::Gone => None,
                    };
                    Locs::Pending(PendingLoc::for_stack(process, &st.key.user))
                }
            };
            sel.stacks.push(SelStack {
                id: sid,
                key: st.key.clone(),
                samples,
                weight,
                thread: st.thread.clone(),
                locs,
            });
        }
        sel
    }

    /// Stores resolutions made outside the lock, unless the stack was freed
    /// (and its slot reused) meanwhile.
    pub fn store(&mut self, resolved: Vec<(u32, Arc<StackKey>, Arc<[ResolvedLoc]>)>) {
        for (sid, key, locs) in resolved {
            if let Some(Some(e)) = self.stacks.get_mut(sid as usize) {
                if Arc::ptr_eq(&e.key, &key) && e.resolved.is_none() {
                    self.stack_bytes += locs.len() * LOC_BYTES;
                    e.resolved = Some(locs);
                }
            }
        }
    }

    /// Hands the exited processes to the janitor, which symbolizes their
    /// unresolved stacks and then drops their snapshots (and with them the
    /// last references to their binaries).
    ///
    /// When nothing can ask for their samples any more, the stacks are not
    /// handed over: without push or files, only a request already waiting
    /// can cover the past (a new one starts now), so with none waiting the
    /// snapshots are simply dropped. That keeps the cost of process churn
    /// near zero for a pull-only agent.
    pub fn take_exited(&mut self) -> Vec<Exited> {
        if self.exited_pending == 0 {
            return Vec::new();
        }
        self.exited_pending = 0;
        let needed = self.keep_all || !self.pins.is_empty();
        let mut out: HashMap<ProcId, Exited> = HashMap::new();
        for (&id, p) in self.procs.iter_mut() {
            if let Life::Exited(_) = p.life {
                let Life::Exited(process) = std::mem::replace(&mut p.life, Life::Gone) else {
                    continue;
                };
                Counters::inc(&self.counters.processes_exited);
                out.insert(
                    id,
                    Exited {
                        proc: id,
                        process,
                        stacks: Vec::new(),
                    },
                );
            }
        }
        for (sid, e) in self.stacks.iter().enumerate() {
            if let Some(e) = e.as_ref().filter(|_| needed) {
                if e.resolved.is_none() {
                    if let Some(x) = out.get_mut(&e.key.proc) {
                        x.stacks.push((sid as u32, e.key.clone()));
                    }
                }
            }
        }
        out.into_values().collect()
    }

    /// Closes binaries no process has needed for [`LINGER`]; see
    /// [`ProcessTable::prune_binaries`]. The delay keeps the binaries of
    /// programs that run again and again (a shell, a compiler) open, and
    /// with them what the symbolizer knows about them.
    pub fn prune_binaries(&mut self) -> Vec<BinaryKey> {
        let now = Instant::now();
        let mut unused = HashMap::new();
        let since = &self.unused_since;
        let closed = self.table.prune_binaries(|k| {
            let t = *since.get(k).unwrap_or(&now);
            unused.insert(*k, t);
            now.duration_since(t) < LINGER
        });
        for k in &closed {
            unused.remove(k);
        }
        // Binaries in use again drop out of the map here.
        self.unused_since = unused;
        closed
    }

    /// Whether some process of the window runs in a container whose ID
    /// starts with `prefix`.
    pub fn has_container(&self, prefix: &str) -> bool {
        self.procs
            .values()
            .any(|p| Filter::Container(prefix.to_owned()).matches(&p.meta))
    }

    /// After a new pod list from the API server: gives the processes whose
    /// labels were incomplete what the list says (their samples, old and
    /// new, are labelled from then on, since profiles read the meta when
    /// they are cut), and counts those still incomplete.
    pub fn relabel(&mut self) -> Missing {
        let mut missing = Missing::default();
        for p in self.procs.values_mut() {
            if !p.meta.labels.incomplete() {
                continue;
            }
            let (labels, miss) = self.kube.relabel(&p.meta.labels);
            match miss {
                Miss::None => {}
                Miss::Unknown => missing.unknown += 1,
                Miss::Starting => missing.starting += 1,
            }
            if labels != p.meta.labels {
                let mut m = (*p.meta).clone();
                m.labels = labels;
                p.meta = Arc::new(m);
            }
        }
        missing
    }

    /// The UID of pod `namespace/name` if it is known here or on disk.
    pub fn find_pod(&mut self, namespace: &str, name: &str) -> Option<String> {
        let known = self
            .procs
            .values()
            .find(|p| p.meta.labels.namespace == namespace && p.meta.labels.pod == name)
            .map(|p| p.meta.labels.pod_uid.clone());
        known.or_else(|| self.kube.pod_uid(namespace, name))
    }

    /// The processes of the window with their sample rate over the last
    /// `over`, busiest first.
    pub fn rows(&self, over: Duration) -> Vec<ProcRow> {
        let since = mono_now().saturating_sub(over.as_nanos() as u64);
        let mut per: HashMap<ProcId, u64> = HashMap::new();
        for e in self.events.iter().rev() {
            if e.time_ns < since {
                break;
            }
            if let Some(Some(st)) = self.stacks.get(e.stack as usize) {
                *per.entry(st.key.proc).or_default() += 1;
            }
        }
        let mut rows: Vec<ProcRow> = self
            .procs
            .values()
            .map(|p| ProcRow {
                meta: p.meta.clone(),
                live: matches!(p.life, Life::Live(_)),
                samples_per_sec: *per.get(&p.meta.id).unwrap_or(&0) as f64 / over.as_secs_f64(),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.samples_per_sec
                .total_cmp(&a.samples_per_sec)
                .then(a.meta.pid.cmp(&b.meta.pid))
        });
        rows
    }

    /// Counts for `/metrics`: (running processes, processes, samples,
    /// stacks, open binaries).
    pub fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        let live = self
            .procs
            .values()
            .filter(|p| matches!(p.life, Life::Live(_)))
            .count();
        (
            live,
            self.procs.len(),
            self.events.len(),
            self.index.len(),
            self.table.binary_count(),
        )
    }

    /// Monotonic time up to which every sample has been read: the capture
    /// loop calls [`Window::tick`] right after draining.
    pub fn drained_through(now: u64) -> u64 {
        now.saturating_sub(DRAIN_SLACK_NS)
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn mono_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock ns since the epoch of a monotonic instant.
pub fn mono_to_unix_ns(mono: u64) -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    unix - (mono_now() as i64 - mono as i64)
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22): with the pid, what identifies it across pid reuse.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, time_ns: u64, user: &[u64]) -> Sample {
        crate::capture::test_sample(pid, pid, time_ns, user, "test")
    }

    fn window(retain: Duration, cap: usize) -> Window {
        let dir = std::env::temp_dir();
        Window::new(
            retain,
            cap,
            Kubelet::new(dir.clone(), dir),
            true,
            Arc::new(Counters::default()),
        )
    }

    #[test]
    fn ranges_are_exact_and_stacks_shared() {
        let me = std::process::id();
        let mut w = window(Duration::from_secs(3600), usize::MAX);
        let now = mono_now();
        for i in 0..10 {
            w.add(&sample(me, now + i * 1000, &[0x10, 0x20]));
        }
        w.add(&sample(me, now + 20_000, &[0x30]));
        assert_eq!(w.sizes().2, 11);
        assert_eq!(w.sizes().3, 2, "identical stacks are interned once");
        let start = start_ticks(me).unwrap();
        let f = Filter::Pid {
            pid: me,
            start_ticks: start,
        };
        let sel = w.select(&f, now + 2000, now + 5000);
        assert_eq!(sel.stacks.len(), 1);
        assert_eq!(sel.stacks[0].samples, 3);
        assert_eq!(sel.stacks[0].weight, 30_000_000);
        let other = Filter::Pid {
            pid: me,
            start_ticks: start + 1,
        };
        assert!(
            w.select(&other, 0, u64::MAX).stacks.is_empty(),
            "another start time is another process"
        );
    }

    #[test]
    fn a_new_start_time_under_a_known_pid_is_a_new_process() {
        let me = std::process::id();
        let mut w = window(Duration::from_secs(3600), usize::MAX);
        let now = mono_now();
        w.add(&sample(me, now, &[0x10]));
        let first = w.by_pid[&me];
        let mut reused = sample(me, now + 1, &[0x10]);
        reused.start_ns = 2;
        w.add(&reused);
        let second = w.by_pid[&me];
        assert_ne!(first, second, "the reused pid got its own process");
        assert!(matches!(w.procs[&first].life, Life::Exited(_)));
        assert_eq!(w.procs[&second].meta.start_ns, 2);
        assert_eq!(
            w.sizes().3,
            2,
            "the same stack of two processes is two stacks"
        );
    }

    #[test]
    fn retention_and_cap_free_stacks_and_processes() {
        let me = std::process::id();
        let mut w = window(Duration::from_millis(1), usize::MAX);
        let old = mono_now() - 10_000_000_000;
        w.add(&sample(me, old, &[0x10]));
        w.add(&sample(me, old + 1, &[0x20]));
        w.tick(&CaptureStats::default());
        assert_eq!(w.sizes(), (0, 0, 0, 0, w.sizes().4));
        assert!(w.by_pid.is_empty());

        let mut w = window(Duration::from_secs(3600), 4096);
        let now = mono_now();
        for i in 0..1000u64 {
            w.add(&sample(me, now + i, &[0x1000 + i]));
        }
        w.tick(&CaptureStats::default());
        assert!(w.bytes() <= 4096, "{} bytes", w.bytes());
        assert!(w.sizes().2 < 1000);
        assert!(
            w.counters
                .window_capped_samples
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
        );
    }

    #[test]
    fn pins_hold_samples_past_retention() {
        let me = std::process::id();
        let mut w = window(Duration::from_millis(1), usize::MAX);
        let old = mono_now() - 5_000_000_000;
        let pin = w.pin(old);
        w.add(&sample(me, old, &[0x10]));
        w.tick(&CaptureStats::default());
        assert_eq!(w.sizes().2, 1);
        w.unpin(pin);
        w.tick(&CaptureStats::default());
        assert_eq!(w.sizes().2, 0);
    }

    #[test]
    fn exited_process_is_handed_over_and_pid_freed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut w = window(Duration::from_secs(3600), usize::MAX);
        w.add(&sample(pid, mono_now(), &[0x10]));
        assert_eq!(w.sizes().0, 1);
        child.kill().unwrap();
        child.wait().unwrap();
        w.tick(&CaptureStats::default());
        assert_eq!(w.sizes().0, 0, "no longer running");
        assert!(!w.by_pid.contains_key(&pid));
        let x = w.take_exited();
        assert_eq!(x.len(), 1);
        assert!(x[0].process.is_some(), "its snapshot moves to the janitor");
        assert_eq!(x[0].stacks.len(), 1);
        assert!(w.take_exited().is_empty());
        // A new sample with the same pid is a new process.
        w.add(&sample(pid, mono_now(), &[0x10]));
        assert_eq!(w.sizes().1, 2);
    }

    #[test]
    fn pull_only_symbolizes_exits_only_for_waiting_requests() {
        for pinned in [false, true] {
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let pid = child.id();
            let dir = std::env::temp_dir();
            let mut w = Window::new(
                Duration::from_secs(3600),
                usize::MAX,
                Kubelet::new(dir.clone(), dir),
                false,
                Arc::new(Counters::default()),
            );
            if pinned {
                w.pin(mono_now());
            }
            w.add(&sample(pid, mono_now(), &[0x10]));
            child.kill().unwrap();
            child.wait().unwrap();
            w.tick(&CaptureStats::default());
            let x = w.take_exited();
            assert_eq!(x.len(), 1);
            assert_eq!(x[0].stacks.len(), usize::from(pinned), "pinned: {pinned}");
        }
    }
}
