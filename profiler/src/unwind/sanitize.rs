//! No garbage frames: a user stack ends at its first address outside every
//! executable mapping of its process.
//!
//! A frame-pointer walk through code that does not keep rbp as a frame
//! pointer (most distribution libraries, Rust and C built with
//! optimization) reads whatever that code saved in rbp as the next frame,
//! and the word after it as a return address. The walk usually leaves the
//! stack soon after, but the addresses it reported on the way are garbage:
//! locations in no mapping, which every profile viewer shows as unknown
//! frames. The BPF table unwinder checks its own frame-pointer steps (the
//! process's mapping list is at hand there); stacks from `bpf_get_stack`
//! (`--unwind fp`, and processes without tables) are checked here, against
//! the process's mappings as `/proc` gave them.
//!
//! Only an address in *no* executable mapping is garbage: an anonymous
//! executable mapping is JIT code, where a frame is legitimate (it keeps
//! its address, unnamed). An address can also miss because the process
//! mapped code since we read its maps (`dlopen`, `exec`): so on a miss the
//! maps are read again (at most every 200 ms per process) before the stack
//! is cut.

use std::borrow::Cow;

use profiler_ebpf::abi::FLAG_FP_TRUNCATED;

use crate::process::{maps, MapEntry, ProcessTable};

/// How many leading frames of `stack` (innermost first) lie in some
/// executable mapping of `mappings` (sorted by start): the stack is cut
/// there.
pub fn mapped_prefix(mappings: &[MapEntry], stack: &[u64]) -> usize {
    // Neighbouring frames are mostly in one binary: try the last hit first.
    let mut last: Option<&MapEntry> = None;
    stack
        .iter()
        .position(|&addr| {
            if last.is_some_and(|m| m.contains(addr)) {
                return false;
            }
            last = maps::find(mappings, addr);
            last.is_none()
        })
        .unwrap_or(stack.len())
}

/// Cuts user stacks at garbage addresses, and counts the stacks cut
/// (here or, through [`FLAG_FP_TRUNCATED`], by the BPF unwinder).
#[derive(Debug, Default)]
pub struct Sanitizer {
    truncated: u64,
}

impl Sanitizer {
    pub fn new() -> Sanitizer {
        Sanitizer::default()
    }

    /// `stack` of process `pid`, cut at its first address outside every
    /// executable mapping, re-reading the process's maps first if an
    /// address misses. Returns the stack and whether the maps were re-read
    /// (then the caller reloads the process's unwind tables). A process we
    /// know nothing of (gone before we could read its maps) keeps its
    /// stack: there is nothing to judge it by.
    pub fn user_stack<'a>(
        &mut self,
        procs: &mut ProcessTable,
        pid: u32,
        stack: Cow<'a, [u64]>,
        flags: u32,
    ) -> (Cow<'a, [u64]>, bool) {
        let Some(p) = procs.observe(pid) else {
            return (stack, false);
        };
        // Every frame, also the table unwinder's: it checks its frames
        // against the mapping list it was given, which an exec makes stale
        // until the process is loaded again (and a stale list can place
        // the new image's code in the old image's tables).
        let mut keep = mapped_prefix(&p.maps, &stack);
        let mut refreshed = false;
        if keep < stack.len() && procs.refresh(pid) {
            refreshed = true;
            if let Some(p) = procs.get(pid) {
                keep = mapped_prefix(&p.maps, &stack);
            }
        }
        let cut = keep < stack.len();
        if cut || flags & FLAG_FP_TRUNCATED != 0 {
            self.truncated += 1;
        }
        let stack = match stack {
            _ if !cut => stack,
            Cow::Borrowed(s) => Cow::Borrowed(&s[..keep]),
            Cow::Owned(mut v) => {
                v.truncate(keep);
                Cow::Owned(v)
            }
        };
        (stack, refreshed)
    }

    /// Stacks cut so far.
    pub fn truncated(&self) -> u64 {
        self.truncated
    }
}

