//! Rust mirror of `bpf/abi.h`.
//!
//! Keep this file and the header in step: the `layout_matches_c_header` test
//! compiles the header with the host C compiler and compares every offset.

/// Frames kept per stack (`RPROF_MAX_FRAMES`).
pub const MAX_FRAMES: usize = 127;
/// Bytes of a task's comm (`RPROF_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Entries of the tgid filter map (`RPROF_MAX_TARGETS`).
pub const MAX_TARGETS: usize = 1024;

/// `bpf_get_stack` failed for the user stack.
pub const FLAG_USER_STACK_ERR: u32 = 1 << 0;
/// `bpf_get_stack` failed for the kernel stack.
pub const FLAG_KERNEL_STACK_ERR: u32 = 1 << 1;

/// The user stack came from the unwind tables.
pub const FLAG_DWARF_UNWOUND: u32 = 1 << 2;
/// The unwinder stopped at an outermost frame (`_start`, thread start).
pub const FLAG_REACHED_ROOT: u32 = 1 << 3;
/// A frame-pointer step gave a return address in no executable mapping:
/// the walk ended before it, without it.
pub const FLAG_FP_TRUNCATED: u32 = 1 << 6;
/// The walk stopped because a table's rows were being replaced.
pub const FLAG_STALE_TABLE: u32 = 1 << 7;

/// Marks a table's header row: its `pc` is `ROW_GEN | gen`
/// (`RPROF_ROW_GEN`; see [`ProcMap::gen`]).
pub const ROW_GEN: u64 = 1 << 63;

/// [`Sample::state`]: a perf-event sample, on CPU.
pub const STATE_ON_CPU: u32 = 0;
/// [`Sample::state`]: a voluntary wait (the thread slept).
pub const STATE_OFF_CPU: u32 = 1;
/// [`Sample::state`]: preempted, runnable, waiting in the run queue.
pub const STATE_RUNQUEUE: u32 = 2;
/// A still-blocked thread's wait so far, from the sweep.
pub const FLAG_SWEPT: u32 = 1 << 4;
/// Blocked since before the capture: counted from its start.
pub const FLAG_SINCE_START: u32 = 1 << 5;
/// Per-CPU window of the off-CPU rate limit, ns.
pub const OFFCPU_WINDOW_NS: u64 = 100_000_000;
/// Array of one u64: when the capture started (CLOCK_MONOTONIC ns).
pub const MAP_OFFCPU_EPOCH: &str = "offcpu_epoch";
/// Per-CPU count of waits the off-CPU rate limit did not record.
pub const MAP_OFFCPU_DROPS: &str = "offcpu_drops";
/// `tp_btf/sched_switch` program.
pub const PROG_OFFCPU_SWITCH: &str = "rprof_offcpu_switch";
/// `tp_btf/sys_exit` program.
pub const PROG_OFFCPU_EXIT: &str = "rprof_offcpu_sys_exit";
/// `iter.s/task` program: the sweep of still-blocked threads.
pub const PROG_OFFCPU_SWEEP: &str = "rprof_offcpu_sweep";
/// `.rodata` global (u64): the off-CPU sampling period P in ns.
pub const GLOBAL_OFFCPU_PERIOD: &str = "offcpu_period_ns";
/// `.rodata` global (u32): records and unwinds per CPU per window.
pub const GLOBAL_OFFCPU_BUDGET: &str = "offcpu_budget";

/// Default capacity of the shared unwind-row array (`RPROF_MAX_UNWIND_ROWS`).
pub const MAX_UNWIND_ROWS: u32 = 1 << 19;
/// Executable mappings per process in [`ProcInfo`] (`RPROF_MAX_PROC_MAPS`).
pub const MAX_PROC_MAPS: usize = 64;
/// Processes with unwind tables at once (`RPROF_MAX_PROCS`).
pub const MAX_PROCS: u32 = 4096;

