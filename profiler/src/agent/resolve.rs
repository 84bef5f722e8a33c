//! Naming frames for the agent: user addresses become (mapping, frames)
//! once per stack, through a bounded cache shared by every process.
//!
//! The existing [`Symbolizer`] keys its work by `/proc/self/fd/N` paths of
//! open binaries. A long-running agent closes binaries when the processes
//! mapping them are gone, and the kernel then reuses their fd numbers, so
//! the user-space symbolizer is recreated whenever binaries are closed (see
//! [`Sym::forget`]). Our own cache is keyed by the file's identity on the
//! node (device, inode) and survives that. All of this happens on one
//! thread, the symbolizer thread ([`SymThread`]; blazesym's symbolizer is
//! not `Send`, and one thread also serializes the work), and nothing
//! outside the window holds a binary except jobs running there: that way a
//! binary is only ever closed while no symbolizer state refers to its fd.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use super::metrics::Counters;
use super::window::ProcId;
use crate::process::{Binary, BinaryKey, MapEntry, Process};
use crate::symbolize::{Frame, Frames, SymbolFile, Symbolizer};

/// One executable mapping of one process, as the profile will show it.
#[derive(Debug)]
pub struct MappingInfo {
    pub proc: ProcId,
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
    /// GNU build ID, else Go build ID, else a content hash; empty if the
    /// file could not be read.
    pub build_id: String,
    pub is_main: bool,
}

/// One user frame of a stack: its runtime address, the mapping it falls
/// in, and its functions (innermost first), if known.
#[derive(Debug)]
pub struct ResolvedLoc {
    pub addr: u64,
    pub mapping: Option<Arc<MappingInfo>>,
    pub frames: Option<Arc<[Frame]>>,
}

/// One user frame before symbolization: the address and, if it falls in a
/// known mapping, that mapping, its open binary and whether it is the main
/// executable.
pub struct PendingLoc {
    pub addr: u64,
    pub mapping: Option<(MapEntry, Option<Arc<Binary>>, bool)>,
}

impl PendingLoc {
    /// Looks up every address of a stack in a process's mappings.
    pub fn for_stack(process: Option<&Process>, user: &[u64]) -> Vec<PendingLoc> {
        user.iter()
            .map(|&addr| PendingLoc {
                addr,
                mapping: process.and_then(|p| {
                    let (entry, bin) = p.find(addr)?;
                    let is_main = match (&p.exe, &entry.path) {
                        (Some(exe), Some(path)) => exe.as_os_str() == path.as_str(),
                        _ => false,
                    };
                    Some((entry.clone(), bin.cloned(), is_main))
                }),
            })
            .collect()
    }
}

/// One location between the passes of [`Sym::resolve`]: address, mapping,
/// and the (binary, ELF address) to name it by.
type Lookup = (u64, Option<Arc<MappingInfo>>, Option<(BinaryKey, u64)>);

/// The symbolizers and the frame cache.
pub struct Sym {
    user: Symbolizer,
    /// Binaries the current `user` symbolizer has opened by fd path.
    seen: HashSet<BinaryKey>,
    kernel: Option<Symbolizer>,
    want_kernel: bool,
    cache: HashMap<BinaryKey, HashMap<u64, Arc<[Frame]>>>,
    entries: usize,
    cap: usize,
    /// Memory the `user` symbolizer grew by since it was created.
    parsed: usize,
    /// Memory that blazesym's parsed files (symbol tables sorted by
    /// address, DWARF units and line programs, decompressed debug sections,
    /// and the file pages it read them from) may hold between batches. Our own cache keeps every result, so that
    /// state only saves a re-parse when new addresses of the same binary
    /// come; a node running large binaries with debug info (compilers, C++
    /// services) would otherwise keep tens of MB of it for every binary
    /// symbolized, for as long as the binary stays open. Past this much,
    /// all of it is dropped.
    parsed_budget: usize,
    /// Binaries a symbolizer panicked on: never symbolized again, across
    /// resets of `user` (which forget them).
    unsymbolizable: HashSet<BinaryKey>,
    counters: Arc<Counters>,
}

