//! A process's mappings over time.
//!
//! The current mappings live in [`Process::maps`], each valid from the
//! time its MMAP2 event said (or since before the capture, for what
//! `/proc` showed). When an `exec` or a new mapping at the same address
//! replaces one, it moves to [`Timeline`]'s ended list with the time it
//! stopped applying. A sample is then looked up at its own timestamp
//! ([`Process::find_at`]): a sample taken before an `exec` is named from
//! the old binary even when the events of the `exec` were read first, and
//! a library unloaded and another loaded at the same address name each
//! sample from the one mapped at its time.

use std::collections::HashMap;
use std::sync::Arc;

use super::{maps, Binary, MapEntry, Process};

/// When the mappings of a process applied.
#[derive(Default)]
pub struct Timeline {
    /// When each current mapping started to apply, by its start address;
    /// absent: since before the capture.
    since: HashMap<u64, u64>,
    /// Mappings that no longer apply, oldest first.
    ended: Vec<Ended>,
    /// Bumped at every change, so that stacks normalized with a miss can
    /// be tried again.
    pub gen: u32,
    /// An `exec` just happened: the next mapping is the main executable.
    main_pending: bool,
    /// When mappings stopped applying (an `exec`, a new mapping over an
    /// old one), in order: the epoch of a time is how many came before it.
    ends: Vec<u64>,
}

/// A mapping that applied during `[from_ns, until_ns)`.
pub struct Ended {
    pub entry: MapEntry,
    pub binary: Option<Arc<Binary>>,
    pub from_ns: u64,
    pub until_ns: u64,
    /// Ended by an `exec` (not by a new mapping over it).
    pub by_exec: bool,
}

/// How long after an exec event a sample's user registers may still be
/// those of the old program: the rest of the `execve` call, which loads
/// the new one.
const EXEC_GRACE_NS: u64 = 20_000_000;

impl Ended {
    fn found(&self) -> Found<'_> {
        Found {
            entry: &self.entry,
            binary: self.binary.as_ref(),
            from_ns: self.from_ns,
        }
    }
}

/// The mapping an address fell in at some time.
pub struct Found<'a> {
    pub entry: &'a MapEntry,
    pub binary: Option<&'a Arc<Binary>>,
    /// When the mapping started to apply (0: before the capture): two
    /// mappings at one address are told apart by it.
    pub from_ns: u64,
}