/// [`UnwindRow::cfa_reg`]: no unwind info; use frame pointers.
pub const CFA_NONE: u8 = 0;
/// CFA = rsp + offset.
pub const CFA_RSP: u8 = 1;
/// CFA = rbp + offset.
pub const CFA_RBP: u8 = 2;
/// PLT stub: CFA = rsp + 8 (+8 if `(ip & 15) >= cfa_offset`).
pub const CFA_PLT: u8 = 3;
/// Outermost frame: stop, the root is reached.
pub const CFA_END: u8 = 4;

/// Shared array of [`UnwindRow`]s (mmap-able).
pub const MAP_UNWIND_ROWS: &str = "unwind_rows";
/// Hash map tgid → [`ProcInfo`].
pub const MAP_PROCS: &str = "unwind_procs";
/// `.rodata` global: 1 to unwind with the tables where available.
pub const GLOBAL_DWARF_UNWIND: &str = "dwarf_unwind";
/// `.rodata` global: 1 to use frame pointers where no table covers the code.
pub const GLOBAL_FP_FALLBACK: &str = "fp_fallback";

/// One unwind rule, in effect from `pc` (a file offset) to the next row.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    pub pc: u64,
    pub cfa_offset: i32,
    /// rbp is saved at CFA + this; 0 means rbp is unchanged.
    pub rbp_offset: i16,
    /// One of the `CFA_*` constants.
    pub cfa_reg: u8,
    pub _pad: u8,
}

/// One executable mapping of a process, pointing at its file's rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcMap {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    /// First row of the file's table; its header row is the one before.
    pub row_start: u32,
    /// 0: no table, frame pointers.
    pub row_count: u32,
    /// The table's placement: its header row reads [`ROW_GEN`]` | gen`
    /// for as long as the rows are this table's.
    pub gen: u32,
    pub _pad: u32,
}

/// The executable mappings of one process, sorted by start.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcInfo {
    pub count: u32,
    pub _pad: u32,
    pub maps: [ProcMap; MAX_PROC_MAPS],
}

impl Default for ProcInfo {
    fn default() -> Self {
        ProcInfo {
            count: 0,
            _pad: 0,
            maps: [ProcMap::default(); MAX_PROC_MAPS],
        }
    }
}

/// Ring buffer of [`Sample`] records.
pub const MAP_SAMPLES: &str = "samples";
/// Hash map of wanted tgids (key `u32`, value `u8`).
pub const MAP_TARGETS: &str = "targets";
/// Per-CPU count of samples lost to a full ring buffer.
pub const MAP_DROPS: &str = "drops";
/// `.rodata` global: 1 to sample only tgids in [`MAP_TARGETS`].
pub const GLOBAL_FILTER_PIDS: &str = "filter_pids";
/// `.rodata` global (u32): the profiler's own tgid, never sampled.
pub const GLOBAL_SELF_TGID: &str = "self_tgid";
/// `.rodata` global: 0 to skip kernel stacks.
pub const GLOBAL_CAPTURE_KERNEL: &str = "capture_kernel";
/// `.rodata` global (u64): wake the reader once this many bytes wait.
pub const GLOBAL_WAKEUP_BYTES: &str = "wakeup_bytes";

/// Labels copied per set (`RPROF_GO_MAX_LABELS`); a longer set is cut
/// ([`GO_CUT`]).
pub const GO_MAX_LABELS: usize = 10;
/// Bytes of a label key copied (`RPROF_GO_KEY_LEN`).
pub const GO_KEY_LEN: usize = 64;
/// Bytes of a label value copied (`RPROF_GO_VALUE_LEN`).
pub const GO_VALUE_LEN: usize = 128;
/// Entries of [`MAP_GO_PROCS`] (`RPROF_MAX_GO_PROCS`).
pub const MAX_GO_PROCS: u32 = 4096;
/// Hash map tgid → [`GoProc`]: the Go processes whose records carry labels.
pub const MAP_GO_PROCS: &str = "go_procs";
/// [`GoProc::format`]: `g.labels` is a `*map[string]string` (Go ≤ 1.23).
pub const GO_LABELS_MAP: u32 = 1;
/// [`GoProc::format`]: `g.labels` is a `LabelSet{list []label}` (Go ≥ 1.24).
pub const GO_LABELS_SLICE: u32 = 2;
/// [`GoLabels::status`]: no user goroutine on the thread.
pub const GO_NONE: u32 = 0;
/// [`GoLabels::status`]: `goid` and `count` labels are valid.
pub const GO_OK: u32 = 1;
/// [`GoLabels::status`]: `m.procid` was not the sampled thread.
pub const GO_MISMATCH: u32 = 2;
/// [`GoLabels::status`]: a read of the runtime's memory failed.
pub const GO_FAULT: u32 = 3;
/// [`GoLabels::status`]: implausible label data.
pub const GO_BAD: u32 = 4;
/// [`GoLabels::flags`]: the set had more than [`GO_MAX_LABELS`] labels.
pub const GO_CUT: u16 = 1 << 0;

