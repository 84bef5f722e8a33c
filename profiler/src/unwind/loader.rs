//! Loading unwind tables into the BPF maps.
//!
//! Rows of every binary live in one array map created `BPF_F_MMAPABLE`: we
//! map it into our address space and copy rows in with plain memory writes,
//! so a binary of 100k rows costs no syscalls at all (per-entry map updates
//! are what makes table loading slow in other profilers). Each process then
//! costs one map update: its list of executable mappings.
//!
//! Tables are compiled once per binary and shared by every process that
//! maps it. Rows are never freed during a capture (a bump allocator):
//! binaries outlive processes, and a capture is bounded in time.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use profiler_ebpf::abi::{ProcInfo, ProcMap, UnwindRow, MAX_PROC_MAPS};

use super::{cgo, table};
use crate::process::{BinaryKey, Process};
use crate::symbolize::go::GoTable;

/// `ProcInfo` as a map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct ProcValue(ProcInfo);

// SAFETY: ProcInfo is #[repr(C)] plain old data: integers only, every bit
// pattern valid, no padding that the kernel could misread.
unsafe impl aya::Pod for ProcValue {}

/// What loading cost and how full the maps are.
#[derive(Clone, Debug, Default)]
pub struct UnwindStats {
    /// Binaries with a table in the map.
    pub binaries: usize,
    /// Rows used, of `capacity`.
    pub rows: u32,
    pub capacity: u32,
    /// Processes given tables.
    pub processes: usize,
    /// Binaries whose table did not fit (they use frame pointers).
    pub too_big: Vec<String>,
    /// Time spent compiling tables and copying rows.
    pub build_time: Duration,
    /// Bytes of code the tables cover (the executable mapping of each
    /// binary given a table), for the cost per MB of text.
    pub text_bytes: u64,
}

/// What loading one process's tables needs, detached from the process
/// table so it can be sent to another thread.
pub struct TableRequest {
    pub pid: u32,
    /// Executable mappings, sorted by start.
    pub maps: Vec<TableMap>,
}

/// One executable mapping and, when file-backed, its binary: identity,
/// mapped bytes and name (for messages).
pub struct TableMap {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub binary: Option<(BinaryKey, Option<Arc<memmap2::Mmap>>, String)>,
}

impl TableRequest {
    /// The request for `process` as it is now.
    pub fn of(process: &Process) -> TableRequest {
        let maps = process
            .maps
            .iter()
            .filter(|m| m.executable)
            .map(|m| TableMap {
                start: m.start,
                end: m.end,
                offset: m.offset,
                binary: process
                    .binaries
                    .get(&m.start)
                    .map(|b| (b.key, b.data.clone(), b.path.clone())),
            })
            .collect();
        TableRequest {
            pid: process.pid,
            maps,
        }
    }
}

/// The unwind maps of a loaded program, and the tables already in them.
pub struct Unwinder {
    rows: RowsMmap,
    next_row: u32,
    procs: BpfHashMap<MapData, u32, ProcValue>,
    tables: HashMap<BinaryKey, Option<(u32, u32)>>,
    stats: UnwindStats,
}

/// The row array, mapped into our memory.
struct RowsMmap {
    ptr: *mut UnwindRow,
    capacity: u32,
    /// Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
}

// SAFETY: the pointer is owned by this struct alone and only used through
// &mut self.
unsafe impl Send for RowsMmap {}

impl RowsMmap {
    fn new(map: MapData, capacity: u32) -> std::io::Result<RowsMmap> {
        let len = capacity as usize * std::mem::size_of::<UnwindRow>();
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, shared,
        // for exactly its size; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RowsMmap {
            ptr: ptr.cast(),
            capacity,
            _map: map,
        })
    }

    fn write(&mut self, at: u32, rows: &[UnwindRow]) {
        let end = at as usize + rows.len();
        assert!(end <= self.capacity as usize, "caller checks capacity");
        // SAFETY: in bounds (checked above) of a live, writable mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(rows.as_ptr(), self.ptr.add(at as usize), rows.len());
        }
    }
}

impl Drop for RowsMmap {
    fn drop(&mut self) {
        let len = self.capacity as usize * std::mem::size_of::<UnwindRow>();
        // SAFETY: unmapping exactly what new() mapped.
        unsafe {
            libc::munmap(self.ptr.cast(), len);
        }
    }
}

