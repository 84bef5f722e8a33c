//! Noticing that a process exited, without polling `/proc`: a pidfd
//! (Linux 5.3+) becomes readable when its process exits, and one `poll(2)`
//! checks them all.
//!
//! Knowing the moment matters because pids are reused: once a process has
//! exited, the next sample with its pid comes from another process, which
//! must not be read with the old one's mappings nor counted as the same
//! process.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A pidfd for `pid`, or `None` if it is gone (or the kernel is older).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::c_int::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel just handed us this fd and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Watches processes for exit.
#[derive(Default)]
pub struct ExitWatch {
    fds: HashMap<u32, OwnedFd>,
}

impl ExitWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts watching `pid`. Returns false if it is already gone (then
    /// the caller should treat it as exited at once).
    pub fn watch(&mut self, pid: u32) -> bool {
        if self.fds.contains_key(&pid) {
            return true;
        }
        match pidfd_open(pid) {
            Some(fd) => {
                self.fds.insert(pid, fd);
                true
            }
            None => false,
        }
    }

    /// Stops watching `pid` (it is known to be gone).
    pub fn forget(&mut self, pid: u32) {
        self.fds.remove(&pid);
    }

    /// How many processes are watched.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether nothing is watched.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The watched processes that have exited since the last call; they
    /// are no longer watched.
    pub fn take_exited(&mut self) -> Vec<u32> {
        let (pids, fds): (Vec<u32>, Vec<RawFd>) = self
            .fds
            .iter()
            .map(|(&pid, fd)| (pid, fd.as_raw_fd()))
            .unzip();
        let exited: Vec<u32> = pids
            .into_iter()
            .zip(readable(&fds))
            .filter(|&(_, gone)| gone)
            .map(|(pid, _)| pid)
            .collect();
        for pid in &exited {
            self.fds.remove(pid);
        }
        exited
    }
}

/// For each pidfd, whether its process has exited (the fd is readable),
/// with one non-blocking `poll(2)` for all of them.
pub fn readable(fds: &[RawFd]) -> Vec<bool> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if polled.is_empty() {
        return Vec::new();
    }
    // SAFETY: `polled` is a valid array of `polled.len()` pollfds; a zero
    // timeout makes this a non-blocking check.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    polled.iter().map(|p| p.revents != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn reports_a_child_once_it_has_exited() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let mut w = ExitWatch::new();
        assert!(w.watch(pid));
        assert!(w.take_exited().is_empty(), "still running");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(w.take_exited(), vec![pid]);
        assert!(w.is_empty());
        assert!(w.take_exited().is_empty(), "reported once");
    }

    #[test]
    fn a_missing_pid_cannot_be_watched() {
        let mut w = ExitWatch::new();
        // Above the largest pid_max the kernel allows (2^22).
        assert!(!w.watch(5_000_000));
        assert_eq!(w.len(), 0);
    }
}
