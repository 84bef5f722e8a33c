//! Which processes the BPF programs read goroutine labels of, and how:
//! the `go_procs` map, filled from each Go executable's runtime layout.
//!
//! The layout ([`runtime_layout`]) is found once per executable (device
//! and inode), so a node running a hundred copies of one service opens
//! and reads its binary once. A Go release whose layout is not known (a
//! stripped binary of a release without a table row, a release outside
//! the supported range) gets no entry, and one warning for the binary:
//! never a guess, which would read memory at wrong offsets (the procid
//! check would catch most of it, but not be the reason it is right).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use profiler_ebpf::abi::{self, GoProc};

use crate::goruntime::{runtime_layout, GoRuntimeError, RuntimeLayout};

/// `GoProc` as a map value.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct GoProcValue(GoProc);

// SAFETY: GoProc is #[repr(C)] plain old data: integers only (8 + 6 * 4
// bytes, no padding), every bit pattern valid.
unsafe impl aya::Pod for GoProcValue {}

/// An executable on this machine: (device, inode) of `/proc/PID/exe`.
type ExeKey = (u64, u64);

/// Counters of registrations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// Go processes whose samples carry labels.
    pub registered: u64,
    /// Go executables left without labels (no known layout), each warned
    /// about once.
    pub unsupported: u64,
}

/// What an executable's runtime layout is, as far as labels go.
#[derive(Clone, Copy, Debug)]
enum Known {
    Layout(GoProc),
    NotGo,
    /// A Go program whose layout is not known: no labels.
    NoLayout,
}

/// The `go_procs` map and what we learnt of each executable.
pub struct GoProcs {
    map: BpfHashMap<MapData, u32, GoProcValue>,
    by_exe: HashMap<ExeKey, Known>,
    /// Processes in the map, with the executable they were registered for
    /// (an `exec` changes it).
    registered: HashMap<u32, ExeKey>,
    stats: ProcStats,
}

impl GoProcs {
    /// Takes the map out of a loaded program ([`crate::capture::Capture::take_go_procs`]).
    pub fn new(map: Map) -> Result<GoProcs, String> {
        Ok(GoProcs {
            map: BpfHashMap::try_from(map).map_err(|e| e.to_string())?,
            by_exe: HashMap::new(),
            registered: HashMap::new(),
            stats: ProcStats::default(),
        })
    }

    pub fn stats(&self) -> ProcStats {
        self.stats
    }

    /// Registers `pid` if it runs a Go executable with a known layout (and
    /// unregisters it if it no longer does: an `exec`). Cheap for a process
    /// already registered for its executable: one `stat`.
    pub fn register(&mut self, pid: u32) {
        let Some(exe) = exe_key(pid) else {
            return;
        };
        if self.registered.get(&pid) == Some(&exe) {
            return;
        }
        let known = match self.by_exe.get(&exe) {
            Some(k) => *k,
            None => {
                // Gone, or unreadable right now: nothing learnt.
                let Some(k) = discover(pid) else { return };
                if matches!(k, Known::NoLayout) {
                    self.stats.unsupported += 1;
                }
                self.by_exe.insert(exe, k);
                k
            }
        };
        let Known::Layout(c) = known else {
            self.forget(pid);
            return;
        };
        match self.map.insert(pid, GoProcValue(c), 0) {
            Ok(()) => {
                self.registered.insert(pid, exe);
                self.stats.registered += 1;
            }
            Err(e) => tracing::warn!(pid, "cannot register Go process {pid} for labels: {e}"),
        }
    }

    /// Takes `pid` out of the map (it exited, or its pid will be reused).
    pub fn forget(&mut self, pid: u32) {
        if self.registered.remove(&pid).is_some() {
            let _ = self.map.remove(&pid);
        }
    }
}

/// The executable `pid` runs now.
fn exe_key(pid: u32) -> Option<ExeKey> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// What `pid`'s executable is, as far as labels go (a Go program without
/// a known layout is warned about); `None` if nothing could be learnt (the
/// process is gone or unreadable now).
fn discover(pid: u32) -> Option<Known> {
    let t = std::time::Instant::now();
    let layout = runtime_layout(pid);
    tracing::debug!(
        pid,
        "Go labels: the layout of process {pid}'s executable took {:?}",
        t.elapsed()
    );
    match layout {
        Ok(l) => Some(match config_of(&l) {
            Some(c) => Known::Layout(c),
            None => {
                tracing::warn!(
                    pid,
                    "process {pid} ({}): its runtime offsets are out of range; its samples carry no Go labels",
                    l.version
                );
                Known::NoLayout
            }
        }),
        Err(GoRuntimeError::NotGo { .. }) => Some(Known::NotGo),
        Err(
            e @ (GoRuntimeError::NoProcess { .. }
            | GoRuntimeError::Access { .. }
            | GoRuntimeError::Memory(_)),
        ) => {
            tracing::debug!(pid, "Go labels: {e}");
            None
        }
        Err(e) => {
            tracing::warn!("{e}; its samples carry no Go labels");
            Some(Known::NoLayout)
        }
    }
}

/// The map entry for a layout; `None` if an offset does not fit.
fn config_of(l: &RuntimeLayout) -> Option<GoProc> {
    let o = &l.offsets;
    let u = |v: u64| u32::try_from(v).ok();
    Some(GoProc {
        tls_g: l.tls_g_offset,
        g_m: u(o.g_m)?,
        g_labels: u(o.g_labels)?,
        g_goid: u(o.g_goid)?,
        m_curg: u(o.m_curg)?,
        m_procid: u(o.m_procid)?.checked_add(procid_skew())?,
        format: if l.labels_are_map {
            abi::GO_LABELS_MAP
        } else {
            abi::GO_LABELS_SLICE
        },
    })
}

/// Bytes added to `m.procid`'s offset, from `RPROF_BPF_TEST_GO_PROCID_SKEW`:
/// for tests only, which need a chain the check rejects in a real process
/// (`tests/golabels.rs`). Zero unless set.
fn procid_skew() -> u32 {
    std::env::var("RPROF_BPF_TEST_GO_PROCID_SKEW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
