//! Building and loading unwind tables on a thread of their own.
//!
//! Compiling a table costs about a millisecond per 1,000 rows; a big
//! library (the Rust compiler's, LLVM's) has a million. Done in the sample
//! loop, that stalls draining the ring buffer for a second, and samples of
//! every CPU are lost meanwhile. On this thread it only delays when the
//! new process's stacks become complete: until its tables are in, the BPF
//! program walks its frame pointers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::loader::{TableRequest, UnwindStats, Unwinder};
use crate::process::Process;

enum Job {
    Load(TableRequest),
    Remove(u32),
}

/// The thread owning the [`Unwinder`], and the way to send it work.
pub struct TableWorker {
    tx: Sender<Job>,
    cancel: Arc<AtomicBool>,
    thread: JoinHandle<Unwinder>,
}

impl TableWorker {
    /// Moves `unwinder` to a new thread. `None` if no thread can be
    /// started (the caller then keeps frame pointers for new processes).
    pub fn start(mut unwinder: Unwinder) -> std::io::Result<TableWorker> {
        let (tx, rx) = channel::<Job>();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("unwind-tables".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match job {
                        Job::Load(req) => {
                            if let Err(e) = unwinder.load(&req) {
                                eprintln!("warning: {e}");
                            }
                        }
                        Job::Remove(pid) => unwinder.remove_process(pid),
                    }
                }
                unwinder
            })?;
        Ok(TableWorker { tx, cancel, thread })
    }

    /// Queues loading (or reloading) `process`'s tables.
    pub fn load(&self, process: &Process) {
        let _ = self.tx.send(Job::Load(TableRequest::of(process)));
    }

    /// Queues forgetting `pid` (it exited), in order with loads: a new
    /// process reusing the pid is loaded after.
    pub fn remove(&self, pid: u32) {
        let _ = self.tx.send(Job::Remove(pid));
    }

    /// Stops the thread, dropping queued work (the capture is over), and
    /// returns what was loaded. `None` if the thread panicked.
    pub fn finish(self) -> Option<UnwindStats> {
        self.cancel.store(true, Ordering::Relaxed);
        drop(self.tx);
        self.thread.join().ok().map(|u| u.stats().clone())
    }
}
