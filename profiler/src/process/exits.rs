//! Noticing that a process exited, without polling `/proc`: a pidfd
//! (Linux 5.3+) becomes readable when its process exits.
//!
//! Knowing the moment matters because pids are reused: once a process has
//! exited, the next sample with its pid comes from another process, which
//! must not be read with the old one's mappings nor counted as the same
//! process. The pidfds sit in one epoll set, so a check costs as much as
//! the exits it finds, not a pass over every process on the node.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pidfd for `pid`, or `None` if it is gone (or the kernel is older).
pub fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::c_int::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the kernel just handed us this fd and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Processes watched for exit, each under a caller's token.
pub struct ExitSet {
    epoll: OwnedFd,
    fds: HashMap<u64, OwnedFd>,
}

impl ExitSet {
    /// An empty set; fails only if the kernel refuses an epoll instance.
    pub fn new() -> std::io::Result<ExitSet> {
        // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ExitSet {
            // SAFETY: a fresh fd that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            fds: HashMap::new(),
        })
    }

    /// Watches the process behind `pidfd` under `token` (replacing what
    /// the token watched before). Returns false if epoll refused it.
    pub fn watch(&mut self, token: u64, pidfd: OwnedFd) -> bool {
        self.forget(token);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `ev` is a valid event for the call.
        let r = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                pidfd.as_raw_fd(),
                &mut ev,
            )
        };
        if r != 0 {
            return false;
        }
        self.fds.insert(token, pidfd);
        true
    }

    /// Stops watching `token` (closing its pidfd, which leaves the epoll
    /// set with it).
    pub fn forget(&mut self, token: u64) {
        self.fds.remove(&token);
    }

    /// How many processes are watched.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Whether `token` is watched (its process has not been reported).
    pub fn contains(&self, token: u64) -> bool {
        self.fds.contains_key(&token)
    }

    /// The tokens whose process exited since the last call, without
    /// waiting; they are no longer watched.
    pub fn take_exited(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        let mut buf = [libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            // SAFETY: `buf` is valid for its length; a zero timeout makes
            // this a non-blocking check.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                    0,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                break;
            };
            for ev in &buf[..n] {
                let token = ev.u64;
                // Level-triggered: forgetting closes the pidfd, which is
                // what takes it out of the set.
                if self.fds.remove(&token).is_some() {
                    out.push(token);
                }
            }
            if n < buf.len() {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn reports_a_child_once_it_has_exited() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let mut w = ExitSet::new().unwrap();
        assert!(w.watch(7, pidfd_open(pid).unwrap()));
        assert!(w.take_exited().is_empty(), "still running");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(w.take_exited(), vec![7]);
        assert!(w.is_empty());
        assert!(w.take_exited().is_empty(), "reported once");
    }

    #[test]
    fn a_missing_pid_has_no_pidfd() {
        // Above the largest pid_max the kernel allows (2^22).
        assert!(pidfd_open(5_000_000).is_none());
    }

    #[test]
    fn many_watched_few_reported() {
        let mut kids: Vec<_> = (0..50)
            .map(|_| Command::new("sleep").arg("30").spawn().unwrap())
            .collect();
        let mut w = ExitSet::new().unwrap();
        for (i, k) in kids.iter().enumerate() {
            assert!(w.watch(i as u64, pidfd_open(k.id()).unwrap()));
        }
        kids[3].kill().unwrap();
        kids[3].wait().unwrap();
        assert_eq!(w.take_exited(), vec![3]);
        assert_eq!(w.len(), 49);
        for k in &mut kids {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}
