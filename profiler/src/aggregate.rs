//! Aggregation: raw samples folded into counted stacks.
//!
//! The key is (pid, tid, user stack, kernel stack), so per-thread labels
//! survive while identical samples cost one entry.

use std::collections::HashMap;

use profiler_ebpf::abi::{Sample, FLAG_USER_STACK_ERR};

/// What identifies one aggregated stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub pid: u32,
    pub tid: u32,
    /// User frames, innermost first (runtime addresses).
    pub user: Box<[u64]>,
    /// Kernel frames, innermost first.
    pub kernel: Box<[u64]>,
}

/// How often a stack was seen and how much event weight it carries (ns of
/// CPU for cpu-clock, cycles for the PMU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub samples: u64,
    pub weight: u64,
}

/// Counted stacks plus the names of the threads they came from, kept per
/// process so that one process's samples can move as a whole (see
/// [`Aggregate::rekey`]).
#[derive(Default)]
pub struct Aggregate {
    procs: HashMap<u32, ProcSamples>,
    samples: u64,
    user_stack_errors: u64,
}

/// One process's stacks and thread names.
#[derive(Default)]
struct ProcSamples {
    stacks: HashMap<StackKey, Counts>,
    threads: HashMap<u32, String>,
}

impl Aggregate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample with its (possibly repaired) user stack. Returns
    /// true when the stack was not seen before, so the caller can check new
    /// addresses against the process's mappings while it is still alive.
    pub fn add(&mut self, s: &Sample, user: &[u64]) -> bool {
        self.samples += 1;
        if s.flags & FLAG_USER_STACK_ERR != 0 {
            self.user_stack_errors += 1;
        }
        let proc = self.procs.entry(s.pid).or_default();
        proc.threads
            .entry(s.tid)
            .or_insert_with(|| String::from_utf8_lossy(s.comm()).into_owned());
        let key = StackKey {
            pid: s.pid,
            tid: s.tid,
            user: user.into(),
            kernel: s.kernel_stack().into(),
        };
        let mut new = false;
        let c = proc.stacks.entry(key).or_insert_with(|| {
            new = true;
            Counts::default()
        });
        c.samples += 1;
        c.weight += s.period;
        new
    }

    /// Every distinct stack and its counts.
    pub fn stacks(&self) -> impl Iterator<Item = (&StackKey, &Counts)> {
        self.procs.values().flat_map(|p| p.stacks.iter())
    }

    /// Thread name as the kernel reported it in the first sample of `tid`
    /// of process `pid`.
    pub fn thread_name(&self, pid: u32, tid: u32) -> Option<&str> {
        self.procs.get(&pid)?.threads.get(&tid).map(String::as_str)
    }

    /// Files everything of process `pid` under `alias` instead, so that
    /// the next process to get the pid starts afresh (the process table
    /// does the same, see [`crate::process::ProcessTable::retire`]). Costs
    /// one pass over that process's own stacks.
    pub fn rekey(&mut self, pid: u32, alias: u32) {
        let Some(old) = self.procs.remove(&pid) else {
            return;
        };
        let stacks = old
            .stacks
            .into_iter()
            .map(|(mut k, c)| {
                k.pid = alias;
                (k, c)
            })
            .collect();
        self.procs.insert(
            alias,
            ProcSamples {
                stacks,
                threads: old.threads,
            },
        );
    }

    /// Samples added.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Samples whose user stack could not be read.
    pub fn user_stack_errors(&self) -> u64 {
        self.user_stack_errors
    }

    /// Distinct processes seen.
    pub fn pids(&self) -> std::collections::BTreeSet<u32> {
        self.procs.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, tid: u32, user: &[u64]) -> Sample {
        crate::capture::test_sample(pid, tid, 0, user, "work")
    }

    fn add(a: &mut Aggregate, s: &Sample) -> bool {
        a.add(s, s.user_stack())
    }

    #[test]
    fn folds_identical_stacks_and_keeps_threads_apart() {
        let mut a = Aggregate::new();
        assert!(add(&mut a, &sample(1, 1, &[0x10, 0x20])));
        assert!(!add(&mut a, &sample(1, 1, &[0x10, 0x20])));
        assert!(add(&mut a, &sample(1, 2, &[0x10, 0x20])));
        assert!(add(&mut a, &sample(1, 1, &[0x10])));
        assert_eq!(a.samples(), 4);
        assert_eq!(a.stacks().count(), 3);
        let total: u64 = a.stacks().map(|(_, c)| c.weight).sum();
        assert_eq!(total, 40_000_000);
        assert_eq!(a.thread_name(1, 2), Some("work"));
        assert_eq!(a.pids().into_iter().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn rekey_moves_one_process_and_frees_its_pid() {
        let mut a = Aggregate::new();
        add(&mut a, &sample(7, 7, &[0x10]));
        add(&mut a, &sample(7, 8, &[0x20]));
        add(&mut a, &sample(9, 9, &[0x10]));
        a.rekey(7, 1 << 31);
        assert_eq!(a.pids().into_iter().collect::<Vec<_>>(), vec![9, 1 << 31]);
        assert!(a.stacks().all(|(k, _)| k.pid != 7));
        assert_eq!(a.stacks().filter(|(k, _)| k.pid == 1 << 31).count(), 2);
        assert_eq!(a.thread_name(1 << 31, 8), Some("work"));
        // The next process with pid 7 is counted on its own.
        assert!(add(&mut a, &sample(7, 7, &[0x10])));
        assert_eq!(a.samples(), 4);
    }
}
