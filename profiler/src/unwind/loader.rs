//! The unwind tables in the kernel: one per binary, shared by every process
//! mapping it, within a byte budget.
//!
//! **Rows.** Rows of every binary live in one array map created
//! `BPF_F_MMAPABLE`, of `--unwind-memory` bytes (16 a row), which the
//! kernel allocates when the program loads. Rows are copied in with plain
//! memory writes through a shared mapping ([`super::kernel`]), so a table
//! of a million rows costs no syscall per row. Each process costs one
//! hash-map update: its executable mappings, each pointing at its file's
//! rows.
//!
//! **Refcounts.** A table is compiled once per binary ([`BinaryKey`]: the
//! file's device and inode) and counts the live processes mapping it. When
//! the last one exits ([`Unwinder::remove`]) or stops mapping it (a reload
//! after `exec` or `dlclose`), the table becomes *idle*: its rows may be
//! given to any other table (they are freed when room is needed), but
//! until they are, they stay as they are, and a process that maps the
//! binary again (the next `clang` of a build) gets them back without a
//! rebuild. Tables that could not be
//! placed or have no rows are forgotten with their last user; a table
//! larger than the whole budget is remembered, so that it is neither
//! rebuilt nor warned about again.
//!
//! **Budget.** Row ranges are allocated first-fit from a free list
//! ([`super::alloc`]). When no free range is large enough, tables are
//! evicted until one is, the least used first: each table counts the
//! samples of the processes mapping it, decaying with a half-life of 2 s
//! (`heat`), so recent use counts most and one sample a moment ago counts
//! less than a hundred a second ago. Idle tables get no more samples and
//! go as soon as they are the coldest (before a table in use, among
//! equals); a compiler started for every file keeps its tables between
//! runs, a daemon that sleeps loses its. The processes using an evicted
//! table are rewritten to walk frame pointers through that binary; the
//! table is compiled again when a process mapping it is loaded or, at most
//! every 5 s, sampled ([`super::worker`]). A binary evicted again and
//! again waits longer each time (1, 2, 4 ... 64 s) before it is compiled
//! again: when the tables the running processes need do not fit, that is
//! what keeps the builder from spending a core on tables that evict each
//! other. A table larger than the whole
//! budget is the only one that never fits: its binary is unwound with
//! frame pointers, with a warning.
//!
//! **Loading without waiting.** [`Unwinder::load_available`] gives a
//! process its mapping list at once, with the tables already in the array,
//! and lists the rest ([`Unwinder::missing`]); [`Unwinder::install`] puts a
//! table compiled elsewhere in and points every process mapping it there.
//! [`Unwinder::load`] does both on the caller's thread.
//!
//! **Reuse without stale reads.** A BPF walk that read a process's mapping
//! list just before user space changed it may still be reading rows when
//! they are given to another binary. So rows are reused in this order:
//!
//! 1. every process whose mapping list points at the old table is
//!    rewritten without it (new walks no longer find it);
//! 2. the old table's header row is zeroed (walks in flight give up at
//!    their next check);
//! 3. only then does the range go back to the free list, and the next
//!    table written there writes its rows first and its own header last.
//!
//! Each placement of a table has a generation, unique for the life of the
//! capture, in its header row and in every mapping pointing at it; the BPF
//! program checks the header after reading rows (a sequence lock: see
//! `abi.h`), so a walk never follows a stale `row_start` into another
//! binary's rows. A walk that catches a table being replaced stops there
//! (`FLAG_STALE_TABLE`), keeping the frames it had.
//!
//! During a capture all of this runs on the table worker's threads
//! ([`super::worker`]): compiling and evicting never hold up draining the
//! ring buffer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::Map;
use profiler_ebpf::abi::{ProcInfo, ProcMap, UnwindRow, MAX_PROC_MAPS};

use super::alloc::{Extent, RowAllocator};
use super::heat::Heat;
use super::kernel::{BpfMaps, TableMaps};
use super::{cgo, table};
use crate::process::{BinaryKey, Process};
use crate::symbolize::go::GoTable;

/// Bytes of one row in the kernel's array.
pub const ROW_BYTES: u64 = std::mem::size_of::<UnwindRow>() as u64;

/// How many names [`UnwindStats::too_big`] keeps (the count goes on).
const TOO_BIG_NAMES: usize = 32;

/// The default budget (`--unwind-memory`): 1/32 of the machine's memory,
/// from 32 to 128 MiB. 128 MiB is what a machine running LLVM needs: a
/// `clang` process maps 47 MiB of tables (libclang-cpp 20.5, libLLVM
/// 17.8, libz3 5.9, the C and C++ runtimes 1), `rustc` 40 MiB (its driver
/// 17.5, its LLVM 22), and a build runs both with room for the rest. The
/// kernel allocates it when the program loads, so it scales down on small
/// machines.
pub fn default_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    (total / 32).clamp(32 << 20, 128 << 20)
}

/// The largest budget, in rows (1 GiB).
pub const MAX_ROWS: u32 = 1 << 26;

