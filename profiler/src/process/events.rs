//! The kernel's own account of processes and their mappings, as perf gets
//! it: one dummy software perf event per CPU, with `mmap2`, `comm` (exec
//! included) and `task` (fork, exit) records and a CLOCK_MONOTONIC time on
//! each (the BPF program's clock).
//!
//! Every executable mapping of every process arrives when it is created,
//! so a process that lives 30 ms, or that `exec`s or reloads a library at
//! the same address, can be named from the mappings of the moment each
//! sample was taken, without racing `/proc`. MMAP2 records carry device
//! and inode (not the build ID the kernel can also put there): with them a
//! binary that is already open is recognized without opening anything,
//! and a file opened by path after its process is gone is checked to be
//! the very inode that was mapped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use perf_event_open_sys as sys;

/// What one record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcEvent {
    /// A new process (`pid == tid`) or thread.
    Fork {
        pid: u32,
        ppid: u32,
        tid: u32,
        time_ns: u64,
    },
    /// A thread exited; the process, when `pid == tid`.
    Exit { pid: u32, tid: u32, time_ns: u64 },
    /// A thread's name; `exec` when it comes from an `execve`, after which
    /// the process's old mappings are gone.
    Comm {
        pid: u32,
        tid: u32,
        comm: String,
        exec: bool,
        time_ns: u64,
    },
    /// A new executable mapping.
    Mmap(Mmap),
}

impl ProcEvent {
    /// When it happened (CLOCK_MONOTONIC ns).
    pub fn time_ns(&self) -> u64 {
        match self {
            ProcEvent::Fork { time_ns, .. }
            | ProcEvent::Exit { time_ns, .. }
            | ProcEvent::Comm { time_ns, .. } => *time_ns,
            ProcEvent::Mmap(m) => m.time_ns,
        }
    }
}

/// One MMAP2 record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mmap {
    pub pid: u32,
    pub start: u64,
    pub len: u64,
    pub pgoff: u64,
    pub dev: (u32, u32),
    pub inode: u64,
    pub path: String,
    pub time_ns: u64,
}

