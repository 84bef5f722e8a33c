//! The agent's symbolizer thread: every job that names frames runs here,
//! one at a time.
//!
//! blazesym's symbolizer is not `Send`, and one thread also serializes the
//! work: a burst of profile requests queues here instead of parsing the
//! same DWARF twice. The thread also owns the moment binaries are closed
//! (see [`SymThread::retire`]), so no parsed state can outlive the fd
//! number it was opened through.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

use super::metrics::Counters;
use crate::engine::normalize::UserMaps;
use crate::engine::resolve::{Pending, ResolveLimits, ResolvedLoc, Resolver};
use crate::process::Binary;
use crate::symbolize::kernel::Kallsyms;

/// What the symbolizer thread owns: the resolver and the kernel's symbols.
pub struct SymState {
    resolver: Resolver,
    kernel: Option<Kallsyms>,
    want_kernel: bool,
    counters: Arc<Counters>,
}

impl SymState {
    pub fn new(limits: ResolveLimits, kernel: bool, counters: Arc<Counters>) -> SymState {
        SymState {
            resolver: Resolver::new(limits),
            kernel: None,
            want_kernel: kernel,
            counters,
        }
    }

    /// Names the frames of stacks given as (kept addresses, mappings).
    pub fn resolve(&mut self, stacks: &[(&[u64], &UserMaps)]) -> Vec<Arc<[ResolvedLoc]>> {
        let pending: Vec<Pending<'_>> = stacks
            .iter()
            .map(|&(addrs, maps)| Pending { addrs, maps })
            .collect();
        let out = self.resolver.resolve(&pending);
        self.publish();
        out
    }

    /// The kernel's symbols, loading kallsyms on first use.
    pub fn kernel(&mut self) -> Option<&Kallsyms> {
        if self.want_kernel && self.kernel.is_none() {
            self.kernel = Kallsyms::load();
        }
        self.kernel.as_ref()
    }

    /// Forgets binaries, then closes them (by dropping the last
    /// reference): after this, their fd numbers may go to other files.
    pub fn retire(&mut self, binaries: Vec<Arc<Binary>>) {
        let keys: Vec<_> = binaries.iter().map(|b| b.key).collect();
        self.resolver.forget(&keys);
        self.counters
            .binaries_closed
            .fetch_add(binaries.len() as u64, Ordering::Relaxed);
        drop(binaries);
        self.publish();
    }

    fn publish(&self) {
        let s = self.resolver.stats();
        let c = &self.counters;
        c.symbol_cache_entries.store(s.entries, Ordering::Relaxed);
        c.symbol_cache_hits.store(s.hits, Ordering::Relaxed);
        c.symbol_cache_misses.store(s.misses, Ordering::Relaxed);
        c.symbol_cache_evictions
            .store(s.evictions, Ordering::Relaxed);
        c.symbolizer_resets.store(s.resets, Ordering::Relaxed);
        c.unsymbolizable_binaries
            .store(s.unsymbolizable, Ordering::Relaxed);
    }
}

/// Work for the symbolizer thread.
type Job = Box<dyn FnOnce(&mut SymState) + Send>;

/// The thread that owns the [`SymState`] and runs every job that
/// symbolizes, one at a time.
pub struct SymThread {
    tx: mpsc::Sender<Job>,
}

impl SymThread {
    /// Starts the thread; `make` builds the state there. `health` follows
    /// its jobs and learns when it ends.
    pub fn spawn(
        health: Arc<super::health::Worker>,
        make: impl FnOnce() -> SymState + Send + 'static,
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
        f: impl FnOnce(&mut SymState) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |sym| {
            let _ = tx.send(f(sym));
        });
        self.tx.send(job).ok()?;
        rx.await.ok()
    }

    /// Hands binaries to the thread to forget and close (see
    /// [`SymState::retire`]); does not wait. If the thread is gone they are
    /// closed here: nothing can use stale parsed state any more.
    pub fn retire(&self, binaries: Vec<Arc<Binary>>) {
        if binaries.is_empty() {
            return;
        }
        let _ = self.tx.send(Box::new(move |sym| sym.retire(binaries)));
    }
}