/// Parses `--unwind-memory`: a size such as `64MiB` or `1GiB`, from one
/// page to 1 GiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bytes = crate::agent::parse_size(s)?;
    let max = u64::from(MAX_ROWS) * ROW_BYTES;
    if !(4096..=max).contains(&bytes) {
        return Err(format!(
            "{s:?}: the unwind memory must be between 4KiB and 1GiB"
        ));
    }
    Ok(bytes)
}

/// Rows of the array for a budget of `bytes`.
pub fn rows_for(bytes: u64) -> u32 {
    u32::try_from(bytes / ROW_BYTES).map_or(MAX_ROWS, |r| r.clamp(2, MAX_ROWS))
}

/// What the tables cost and how full the budget is.
#[derive(Clone, Debug, Default)]
pub struct UnwindStats {
    /// The budget: bytes of the row array.
    pub capacity_bytes: u64,
    /// Bytes of rows in the array now (tables in use and idle).
    pub used_bytes: u64,
    /// Of `used_bytes`, tables no live process maps (free to be reused).
    pub idle_bytes: u64,
    /// The most of the array ever written: the high-water mark.
    pub peak_bytes: u64,
    /// Binaries with rows in the array now.
    pub binaries: usize,
    /// Live processes with tables in the kernel now.
    pub processes: usize,
    /// Process loads and reloads so far.
    pub loads: u64,
    /// Tables compiled so far (a table evicted and needed again counts twice).
    pub tables_built: u64,
    /// Idle tables taken back into use without a rebuild.
    pub revived: u64,
    /// Tables evicted to make room, and their bytes.
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Bytes written over rows a freed table had used.
    pub reused_bytes: u64,
    /// Binaries whose table is larger than the whole budget (they use frame
    /// pointers): the first few names, and how many in all.
    pub too_big: Vec<String>,
    pub too_big_count: u64,
    /// Time spent compiling tables and copying rows.
    pub build_time: Duration,
    /// Bytes of code the resident tables cover (the executable mapping of
    /// each binary with a table), for the cost per MB of text.
    pub text_bytes: u64,
}

/// `x.y MiB`.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl fmt::Display for UnwindStats {
    /// One line for the recorder's summary (after `unwind tables: `).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} binaries ({:.1} MiB of code), {:.1} of {:.1} MiB used (peak {:.1}), {} loads ({} processes now), built in {} ms",
            self.binaries,
            mib(self.text_bytes),
            mib(self.used_bytes),
            mib(self.capacity_bytes),
            mib(self.peak_bytes),
            self.loads,
            self.processes,
            self.build_time.as_millis()
        )?;
        if self.evictions > 0 || self.reused_bytes > 0 {
            write!(
                f,
                "; {} evicted ({:.1} MiB), {:.1} MiB reused",
                self.evictions,
                mib(self.evicted_bytes),
                mib(self.reused_bytes)
            )?;
        }
        if self.too_big_count > 0 {
            write!(f, "; {} too big", self.too_big_count)?;
        }
        Ok(())
    }
}

/// What loading one process's tables needs, detached from the process
/// table so it can be sent to another thread.
#[derive(Clone)]
pub struct TableRequest {
    pub pid: u32,
    /// Executable mappings, sorted by start.
    pub maps: Vec<TableMap>,
}

/// One executable mapping and, when file-backed, its binary: identity,
/// mapped bytes and name (for messages).
#[derive(Clone)]
pub struct TableMap {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub binary: Option<(BinaryKey, Option<Arc<memmap2::Mmap>>, String)>,
}

impl TableRequest {
    /// The request for `process` as it is now.
    pub fn of(process: &Process) -> TableRequest {
        let maps = process
            .maps
            .iter()
            .filter(|m| m.executable)
            .map(|m| TableMap {
                start: m.start,
                end: m.end,
                offset: m.offset,
                binary: process
                    .binaries
                    .get(&m.start)
                    .map(|b| (b.key, b.data.clone(), b.path.clone())),
            })
            .collect();
        TableRequest {
            pid: process.pid,
            maps,
        }
    }
}

/// Compiles a binary's rows (the seam the model tests replace).
pub type Compiler = Arc<dyn Fn(&TableMap) -> Vec<UnwindRow> + Send + Sync>;

/// The unwind maps of a loaded program, and the tables in them.
pub struct Unwinder {
    maps: Box<dyn TableMaps>,
    compile: Compiler,
    alloc: RowAllocator,
    tables: HashMap<BinaryKey, Table>,
    procs: HashMap<u32, Vec<Slot>>,
    /// The last request of every loaded process: what to compile from
    /// when its evicted tables are wanted again.
    requests: HashMap<u32, TableRequest>,
    /// The generation of the next placement; 0 is never used.
    next_gen: u32,
    counters: UnwindStats,
    /// The process map is full (more live processes than it holds): said once.
    warned_full: bool,
    /// Binaries evicted lately: how often, and when last.
    evicted: HashMap<BinaryKey, Evicted>,
}

/// A binary's recent evictions, which delay compiling it again.
#[derive(Clone, Copy, Debug)]
struct Evicted {
    times: u32,
    at: Instant,
}

/// Evictions further apart than this start the count again.
const EVICTIONS_FORGOTTEN: Duration = Duration::from_secs(300);