/// Why process events are not available.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("perf_event_open of the process-event counter on CPU {cpu} failed: {source}")]
    Open {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping the process-event ring of CPU {cpu} failed: {source}")]
    Map {
        cpu: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The per-CPU rings.
pub struct ProcEvents {
    rings: Vec<Ring>,
    lost: AtomicU64,
    /// The records of one drain (kept for its allocation).
    pending: Vec<ProcEvent>,
}

/// Pages of each ring's data area (a power of two): 128 KiB, a second or
/// more of MMAP2 records on a CPU running a build.
const RING_PAGES: usize = 32;

impl ProcEvents {
    /// Opens one counter per CPU in `cpus`.
    pub fn open(cpus: &[u32]) -> Result<ProcEvents, EventsError> {
        let rings = cpus
            .iter()
            .map(|&cpu| Ring::open(cpu))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ProcEvents {
            rings,
            lost: AtomicU64::new(0),
            pending: Vec::new(),
        })
    }

    /// Hands every record now in the rings to `f`, in time order across
    /// CPUs: a child's fork can be recorded on one CPU and its exec on
    /// another, and applied the other way round the exec would be lost.
    pub fn drain(&mut self, mut f: impl FnMut(&ProcEvent)) {
        let mut all = std::mem::take(&mut self.pending);
        for r in &mut self.rings {
            let lost = r.drain(&mut |e: &ProcEvent| all.push(e.clone()));
            self.lost.fetch_add(lost, Ordering::Relaxed);
        }
        // Each ring is in time order already; the sort is stable.
        all.sort_by_key(ProcEvent::time_ns);
        for e in all.drain(..) {
            f(&e);
        }
        self.pending = all;
    }

    /// Records the kernel could not queue (a ring was full).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// One CPU's counter and its mapped ring.
struct Ring {
    _fd: OwnedFd,
    base: *mut u8,
    len: usize,
    data_size: u64,
    page: usize,
    /// A record that wraps around the end, put together.
    scratch: Vec<u8>,
}

// SAFETY: the mapping is owned by this struct alone and only touched
// through &mut self.
unsafe impl Send for Ring {}

impl Ring {
    fn open(cpu: u32) -> Result<Ring, EventsError> {
        let mut attr = sys::bindings::perf_event_attr {
            type_: sys::bindings::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<sys::bindings::perf_event_attr>() as u32,
            config: u64::from(sys::bindings::PERF_COUNT_SW_DUMMY),
            sample_type: u64::from(
                sys::bindings::PERF_SAMPLE_TID | sys::bindings::PERF_SAMPLE_TIME,
            ),
            clockid: libc::CLOCK_MONOTONIC,
            ..Default::default()
        };
        // mmap turns the records on, mmap2 picks their format.
        attr.set_mmap(1);
        attr.set_mmap2(1);
        attr.set_comm(1);
        attr.set_comm_exec(1);
        attr.set_task(1);
        attr.set_sample_id_all(1);
        attr.set_use_clockid(1);
        let cpu_i = i32::try_from(cpu).unwrap_or(i32::MAX);
        // SAFETY: `attr` is a fully initialized perf_event_attr of the size
        // it states.
        let fd = unsafe {
            sys::perf_event_open(
                &mut attr,
                -1,
                cpu_i,
                -1,
                libc::c_ulong::from(sys::bindings::PERF_FLAG_FD_CLOEXEC),
            )
        };
        if fd < 0 {
            return Err(EventsError::Open {
                cpu,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = page * (1 + RING_PAGES);
        // SAFETY: mapping the perf ring of an fd we own, shared and writable
        // (the tail is ours to move), for exactly 1 + 2^n pages.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(EventsError::Map {
                cpu,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Ring {
            _fd: fd,
            base: base.cast(),
            len,
            data_size: (page * RING_PAGES) as u64,
            page,
            scratch: Vec::new(),
        })
    }

    fn meta(&self) -> *mut sys::bindings::perf_event_mmap_page {
        self.base.cast()
    }

    /// Reads every complete record; returns the records the kernel lost.
    fn drain(&mut self, f: &mut impl FnMut(&ProcEvent)) -> u64 {
        let meta = self.meta();
        // SAFETY: the first page is the control page of our live mapping;
        // data_head is written by the kernel, read with acquire ordering
        // (the kernel's documented protocol), data_tail is ours.
        let (head, mut tail) = unsafe {
            let head = std::ptr::read_volatile(&(*meta).data_head);
            std::sync::atomic::fence(Ordering::Acquire);
            (head, (*meta).data_tail)
        };
        let mut lost = 0;
        while tail + 8 <= head {
            let mut hdr = [0u8; 8];
            self.copy_out(tail, &mut hdr);
            let kind = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let misc = u16::from_ne_bytes([hdr[4], hdr[5]]);
            let size = u64::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
            if size < 8 || tail + size > head {
                break;
            }
            let mut body = std::mem::take(&mut self.scratch);
            body.resize((size - 8) as usize, 0);
            self.copy_out(tail + 8, &mut body);
            match parse(kind, misc, &body) {
                Some(Parsed::Event(e)) => f(&e),
                Some(Parsed::Lost(n)) => lost += n,
                None => {}
            }
            self.scratch = body;
            tail += size;
        }
        std::sync::atomic::fence(Ordering::Release);
        // SAFETY: as above; the release fence orders our reads before the
        // tail update that lets the kernel reuse the space.
        unsafe { std::ptr::write_volatile(&mut (*meta).data_tail, tail) };
        lost
    }

    /// Copies `out.len()` bytes from ring position `pos`, across the wrap.
    fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let size = self.data_size as usize;
        let start = (pos % self.data_size) as usize;
        let first = out.len().min(size - start);
        // SAFETY: both ranges lie within the data area of our mapping
        // (`start + first <= size`, and the rest wraps to its beginning).
        unsafe {
            let data = self.base.add(self.page);
            std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

enum Parsed {
    Event(ProcEvent),
    Lost(u64),
}

/// Decodes one record's body (after the 8-byte header). Every record ends
/// with the `sample_id` trailer: pid, tid (u32 each) and time (u64).
fn parse(kind: u32, misc: u16, b: &[u8]) -> Option<Parsed> {
    let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let time = u64_at(b.len().checked_sub(8)?)?;
    let text = |o: usize, end: usize| -> Option<String> {
        let s = b.get(o..end)?;
        let n = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        Some(String::from_utf8_lossy(&s[..n]).into_owned())
    };
    let trailer = b.len().checked_sub(16)?;
    let e = match kind {
        sys::bindings::PERF_RECORD_MMAP2 => {
            if u32::from(misc) & sys::bindings::PERF_RECORD_MISC_MMAP_BUILD_ID != 0 {
                // We do not ask for build IDs; a record carrying one has no
                // device and inode to check a file against.
                return None;
            }
            ProcEvent::Mmap(Mmap {
                pid: u32_at(0)?,
                start: u64_at(8)?,
                len: u64_at(16)?,
                pgoff: u64_at(24)?,
                dev: (u32_at(32)?, u32_at(36)?),
                inode: u64_at(40)?,
                path: text(64, trailer)?,
                time_ns: time,
            })
        }
        sys::bindings::PERF_RECORD_COMM => ProcEvent::Comm {
            pid: u32_at(0)?,
            tid: u32_at(4)?,
            comm: text(8, trailer)?,
            exec: u32::from(misc) & sys::bindings::PERF_RECORD_MISC_COMM_EXEC != 0,
            time_ns: time,
        },
        sys::bindings::PERF_RECORD_FORK => ProcEvent::Fork {
            pid: u32_at(0)?,
            ppid: u32_at(4)?,
            tid: u32_at(8)?,
            time_ns: u64_at(16)?,
        },
        sys::bindings::PERF_RECORD_EXIT => ProcEvent::Exit {
            pid: u32_at(0)?,
            tid: u32_at(8)?,
            time_ns: u64_at(16)?,
        },
        sys::bindings::PERF_RECORD_LOST => return Some(Parsed::Lost(u64_at(8)?)),
        _ => return None,
    };
    Some(Parsed::Event(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_child_that_execs_is_seen_forking_execing_mapping_and_exiting() {
        let cpus: Vec<u32> = (0..std::thread::available_parallelism().map_or(1, |n| n.get()))
            .map(|c| c as u32)
            .collect();
        let mut ev = ProcEvents::open(&cpus).expect("perf events (needs CAP_PERFMON)");
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut seen = Vec::new();
        ev.drain(|e| seen.push(e.clone()));
        let mine = |e: &&ProcEvent| match e {
            ProcEvent::Fork { pid: p, .. } | ProcEvent::Exit { pid: p, .. } => *p == pid,
            ProcEvent::Comm { pid: p, .. } => *p == pid,
            ProcEvent::Mmap(m) => m.pid == pid,
        };
        let mine: Vec<&ProcEvent> = seen.iter().filter(mine).collect();
        assert!(
            matches!(mine.first(), Some(ProcEvent::Fork { tid, .. }) if *tid == pid),
            "{mine:?}"
        );
        assert!(mine
            .iter()
            .any(|e| matches!(e, ProcEvent::Comm { exec: true, comm, .. } if comm == "true")));
        let maps: Vec<&Mmap> = mine
            .iter()
            .filter_map(|e| match e {
                ProcEvent::Mmap(m) => Some(m),
                _ => None,
            })
            .collect();
        assert!(
            maps.iter()
                .any(|m| m.path.ends_with("/true") && m.inode != 0),
            "{maps:?}"
        );
        assert!(maps.iter().any(|m| m.path.contains("libc")), "{maps:?}");
        assert!(
            matches!(mine.last(), Some(ProcEvent::Exit { .. })),
            "{mine:?}"
        );
        // Times are the BPF program's clock and in order.
        let times: Vec<u64> = mine.iter().map(|e| e.time_ns()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(crate::capture::clock::mono_now() >= *times.last().unwrap());
        assert_eq!(ev.lost(), 0);
    }
}
