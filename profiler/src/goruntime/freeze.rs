//! Stopping every thread of a process for a consistent read, and always
//! letting it go.
//!
//! How: `PTRACE_SEIZE` then `PTRACE_INTERRUPT` on each thread (no signal is
//! sent, so nothing the program can observe beyond the pause), re-listing
//! `/proc/PID/task` until no new thread appeared. [`Frozen`] detaches in
//! `Drop`, so every return path, error or panic releases the process, and
//! SIGINT/SIGTERM are held blocked in the freezing thread for the
//! duration (delivered right after the release). Should we die anyway
//! (SIGKILL), the kernel detaches a dead tracer's tracees, which resume.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::GoRuntimeError;

/// Registers of a stopped thread that an unwinder needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// A process whose threads are all stopped; released on drop.
pub(crate) struct Frozen {
    pid: u32,
    /// Stopped threads and the signal to re-inject when detaching (one a
    /// thread was about to receive when it stopped).
    threads: Vec<(i32, i32)>,
    started: Instant,
    old_mask: libc::sigset_t,
}

fn tasks(pid: u32) -> std::io::Result<BTreeSet<i32>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

fn ptrace(req: libc::c_uint, tid: i32, data: usize) -> std::io::Result<()> {
    // SAFETY: requests that take no pointer argument (SEIZE, INTERRUPT,
    // DETACH); `data` is an integer.
    let r = unsafe { libc::ptrace(req, tid, 0usize, data) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Frozen {
    /// Stops every thread of `pid`.
    pub(crate) fn freeze(pid: u32) -> Result<Frozen, GoRuntimeError> {
        let mut old_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain signal-mask manipulation of this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old_mask);
        }
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            started: Instant::now(),
            old_mask,
        };
        let fail = |detail: String| GoRuntimeError::Freeze { pid, detail };
        let mut seen = BTreeSet::new();
        for _round in 0..16 {
            let now = tasks(pid).map_err(|e| fail(format!("cannot list its threads: {e}")))?;
            let new: Vec<i32> = now.difference(&seen).copied().collect();
            if new.is_empty() {
                return Ok(f);
            }
            // Interrupt every new thread first, then collect the stops: the
            // threads stop in parallel, so the pause is one scheduling
            // delay, not one per thread.
            let mut pending = Vec::new();
            for tid in new {
                seen.insert(tid);
                match ptrace(libc::PTRACE_SEIZE, tid, 0) {
                    Ok(()) => {}
                    // The thread exited in the meantime.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    Err(e) => {
                        return Err(fail(format!(
                            "PTRACE_SEIZE of thread {tid}: {e} (needs CAP_SYS_PTRACE, and \
                             kernel.yama.ptrace_scope <= 1; or use --no-pause)"
                        )))
                    }
                }
                f.threads.push((tid, 0));
                match ptrace(libc::PTRACE_INTERRUPT, tid, 0) {
                    Ok(()) => pending.push(f.threads.len() - 1),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(fail(format!("PTRACE_INTERRUPT of thread {tid}: {e}"))),
                }
            }
            for at in pending {
                let tid = f.threads[at].0;
                f.threads[at].1 =
                    wait_stop(tid).map_err(|e| fail(format!("waiting for thread {tid}: {e}")))?;
            }
            tracing::debug!(pid, threads = f.threads.len(), elapsed = ?f.started.elapsed(), "threads stopped");
        }
        Err(fail("it keeps creating threads".into()))
    }

    /// How long the process has been stopped.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The registers of stopped thread `tid`, if it is one of ours.
    pub(crate) fn regs(&self, tid: i32) -> Option<Regs> {
        if !self.threads.iter().any(|&(t, _)| t == tid) {
            return None;
        }
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: GETREGS writes one user_regs_struct into `r`.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                tid,
                0usize,
                &mut r as *mut libc::user_regs_struct,
            )
        };
        (rc == 0).then_some(Regs {
            ip: r.rip,
            sp: r.rsp,
            bp: r.rbp,
        })
    }

    /// Resumes every thread; returns how long the process was stopped.
    pub(crate) fn thaw(mut self) -> Duration {
        self.release();
        self.started.elapsed()
    }

    fn release(&mut self) {
        for (tid, sig) in self.threads.drain(..) {
            if let Err(e) = ptrace(libc::PTRACE_DETACH, tid, sig as usize) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    tracing::warn!(pid = self.pid, tid, "cannot detach from thread: {e}");
                }
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release();
        // SAFETY: restores the mask saved in `freeze`; a SIGINT that came
        // during the freeze is delivered now, after the release.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old_mask, std::ptr::null_mut());
        }
    }
}

/// Waits for `tid`'s stop after PTRACE_INTERRUPT. Returns the signal to
/// re-inject on detach: non-zero when the thread stopped for a signal it
/// was about to receive rather than for our interrupt.
fn wait_stop(tid: i32) -> std::io::Result<i32> {
    let mut status = 0;
    // SAFETY: waits for one tracee; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if !libc::WIFSTOPPED(status) {
        return Ok(0);
    }
    let event = (status >> 16) & 0xff;
    if event == libc::PTRACE_EVENT_STOP {
        return Ok(0);
    }
    Ok(libc::WSTOPSIG(status))
}