/// How long after its last eviction a binary evicted `times` times may be
/// compiled again: at once after the first (the budget was needed for
/// something new), then 1, 2, 4 ... up to 64 s. When the tables every
/// running process needs do not fit, this is what keeps the builder from
/// spending a core compiling tables that evict each other.
fn rebuild_delay(times: u32) -> Duration {
    match times {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 2).min(6)),
    }
}

/// One binary's table.
struct Table {
    name: String,
    state: State,
    /// Live processes mapping the binary (pids).
    users: HashSet<u32>,
    /// How much its processes were sampled lately: what eviction spares.
    heat: Heat,
    /// Bytes of the executable mapping the table covers.
    text_bytes: u64,
}

impl Table {
    /// A binary seen for the first time: no rows yet.
    fn new(name: &str, now: Instant) -> Table {
        Table {
            name: name.to_owned(),
            state: State::Absent,
            users: HashSet::new(),
            heat: Heat::new(now),
            text_bytes: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// In the array: `extent` is the header row and the rows after it.
    Resident { extent: Extent, gen: u32 },
    /// Not in the array (evicted, or not placed yet): rebuilt on demand.
    Absent,
    /// The binary has no rows (no `.eh_frame`, or it cannot be read).
    Empty,
    /// More rows than the whole array.
    TooBig,
}

/// One executable mapping of a loaded process, as written to the kernel.
#[derive(Clone, Copy)]
struct Slot {
    start: u64,
    end: u64,
    offset: u64,
    key: Option<BinaryKey>,
}

impl Unwinder {
    /// Wraps the program's `unwind_rows` array (of `capacity` rows) and
    /// `unwind_procs` hash map.
    pub fn new(rows: Map, capacity: u32, procs: Map) -> Result<Unwinder, String> {
        let maps = BpfMaps::new(rows, capacity, procs)?;
        Ok(Unwinder::with_maps(
            Box::new(maps),
            Arc::new(compile_binary),
        ))
    }

    fn with_maps(maps: Box<dyn TableMaps>, compile: Compiler) -> Unwinder {
        let capacity = maps.capacity();
        Unwinder {
            maps,
            compile,
            alloc: RowAllocator::new(capacity),
            tables: HashMap::new(),
            procs: HashMap::new(),
            requests: HashMap::new(),
            next_gen: 1,
            counters: UnwindStats {
                capacity_bytes: u64::from(capacity) * ROW_BYTES,
                ..UnwindStats::default()
            },
            warned_full: false,
            evicted: HashMap::new(),
        }
    }

    /// Gives `process` tables: compiles those of its binaries not in the
    /// array, then writes its mapping list. Call again after its mappings
    /// change (dlopen, exec).
    pub fn load_process(&mut self, process: &Process) -> Result<(), String> {
        self.load(&TableRequest::of(process))
    }

    /// [`Unwinder::load_process`] from a detached snapshot: everything on
    /// this thread, compiling included.
    pub fn load(&mut self, req: &TableRequest) -> Result<(), String> {
        self.load_available(req)?;
        for i in self.missing(req) {
            let m = &req.maps[i];
            let t0 = Instant::now();
            let rows = (self.compile)(m);
            if let Some((key, _, name)) = &m.binary {
                self.install(*key, name, m.end - m.start, rows, t0.elapsed());
            }
        }
        Ok(())
    }

    /// Writes `req`'s mapping list with the tables the array has now, and
    /// makes the process a user of all its binaries' tables; those not in
    /// the array ([`Unwinder::missing`]) are walked with frame pointers
    /// until [`Unwinder::install`] puts them in. Never compiles: cheap
    /// enough to run as soon as a process is seen.
    pub fn load_available(&mut self, req: &TableRequest) -> Result<(), String> {
        let now = Instant::now();
        let pid = req.pid;
        let slots: Vec<Slot> = req.maps[..req.maps.len().min(MAX_PROC_MAPS)]
            .iter()
            .map(|m| Slot {
                start: m.start,
                end: m.end,
                offset: m.offset,
                key: m.binary.as_ref().map(|b| b.0),
            })
            .collect();
        let mut keys = HashSet::new();
        for m in &req.maps[..slots.len()] {
            let Some((key, _, name)) = &m.binary else {
                continue;
            };
            if !keys.insert(*key) {
                continue;
            }
            let was_idle = self.acquire(pid, *key, name, now);
            if was_idle && self.is_resident(key) {
                self.counters.revived += 1;
            }
        }
        // Binaries the process no longer maps (exec, dlclose).
        if let Some(old) = self.procs.insert(pid, slots) {
            let gone: HashSet<BinaryKey> = old
                .iter()
                .filter_map(|s| s.key)
                .filter(|k| !keys.contains(k))
                .collect();
            for k in gone {
                self.release(pid, k);
            }
        }
        self.counters.loads += 1;
        self.requests.insert(pid, req.clone());
        if let Err(e) = self.write_proc(pid) {
            self.forget(pid);
            // The usual cause is a full map (more live processes than it
            // holds): said once, not for every new process.
            if std::mem::replace(&mut self.warned_full, true) {
                tracing::debug!("{e}");
                return Ok(());
            }
            return Err(format!(
                "{e}; it is unwound with frame pointers (further such failures are not reported)"
            ));
        }
        Ok(())
    }

    /// The last request loaded for `pid`, while it is loaded.
    pub fn request(&self, pid: u32) -> Option<&TableRequest> {
        self.requests.get(&pid)
    }

    /// The mappings of `req` (indices into `req.maps`, one per binary)
    /// whose binary's table must be compiled now: never seen, or evicted
    /// (and not evicted so often lately that it must wait, see
    /// `rebuild_delay`).
    pub fn missing(&self, req: &TableRequest) -> Vec<usize> {
        let now = Instant::now();
        let mut seen = HashSet::new();
        req.maps
            .iter()
            .take(MAX_PROC_MAPS)
            .enumerate()
            .filter_map(|(i, m)| {
                let key = m.binary.as_ref()?.0;
                let absent = self
                    .tables
                    .get(&key)
                    .is_none_or(|t| t.state == State::Absent);
                let waits = self
                    .evicted
                    .get(&key)
                    .is_some_and(|e| now < e.at + rebuild_delay(e.times));
                (absent && !waits && seen.insert(key)).then_some(i)
            })
            .collect()
    }

    /// Puts a compiled table in the array (evicting others as needed)
    /// and points every process mapping the binary at it. Kept, idle, if
    /// none does any more: the next process mapping it gets it without a
    /// rebuild. `text_bytes` is the size of the executable mapping it
    /// covers; `took` what compiling it cost.
    pub fn install(
        &mut self,
        key: BinaryKey,
        name: &str,
        text_bytes: u64,
        rows: Vec<UnwindRow>,
        took: Duration,
    ) {
        let now = Instant::now();
        let t = self
            .tables
            .entry(key)
            .or_insert_with(|| Table::new(name, now));
        if t.state != State::Absent {
            return;
        }
        self.counters.tables_built += 1;
        let capacity = self.alloc.capacity();
        let need = u32::try_from(rows.len() + 1)
            .ok()
            .filter(|&n| n <= capacity);
        if rows.is_empty() {
            t.state = State::Empty;
        } else if let Some(need) = need {
            if let Some(extent) = self.room(need, key) {
                let gen = self.next_gen;
                self.next_gen = self.next_gen.wrapping_add(1).max(1);
                match self.maps.write_table(extent.start, gen, &rows) {
                    Ok(()) => {
                        if let Some(t) = self.tables.get_mut(&key) {
                            t.state = State::Resident { extent, gen };
                            t.text_bytes = text_bytes;
                        }
                    }
                    Err(e) => {
                        self.alloc.free(extent);
                        tracing::warn!("{e}");
                    }
                }
            }
        } else {
            tracing::warn!(
                "the unwind table of {} ({} rows, {:.1} MiB) is larger than the whole unwind budget ({:.1} MiB, --unwind-memory); its frames are unwound with frame pointers",
                t.name,
                rows.len(),
                mib(rows.len() as u64 * ROW_BYTES),
                mib(u64::from(capacity) * ROW_BYTES)
            );
            t.state = State::TooBig;
            self.counters.too_big_count += 1;
            if self.counters.too_big.len() < TOO_BIG_NAMES {
                self.counters.too_big.push(t.name.clone());
            }
        }
        let Some(t) = self.tables.get(&key) else {
            return;
        };
        let at = match t.state {
            State::Resident { extent, .. } => format!("at rows {}..{}", extent.start, extent.end()),
            State::TooBig => "too big".to_owned(),
            _ => "no rows".to_owned(),
        };
        tracing::debug!(
            "unwind table of {} in: {} rows ({:.1} MiB) {at}, built in {} ms, {} users",
            t.name,
            rows.len(),
            mib(rows.len() as u64 * ROW_BYTES),
            took.as_millis(),
            t.users.len()
        );
        if matches!(t.state, State::Resident { .. }) {
            let users: Vec<u32> = t.users.iter().copied().collect();
            for u in users {
                self.write_proc_or_forget(u);
            }
        }
        self.counters.build_time += took + now.elapsed();
    }

    /// The function that compiles a mapping's binary's rows, for a thread
    /// that compiles while this one keeps loading.
    pub fn compiler(&self) -> Compiler {
        self.compile.clone()
    }

    /// Forgets a process (it exited): its mapping list leaves the kernel
    /// first, then its tables lose a user. Tables left without users stay
    /// in the array, idle, until their rows are needed.
    pub fn remove(&mut self, pid: u32) {
        self.forget(pid);
    }

    /// Counts samples of these processes (pid, samples) for their tables:
    /// the least used lately are evicted first.
    pub fn touch(&mut self, samples: &[(u32, u32)]) {
        let now = Instant::now();
        for &(pid, n) in samples {
            let Some(slots) = self.procs.get(&pid) else {
                continue;
            };
            for key in slots.iter().filter_map(|s| s.key) {
                if let Some(t) = self.tables.get_mut(&key) {
                    t.heat.add(now, f64::from(n));
                }
            }
        }
    }

    /// Counters and how full the budget is, now.
    pub fn stats(&self) -> UnwindStats {
        let mut s = self.counters.clone();
        for t in self.tables.values() {
            if let State::Resident { extent, .. } = t.state {
                let bytes = u64::from(extent.len) * ROW_BYTES;
                s.used_bytes += bytes;
                if t.users.is_empty() {
                    s.idle_bytes += bytes;
                }
                s.binaries += 1;
                s.text_bytes += t.text_bytes;
            }
        }
        s.peak_bytes = u64::from(self.alloc.high_water()) * ROW_BYTES;
        s.processes = self.procs.len();
        s
    }

    /// Adds `pid` to the users of `key`'s table (creating the entry).
    /// Returns whether the table was idle.
    fn acquire(&mut self, pid: u32, key: BinaryKey, name: &str, now: Instant) -> bool {
        let t = self
            .tables
            .entry(key)
            .or_insert_with(|| Table::new(name, now));
        let was_idle = t.users.is_empty();
        // Loaded at its first sample: that one counts.
        if t.users.insert(pid) {
            t.heat.add(now, 1.0);
        }
        was_idle
    }

    /// Takes `pid` off the users of `key`'s table. A resident table stays
    /// (idle); one without rows is forgotten, except a too-big one.
    fn release(&mut self, pid: u32, key: BinaryKey) {
        let Some(t) = self.tables.get_mut(&key) else {
            return;
        };
        t.users.remove(&pid);
        if t.users.is_empty() && matches!(t.state, State::Absent | State::Empty) {
            self.tables.remove(&key);
        }
    }

    /// Removes a process from the kernel and from its tables' users.
    fn forget(&mut self, pid: u32) {
        self.maps.remove_proc(pid);
        self.requests.remove(&pid);
        let Some(slots) = self.procs.remove(&pid) else {
            return;
        };
        let keys: HashSet<BinaryKey> = slots.iter().filter_map(|s| s.key).collect();
        for k in keys {
            self.release(pid, k);
        }
    }

    fn is_resident(&self, key: &BinaryKey) -> bool {
        self.tables
            .get(key)
            .is_some_and(|t| matches!(t.state, State::Resident { .. }))
    }

    /// A free range of `need` rows for `key`'s table, evicting other tables
    /// until there is one. `None` only if nothing is left to evict.
    fn room(&mut self, need: u32, key: BinaryKey) -> Option<Extent> {
        loop {
            let before = self.alloc.high_water();
            if let Some(e) = self.alloc.alloc(need) {
                let reused = RowAllocator::reused(e, before);
                self.counters.reused_bytes += u64::from(reused) * ROW_BYTES;
                return Some(e);
            }
            let victim = self.victim(key)?;
            self.evict(victim);
        }
    }

    /// The table to evict next: the one sampled least lately, idle before
    /// in use among equals. An idle table gets no more samples, so it goes
    /// as soon as it is the coldest; until then a binary that runs again
    /// and again (a compiler started for every file) keeps its table
    /// between runs, while a daemon that sleeps loses its.
    fn victim(&self, key: BinaryKey) -> Option<BinaryKey> {
        let now = Instant::now();
        self.tables
            .iter()
            .filter(|(k, t)| **k != key && matches!(t.state, State::Resident { .. }))
            .map(|(k, t)| (t.heat.at(now), !t.users.is_empty(), k))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, _, k)| *k)
    }

