//! Reading (and, only when asked, writing) another process's memory with
//! `process_vm_readv`/`process_vm_writev`.
//!
//! Why these calls and not `/proc/PID/mem` or ptrace peeks: they need no
//! stop of the target, copy many bytes per call, and fail cleanly (EFAULT)
//! on unmapped addresses instead of delivering a signal anywhere.

use std::io;

/// A failed access to the target's memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {len} bytes at {addr:#x} in process {pid}: {source}")]
pub struct MemError {
    pub pid: u32,
    pub op: &'static str,
    pub addr: u64,
    pub len: usize,
    #[source]
    pub source: io::Error,
}

/// The memory of one process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Memory {
    pid: u32,
}

impl Memory {
    pub(crate) fn new(pid: u32) -> Memory {
        Memory { pid }
    }

    fn error(&self, op: &'static str, addr: u64, len: usize, source: io::Error) -> MemError {
        MemError {
            pid: self.pid,
            op,
            addr,
            len,
            source,
        }
    }

    /// Fills `buf` from `addr`. A short read (the range runs into an
    /// unmapped page) is an error: callers never want half a structure.
    pub(crate) fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let local = libc::iovec {
                iov_base: rest.as_mut_ptr().cast(),
                iov_len: rest.len(),
            };
            let remote = libc::iovec {
                iov_base: (addr as usize).wrapping_add(done) as *mut libc::c_void,
                iov_len: rest.len(),
            };
            // SAFETY: `local` describes `rest`, which we own mutably; the
            // remote side is only read by the kernel.
            let n = unsafe {
                libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0)
            };
            if n < 0 {
                return Err(self.error("read", addr, buf.len(), io::Error::last_os_error()));
            }
            if n == 0 {
                let e = io::Error::from_raw_os_error(libc::EFAULT);
                return Err(self.error("read", addr, buf.len(), e));
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Many ranges in few system calls (up to 1024 per call): what the
    /// goroutine reader uses to keep the pause short. `None` for a range
    /// that cannot be read.
    pub(crate) fn read_many(&self, ranges: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
        const IOV_MAX: usize = 1024;
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(ranges.len());
        let mut i = 0;
        while i < ranges.len() {
            let batch = &ranges[i..(i + IOV_MAX).min(ranges.len())];
            let mut bufs: Vec<Vec<u8>> = batch.iter().map(|&(_, len)| vec![0u8; len]).collect();
            let local: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                })
                .collect();
            let remote: Vec<libc::iovec> = batch
                .iter()
                .map(|&(addr, len)| libc::iovec {
                    iov_base: addr as usize as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            // SAFETY: each local iovec describes one of `bufs`, owned here
            // and alive for the call.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid as libc::pid_t,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            // The kernel stops at the first range it cannot read: keep the
            // whole ranges before it, read that one alone, go on after it.
            let mut done = usize::try_from(n).unwrap_or(0);
            let mut whole = 0;
            for b in &bufs {
                if done < b.len() {
                    break;
                }
                done -= b.len();
                whole += 1;
            }
            let mut bufs = bufs.into_iter();
            for b in bufs.by_ref().take(whole) {
                out.push(Some(b));
            }
            if whole < batch.len() {
                let (addr, len) = batch[whole];
                out.push(self.read_vec(addr, len).ok());
                whole += 1;
            }
            i += whole;
        }
        out
    }

    /// `len` bytes at `addr`.
    pub(crate) fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    pub(crate) fn u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(crate) fn u32(&self, addr: u64) -> Result<u32, MemError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u8(&self, addr: u64) -> Result<u8, MemError> {
        let mut b = [0u8; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }

    /// Writes one 8-byte word: the only write we ever make, and only for
    /// `--enable` (a profiling rate).
    pub(crate) fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemError> {
        let bytes = value.to_le_bytes();
        let local = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        // SAFETY: `local` describes `bytes`, which outlives the call; the
        // kernel only reads it.
        let n =
            unsafe { libc::process_vm_writev(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(self.error("write", addr, 8, io::Error::last_os_error()));
        }
        if n as usize != bytes.len() {
            let e = io::Error::from_raw_os_error(libc::EFAULT);
            return Err(self.error("write", addr, 8, e));
        }
        Ok(())
    }
}

/// Little-endian word `i` of `b` (0 when out of range: callers pass buffers
/// they sized themselves).
pub(crate) fn word(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_many_ranges_and_skips_the_unreadable() {
        let a: u64 = 7;
        let b = [1u8, 2, 3];
        let m = Memory::new(std::process::id());
        let got = m.read_many(&[(&a as *const u64 as u64, 8), (8, 8), (b.as_ptr() as u64, 3)]);
        assert_eq!(got[0].as_deref(), Some(&7u64.to_le_bytes()[..]));
        assert_eq!(got[1], None);
        assert_eq!(got[2].as_deref(), Some(&b[..]));
    }

    #[test]
    fn reads_own_memory_and_fails_cleanly_on_unmapped() {
        let value: u64 = 0x1122_3344_5566_7788;
        let m = Memory::new(std::process::id());
        assert_eq!(m.u64(&value as *const u64 as u64).unwrap(), value);
        let e = m.u64(8).unwrap_err();
        assert!(e.to_string().contains("at 0x8 in process"), "{e}");
    }
}