impl Sym {
    /// `cap` bounds the cached addresses; `kernel` loads kallsyms (on first
    /// use) for kernel frames; `parsed_budget` bounds the parsed files kept
    /// between batches (see the field).
    pub fn new(cap: usize, kernel: bool, parsed_budget: usize, counters: Arc<Counters>) -> Self {
        Sym {
            user: Symbolizer::new(false),
            seen: HashSet::new(),
            kernel: None,
            want_kernel: kernel,
            cache: HashMap::new(),
            entries: 0,
            cap,
            parsed: 0,
            parsed_budget,
            unsymbolizable: HashSet::new(),
            counters,
        }
    }

    /// Cached addresses.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Publishes the cache size for `/metrics`.
    fn publish(&self) {
        self.counters
            .symbol_cache_entries
            .store(self.entries as u64, Ordering::Relaxed);
    }

    /// The kernel symbolizer, loading kallsyms on first use.
    pub fn kernel(&mut self) -> Option<&Symbolizer> {
        if self.want_kernel && self.kernel.is_none() {
            self.kernel = Some(Symbolizer::new(true));
        }
        self.kernel.as_ref()
    }

    /// Drops what is known about closed binaries. Their fd numbers may be
    /// reused by the next files opened, so if the path-keyed symbolizer
    /// opened one of them, it starts afresh (and parses every file again
    /// when next asked: hence [`Window::prune_binaries`]'s delay).
    ///
    /// [`Window::prune_binaries`]: super::window::Window::prune_binaries
    pub fn forget(&mut self, closed: &[BinaryKey]) {
        for k in closed {
            if let Some(m) = self.cache.remove(k) {
                self.entries -= m.len();
            }
        }
        if closed.iter().any(|k| self.seen.contains(k)) {
            self.reset_user();
        }
        self.publish();
    }

    fn reset_user(&mut self) {
        self.user = Symbolizer::new(false);
        self.seen.clear();
        self.parsed = 0;
    }