impl Process {
    /// The mapping that held `addr` at time `t` (CLOCK_MONOTONIC ns).
    pub fn find_at(&self, addr: u64, t: u64) -> Option<Found<'_>> {
        if let Some(m) = maps::find(&self.maps, addr) {
            let from_ns = self.history.since.get(&m.start).copied().unwrap_or(0);
            if from_ns <= t {
                return Some(Found {
                    entry: m,
                    binary: self.binaries.get(&m.start),
                    from_ns,
                });
            }
        }
        let ended = |e: &&Ended| e.entry.contains(addr) && e.from_ns <= t;
        let mut old = self.history.ended.iter().rev().filter(ended);
        if let Some(e) = old.clone().find(|e| t < e.until_ns) {
            return Some(e.found());
        }
        // A sample taken inside `execve`, after the exec event but before
        // the new program runs: its user registers still point into the
        // old program (the libc wrapper that made the call).
        old.find(|e| e.by_exec && t - e.until_ns < EXEC_GRACE_NS)
            .map(Ended::found)
    }

    /// A new executable mapping at time `t`: the current ones it overlaps
    /// stop applying.
    pub fn map_at(&mut self, entry: MapEntry, binary: Option<Arc<Binary>>, t: u64) {
        let (start, end) = (entry.start, entry.end);
        self.end_where(t, false, |m| m.start < end && start < m.end);
        if self.history.main_pending && entry.is_file() {
            self.exe = entry.path.as_ref().map(Into::into);
            self.history.main_pending = false;
        }
        let at = self.maps.partition_point(|m| m.start < start);
        if let Some(b) = binary {
            self.binaries.insert(start, b);
        }
        self.history.since.insert(start, t);
        self.maps.insert(at, entry);
        self.history.gen += 1;
    }

    /// An `exec` at time `t`: every mapping stops applying; the process
    /// is now `comm`, and its next file mapping is its executable.
    pub fn exec_at(&mut self, comm: &str, t: u64) {
        self.end_where(t, true, |_| true);
        comm.clone_into(&mut self.comm);
        self.exe = None;
        self.history.main_pending = true;
        self.history.gen += 1;
    }

    /// Which mapping epoch time `t` falls in: the same address means the
    /// same code within one epoch, so a stack's key includes it (an
    /// identical stack after an `exec` is another stack).
    pub fn epoch_at(&self, t: u64) -> u32 {
        self.history.ends.partition_point(|&e| e <= t) as u32
    }

    /// Moves the current mappings matching `pred` to the ended list.
    fn end_where(&mut self, t: u64, by_exec: bool, pred: impl Fn(&MapEntry) -> bool) {
        let (gone, kept): (Vec<MapEntry>, Vec<MapEntry>) = std::mem::take(&mut self.maps)
            .into_iter()
            .partition(|m| pred(m));
        self.maps = kept;
        if !gone.is_empty() {
            let at = self.history.ends.partition_point(|&e| e <= t);
            self.history.ends.insert(at, t);
        }
        for entry in gone {
            let from_ns = self.history.since.remove(&entry.start).unwrap_or(0);
            let binary = self.binaries.remove(&entry.start);
            self.history.ended.push(Ended {
                entry,
                binary,
                from_ns,
                until_ns: t,
                by_exec,
            });
        }
    }

    /// Forgets mappings that stopped applying before `t`: no sample that
    /// old is still to come.
    pub fn prune_ended(&mut self, t: u64) {
        self.history.ended.retain(|e| e.until_ns >= t);
    }

    /// The child of a `fork` at time `t`: the parent's mappings, from then on.
    pub fn forked(parent: &Process, pid: u32, t: u64) -> Process {
        let since = parent.maps.iter().map(|m| (m.start, t)).collect();
        Process {
            pid,
            comm: parent.comm.clone(),
            exe: parent.exe.clone(),
            maps: parent.maps.clone(),
            binaries: parent.binaries.clone(),
            history: Timeline {
                since,
                ..Timeline::default()
            },
            born_ns: t,
            exit_ns: u64::MAX,
            last_refresh: std::time::Instant::now(),
        }
    }

    /// A process known only from its events (its parent was not readable):
    /// no mappings until they arrive.
    pub fn born(pid: u32, comm: &str, t: u64) -> Process {
        Process {
            pid,
            comm: comm.to_owned(),
            exe: None,
            maps: Vec::new(),
            binaries: HashMap::new(),
            history: Timeline::default(),
            born_ns: t,
            exit_ns: u64::MAX,
            last_refresh: std::time::Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64, inode: u64, path: &str) -> MapEntry {
        MapEntry {
            start,
            end,
            readable: true,
            executable: true,
            offset: 0,
            dev: (8, 1),
            inode,
            path: Some(path.into()),
            deleted: false,
        }
    }

    #[test]
    fn each_time_sees_its_own_mapping() {
        let mut p = Process::born(7, "alpha", 100);
        p.map_at(entry(0x40_0000, 0x50_0000, 1, "/bin/alpha"), None, 110);
        assert_eq!(p.exe.as_deref(), None, "no exec seen: main unknown");
        p.exec_at("bravo", 2_000);
        p.map_at(entry(0x40_0000, 0x50_0000, 2, "/bin/bravo"), None, 2_010);
        assert_eq!(
            p.exe.as_deref().and_then(|e| e.to_str()),
            Some("/bin/bravo")
        );
        let at = |p: &Process, t| p.find_at(0x40_1000, t).map(|f| f.entry.inode);
        assert_eq!(
            (p.epoch_at(500), p.epoch_at(2_000)),
            (0, 1),
            "the exec starts an epoch"
        );
        assert_eq!(at(&p, 105), None, "before the first mapping");
        assert_eq!(at(&p, 500), Some(1), "alpha before the exec");
        assert_eq!(
            at(&p, 2_005),
            Some(1),
            "inside execve: still the old program"
        );
        assert_eq!(at(&p, 3_000), Some(2), "bravo after");
        // A reload at the same address.
        p.map_at(entry(0x40_0000, 0x50_0000, 3, "/bin/charlie"), None, 4_000);
        assert_eq!(at(&p, 3_999), Some(2));
        assert_eq!(at(&p, 4_000), Some(3));
        p.prune_ended(3_000);
        assert_eq!(at(&p, 500), None, "pruned");
        assert_eq!(at(&p, 3_500), Some(2));
        // The reload ended bravo's mapping, not an exec: no grace.
        assert_eq!(at(&p, 4_001), Some(3));
    }

    #[test]
    fn the_old_program_is_only_seen_during_the_exec() {
        let mut p = Process::born(7, "alpha", 0);
        p.map_at(entry(0x40_0000, 0x50_0000, 1, "/bin/alpha"), None, 10);
        p.exec_at("bravo", 1_000);
        p.map_at(entry(0x60_0000, 0x70_0000, 2, "/bin/bravo"), None, 1_010);
        let at = |t| p.find_at(0x40_1000, t).map(|f| f.entry.inode);
        assert_eq!(at(1_000 + 5_000_000), Some(1), "inside execve");
        assert_eq!(at(1_000 + 30_000_000), None, "long after it");
    }

    #[test]
    fn a_child_inherits_its_parents_mappings_from_the_fork_on() {
        let mut parent = Process::born(7, "sh", 0);
        parent.map_at(entry(0x1000, 0x2000, 1, "/bin/sh"), None, 0);
        let child = Process::forked(&parent, 8, 500);
        assert_eq!(child.find_at(0x1800, 600).map(|f| f.entry.inode), Some(1));
        assert!(child.find_at(0x1800, 400).is_none());
        assert_eq!(child.born_ns, 500);
    }
}
