//! Who a sample belongs to.
//!
//! Pids are reused, so a pid alone names a process only for a while. The
//! BPF program puts the process's start time (its main thread's
//! `task->start_time`, CLOCK_MONOTONIC ns) on every sample, and the pair
//! names one process for its whole life, in the recorder and the agent
//! alike. There is no other identity: no aliases, no per-front-end ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::process::container::Labels;

/// One process for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub pid: u32,
    /// `task->start_time` of the main thread (CLOCK_MONOTONIC ns); 0 when
    /// the kernel side could not read it, and then only the pid tells.
    pub start_ns: u64,
}

/// What is known about a process from its first sample on. Shared by
/// every stack of the process; only its container/pod labels can change
/// later (the Kubernetes API's pod list fills in what the node's files did
/// not say), which is why they sit behind a lock of their own.
#[derive(Debug)]
pub struct ProcMeta {
    pub key: ProcKey,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22),
    /// which is what a user who looks a pid up now can compare with; 0 if
    /// the process was gone before we could read it.
    pub start_ticks: u64,
    /// Process name (`/proc/PID/comm`, else the sampled thread's name).
    pub comm: String,
    /// Executable path as the process sees it; empty if unknown.
    pub exe: String,
    labels: Mutex<Arc<Labels>>,
    pub(crate) exited: AtomicBool,
}

impl ProcMeta {
    pub fn new(key: ProcKey, start_ticks: u64, comm: String, exe: String, labels: Labels) -> Self {
        ProcMeta {
            key,
            start_ticks,
            comm,
            exe,
            labels: Mutex::new(Arc::new(labels)),
            exited: AtomicBool::new(false),
        }
    }

    pub fn pid(&self) -> u32 {
        self.key.pid
    }

    /// The container and pod labels as known now.
    pub fn labels(&self) -> Arc<Labels> {
        lock(&self.labels).clone()
    }

    /// Replaces the labels (a later, more complete lookup).
    pub fn set_labels(&self, labels: Labels) {
        *lock(&self.labels) = Arc::new(labels);
    }

    /// Whether the process has exited (as far as we know).
    pub fn exited(&self) -> bool {
        self.exited.load(Ordering::Relaxed)
    }

    /// The executable's file name, else the comm.
    pub fn exe_name(&self) -> &str {
        match self.exe.rsplit('/').next() {
            Some(n) if !n.is_empty() => n,
            _ => &self.comm,
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data behind our locks (labels,
/// counts, caches) stays consistent enough to serve after a panic
/// elsewhere, and a profiler must keep profiling.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