/// How the BPF programs find one Go process's goroutine labels
/// (`struct rprof_go_proc`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoProc {
    /// Offset of the current `g` from the FS base.
    pub tls_g: i64,
    pub g_m: u32,
    pub g_labels: u32,
    pub g_goid: u32,
    pub m_curg: u32,
    pub m_procid: u32,
    /// [`GO_LABELS_MAP`] or [`GO_LABELS_SLICE`].
    pub format: u32,
}

/// One label as copied (`struct rprof_go_label`): the Go lengths, and up
/// to the caps of bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoLabel {
    pub key_len: u32,
    pub value_len: u32,
    pub key: [u8; GO_KEY_LEN],
    pub value: [u8; GO_VALUE_LEN],
}

/// The labels of a sampled goroutine (`struct rprof_go_labels`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoLabels {
    pub goid: u64,
    /// One of the `GO_*` statuses; [`GO_NONE`] in records of processes not
    /// registered as Go.
    pub status: u32,
    pub count: u16,
    pub flags: u16,
    pub labels: [GoLabel; GO_MAX_LABELS],
}

impl Default for GoLabels {
    fn default() -> Self {
        GoLabels {
            goid: 0,
            status: GO_NONE,
            count: 0,
            flags: 0,
            labels: [GoLabel {
                key_len: 0,
                value_len: 0,
                key: [0; GO_KEY_LEN],
                value: [0; GO_VALUE_LEN],
            }; GO_MAX_LABELS],
        }
    }
}

impl GoLabels {
    /// The valid labels (none unless the status is [`GO_OK`]).
    pub fn valid(&self) -> &[GoLabel] {
        if self.status != GO_OK {
            return &[];
        }
        &self.labels[..usize::from(self.count).min(GO_MAX_LABELS)]
    }
}

impl GoLabel {
    /// The bytes of the key that were copied.
    pub fn key(&self) -> &[u8] {
        &self.key[..(self.key_len as usize).min(GO_KEY_LEN)]
    }

    /// The bytes of the value that were copied.
    pub fn value(&self) -> &[u8] {
        &self.value[..(self.value_len as usize).min(GO_VALUE_LEN)]
    }

    /// Whether the key or the value was longer than its cap.
    pub fn is_cut(&self) -> bool {
        self.key_len as usize > GO_KEY_LEN || self.value_len as usize > GO_VALUE_LEN
    }
}

/// One sample as the BPF program writes it (`struct rprof_sample`). The
/// records of processes registered as Go are longer: a [`GoSample`], this
/// followed by the goroutine's labels ([`GoLabels::from_record`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sample {
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub flags: u32,
    pub time_ns: u64,
    pub period: u64,
    /// When the process started (its main thread's `task->start_time`,
    /// CLOCK_MONOTONIC ns): with the pid, its identity across pid reuse.
    pub start_ns: u64,
    /// The word at the user stack pointer (user-mode samples), else 0: the
    /// return address a frameless leaf function leaves out of the chain.
    pub user_sp_word: u64,
    pub user_frames: u32,
    pub kernel_frames: u32,
    pub comm: [u8; COMM_LEN],
    pub user_stack: [u64; MAX_FRAMES],
    pub kernel_stack: [u64; MAX_FRAMES],
    /// One of the `STATE_*` constants. Off-CPU records carry their weight
    /// (ns) in `period` and the end of the wait in `time_ns`.
    pub state: u32,
    /// The syscall an off-CPU wait blocked in, else -1.
    pub syscall: i32,
}

