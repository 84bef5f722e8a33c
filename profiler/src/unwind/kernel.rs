//! The two BPF maps the unwinder reads, behind the few operations the
//! table cache needs, so that the cache's ordering rules can be tested
//! against a model (see `loader`'s tests).
//!
//! Rows are written through a shared mapping of the `BPF_F_MMAPABLE` row
//! array: plain memory writes, no syscall per row. Only the pages of the
//! table being written are mapped, and only while it is written: the whole
//! array mapped at once would count the entire budget in our RSS (the
//! kernel maps every page of it at mmap time), whether used or not.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{fence, Ordering};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use profiler_ebpf::abi::{ProcInfo, UnwindRow, ROW_GEN};

/// What the table cache does to the kernel's maps.
pub(crate) trait TableMaps: Send {
    /// Rows in the array.
    fn capacity(&self) -> u32;
    /// Writes a table at `start`: `rows` from `start + 1`, then the header
    /// row at `start` saying `ROW_GEN | gen`, last.
    fn write_table(&mut self, start: u32, gen: u32, rows: &[UnwindRow]) -> Result<(), String>;
    /// Zeroes the header row at `start`, so that a walk still reading the
    /// table's rows gives up once they change.
    fn retire_table(&mut self, start: u32) -> Result<(), String>;
    /// Inserts or replaces a process's mapping list.
    fn set_proc(&mut self, pid: u32, info: &ProcInfo) -> Result<(), String>;
    /// Deletes a process's mapping list.
    fn remove_proc(&mut self, pid: u32);
}

/// `ProcInfo` as a map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct ProcValue(ProcInfo);

// SAFETY: ProcInfo is #[repr(C)] plain old data: integers only, every bit
// pattern valid, no padding that the kernel could misread.
unsafe impl aya::Pod for ProcValue {}

/// The program's `unwind_rows` array and `unwind_procs` hash map.
pub(crate) struct BpfMaps {
    rows: MapData,
    capacity: u32,
    procs: BpfHashMap<MapData, u32, ProcValue>,
}

impl BpfMaps {
    pub fn new(rows: Map, capacity: u32, procs: Map) -> Result<BpfMaps, String> {
        let Map::Array(rows) = rows else {
            return Err("unwind_rows is not an array map".into());
        };
        let procs = BpfHashMap::try_from(procs).map_err(|e| e.to_string())?;
        Ok(BpfMaps {
            rows,
            capacity,
            procs,
        })
    }

    /// Maps the pages holding rows `[first, first + count)` for writing.
    fn window(&self, first: u32, count: u32) -> Result<Window, String> {
        let row = std::mem::size_of::<UnwindRow>();
        if u64::from(first) + u64::from(count) > u64::from(self.capacity) {
            return Err(format!(
                "rows {first}..{} are outside the array",
                u64::from(first) + u64::from(count)
            ));
        }
        let page = page_size();
        let begin = first as usize * row;
        let end = (first as usize + count as usize) * row;
        let offset = begin / page * page;
        let len = end.div_ceil(page) * page - offset;
        // SAFETY: a shared mapping of a BPF array created BPF_F_MMAPABLE,
        // page-aligned and inside the array (checked above; the kernel
        // checks again); the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.rows.fd().as_fd().as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "cannot map the unwind row array: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `begin - offset` is inside the mapping, a multiple of
        // the row size from a page-aligned base.
        let base = unsafe { ptr.cast::<u8>().add(begin - offset).cast::<UnwindRow>() };
        Ok(Window {
            ptr,
            len,
            base,
            count,
        })
    }
}

/// Some rows of the array, mapped into our memory until dropped.
struct Window {
    ptr: *mut libc::c_void,
    len: usize,
    base: *mut UnwindRow,
    count: u32,
}

impl Window {
    fn write(&mut self, at: u32, rows: &[UnwindRow]) {
        assert!(
            at as usize + rows.len() <= self.count as usize,
            "inside the window"
        );
        // SAFETY: in bounds of a live, writable mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(rows.as_ptr(), self.base.add(at as usize), rows.len());
        }
    }

    /// The `pc` of row `at`, stored so that the BPF program sees it after
    /// everything written before (x86-64 keeps stores in order; the fence
    /// keeps the compiler from moving them).
    fn publish_pc(&mut self, at: u32, pc: u64) {
        assert!(at < self.count, "inside the window");
        fence(Ordering::SeqCst);
        // SAFETY: in bounds (checked above), aligned (rows are 16 bytes
        // from a page boundary), of a live, writable mapping.
        unsafe {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*self.base.add(at as usize)).pc), pc)
        };
        fence(Ordering::SeqCst);
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what window() mapped.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

impl TableMaps for BpfMaps {
    fn capacity(&self) -> u32 {
        self.capacity
    }

    fn write_table(&mut self, start: u32, gen: u32, rows: &[UnwindRow]) -> Result<(), String> {
        let count = u32::try_from(rows.len() + 1).map_err(|_| "table too large".to_owned())?;
        let mut w = self.window(start, count)?;
        w.write(1, rows);
        w.write(0, &[UnwindRow::default()]);
        w.publish_pc(0, ROW_GEN | u64::from(gen));
        Ok(())
    }

    fn retire_table(&mut self, start: u32) -> Result<(), String> {
        let mut w = self.window(start, 1)?;
        w.publish_pc(0, 0);
        Ok(())
    }

    fn set_proc(&mut self, pid: u32, info: &ProcInfo) -> Result<(), String> {
        self.procs
            .insert(pid, ProcValue(*info), 0)
            .map_err(|e| format!("cannot load the unwind info of pid {pid}: {e}"))
    }

    fn remove_proc(&mut self, pid: u32) {
        let _ = self.procs.remove(&pid);
    }
}
