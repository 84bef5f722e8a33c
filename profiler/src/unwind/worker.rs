//! Building, loading and evicting unwind tables off the sample loop.
//!
//! Compiling a table costs about 0.2 ms per 1,000 rows on an idle machine;
//! a big library (LLVM's, the Rust compiler's) has over a million. Done in
//! the sample loop, that stalls draining the ring buffer, and samples of
//! every CPU are lost meanwhile. So two threads do it:
//!
//! - the *placer* owns the [`Unwinder`] and does everything but compiling:
//!   a new process gets its mapping list at once, with the tables already
//!   in the array (the next `clang` of a build finds libLLVM's there), and
//!   frame pointers for the rest; evictions and exits are handled here too.
//!   Nothing it does takes long, so a new process never waits behind a
//!   big compile.
//! - the *builder* compiles one table at a time, chosen by the placer:
//!   first for the process sampled most since it asked (a busy compiler
//!   before an idle daemon), and never for a process that exited before
//!   its turn. Each table goes into the array as it is done, and every
//!   process mapping it is pointed at it.
//!
//! The handle, [`TableWorker`], is what the sample loop holds. Its calls
//! only queue messages, never wait for the threads:
//!
//! - [`TableWorker::load`]: a process was seen (or its maps changed);
//! - [`TableWorker::remove`]: a process exited: it leaves the kernel's map,
//!   and its tables lose a user;
//! - [`TableWorker::touch`]: a process was sampled: its tables were used
//!   (for eviction) and its pending tables are wanted sooner (batched:
//!   a message every 50 ms at most);
//! - [`TableWorker::stats`]: how full the budget is, as of the last
//!   message the placer handled (for a summary line or `/metrics`);
//! - [`TableWorker::finish`]: stop, and the final counters.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use profiler_ebpf::abi::UnwindRow;

use super::heat::Heat;
use super::loader::{TableMap, TableRequest, UnwindStats, Unwinder};
use crate::process::{BinaryKey, Process};

/// How often sampled processes are reported to the placer, at most.
const TOUCH_INTERVAL: Duration = Duration::from_millis(50);

enum Job {
    Load(TableRequest),
    Remove(u32),
    /// Samples per process since the last touch.
    Touch(Vec<(u32, u32)>),
    /// A table the builder compiled.
    Built {
        key: BinaryKey,
        name: String,
        text_bytes: u64,
        rows: Vec<UnwindRow>,
        took: Duration,
    },
    Stop,
}

/// The threads owning the [`Unwinder`], and the way to send them work.
pub struct TableWorker {
    tx: Sender<Job>,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<Unwinder>,
    /// The placer's counters after its last message.
    published: Arc<Mutex<UnwindStats>>,
    /// Samples per process since the last touch message.
    touched: HashMap<u32, u32>,
    touch_calls: u32,
    touch_sent: Instant,
}

impl TableWorker {
    /// Moves `unwinder` to new threads. An error if they cannot be
    /// started (the caller then keeps frame pointers for new processes).
    pub fn start(unwinder: Unwinder) -> std::io::Result<TableWorker> {
        let (tx, rx) = channel::<Job>();
        let (build_tx, build_rx) = channel::<TableMap>();
        let cancel = Arc::new(AtomicBool::new(false));
        let published = Arc::new(Mutex::new(unwinder.stats()));

        let compile = unwinder.compiler();
        let done = tx.clone();
        std::thread::Builder::new()
            .name("unwind-build".into())
            .spawn(move || {
                while let Ok(m) = build_rx.recv() {
                    let t0 = Instant::now();
                    let rows = compile(&m);
                    let Some((key, _, name)) = m.binary else {
                        continue;
                    };
                    let built = Job::Built {
                        key,
                        name,
                        text_bytes: m.end - m.start,
                        rows,
                        took: t0.elapsed(),
                    };
                    if done.send(built).is_err() {
                        break;
                    }
                }
            })?;

        let placer = Placer::new(unwinder, build_tx);
        let stop = cancel.clone();
        let out = published.clone();
        let thread = std::thread::Builder::new()
            .name("unwind-tables".into())
            .spawn(move || placer.run(rx, &stop, &out))?;
        Ok(TableWorker {
            tx,
            cancel,
            thread,
            published,
            touched: HashMap::new(),
            touch_calls: 0,
            touch_sent: Instant::now(),
        })
    }