/// The summary-line phrase for `n` cut stacks (`"12 stacks cut at a
/// garbage return address, "`), empty for none.
pub fn summary(n: u64) -> String {
    match n {
        0 => String::new(),
        1 => "1 stack cut at a garbage return address, ".to_owned(),
        _ => format!("{n} stacks cut at a garbage return address, "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, end: u64, path: Option<&str>) -> MapEntry {
        MapEntry {
            start,
            end,
            readable: true,
            executable: true,
            offset: 0,
            dev: (0, 0),
            inode: u64::from(path.is_some()),
            path: path.map(str::to_owned),
            deleted: false,
        }
    }

    #[test]
    fn cuts_at_the_first_unmapped_address() {
        let maps = [
            mapping(0x1000, 0x2000, Some("/bin/a")),
            mapping(0x5000, 0x6000, Some("/lib/libc.so.6")),
        ];
        // All mapped: kept whole.
        assert_eq!(mapped_prefix(&maps, &[0x1100, 0x5100, 0x1fff]), 3);
        // A garbage return address, and a mapped one after it: the stack
        // ends before the garbage, and what follows is not trusted either.
        assert_eq!(mapped_prefix(&maps, &[0x1100, 0x5100, 0x3000, 0x1200]), 2);
        // Mapping ends are exclusive; below the first mapping is unmapped.
        assert_eq!(mapped_prefix(&maps, &[0x1100, 0x2000]), 1);
        assert_eq!(mapped_prefix(&maps, &[0x10, 0x1100]), 0);
        assert_eq!(mapped_prefix(&maps, &[]), 0);
    }

    #[test]
    fn anonymous_executable_code_is_a_frame() {
        // JIT code: an anonymous executable mapping.
        let maps = [
            mapping(0x1000, 0x2000, Some("/bin/node")),
            mapping(0x7000, 0x8000, None),
        ];
        assert_eq!(mapped_prefix(&maps, &[0x7100, 0x1100, 0x7200]), 3);
        assert_eq!(mapped_prefix(&maps, &[0x7100, 0x9000]), 1);
    }

    #[test]
    fn counts_cut_stacks_and_keeps_owned_ones_owned() {
        let mut procs = ProcessTable::new();
        let pid = std::process::id();
        let here = counts_cut_stacks_and_keeps_owned_ones_owned as *const () as u64;
        let mut s = Sanitizer::new();
        // Our own code is mapped; address 8 is not, in any process.
        let two = [here, here];
        let (kept, _) = s.user_stack(&mut procs, pid, Cow::Borrowed(&two), 0);
        assert_eq!(kept.len(), 2);
        assert_eq!(s.truncated(), 0);
        let (kept, _) = s.user_stack(&mut procs, pid, Cow::Owned(vec![here, 8, here]), 0);
        assert_eq!(&*kept, &[here]);
        assert!(matches!(kept, Cow::Owned(_)));
        assert_eq!(s.truncated(), 1);
        // The BPF unwinder cut this one already.
        let one = [here];
        let (kept, _) = s.user_stack(&mut procs, pid, Cow::Borrowed(&one), FLAG_FP_TRUNCATED);
        assert_eq!(kept.len(), 1);
        assert_eq!(s.truncated(), 2);
        // Table-unwound stacks are checked whole too.
        let flags = profiler_ebpf::abi::FLAG_DWARF_UNWOUND;
        let (kept, _) = s.user_stack(&mut procs, pid, Cow::Owned(vec![here, 8, here]), flags);
        assert_eq!(&*kept, &[here]);
        assert_eq!(s.truncated(), 3);
        // A process we cannot read keeps its stack.
        let (kept, _) = s.user_stack(&mut procs, u32::MAX - 1, Cow::Borrowed(&[8, 16]), 0);
        assert_eq!(kept.len(), 2);
        assert_eq!(s.truncated(), 3);
    }
}