    /// Frees `key`'s rows, in the order that keeps walks in flight from
    /// reading another table's rows as its own (see the module docs).
    fn evict(&mut self, key: BinaryKey) {
        let Some(t) = self.tables.get_mut(&key) else {
            return;
        };
        let State::Resident { extent, .. } = t.state else {
            return;
        };
        t.state = State::Absent;
        let users: Vec<u32> = t.users.iter().copied().collect();
        let now = Instant::now();
        if self.evicted.len() > 4096 {
            self.evicted
                .retain(|_, e| now.saturating_duration_since(e.at) < EVICTIONS_FORGOTTEN);
        }
        let e = self
            .evicted
            .entry(key)
            .or_insert(Evicted { times: 0, at: now });
        if now.saturating_duration_since(e.at) >= EVICTIONS_FORGOTTEN {
            e.times = 0;
        }
        e.times += 1;
        e.at = now;
        tracing::debug!(
            "evicting the unwind table of {} ({:.1} MiB, {} users)",
            t.name,
            mib(u64::from(extent.len) * ROW_BYTES),
            users.len()
        );
        if users.is_empty() {
            self.tables.remove(&key);
        }
        // 1. No mapping list points at the rows any more.
        for u in users {
            self.write_proc_or_forget(u);
        }
        // 2. Walks still reading them give up.
        if let Err(e) = self.maps.retire_table(extent.start) {
            tracing::warn!("cannot retire an unwind table: {e}");
        }
        // 3. The rows can be reused.
        self.alloc.free(extent);
        self.counters.evictions += 1;
        self.counters.evicted_bytes += u64::from(extent.len) * ROW_BYTES;
    }

