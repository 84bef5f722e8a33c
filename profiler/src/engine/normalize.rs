//! Normalization: a runtime address of a process becomes a place in a file
//! (mapping, file offset, build ID). That is all offline symbolization
//! needs, and it is the boundary between what must happen on the node,
//! while the process lives (reading `/proc`), and what can happen later,
//! anywhere.
//!
//! A new stack is normalized when it is first seen, against the mappings
//! of that moment, so a process that `exec`s or `dlclose`s later still
//! has its earlier samples named from the files they ran in. Each frame
//! then holds a reference to its mapping, and the mapping holds the open
//! binary, so nothing needs the process's snapshot afterwards.

use std::collections::HashMap;
use std::sync::Arc;

use super::identity::ProcKey;
use crate::process::{Binary, MapEntry, Process};

/// One executable mapping of one process, shared by every frame in it.
#[derive(Debug)]
pub struct MappingRef {
    pub proc: ProcKey,
    pub entry: MapEntry,
    /// The opened file; `None` if it could not be opened (its frames keep
    /// their addresses).
    pub binary: Option<Arc<Binary>>,
    /// Whether this is the process's main executable (pprof lists it
    /// first).
    pub is_main: bool,
}

impl MappingRef {
    /// What identifies the file for offline symbolization (see
    /// [`Binary::identity`]); empty if it could not be read.
    pub fn build_id(&self) -> &str {
        self.binary
            .as_ref()
            .and_then(|b| b.identity())
            .unwrap_or("")
    }

    /// The file path as the process saw it.
    pub fn path(&self) -> &str {
        self.entry.path.as_deref().unwrap_or("")
    }
}

/// A stack's user frames, each with its mapping (`None`: outside every
/// known executable mapping).
pub type UserMaps = Arc<[Option<Arc<MappingRef>>]>;

/// The mappings handed out for one live process, so that every frame in a
/// mapping shares one [`MappingRef`]. Keyed by start and file identity:
/// after an `exec` or a reload at the same address the new file gets a
/// reference of its own.
#[derive(Default)]
pub struct MappingCache {
    refs: HashMap<(u64, u64, u64, u64), Arc<MappingRef>>,
}

impl MappingCache {
    /// The frames of `user` in `process`'s mappings. The second value says
    /// whether some address fell outside every mapping (a `dlopen` or an
    /// `exec` since the snapshot, or JIT code).
    pub fn normalize(
        &mut self,
        key: ProcKey,
        process: Option<&Process>,
        user: &[u64],
        time_ns: u64,
    ) -> (UserMaps, bool) {
        let mut missed = false;
        let maps: Vec<Option<Arc<MappingRef>>> = user
            .iter()
            .map(|&addr| {
                let found = process.and_then(|p| self.mapping_of(key, p, addr, time_ns));
                missed |= found.is_none();
                found
            })
            .collect();
        (maps.into(), missed)
    }

    fn mapping_of(
        &mut self,
        key: ProcKey,
        p: &Process,
        addr: u64,
        t: u64,
    ) -> Option<Arc<MappingRef>> {
        let found = p.find_at(addr, t)?;
        let (entry, binary) = (found.entry, found.binary);
        let id = (entry.start, entry.inode, entry.offset, found.from_ns);
        let r = self.refs.entry(id).or_insert_with(|| {
            let is_main = match (&p.exe, &entry.path) {
                (Some(exe), Some(path)) => exe.as_os_str() == path.as_str(),
                _ => false,
            };
            Arc::new(MappingRef {
                proc: key,
                entry: entry.clone(),
                binary: binary.cloned(),
                is_main,
            })
        });
        Some(r.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessTable;

    #[test]
    fn own_code_normalizes_to_one_shared_mapping() {
        let pid = std::process::id();
        let mut procs = ProcessTable::new();
        let p = procs.observe(pid).expect("own process");
        let here = own_code_normalizes_to_one_shared_mapping as *const () as u64;
        let key = ProcKey { pid, start_ns: 1 };
        let mut cache = MappingCache::default();
        let (maps, missed) = cache.normalize(key, Some(p), &[here, here + 1, 8], 1);
        assert!(missed, "address 8 is in no mapping");
        let (a, b) = (maps[0].as_ref().unwrap(), maps[1].as_ref().unwrap());
        assert!(Arc::ptr_eq(a, b), "one reference per mapping");
        assert!(a.is_main, "test code lives in the main executable");
        assert_eq!(b.entry.file_offset(here + 1), a.entry.file_offset(here) + 1);
        assert!(!a.build_id().is_empty());
        assert!(maps[2].is_none());
    }
}
