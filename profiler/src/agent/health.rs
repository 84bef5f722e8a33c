//! What `/healthz` checks: every worker the agent depends on.
//!
//! - the capture loop, which must tick (it drains the ring buffer every
//!   200 ms);
//! - the symbolizer thread, which every profile, window and janitor pass
//!   waits on: it must be alive (a panic that escaped a job ends it for
//!   good) and must not be stuck in one job;
//! - the background tasks (janitor, window loop, pushers, API-server
//!   refresher), which must still run: a task that panicked is finished.
//!
//! A failing check makes `/healthz` answer 503 with the reason, so the
//! kubelet's liveness probe restarts an agent that can no longer do its
//! work instead of leaving it serving empty answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::capture::clock::mono_now;

/// Longest time the capture loop may go without a tick.
const CAPTURE_STALL_NS: u64 = 5_000_000_000;

/// Longest time one symbolizer job may run. A whole-node profile of a
/// machine running large binaries with debug info takes seconds of CPU,
/// and the agent may get little CPU (a busy node, a CPU limit): a minute
/// of wall time has been seen in a debug build on an overloaded machine.
/// Restarting an agent whose work is merely slow would only make it start
/// over, so only five minutes in one job counts as stuck.
const SYMBOLIZER_STUCK_NS: u64 = 300_000_000_000;

/// A thread's liveness and the start of the job it is running.
pub struct Worker {
    alive: AtomicBool,
    /// Monotonic ns when the running job started; 0 when idle.
    busy_since: AtomicU64,
}

impl Worker {
    /// A worker that is alive and idle.
    pub fn new() -> Arc<Worker> {
        Arc::new(Worker {
            alive: AtomicBool::new(true),
            busy_since: AtomicU64::new(0),
        })
    }

    /// Marks the worker dead when the returned guard is dropped: held by
    /// the thread itself, it drops when the thread ends, panic included.
    pub fn dead_on_drop(self: &Arc<Self>) -> impl Drop {
        struct Guard(Arc<Worker>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.alive.store(false, Ordering::Relaxed);
            }
        }
        Guard(self.clone())
    }

    /// Runs one job, recording how long it has been running.
    pub fn job<R>(&self, f: impl FnOnce() -> R) -> R {
        self.busy_since.store(mono_now().max(1), Ordering::Relaxed);
        let r = f();
        self.busy_since.store(0, Ordering::Relaxed);
        r
    }

    /// Why the worker cannot do its work at monotonic time `now`, if so.
    fn problem(&self, now: u64) -> Option<String> {
        if !self.alive.load(Ordering::Relaxed) {
            return Some("the symbolizer thread died".into());
        }
        let since = self.busy_since.load(Ordering::Relaxed);
        let busy = if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        };
        (busy >= SYMBOLIZER_STUCK_NS).then(|| {
            format!(
                "the symbolizer thread has been stuck in one job for {:.0}s",
                busy as f64 / 1e9
            )
        })
    }
}

/// Everything `/healthz` looks at.
pub struct Health {
    pub symbolizer: Arc<Worker>,
    tasks: Mutex<Vec<(&'static str, tokio::task::AbortHandle)>>,
}

impl Health {
    pub fn new() -> Health {
        Health {
            symbolizer: Worker::new(),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Watches a background task: once it has finished (a panic ends it
    /// too), the agent is unhealthy. Returns the handle.
    pub fn watch<T>(
        &self,
        name: &'static str,
        task: tokio::task::JoinHandle<T>,
    ) -> tokio::task::JoinHandle<T> {
        crate::engine::identity::lock(&self.tasks).push((name, task.abort_handle()));
        task
    }

    /// `Ok` if every worker can do its work; else the reasons.
    /// `last_tick` is the capture loop's last tick (monotonic ns).
    pub fn check(&self, last_tick: u64) -> Result<(), String> {
        self.check_at(mono_now(), last_tick)
    }

    /// [`Health::check`] at monotonic time `now`.
    fn check_at(&self, now: u64, last_tick: u64) -> Result<(), String> {
        let mut problems = Vec::new();
        let stalled = now.saturating_sub(last_tick);
        if stalled >= CAPTURE_STALL_NS {
            problems.push(format!(
                "capture loop stalled for {:.1}s",
                stalled as f64 / 1e9
            ));
        }
        problems.extend(self.symbolizer.problem(now));
        for (name, task) in crate::engine::identity::lock(&self.tasks).iter() {
            if task.is_finished() {
                problems.push(format!("the {name} task has stopped"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monotonic times for the checks, well after any boot.
    const T: u64 = 1_000_000_000_000;

    #[test]
    fn a_dead_or_stuck_symbolizer_is_unhealthy() {
        let h = Health::new();
        assert_eq!(h.check_at(T, T), Ok(()));
        // Stuck: one job running for longer than the limit.
        h.symbolizer.busy_since.store(T, Ordering::Relaxed);
        assert_eq!(
            h.check_at(T + SYMBOLIZER_STUCK_NS - 1, T + SYMBOLIZER_STUCK_NS - 1),
            Ok(())
        );
        let later = T + SYMBOLIZER_STUCK_NS;
        let e = h.check_at(later, later).unwrap_err();
        assert_eq!(
            e,
            "the symbolizer thread has been stuck in one job for 300s"
        );
        // A job that ends clears it.
        h.symbolizer.job(|| ());
        assert_eq!(h.check_at(later, later), Ok(()));
        // A thread that panics takes its guard with it.
        let worker = h.symbolizer.clone();
        let t = std::thread::spawn(move || {
            let _guard = worker.dead_on_drop();
            worker.job(|| panic!("a job that escaped its guard"))
        });
        assert!(t.join().is_err());
        assert_eq!(
            h.check(mono_now()),
            Err("the symbolizer thread died".into())
        );
    }

    #[test]
    fn a_stalled_capture_loop_or_a_finished_task_is_unhealthy() {
        let h = Health::new();
        assert_eq!(h.check_at(T + CAPTURE_STALL_NS - 1, T), Ok(()));
        let e = h.check_at(T + CAPTURE_STALL_NS, T).unwrap_err();
        assert_eq!(e, "capture loop stalled for 5.0s");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = h.watch(
                "janitor",
                tokio::spawn(async move {
                    let _ = rx.await;
                    panic!("the janitor hit a bug");
                }),
            );
            tokio::task::yield_now().await;
            assert_eq!(h.check_at(T, T), Ok(()));
            let _ = tx.send(());
            assert!(task.await.is_err());
        });
        assert_eq!(h.check_at(T, T), Err("the janitor task has stopped".into()));
    }
}
