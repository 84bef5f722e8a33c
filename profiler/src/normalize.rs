//! Normalization: a runtime address in a process becomes (mapping, file
//! offset, binary). This is everything offline symbolization needs, and the
//! boundary between what must happen on the node (reading `/proc`) and what
//! can happen anywhere.

use std::collections::HashMap;
use std::sync::Arc;

use crate::process::{Binary, MapEntry, ProcessTable};

/// One executable mapping of one process that samples touched.
#[derive(Clone)]
pub struct UserMapping {
    pub pid: u32,
    pub entry: MapEntry,
    /// The opened file, when it could be opened.
    pub binary: Option<Arc<Binary>>,
    /// Whether this is the process's main executable.
    pub is_main: bool,
}

/// An address resolved against its process's mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Index into [`Normalizer::mappings`].
    pub mapping: usize,
    /// Offset of the address in the mapped file.
    pub file_offset: u64,
}

/// Resolves addresses and collects the mappings they fall in.
pub struct Normalizer<'a> {
    procs: &'a ProcessTable,
    mappings: Vec<UserMapping>,
    index: HashMap<(u32, u64), usize>,
}

impl<'a> Normalizer<'a> {
    pub fn new(procs: &'a ProcessTable) -> Self {
        Normalizer {
            procs,
            mappings: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Resolves `addr` of process `pid`; `None` for addresses outside every
    /// known executable mapping (JIT code, a process we never saw).
    pub fn normalize(&mut self, pid: u32, addr: u64) -> Option<Normalized> {
        let proc = self.procs.get(pid)?;
        let (entry, binary) = proc.find(addr)?;
        let mapping = *self.index.entry((pid, entry.start)).or_insert_with(|| {
            let is_main = match (&proc.exe, &entry.path) {
                (Some(exe), Some(path)) => exe.as_os_str() == path.as_str(),
                _ => false,
            };
            self.mappings.push(UserMapping {
                pid,
                entry: entry.clone(),
                binary: binary.cloned(),
                is_main,
            });
            self.mappings.len() - 1
        });
        Some(Normalized {
            mapping,
            file_offset: entry.file_offset(addr),
        })
    }

    /// The mappings touched so far, in first-touch order.
    pub fn mappings(&self) -> &[UserMapping] {
        &self.mappings
    }
}

/// Checks a new stack's addresses against the process's maps while it is
/// still alive, re-reading them if any address misses (a dlopen or exec
/// since the last snapshot). Returns true when the maps were re-read.
pub fn check_stack(procs: &mut ProcessTable, pid: u32, user: &[u64]) -> bool {
    let Some(p) = procs.observe(pid) else {
        return false;
    };
    if user.iter().any(|&a| p.find(a).is_none()) {
        return procs.refresh(pid);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_own_code_to_file_offset() {
        let pid = std::process::id();
        let mut procs = ProcessTable::new();
        procs.observe(pid).unwrap();
        let here = normalizes_own_code_to_file_offset as *const () as u64;
        let mut n = Normalizer::new(&procs);
        let a = n.normalize(pid, here).expect("own code normalizes");
        let b = n.normalize(pid, here + 1).unwrap();
        assert_eq!(a.mapping, b.mapping);
        assert_eq!(b.file_offset, a.file_offset + 1);
        let m = &n.mappings()[a.mapping];
        assert!(m.is_main, "test code lives in the main executable");
        assert!(m.entry.contains(here));
        assert!(n.normalize(pid, 8).is_none());
    }
}