    /// Queues loading (or reloading) `process`'s tables.
    pub fn load(&self, process: &Process) {
        let _ = self.tx.send(Job::Load(TableRequest::of(process)));
    }

    /// Queues forgetting `pid` (it exited), in order with loads: a new
    /// process reusing the pid is loaded after.
    pub fn remove(&self, pid: u32) {
        let _ = self.tx.send(Job::Remove(pid));
    }

    /// Notes that `pid` was sampled. Cheap enough for every sample.
    pub fn touch(&mut self, pid: u32) {
        *self.touched.entry(pid).or_default() += 1;
        self.touch_calls = self.touch_calls.wrapping_add(1);
        if self.touch_calls.is_multiple_of(4) && self.touch_sent.elapsed() >= TOUCH_INTERVAL {
            let counts: Vec<(u32, u32)> = self.touched.drain().collect();
            let _ = self.tx.send(Job::Touch(counts));
            self.touch_sent = Instant::now();
        }
    }

    /// The counters as of the last message the placer handled.
    pub fn stats(&self) -> UnwindStats {
        self.published.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the threads, dropping queued work (the capture is over), and
    /// returns the final counters. `None` if the placer panicked. A table
    /// being compiled is abandoned.
    pub fn finish(self) -> Option<UnwindStats> {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.tx.send(Job::Stop);
        drop(self.tx);
        self.thread.join().ok().map(|u| u.stats())
    }
}

/// How soon a process whose tables were evicted may ask for them again.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// A process waiting for tables to be compiled.
struct Pending {
    since: Instant,
    /// Time spent compiling for it so far: the more, the longer its next
    /// turn waits behind equally busy processes that cost less.
    built: Duration,
}

/// The placer thread's state.
struct Placer {
    unwinder: Unwinder,
    build_tx: Sender<TableMap>,
    /// The process the builder is compiling a table for.
    building: Option<u32>,
    pending: HashMap<u32, Pending>,
    /// Binaries compiled for each process, each once until its next retry
    /// (kept across reloads: a process that keeps loading libraries, or
    /// needs more than the whole budget, cannot make its own tables evict
    /// each other forever).
    tried: HashMap<u32, HashSet<BinaryKey>>,
    /// How much each loaded process was sampled lately.
    heat: HashMap<u32, Heat>,
    /// When a process last asked again for evicted tables.
    retried: HashMap<u32, Instant>,
}

impl Placer {
    fn new(unwinder: Unwinder, build_tx: Sender<TableMap>) -> Placer {
        Placer {
            unwinder,
            build_tx,
            building: None,
            pending: HashMap::new(),
            tried: HashMap::new(),
            heat: HashMap::new(),
            retried: HashMap::new(),
        }
    }