impl Unwinder {
    /// Wraps the program's `unwind_rows` array (of `capacity` rows) and
    /// `unwind_procs` hash map.
    pub fn new(rows: Map, capacity: u32, procs: Map) -> Result<Unwinder, String> {
        let Map::Array(rows) = rows else {
            return Err("unwind_rows is not an array map".into());
        };
        let rows = RowsMmap::new(rows, capacity)
            .map_err(|e| format!("cannot map the unwind row array: {e}"))?;
        let procs = BpfHashMap::try_from(procs).map_err(|e| e.to_string())?;
        Ok(Unwinder {
            rows,
            next_row: 0,
            procs,
            tables: HashMap::new(),
            stats: UnwindStats {
                capacity,
                ..UnwindStats::default()
            },
        })
    }

    /// Gives `process` tables: compiles those of its binaries not seen
    /// before, then writes its mapping list. Call again after its mappings
    /// change (dlopen, exec).
    pub fn load_process(&mut self, process: &Process) -> Result<(), String> {
        self.load(&TableRequest::of(process))
    }

    /// [`Unwinder::load_process`] from a detached snapshot (what the
    /// table worker thread receives).
    pub fn load(&mut self, req: &TableRequest) -> Result<(), String> {
        let t0 = Instant::now();
        let mut info = ProcInfo::default();
        let mut n = 0;
        for m in req.maps.iter().take(MAX_PROC_MAPS) {
            let (row_start, row_count) = match &m.binary {
                Some((key, data, name)) => {
                    let fresh = !self.tables.contains_key(key);
                    let placed = self.table(*key, data.as_ref(), name);
                    if fresh && placed.is_some() {
                        self.stats.text_bytes += m.end - m.start;
                    }
                    placed.unwrap_or((0, 0))
                }
                None => (0, 0),
            };
            info.maps[n] = ProcMap {
                start: m.start,
                end: m.end,
                offset: m.offset,
                row_start,
                row_count,
            };
            n += 1;
        }
        info.count = n as u32;
        self.procs
            .insert(req.pid, ProcValue(info), 0)
            .map_err(|e| format!("cannot load unwind info of pid {}: {e}", req.pid))?;
        self.stats.processes += 1;
        self.stats.build_time += t0.elapsed();
        Ok(())
    }

    /// Forgets a process (it exited).
    pub fn remove_process(&mut self, pid: u32) {
        let _ = self.procs.remove(&pid);
    }

    /// Counters so far.
    pub fn stats(&self) -> &UnwindStats {
        &self.stats
    }

    /// The (start, count) of a binary's rows, compiling and copying them on
    /// first use. `None` when it has no table or the table did not fit.
    fn table(
        &mut self,
        key: BinaryKey,
        data: Option<&Arc<memmap2::Mmap>>,
        name: &str,
    ) -> Option<(u32, u32)> {
        if let Some(t) = self.tables.get(&key) {
            return *t;
        }
        let rows = data
            .and_then(|d| table::compile_with(d, go_rules(d)).ok())
            .unwrap_or_default();
        let placed = if rows.is_empty() {
            None
        } else if let Some(end) = u32::try_from(rows.len())
            .ok()
            .and_then(|n| self.next_row.checked_add(n))
            .filter(|&end| end <= self.rows.capacity)
        {
            let start = self.next_row;
            self.rows.write(start, &rows);
            self.next_row = end;
            self.stats.rows = end;
            self.stats.binaries += 1;
            Some((start, rows.len() as u32))
        } else {
            eprintln!(
                "warning: the unwind table of {name} ({} rows) does not fit ({} of {} rows used); its frames are unwound with frame pointers",
                rows.len(),
                self.next_row,
                self.rows.capacity
            );
            self.stats.too_big.push(name.to_owned());
            None
        };
        self.tables.insert(key, placed);
        placed
    }
}

/// Rules for the Go code C calls into, if `data` is a Go binary using cgo.
fn go_rules(data: &Arc<memmap2::Mmap>) -> Vec<(u64, u64, table::Rule)> {
    match GoTable::parse_mapped(data.clone()) {
        Ok(Some(go)) => cgo::trampoline_rules(&go),
        _ => Vec::new(),
    }
}
