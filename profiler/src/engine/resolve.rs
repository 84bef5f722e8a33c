//! Resolve: normalized frames become named frames.
//!
//! Each distinct (binary, ELF address) is symbolized once, in one batch
//! per binary, and kept in a cache keyed by the file's identity on the
//! node (device, inode): every process mapping the binary shares it. The
//! ELF/DWARF symbolizer underneath keys its parsed files by the
//! `/proc/self/fd/N` path of our open binary, so a binary must be
//! forgotten here ([`Resolver::forget`]) before its fd is closed (the next
//! file opened may get the number).
//!
//! There is one rule for which address names a frame ([`lookup_pc`]): the
//! innermost frame of each stack as is, every other one a byte earlier,
//! inside the call its return address follows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::memory;
use super::normalize::{MappingRef, UserMaps};
use crate::process::BinaryKey;
use crate::symbolize::debuginfod::Debuginfod;
use crate::symbolize::{Frame, Frames, SymbolFile, Symbolizer};

/// The address to look up for a frame: a sampled PC (the stack's first
/// frame, kernel or user) as is; a return address one byte earlier, so
/// that it names the call and not the line after it.
pub fn lookup_pc(addr: u64, is_leaf: bool) -> u64 {
    if is_leaf {
        addr
    } else {
        addr.saturating_sub(1)
    }
}

/// One user frame of a stack: its runtime address, the mapping it falls
/// in, and its functions (innermost first), if known.
#[derive(Debug)]
pub struct ResolvedLoc {
    pub addr: u64,
    pub mapping: Option<Arc<MappingRef>>,
    pub frames: Option<Arc<[Frame]>>,
}

/// One stack to resolve: its user addresses and their mappings (as many
/// as the normalized stack kept).
pub struct Pending<'a> {
    pub addrs: &'a [u64],
    pub maps: &'a UserMaps,
}

/// Cache and budget counters, for the agent's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResolveStats {
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    /// Times the cache was emptied for reaching its entry cap.
    pub evictions: u64,
    /// Times the parsed symbol state was dropped for outgrowing its budget.
    pub resets: u64,
    /// Binaries given up on because a symbolizer panicked on them.
    pub unsymbolizable: u64,
}

/// Limits of a [`Resolver`].
#[derive(Clone, Copy, Debug)]
pub struct ResolveLimits {
    /// Names the frames (`false`: mappings only, for raw profiles).
    pub symbolize: bool,
    /// Addresses kept in the cache.
    pub cache_entries: usize,
    /// Memory that parsed symbol tables and debug info may keep between
    /// batches: our cache keeps every result, so that state only saves a
    /// re-parse when new addresses of the same binary come, and a node
    /// running large binaries with debug info would otherwise keep tens of
    /// MB of it per binary. Past this much, all of it is dropped.
    pub parsed_memory: usize,
}

impl ResolveLimits {
    /// No limits: a bounded capture that symbolizes once, at its end.
    pub fn unbounded(symbolize: bool) -> ResolveLimits {
        ResolveLimits {
            symbolize,
            cache_entries: usize::MAX,
            parsed_memory: usize::MAX,
        }
    }
}

/// The symbolizers and the frame cache.
pub struct Resolver {
    user: Symbolizer,
    /// Given to every `user` symbolizer (opt-in; see `Symbolizer::with_debuginfod`).
    debuginfod: Option<Debuginfod>,
    /// Binaries the current `user` symbolizer has opened by fd path.
    seen: HashSet<BinaryKey>,
    cache: HashMap<BinaryKey, HashMap<u64, Arc<[Frame]>>>,
    limits: ResolveLimits,
    /// Memory the `user` symbolizer grew by since it was created.
    parsed: usize,
    /// Binaries a symbolizer panicked on: never symbolized again, across
    /// resets of `user` (which forget them).
    unsymbolizable: HashSet<BinaryKey>,
    stats: ResolveStats,
}

impl Resolver {
    pub fn new(limits: ResolveLimits) -> Self {
        Resolver {
            user: Symbolizer::new(false),
            debuginfod: None,
            seen: HashSet::new(),
            cache: HashMap::new(),
            limits,
            parsed: 0,
            unsymbolizable: HashSet::new(),
            stats: ResolveStats::default(),
        }
    }

    pub fn stats(&self) -> ResolveStats {
        self.stats
    }