    fn run(mut self, rx: Receiver<Job>, stop: &AtomicBool, out: &Mutex<UnwindStats>) -> Unwinder {
        while let Ok(first) = rx.recv() {
            let jobs: Vec<Job> = std::iter::once(first).chain(rx.try_iter()).collect();
            for job in jobs {
                if stop.load(Ordering::Relaxed) || matches!(job, Job::Stop) {
                    return self.unwinder;
                }
                self.handle(job);
            }
            if self.building.is_none() {
                self.start_build();
            }
            let stats = self.unwinder.stats();
            if let Ok(mut p) = out.lock() {
                *p = stats;
            }
        }
        self.unwinder
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Load(req) => {
                if let Err(e) = self.unwinder.load_available(&req) {
                    tracing::warn!("{e}");
                }
                let pid = req.pid;
                let missing = self.unwinder.missing(&req).len();
                let binaries = binaries(&req);
                tracing::debug!(
                    "unwind tables of pid {pid}: {} of {binaries} binaries in, {missing} to build",
                    binaries - missing
                );
                self.heat
                    .entry(pid)
                    .or_insert_with(|| Heat::new(Instant::now()))
                    .add(Instant::now(), 1.0);
                if missing > 0 {
                    self.pending.entry(pid).or_insert_with(|| Pending {
                        since: Instant::now(),
                        built: Duration::ZERO,
                    });
                }
            }
            Job::Remove(pid) => {
                self.pending.remove(&pid);
                self.tried.remove(&pid);
                self.heat.remove(&pid);
                self.retried.remove(&pid);
                self.unwinder.remove(pid);
            }
            Job::Touch(counts) => {
                self.unwinder.touch(&counts);
                let now = Instant::now();
                for (pid, n) in counts {
                    if let Some(h) = self.heat.get_mut(&pid) {
                        h.add(now, f64::from(n));
                    }
                    self.retry_evicted(pid, now);
                }
            }
            Job::Built {
                key,
                name,
                text_bytes,
                rows,
                took,
            } => {
                if let Some(p) = self
                    .building
                    .take()
                    .and_then(|pid| self.pending.get_mut(&pid))
                {
                    p.built += took;
                }
                self.unwinder.install(key, &name, text_bytes, rows, took);
            }
            Job::Stop => {}
        }
    }

    /// A process sampled again after some of its tables were evicted
    /// asks for them again (at most every [`RETRY_INTERVAL`], so that two
    /// busy processes whose tables do not fit together take turns rather
    /// than keep the builder busy).
    fn retry_evicted(&mut self, pid: u32, now: Instant) {
        if self.pending.contains_key(&pid) {
            return;
        }
        let Some(req) = self.unwinder.request(pid) else {
            return;
        };
        if self.unwinder.missing(req).is_empty()
            || self
                .retried
                .get(&pid)
                .is_some_and(|t| now - *t < RETRY_INTERVAL)
        {
            return;
        }
        self.retried.insert(pid, now);
        self.tried.remove(&pid);
        self.pending.insert(
            pid,
            Pending {
                since: now,
                built: Duration::ZERO,
            },
        );
    }

    /// Hands the builder the next table. The pending process sampled most
    /// lately goes first, its heat divided by 1 + the seconds already spent
    /// compiling for it (so a new busy process does not wait long behind
    /// one loading big library after big library); the oldest request
    /// among equals.
    fn start_build(&mut self) {
        let now = Instant::now();
        let mut order: Vec<(f64, Instant, u32)> = self
            .pending
            .iter()
            .map(|(&pid, p)| {
                let heat = self.heat.get(&pid).map_or(0.0, |h| h.at(now));
                (heat / (1.0 + p.built.as_secs_f64()), p.since, pid)
            })
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, pid) in order {
            let tried = self.tried.entry(pid).or_default();
            let next = self.unwinder.request(pid).and_then(|req| {
                self.unwinder
                    .missing(req)
                    .into_iter()
                    .map(|i| &req.maps[i])
                    .find(|m| m.binary.as_ref().is_some_and(|b| !tried.contains(&b.0)))
                    .cloned()
            });
            let Some(m) = next else {
                // Everything it needs was tried: done with it.
                self.pending.remove(&pid);
                continue;
            };
            if let Some(b) = &m.binary {
                tried.insert(b.0);
                tracing::debug!("building the unwind table of {} for pid {pid}", b.2);
            }
            if self.build_tx.send(m).is_ok() {
                self.building = Some(pid);
            }
            return;
        }
    }
}

/// Distinct binaries of a request.
fn binaries(req: &TableRequest) -> usize {
    let keys: HashSet<BinaryKey> = req
        .maps
        .iter()
        .filter_map(|m| m.binary.as_ref())
        .map(|b| b.0)
        .collect();
    keys.len()
}