    /// Writes `pid`'s mapping list as its tables are placed now. Nothing
    /// to do for a process not (yet) loaded.
    fn write_proc(&mut self, pid: u32) -> Result<(), String> {
        let Some(slots) = self.procs.get(&pid) else {
            return Ok(());
        };
        let mut info = ProcInfo::default();
        for (i, s) in slots.iter().enumerate() {
            let (row_start, row_count, gen) = match s.key.and_then(|k| self.tables.get(&k)) {
                Some(Table {
                    state: State::Resident { extent, gen },
                    ..
                }) => (extent.start + 1, extent.len - 1, *gen),
                _ => (0, 0, 0),
            };
            info.maps[i] = ProcMap {
                start: s.start,
                end: s.end,
                offset: s.offset,
                row_start,
                row_count,
                gen,
                _pad: 0,
            };
        }
        info.count = slots.len() as u32;
        self.maps.set_proc(pid, &info)
    }

    /// [`Unwinder::write_proc`] where failing to rewrite must not leave the
    /// kernel pointing at rows about to be reused: the process is dropped
    /// from the kernel (frame pointers) instead.
    fn write_proc_or_forget(&mut self, pid: u32) {
        if let Err(e) = self.write_proc(pid) {
            tracing::warn!("{e}; pid {pid} is unwound with frame pointers");
            self.forget(pid);
        }
    }
}