    /// Drops what is known about binaries about to be closed. If the
    /// path-keyed symbolizer opened one of them it starts afresh, and
    /// parses every file again when next asked (hence the delay before
    /// binaries are closed; see [`super::ingest::Ingest::prune_binaries`]).
    pub fn forget(&mut self, closed: &[BinaryKey]) {
        for k in closed {
            if let Some(m) = self.cache.remove(k) {
                self.stats.entries -= m.len() as u64;
            }
        }
        if closed.iter().any(|k| self.seen.contains(k)) {
            self.reset_user();
        }
    }

    /// Names binaries without debug info here from debuginfod servers.
    pub fn with_debuginfod(mut self, d: Option<Debuginfod>) -> Self {
        self.user = Symbolizer::new(false).with_debuginfod(d.clone());
        self.debuginfod = d;
        self
    }

    fn reset_user(&mut self) {
        self.user = Symbolizer::new(false).with_debuginfod(self.debuginfod.clone());
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
        let measure = self.limits.parsed_memory != usize::MAX;
        let before = measure.then(memory::in_use).flatten();
        let found = self.user.symbolize_file(file, vaddrs);
        self.note_if_unsymbolizable(key, file);
        if !measure {
            return (found, false);
        }
        let grown = match (before, memory::in_use()) {
            (Some(b), Some(a)) => a.saturating_sub(b),
            // No way to tell: assume the worst, keep nothing.
            _ => usize::MAX,
        };
        self.parsed = self.parsed.saturating_add(grown);
        if self.parsed < self.limits.parsed_memory {
            return (found, false);
        }
        self.reset_user();
        self.stats.resets += 1;
        (found, true)
    }

    /// Remembers, and counts, a binary the symbolizer just gave up on
    /// because it panicked on it (see [`Symbolizer::symbolize_file`]).
    fn note_if_unsymbolizable(&mut self, key: BinaryKey, file: &SymbolFile) {
        if self.user.is_unsymbolizable(&file.path) && self.unsymbolizable.insert(key) {
            self.stats.unsymbolizable += 1;
        }
    }