    /// Symbolizes one binary's addresses, then drops the parsed state of
    /// every binary if it outgrew its budget. Returns the frames and
    /// whether the state was dropped (so the heap is worth trimming).
    fn symbolize_within_budget(
        &mut self,
        key: BinaryKey,
        file: &SymbolFile,
        vaddrs: &[u64],
    ) -> (Vec<Frames>, bool) {
        let before = super::memory_in_use();
        let found = self.user.symbolize_file(file, vaddrs);
        self.note_if_unsymbolizable(key, file);
        let grown = match (before, super::memory_in_use()) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            // No way to tell: assume the worst, keep nothing.
            _ => usize::MAX,
        };
        self.parsed = self.parsed.saturating_add(grown);
        if self.parsed < self.parsed_budget {
            return (found, false);
        }
        self.reset_user();
        Counters::inc(&self.counters.symbolizer_resets);
        (found, true)
    }

    /// Remembers, and counts, a binary the symbolizer just gave up on
    /// because it panicked on it (see [`Symbolizer::symbolize_file`]).
    fn note_if_unsymbolizable(&mut self, key: BinaryKey, file: &SymbolFile) {
        if self.user.is_unsymbolizable(&file.path) && self.unsymbolizable.insert(key) {
            Counters::inc(&self.counters.unsymbolizable_binaries);
        }
    }

    /// Resolves stacks of pending locations, each for its process. One
    /// symbolizer batch per binary; cached addresses are not looked up again.
    pub fn resolve(&mut self, stacks: Vec<(ProcId, Vec<PendingLoc>)>) -> Vec<Arc<[ResolvedLoc]>> {
        let mut mappings: HashMap<(ProcId, u64), Arc<MappingInfo>> = HashMap::new();
        let mut files: HashMap<BinaryKey, Option<SymbolFile>> = HashMap::new();
        let mut todo: HashMap<BinaryKey, Vec<u64>> = HashMap::new();
        // Pass 1: mappings, lookup addresses, cache hits and misses.
        let mut lookups: Vec<Vec<Lookup>> = Vec::with_capacity(stacks.len());
        for (proc, locs) in &stacks {
            let mut out = Vec::with_capacity(locs.len());
            for (i, loc) in locs.iter().enumerate() {
                let Some((entry, bin, is_main)) = &loc.mapping else {
                    out.push((loc.addr, None, None));
                    continue;
                };
                let info = mappings
                    .entry((*proc, entry.start))
                    .or_insert_with(|| {
                        Arc::new(MappingInfo {
                            proc: *proc,
                            start: entry.start,
                            end: entry.end,
                            offset: entry.offset,
                            path: entry.path.clone().unwrap_or_default(),
                            build_id: bin
                                .as_ref()
                                .and_then(|b| b.identity())
                                .unwrap_or("")
                                .to_owned(),
                            is_main: *is_main,
                        })
                    })
                    .clone();
                let key = bin.as_ref().and_then(|b| {
                    let file = files
                        .entry(b.key)
                        .or_insert_with(|| SymbolFile::from_binary(b))
                        .as_ref()?;
                    // Return addresses are looked up one byte back, inside
                    // the call instruction.
                    let off = entry.file_offset(loc.addr);
                    let off = if i == 0 { off } else { off.saturating_sub(1) };
                    Some((b.key, file.vaddr(off, entry.offset)?))
                });
                if let Some((bk, vaddr)) = key {
                    let hit = self.cache.get(&bk).is_some_and(|m| m.contains_key(&vaddr));
                    if hit {
                        Counters::inc(&self.counters.symbol_cache_hits);
                    } else {
                        todo.entry(bk).or_default().push(vaddr);
                    }
                }
                out.push((loc.addr, Some(info), key));
            }
            lookups.push(out);
        }
        // Pass 2: symbolize the misses, one batch per binary.
        let mut fresh: HashMap<(BinaryKey, u64), Arc<[Frame]>> = HashMap::new();
        let mut dropped = false;
        for (bk, mut vaddrs) in todo {
            vaddrs.sort_unstable();
            vaddrs.dedup();
            let Some(Some(file)) = files.get(&bk) else {
                continue;
            };
            if self.unsymbolizable.contains(&bk) {
                continue;
            }
            for _ in &vaddrs {
                Counters::inc(&self.counters.symbol_cache_misses);
            }
            self.seen.insert(bk);
            let (found, reset) = self.symbolize_within_budget(bk, file, &vaddrs);
            dropped |= reset;
            for (v, frames) in vaddrs.into_iter().zip(found) {
                fresh.insert((bk, v), frames.into());
            }
        }
        if dropped {
            super::trim_heap();
        }
        // Pass 3: assemble, then cache what was new.
        let result = lookups
            .into_iter()
            .map(|locs| {
                locs.into_iter()
                    .map(|(addr, mapping, key)| {
                        let frames = key
                            .and_then(|k| {
                                fresh
                                    .get(&k)
                                    .cloned()
                                    .or_else(|| self.cache.get(&k.0)?.get(&k.1).cloned())
                            })
                            .filter(|f| !f.is_empty());
                        ResolvedLoc {
                            addr,
                            mapping,
                            frames,
                        }
                    })
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        if self.entries + fresh.len() > self.cap {
            // Simplest bound that cannot thrash per address: start over.
            self.cache.clear();
            self.entries = 0;
            self.reset_user();
            Counters::inc(&self.counters.symbol_cache_evictions);
        }
        for ((bk, v), frames) in fresh {
            if self.entries < self.cap
                && self
                    .cache
                    .entry(bk)
                    .or_default()
                    .insert(v, frames)
                    .is_none()
            {
                self.entries += 1;
            }
        }
        self.publish();
        result
    }
}

/// Work for the symbolizer thread.
type Job = Box<dyn FnOnce(&mut Sym) + Send>;

/// The thread that owns the [`Sym`] and runs every job that symbolizes,
/// one at a time.
pub struct SymThread {
    tx: mpsc::Sender<Job>,
}

impl SymThread {
    /// Starts the thread; `make` builds the `Sym` there. `health` follows
    /// its jobs and learns when it ends.
    pub fn spawn(
        health: Arc<super::health::Worker>,
        make: impl FnOnce() -> Sym + Send + 'static,
    ) -> std::io::Result<SymThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("rprof-symbolize".into())
            .spawn(move || {
                let _dead_on_exit = health.dead_on_drop();
                let mut sym = make();
                while let Ok(job) = rx.recv() {
                    health.job(|| job(&mut sym));
                }
            })?;
        Ok(SymThread { tx })
    }

    /// Runs `f` on the symbolizer thread and waits for its result. `None`
    /// if the thread is gone (it panicked).
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Sym) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |sym| {
            let _ = tx.send(f(sym));
        });
        self.tx.send(job).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessTable;

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as *const () as u64
    }

    #[test]
    fn resolves_own_code_and_caches() {
        let pid = std::process::id();
        let mut table = ProcessTable::new();
        let p = table.observe(pid).unwrap();
        let addr = marker_function();
        let counters = Arc::new(Counters::default());
        let mut sym = Sym::new(1000, false, 64 << 20, counters.clone());
        let r = sym.resolve(vec![(7, PendingLoc::for_stack(Some(p), &[addr, 8]))]);
        let loc = &r[0][0];
        let m = loc.mapping.as_ref().unwrap();
        assert!(m.is_main && m.proc == 7 && !m.build_id.is_empty());
        let frames = loc.frames.as_ref().expect("own code is named");
        assert!(
            frames.last().unwrap().function.contains("marker_function"),
            "{frames:?}"
        );
        assert!(r[0][1].mapping.is_none() && r[0][1].frames.is_none());
        assert_eq!(sym.entries(), 1);
        let r2 = sym.resolve(vec![(8, PendingLoc::for_stack(Some(p), &[addr]))]);
        assert_eq!(r2[0][0].frames.as_ref().unwrap()[..], frames[..]);
        assert_eq!(
            counters
                .symbol_cache_hits
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let key = loc_binary_key(&table, pid, addr);
        sym.forget(&[key]);
        assert_eq!(sym.entries(), 0);
    }

    #[inline(never)]
    fn other_marker() -> u64 {
        other_marker as *const () as u64
    }

    #[test]
    fn parsed_files_are_dropped_beyond_their_budget() {
        let pid = std::process::id();
        let mut table = ProcessTable::new();
        let p = table.observe(pid).unwrap();
        let counters = Arc::new(Counters::default());
        let resets = || {
            counters
                .symbolizer_resets
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let name = |r: &[Arc<[ResolvedLoc]>]| {
            r[0][0]
                .frames
                .as_ref()
                .unwrap()
                .last()
                .unwrap()
                .function
                .clone()
        };
        // No budget: the parsed file is dropped after every batch, and the
        // answers are the same.
        let mut tight = Sym::new(1000, false, 0, counters.clone());
        let a = tight.resolve(vec![(
            1,
            PendingLoc::for_stack(Some(p), &[marker_function()]),
        )]);
        assert_eq!(resets(), 1);
        assert_eq!(tight.parsed, 0);
        let b = tight.resolve(vec![(1, PendingLoc::for_stack(Some(p), &[other_marker()]))]);
        assert_eq!(resets(), 2, "parsed again, dropped again");
        assert!(name(&a).contains("marker_function"));
        assert!(name(&b).contains("other_marker"));
        // Room enough: kept.
        let mut roomy = Sym::new(1000, false, usize::MAX, counters.clone());
        roomy.resolve(vec![(
            1,
            PendingLoc::for_stack(Some(p), &[marker_function()]),
        )]);
        roomy.resolve(vec![(1, PendingLoc::for_stack(Some(p), &[other_marker()]))]);
        assert_eq!(resets(), 2);

        // The growth is read from the allocator, which every thread of the
        // process shares: measured in a process of its own (this test
        // binary, running only the test below), so other tests' memory
        // does not blur it.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "agent::resolve::tests::parsed_growth_alone"])
            .args(["--nocapture", "--test-threads=1"])
            .env("RPROF_PARSED_GROWTH_ALONE", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }

    /// Run by the test above in a process of its own.
    #[test]
    fn parsed_growth_alone() {
        if std::env::var_os("RPROF_PARSED_GROWTH_ALONE").is_none() {
            return;
        }
        let pid = std::process::id();
        let mut table = ProcessTable::new();
        let p = table.observe(pid).unwrap();
        let mut sym = Sym::new(1000, false, usize::MAX, Arc::new(Counters::default()));
        sym.resolve(vec![(
            1,
            PendingLoc::for_stack(Some(p), &[marker_function()]),
        )]);
        // This test binary's DWARF is megabytes; naming one function
        // parses a good part of it.
        assert!(sym.parsed > 1 << 20, "{} bytes accounted", sym.parsed);
        let first = sym.parsed;
        let mut capped = Sym::new(1000, false, first / 2, Arc::new(Counters::default()));
        capped.resolve(vec![(
            1,
            PendingLoc::for_stack(Some(p), &[marker_function()]),
        )]);
        assert_eq!(capped.parsed, 0, "over half the growth: dropped");
    }

    fn loc_binary_key(t: &ProcessTable, pid: u32, addr: u64) -> BinaryKey {
        t.get(pid).unwrap().find(addr).unwrap().1.unwrap().key
    }
}