/// The rows of a mapping's binary; none if it cannot be read or has no
/// unwind information.
fn compile_binary(m: &TableMap) -> Vec<UnwindRow> {
    let Some((_, Some(data), _)) = &m.binary else {
        return Vec::new();
    };
    table::compile_with(data, go_rules(data)).unwrap_or_default()
}

/// Rules for the Go code C calls into, if `data` is a Go binary using cgo.
fn go_rules(data: &Arc<memmap2::Mmap>) -> Vec<(u64, u64, table::Rule)> {
    match GoTable::parse_mapped(data.clone()) {
        Ok(Some(go)) => cgo::trampoline_rules(&go),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    //! The cache against a model of the kernel's maps that checks, at every
    //! write, the ordering rules the BPF program relies on.

    use super::*;
    use profiler_ebpf::abi::ROW_GEN;
    use std::sync::Mutex;

    /// The kernel side as the BPF program would see it.
    #[derive(Default)]
    struct Kernel {
        rows: Vec<UnwindRow>,
        procs: HashMap<u32, ProcInfo>,
        /// Every table ever written: (first row, rows with header, gen),
        /// and whether its rows have been overwritten since.
        placed: Vec<(u32, u32, u32, bool)>,
    }

    struct Model(Arc<Mutex<Kernel>>);

    impl TableMaps for Model {
        fn capacity(&self) -> u32 {
            self.0.lock().unwrap().rows.len() as u32
        }

        fn write_table(&mut self, start: u32, gen: u32, rows: &[UnwindRow]) -> Result<(), String> {
            let mut k = self.0.lock().unwrap();
            let end = start + rows.len() as u32 + 1;
            // No mapping list may point into rows about to change...
            for (pid, info) in &k.procs {
                for m in info.maps[..info.count as usize]
                    .iter()
                    .filter(|m| m.row_count > 0)
                {
                    let (a, b) = (m.row_start - 1, m.row_start + m.row_count);
                    assert!(
                        b <= start || end <= a,
                        "pid {pid} still points at rows {a}..{b} being overwritten by {start}..{end}"
                    );
                }
            }
            // ...and a walk that read one before must see its header gone.
            let header_of = |k: &Kernel, s: u32| k.rows[s as usize].pc;
            let stale: Vec<usize> = (0..k.placed.len())
                .filter(|&i| {
                    let (s, l, _, dead) = k.placed[i];
                    !dead && s < end && start < s + l
                })
                .collect();
            for i in stale {
                let (s, _, g, _) = k.placed[i];
                assert_ne!(
                    header_of(&k, s),
                    ROW_GEN | u64::from(g),
                    "rows of table gen {g} reused before its header was retired"
                );
                k.placed[i].3 = true;
            }
            k.rows[start as usize + 1..end as usize].copy_from_slice(rows);
            k.rows[start as usize].pc = ROW_GEN | u64::from(gen);
            k.placed.push((start, end - start, gen, false));
            Ok(())
        }

        fn retire_table(&mut self, start: u32) -> Result<(), String> {
            self.0.lock().unwrap().rows[start as usize].pc = 0;
            Ok(())
        }

        fn set_proc(&mut self, pid: u32, info: &ProcInfo) -> Result<(), String> {
            self.0.lock().unwrap().procs.insert(pid, *info);
            Ok(())
        }

        fn remove_proc(&mut self, pid: u32) {
            self.0.lock().unwrap().procs.remove(&pid);
        }
    }

    /// Binary `b` is mapped at `b << 20`, and its rows say whose they are.
    fn rows_of(b: u64, len: usize) -> Vec<UnwindRow> {
        (0..len as u64)
            .map(|i| UnwindRow {
                pc: (b << 32) | i,
                cfa_offset: 8,
                rbp_offset: 0,
                cfa_reg: profiler_ebpf::abi::CFA_RSP,
                _pad: 0,
            })
            .collect()
    }

    fn key(b: u64) -> BinaryKey {
        BinaryKey {
            dev: (0, 1),
            inode: b,
        }
    }

    struct Setup {
        u: Unwinder,
        kernel: Arc<Mutex<Kernel>>,
    }

    /// An array of `capacity` rows; binary `b` has `sizes[b]` rows.
    fn setup(capacity: u32, sizes: &[usize]) -> Setup {
        let kernel = Arc::new(Mutex::new(Kernel {
            rows: vec![UnwindRow::default(); capacity as usize],
            ..Kernel::default()
        }));
        let sizes = sizes.to_vec();
        let compile: Compiler = Arc::new(move |m: &TableMap| {
            let b = m.binary.as_ref().map_or(0, |b| b.0.inode);
            rows_of(b, sizes.get(b as usize).copied().unwrap_or(0))
        });
        Setup {
            u: Unwinder::with_maps(Box::new(Model(kernel.clone())), compile),
            kernel,
        }
    }

    fn request(pid: u32, binaries: &[u64]) -> TableRequest {
        let mut maps: Vec<TableMap> = binaries
            .iter()
            .map(|&b| TableMap {
                start: b << 20,
                end: (b << 20) + 0x1000,
                offset: 0,
                binary: Some((key(b), None, format!("/lib/b{b}.so"))),
            })
            .collect();
        // And some anonymous (JIT) code.
        maps.push(TableMap {
            start: 0xff << 20,
            end: (0xff << 20) + 0x1000,
            offset: 0,
            binary: None,
        });
        TableRequest { pid, maps }
    }

    impl Setup {
        fn load(&mut self, pid: u32, binaries: &[u64]) {
            self.u.load(&request(pid, binaries)).unwrap();
            self.check();
        }

        fn remove(&mut self, pid: u32) {
            self.u.remove(pid);
            self.check();
        }

        /// Binaries of `pid` the kernel has rows for.
        fn with_rows(&self, pid: u32) -> Vec<u64> {
            let k = self.kernel.lock().unwrap();
            let info = k.procs[&pid];
            info.maps[..info.count as usize]
                .iter()
                .filter(|m| m.row_count > 0)
                .map(|m| m.start >> 20)
                .collect()
        }

        /// What a walk would read is right: every mapping with rows points
        /// at its own binary's rows, under a current header.
        fn check(&self) {
            let k = self.kernel.lock().unwrap();
            for (pid, info) in &k.procs {
                for m in &info.maps[..info.count as usize] {
                    if m.row_count == 0 {
                        continue;
                    }
                    let b = m.start >> 20;
                    let first = m.row_start as usize;
                    assert_eq!(
                        k.rows[first - 1].pc,
                        ROW_GEN | u64::from(m.gen),
                        "pid {pid}: header of b{b}"
                    );
                    let got = &k.rows[first..first + m.row_count as usize];
                    assert_eq!(got, &rows_of(b, got.len())[..], "pid {pid}: rows of b{b}");
                }
            }
            let live: HashSet<u32> = self.u.procs.keys().copied().collect();
            let kernel: HashSet<u32> = k.procs.keys().copied().collect();
            assert_eq!(live, kernel, "processes known here and in the kernel");
        }
    }

    #[test]
    fn idle_tables_stay_until_needed_and_come_back_without_a_rebuild() {
        let mut s = setup(100, &[0, 30]);
        s.load(10, &[1]);
        s.load(11, &[1]);
        assert_eq!(s.u.stats().tables_built, 1, "one table for both");
        s.remove(10);
        assert_eq!(s.with_rows(11), [1]);
        s.remove(11);
        let st = s.u.stats();
        assert_eq!((st.binaries, st.processes), (1, 0));
        assert_eq!(st.idle_bytes, 31 * ROW_BYTES, "header and rows, idle");
        s.load(12, &[1]);
        let st = s.u.stats();
        assert_eq!((st.tables_built, st.revived, st.idle_bytes), (1, 1, 0));
        assert_eq!(s.with_rows(12), [1]);
    }

    #[test]
    fn the_least_used_table_goes_first() {
        // Room for two of the three tables.
        let mut s = setup(90, &[0, 40, 40, 40, 5]);
        s.load(1, &[1]);
        s.load(2, &[2]);
        s.u.touch(&[(1, 10)]);
        // Binary 3 needs room: the live table sampled least (2's) goes, and
        // process 2 walks frame pointers through it.
        s.load(3, &[3]);
        let st = s.u.stats();
        assert_eq!(st.evictions, 1);
        assert_eq!(st.reused_bytes, 41 * ROW_BYTES, "b3 is written over b2");
        assert_eq!(s.with_rows(1), [1]);
        assert!(s.with_rows(2).is_empty());
        assert_eq!(s.with_rows(3), [3]);

        // A hot table stays when its process exits (the next run of the
        // binary finds it); a cold one goes first, idle or not.
        s.u.touch(&[(3, 100)]);
        s.remove(3);
        s.load(4, &[2]);
        assert_eq!(s.u.stats().evictions, 2);
        assert!(s.with_rows(1).is_empty(), "b1 was the coldest");
        assert_eq!(s.with_rows(4), [2]);
        // Binary 2 is back, and process 2, which maps it too, is told.
        assert_eq!(s.with_rows(2), [2]);
        s.load(5, &[3]);
        assert_eq!(s.with_rows(5), [3], "b3 stayed, idle");
        assert_eq!(s.u.stats().revived, 1);
        // Among equally cold tables, an idle one goes first.
        let mut s = setup(90, &[0, 40, 40, 40]);
        s.load(1, &[1]);
        s.load(2, &[2]);
        s.remove(1);
        s.load(3, &[3]);
        assert_eq!(s.with_rows(2), [2]);
        assert_eq!(s.with_rows(3), [3]);
    }

    #[test]
    fn a_table_larger_than_the_budget_is_the_only_one_left_out() {
        let mut s = setup(50, &[0, 60, 10]);
        s.load(1, &[1, 2]);
        assert_eq!(s.with_rows(1), [2]);
        let st = s.u.stats();
        assert_eq!((st.too_big_count, st.too_big.len()), (1, 1));
        // Remembered: not compiled (nor warned about) again.
        s.load(2, &[1]);
        assert_eq!(s.u.stats().tables_built, 2);
        assert_eq!(s.u.stats().too_big_count, 1);
        // A table the size of the whole array fits, by evicting the rest.
        let mut s = setup(50, &[0, 49, 10]);
        s.load(1, &[2]);
        s.load(2, &[1]);
        assert_eq!(s.with_rows(2), [1]);
        assert!(s.with_rows(1).is_empty());
    }

    #[test]
    fn a_process_needing_more_than_the_budget_gets_what_fits() {
        // 30 + 30 + 30 rows (with headers) in 70: one of its own must go.
        let mut s = setup(70, &[0, 29, 29, 29]);
        s.load(1, &[1, 2, 3]);
        let st = s.u.stats();
        assert_eq!(st.binaries, 2);
        assert_eq!(s.with_rows(1).len(), 2);
    }

    #[test]
    fn tables_that_keep_evicting_each_other_wait_to_be_rebuilt() {
        // Each of the two tables takes the whole array.
        let mut s = setup(60, &[0, 50, 50]);
        s.load(1, &[1]);
        s.load(2, &[2]); // evicts b1 (its first eviction)
        s.load(3, &[1]); // built at once; evicts b2
        s.load(4, &[2]); // built at once; evicts b1 again
        assert_eq!(s.u.stats().evictions, 3);
        assert_eq!(s.u.stats().tables_built, 4);
        // The third time, b1 waits a second before it is compiled again.
        s.load(5, &[1]);
        assert!(s.with_rows(5).is_empty());
        assert_eq!(s.u.stats().tables_built, 4);
        assert_eq!(s.with_rows(4), [2]);
        assert_eq!(rebuild_delay(2), Duration::from_secs(1));
        assert_eq!(rebuild_delay(20), Duration::from_secs(64));
    }

    #[test]
    fn exec_and_exit_release_tables() {
        let mut s = setup(100, &[0, 10, 10, 10]);
        s.load(1, &[1, 2]);
        // exec: the process now maps 3 only.
        s.load(1, &[3]);
        let st = s.u.stats();
        assert_eq!(st.idle_bytes, 22 * ROW_BYTES, "1 and 2 are idle");
        assert_eq!(s.with_rows(1), [3]);
        s.remove(1);
        s.remove(1); // twice: harmless
        assert_eq!(s.u.stats().idle_bytes, 33 * ROW_BYTES);
        assert_eq!(s.u.stats().processes, 0);
    }

    /// Processes come and go mapping random binaries, in an array too
    /// small for all of them: after every step, every mapping list in the
    /// kernel points at its own binary's rows, and no rows were ever
    /// overwritten while reachable (checked in `Model::write_table`).
    #[test]
    fn random_churn_never_exposes_another_binarys_rows() {
        let sizes: Vec<usize> = (0..24).map(|b| [0, 3, 17, 40, 90, 150][b % 6]).collect();
        let mut s = setup(400, &sizes);
        let mut next = crate::unwind::alloc::tests::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut live: Vec<u32> = Vec::new();
        for step in 0..3000u32 {
            match next(4) {
                0 | 1 => {
                    let pid = if live.is_empty() || next(2) == 0 {
                        live.push(step);
                        step
                    } else {
                        live[next(live.len() as u64) as usize]
                    };
                    let n = 1 + next(4);
                    let bins: Vec<u64> = (0..n).map(|_| 1 + next(23)).collect();
                    let mut bins = bins;
                    bins.sort_unstable();
                    bins.dedup();
                    s.load(pid, &bins);
                }
                2 if !live.is_empty() => {
                    let pid = live.swap_remove(next(live.len() as u64) as usize);
                    s.remove(pid);
                }
                _ => {
                    let mut some = Vec::new();
                    for &p in &live {
                        if next(3) == 0 {
                            some.push((p, 1 + next(50) as u32));
                        }
                    }
                    s.u.touch(&some);
                }
            }
        }
        let st = s.u.stats();
        assert!(st.evictions > 20, "{st:?}");
        assert!(st.reused_bytes > 0 && st.peak_bytes <= 400 * ROW_BYTES);
        assert!(st.used_bytes <= st.capacity_bytes);
    }
}