    /// Resolves stacks: one symbolizer batch per binary; cached addresses
    /// are not looked up again.
    pub fn resolve(&mut self, stacks: &[Pending<'_>]) -> Vec<Arc<[ResolvedLoc]>> {
        // Pass 1: the (binary, ELF address) of every frame; cache misses.
        let mut files: HashMap<BinaryKey, Option<SymbolFile>> = HashMap::new();
        let mut todo: HashMap<BinaryKey, Vec<u64>> = HashMap::new();
        let mut lookups: Vec<Vec<Option<(BinaryKey, u64)>>> = Vec::with_capacity(stacks.len());
        for st in stacks {
            let mut out = Vec::with_capacity(st.maps.len());
            for (i, (m, &addr)) in st.maps.iter().zip(st.addrs).enumerate() {
                let key = m.as_ref().and_then(|m| {
                    if !self.limits.symbolize {
                        return None;
                    }
                    let b = m.binary.as_ref()?;
                    let file = files
                        .entry(b.key)
                        .or_insert_with(|| SymbolFile::from_binary(b))
                        .as_ref()?;
                    let off = lookup_pc(m.entry.file_offset(addr), i == 0);
                    Some((b.key, file.vaddr(off, m.entry.offset)?))
                });
                if let Some((bk, vaddr)) = key {
                    if self.cache.get(&bk).is_some_and(|c| c.contains_key(&vaddr)) {
                        self.stats.hits += 1;
                    } else {
                        todo.entry(bk).or_default().push(vaddr);
                    }
                }
                out.push(key);
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
            self.stats.misses += vaddrs.len() as u64;
            self.seen.insert(bk);
            let (found, reset) = self.symbolize_within_budget(bk, file, &vaddrs);
            dropped |= reset;
            for (v, frames) in vaddrs.into_iter().zip(found) {
                fresh.insert((bk, v), frames.into());
            }
        }
        if dropped {
            memory::trim_heap();
        }
        // Pass 3: assemble, then cache what was new.
        let result = stacks
            .iter()
            .zip(lookups)
            .map(|(st, keys)| {
                st.maps
                    .iter()
                    .zip(st.addrs)
                    .zip(keys)
                    .map(|((m, &addr), key)| ResolvedLoc {
                        addr,
                        mapping: m.clone(),
                        frames: key
                            .and_then(|k| {
                                fresh
                                    .get(&k)
                                    .cloned()
                                    .or_else(|| self.cache.get(&k.0)?.get(&k.1).cloned())
                            })
                            .filter(|f| !f.is_empty()),
                    })
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        self.cache_fresh(fresh);
        result
    }

    fn cache_fresh(&mut self, fresh: HashMap<(BinaryKey, u64), Arc<[Frame]>>) {
        let cap = self.limits.cache_entries as u64;
        if self.stats.entries + fresh.len() as u64 > cap {
            // Simplest bound that cannot thrash per address: start over.
            self.cache.clear();
            self.stats.entries = 0;
            self.reset_user();
            self.stats.evictions += 1;
        }
        for ((bk, v), frames) in fresh {
            if self.stats.entries < cap
                && self
                    .cache
                    .entry(bk)
                    .or_default()
                    .insert(v, frames)
                    .is_none()
            {
                self.stats.entries += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::identity::ProcKey;
    use crate::engine::normalize::MappingCache;
    use crate::process::ProcessTable;

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as *const () as u64
    }

    #[inline(never)]
    fn other_marker() -> u64 {
        other_marker as *const () as u64
    }

    fn maps_of(addrs: &[u64]) -> UserMaps {
        let pid = std::process::id();
        let mut table = ProcessTable::new();
        let p = table.observe(pid).unwrap();
        MappingCache::default()
            .normalize(ProcKey { pid, start_ns: 1 }, Some(p), addrs, 1)
            .0
    }

    fn name(r: &[Arc<[ResolvedLoc]>]) -> String {
        r[0][0]
            .frames
            .as_ref()
            .unwrap()
            .last()
            .unwrap()
            .function
            .clone()
    }

    #[test]
    fn lookup_pc_moves_return_addresses_into_their_call() {
        assert_eq!(lookup_pc(0x1000, true), 0x1000);
        assert_eq!(lookup_pc(0x1000, false), 0xfff);
        assert_eq!(lookup_pc(0, false), 0);
    }

    #[test]
    fn resolves_own_code_and_caches() {
        let addrs = [marker_function(), 8];
        let maps = maps_of(&addrs);
        let mut r = Resolver::new(ResolveLimits::unbounded(true));
        let out = r.resolve(&[Pending {
            addrs: &addrs,
            maps: &maps,
        }]);
        let loc = &out[0][0];
        assert!(loc.mapping.as_ref().unwrap().is_main);
        assert!(name(&out).contains("marker_function"), "{loc:?}");
        assert!(out[0][1].mapping.is_none() && out[0][1].frames.is_none());
        assert_eq!(r.stats().entries, 1);
        r.resolve(&[Pending {
            addrs: &addrs[..1],
            maps: &maps,
        }]);
        assert_eq!(r.stats().hits, 1);
        let key = loc.mapping.as_ref().unwrap().binary.as_ref().unwrap().key;
        r.forget(&[key]);
        assert_eq!(r.stats().entries, 0);
    }

    #[test]
    fn raw_mode_keeps_mappings_and_names_nothing() {
        let addrs = [marker_function()];
        let maps = maps_of(&addrs);
        let mut r = Resolver::new(ResolveLimits::unbounded(false));
        let out = r.resolve(&[Pending {
            addrs: &addrs,
            maps: &maps,
        }]);
        assert!(out[0][0].mapping.is_some() && out[0][0].frames.is_none());
    }

    #[test]
    fn parsed_files_are_dropped_beyond_their_budget() {
        let limits = ResolveLimits {
            symbolize: true,
            cache_entries: 1000,
            parsed_memory: 0,
        };
        let mut tight = Resolver::new(limits);
        let a = [marker_function()];
        let b = [other_marker()];
        let (ma, mb) = (maps_of(&a), maps_of(&b));
        let ra = tight.resolve(&[Pending {
            addrs: &a,
            maps: &ma,
        }]);
        assert_eq!(tight.stats().resets, 1);
        let rb = tight.resolve(&[Pending {
            addrs: &b,
            maps: &mb,
        }]);
        assert_eq!(tight.stats().resets, 2, "parsed again, dropped again");
        assert!(name(&ra).contains("marker_function"));
        assert!(name(&rb).contains("other_marker"));
    }
}