/// A Go process's record (`struct rprof_go_sample`): the sample, then its
/// goroutine's labels. Only its layout is used (the labels are read apart,
/// so that other samples stay small).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoSample {
    pub s: Sample,
    pub go: GoLabels,
}

impl GoLabels {
    /// The labels of a ring-buffer record, if it is a Go process's (longer
    /// than a [`Sample`]).
    pub fn from_record(bytes: &[u8]) -> Option<Box<GoLabels>> {
        let at = std::mem::offset_of!(GoSample, go);
        let b = bytes.get(at..at + std::mem::size_of::<GoLabels>())?;
        // SAFETY: `b` is exactly as long as `GoLabels`, which is plain old
        // data (every bit pattern is valid); read_unaligned has no
        // alignment requirement.
        Some(Box::new(unsafe {
            std::ptr::read_unaligned(b.as_ptr().cast::<GoLabels>())
        }))
    }
}

impl Sample {
    /// Reads a record from ring-buffer bytes (its sample part, for a Go
    /// process's longer record). `None` if it is too short, which only a
    /// kernel/user ABI mismatch could cause.
    pub fn from_bytes(bytes: &[u8]) -> Option<Sample> {
        if bytes.len() < std::mem::size_of::<Sample>() {
            return None;
        }
        // SAFETY: the length is checked above, `Sample` is plain old data
        // (every bit pattern is valid) and read_unaligned has no alignment
        // requirement.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Sample>()) })
    }

    /// The valid user frames, innermost first.
    pub fn user_stack(&self) -> &[u64] {
        &self.user_stack[..(self.user_frames as usize).min(MAX_FRAMES)]
    }

    /// The valid kernel frames, innermost first.
    pub fn kernel_stack(&self) -> &[u64] {
        &self.kernel_stack[..(self.kernel_frames as usize).min(MAX_FRAMES)]
    }

    /// The thread name, up to its NUL.
    pub fn comm(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// Compiles a tiny C program against abi.h with the host compiler and
    /// compares what it prints with Rust's view of the same layout.
    #[test]
    fn layout_matches_c_header() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("layout.c");
        std::fs::write(
            &src,
            r#"
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "abi.h"
#define F(m) printf(#m " %zu\n", offsetof(struct rprof_sample, m))
int main(void) {
    printf("size %zu\n", sizeof(struct rprof_go_sample));
    printf("short %zu\n", sizeof(struct rprof_sample));
    printf("go %zu\n", offsetof(struct rprof_go_sample, go));
    printf("go_labels %zu %zu %zu %zu %zu %zu\n", sizeof(struct rprof_go_labels), offsetof(struct rprof_go_labels, goid), offsetof(struct rprof_go_labels, status), offsetof(struct rprof_go_labels, count), offsetof(struct rprof_go_labels, flags), offsetof(struct rprof_go_labels, labels));
    printf("go_label %zu %zu %zu %zu %zu\n", sizeof(struct rprof_go_label), offsetof(struct rprof_go_label, key_len), offsetof(struct rprof_go_label, value_len), offsetof(struct rprof_go_label, key), offsetof(struct rprof_go_label, value));
    printf("go_proc %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct rprof_go_proc), offsetof(struct rprof_go_proc, tls_g), offsetof(struct rprof_go_proc, g_m), offsetof(struct rprof_go_proc, g_labels), offsetof(struct rprof_go_proc, g_goid), offsetof(struct rprof_go_proc, m_curg), offsetof(struct rprof_go_proc, m_procid), offsetof(struct rprof_go_proc, format));
    printf("GO %d %d %d %d %s %d %d\n", RPROF_GO_MAX_LABELS, RPROF_GO_KEY_LEN, RPROF_GO_VALUE_LEN, RPROF_MAX_GO_PROCS, RPROF_MAP_GO_PROCS, RPROF_GO_LABELS_MAP, RPROF_GO_LABELS_SLICE);
    printf("GO_STATUS %d %d %d %d %d %u\n", RPROF_GO_NONE, RPROF_GO_OK, RPROF_GO_MISMATCH, RPROF_GO_FAULT, RPROF_GO_BAD, RPROF_GO_CUT);
    F(pid); F(tid); F(cpu); F(flags); F(time_ns); F(period); F(start_ns); F(user_sp_word);
    F(user_frames); F(kernel_frames); F(comm); F(user_stack); F(kernel_stack); F(state); F(syscall);
    printf("MAX_FRAMES %d\nCOMM_LEN %d\nMAX_TARGETS %d\n", RPROF_MAX_FRAMES, RPROF_COMM_LEN, RPROF_MAX_TARGETS);
    printf("FLAG_USER_STACK_ERR %u\nFLAG_KERNEL_STACK_ERR %u\n", RPROF_FLAG_USER_STACK_ERR, RPROF_FLAG_KERNEL_STACK_ERR);
    printf("MAP_SAMPLES %s\nMAP_TARGETS %s\nMAP_DROPS %s\n", RPROF_MAP_SAMPLES, RPROF_MAP_TARGETS, RPROF_MAP_DROPS);
    printf("FLAG_DWARF_UNWOUND %u\nFLAG_REACHED_ROOT %u\n", RPROF_FLAG_DWARF_UNWOUND, RPROF_FLAG_REACHED_ROOT);
    printf("FLAG_FP_TRUNCATED %u\nFLAG_STALE_TABLE %u\nROW_GEN %llu\n", RPROF_FLAG_FP_TRUNCATED, RPROF_FLAG_STALE_TABLE, RPROF_ROW_GEN);
    printf("MAX_UNWIND_ROWS %u\nMAX_PROC_MAPS %d\nMAX_PROCS %d\n", RPROF_MAX_UNWIND_ROWS, RPROF_MAX_PROC_MAPS, RPROF_MAX_PROCS);
    printf("CFA %d %d %d %d %d\n", RPROF_CFA_NONE, RPROF_CFA_RSP, RPROF_CFA_RBP, RPROF_CFA_PLT, RPROF_CFA_END);
    printf("MAP_UNWIND_ROWS %s\nMAP_PROCS %s\n", RPROF_MAP_UNWIND_ROWS, RPROF_MAP_PROCS);
    printf("row %zu %zu %zu %zu %zu\n", sizeof(struct rprof_unwind_row), offsetof(struct rprof_unwind_row, pc), offsetof(struct rprof_unwind_row, cfa_offset), offsetof(struct rprof_unwind_row, rbp_offset), offsetof(struct rprof_unwind_row, cfa_reg));
    printf("map %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct rprof_proc_map), offsetof(struct rprof_proc_map, start), offsetof(struct rprof_proc_map, end), offsetof(struct rprof_proc_map, offset), offsetof(struct rprof_proc_map, row_start), offsetof(struct rprof_proc_map, row_count), offsetof(struct rprof_proc_map, gen));
    printf("proc %zu %zu %zu\n", sizeof(struct rprof_proc_info), offsetof(struct rprof_proc_info, count), offsetof(struct rprof_proc_info, maps));
    printf("STATE %d %d %d\n", RPROF_STATE_ON_CPU, RPROF_STATE_OFF_CPU, RPROF_STATE_RUNQUEUE);
    printf("OFFCPU_FLAGS %u %u %llu\n", RPROF_FLAG_SWEPT, RPROF_FLAG_SINCE_START, RPROF_OFFCPU_WINDOW_NS);
    printf("OFFCPU_NAMES %s %s %s %s %s\n", RPROF_MAP_OFFCPU_EPOCH, RPROF_MAP_OFFCPU_DROPS, RPROF_PROG_OFFCPU_SWITCH, RPROF_PROG_OFFCPU_EXIT, RPROF_PROG_OFFCPU_SWEEP);
    return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.path().join("layout");
        let status = Command::new("cc")
            .arg("-I")
            .arg(crate::build::bpf_dir())
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .expect("a host C compiler (cc) is needed for the layout test");
        assert!(status.success(), "abi.h does not compile for the host");
        let out = Command::new(&exe).output().unwrap();
        let c: String = String::from_utf8(out.stdout).unwrap();

        let rust = [
            ("size", size_of::<GoSample>().to_string()),
            ("short", size_of::<Sample>().to_string()),
            ("go", offset_of!(GoSample, go).to_string()),
            (
                "go_labels",
                format!(
                    "{} {} {} {} {} {}",
                    size_of::<GoLabels>(),
                    offset_of!(GoLabels, goid),
                    offset_of!(GoLabels, status),
                    offset_of!(GoLabels, count),
                    offset_of!(GoLabels, flags),
                    offset_of!(GoLabels, labels)
                ),
            ),
            (
                "go_label",
                format!(
                    "{} {} {} {} {}",
                    size_of::<GoLabel>(),
                    offset_of!(GoLabel, key_len),
                    offset_of!(GoLabel, value_len),
                    offset_of!(GoLabel, key),
                    offset_of!(GoLabel, value)
                ),
            ),
            (
                "go_proc",
                format!(
                    "{} {} {} {} {} {} {} {}",
                    size_of::<GoProc>(),
                    offset_of!(GoProc, tls_g),
                    offset_of!(GoProc, g_m),
                    offset_of!(GoProc, g_labels),
                    offset_of!(GoProc, g_goid),
                    offset_of!(GoProc, m_curg),
                    offset_of!(GoProc, m_procid),
                    offset_of!(GoProc, format)
                ),
            ),
            (
                "GO",
                format!("{GO_MAX_LABELS} {GO_KEY_LEN} {GO_VALUE_LEN} {MAX_GO_PROCS} {MAP_GO_PROCS} {GO_LABELS_MAP} {GO_LABELS_SLICE}"),
            ),
            (
                "GO_STATUS",
                format!("{GO_NONE} {GO_OK} {GO_MISMATCH} {GO_FAULT} {GO_BAD} {GO_CUT}"),
            ),
            ("pid", offset_of!(Sample, pid).to_string()),
            ("tid", offset_of!(Sample, tid).to_string()),
            ("cpu", offset_of!(Sample, cpu).to_string()),
            ("flags", offset_of!(Sample, flags).to_string()),
            ("time_ns", offset_of!(Sample, time_ns).to_string()),
            ("period", offset_of!(Sample, period).to_string()),
            ("start_ns", offset_of!(Sample, start_ns).to_string()),
            ("user_sp_word", offset_of!(Sample, user_sp_word).to_string()),
            ("user_frames", offset_of!(Sample, user_frames).to_string()),
            (
                "kernel_frames",
                offset_of!(Sample, kernel_frames).to_string(),
            ),
            ("comm", offset_of!(Sample, comm).to_string()),
            ("user_stack", offset_of!(Sample, user_stack).to_string()),
            ("kernel_stack", offset_of!(Sample, kernel_stack).to_string()),
            ("state", offset_of!(Sample, state).to_string()),
            ("syscall", offset_of!(Sample, syscall).to_string()),
            ("MAX_FRAMES", MAX_FRAMES.to_string()),
            ("COMM_LEN", COMM_LEN.to_string()),
            ("MAX_TARGETS", MAX_TARGETS.to_string()),
            ("FLAG_USER_STACK_ERR", FLAG_USER_STACK_ERR.to_string()),
            ("FLAG_KERNEL_STACK_ERR", FLAG_KERNEL_STACK_ERR.to_string()),
            ("MAP_SAMPLES", MAP_SAMPLES.to_string()),
            ("MAP_TARGETS", MAP_TARGETS.to_string()),
            ("MAP_DROPS", MAP_DROPS.to_string()),
            ("FLAG_DWARF_UNWOUND", FLAG_DWARF_UNWOUND.to_string()),
            ("FLAG_REACHED_ROOT", FLAG_REACHED_ROOT.to_string()),
            ("FLAG_FP_TRUNCATED", FLAG_FP_TRUNCATED.to_string()),
            ("FLAG_STALE_TABLE", FLAG_STALE_TABLE.to_string()),
            ("ROW_GEN", ROW_GEN.to_string()),
            ("MAX_UNWIND_ROWS", MAX_UNWIND_ROWS.to_string()),
            ("MAX_PROC_MAPS", MAX_PROC_MAPS.to_string()),
            ("MAX_PROCS", MAX_PROCS.to_string()),
            (
                "CFA",
                format!("{CFA_NONE} {CFA_RSP} {CFA_RBP} {CFA_PLT} {CFA_END}"),
            ),
            ("MAP_UNWIND_ROWS", MAP_UNWIND_ROWS.to_string()),
            ("MAP_PROCS", MAP_PROCS.to_string()),
            (
                "row",
                format!(
                    "{} {} {} {} {}",
                    size_of::<UnwindRow>(),
                    offset_of!(UnwindRow, pc),
                    offset_of!(UnwindRow, cfa_offset),
                    offset_of!(UnwindRow, rbp_offset),
                    offset_of!(UnwindRow, cfa_reg)
                ),
            ),
            (
                "map",
                format!(
                    "{} {} {} {} {} {} {}",
                    size_of::<ProcMap>(),
                    offset_of!(ProcMap, start),
                    offset_of!(ProcMap, end),
                    offset_of!(ProcMap, offset),
                    offset_of!(ProcMap, row_start),
                    offset_of!(ProcMap, row_count),
                    offset_of!(ProcMap, gen)
                ),
            ),
            (
                "proc",
                format!(
                    "{} {} {}",
                    size_of::<ProcInfo>(),
                    offset_of!(ProcInfo, count),
                    offset_of!(ProcInfo, maps)
                ),
            ),
            (
                "STATE",
                format!("{STATE_ON_CPU} {STATE_OFF_CPU} {STATE_RUNQUEUE}"),
            ),
            (
                "OFFCPU_FLAGS",
                format!("{FLAG_SWEPT} {FLAG_SINCE_START} {OFFCPU_WINDOW_NS}"),
            ),
            (
                "OFFCPU_NAMES",
                format!("{MAP_OFFCPU_EPOCH} {MAP_OFFCPU_DROPS} {PROG_OFFCPU_SWITCH} {PROG_OFFCPU_EXIT} {PROG_OFFCPU_SWEEP}"),
            ),
        ];
        let expected: String = rust.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        assert_eq!(c, expected);
    }

    /// The committed object must be what clang-19 makes of the committed C.
    /// Without clang-19 the check is skipped, except under CI, where a
    /// missing compiler is an error.
    #[test]
    fn committed_object_is_fresh() {
        let have_clang = Command::new(crate::build::CLANG)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_clang {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have clang-19 to check the committed BPF object"
            );
            eprintln!("clang-19 not found: skipping the BPF object freshness check");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("profile.bpf.o");
        let status = crate::build::clang_command(&out).status().unwrap();
        assert!(status.success(), "clang-19 failed on profile.bpf.c");
        let fresh = std::fs::read(&out).unwrap();
        let committed = std::fs::read(crate::build::committed_object()).unwrap();
        assert!(
            fresh == committed,
            "bpf/profile.bpf.o is stale: run `cargo xtask bpf` and commit the result"
        );
    }

    /// Every record's flags, the off-CPU ones included: one bit each.
    #[test]
    fn flag_bits_are_distinct() {
        let flags = [
            FLAG_USER_STACK_ERR,
            FLAG_KERNEL_STACK_ERR,
            FLAG_DWARF_UNWOUND,
            FLAG_REACHED_ROOT,
            FLAG_FP_TRUNCATED,
            FLAG_STALE_TABLE,
            FLAG_SWEPT,
            FLAG_SINCE_START,
        ];
        let all = flags.iter().fold(0u32, |acc, f| {
            assert_eq!(f.count_ones(), 1, "{f:#x}");
            assert_eq!(acc & f, 0, "{f:#x} is used twice");
            acc | f
        });
        assert_eq!(all.count_ones() as usize, flags.len());
    }

    #[test]
    fn object_is_aligned_bpf_elf() {
        assert_eq!(crate::OBJECT.as_ptr() as usize % 8, 0);
        assert_eq!(&crate::OBJECT[..4], b"\x7fELF");
        // e_machine at offset 18: EM_BPF = 247.
        assert_eq!(
            u16::from_le_bytes([crate::OBJECT[18], crate::OBJECT[19]]),
            247
        );
    }
}
