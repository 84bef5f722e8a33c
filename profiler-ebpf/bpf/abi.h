/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * abi.h - the one definition of what the kernel side hands to user space.
 *
 * Every record, map and constant shared between profile.bpf.c and the Rust
 * loader lives here. The Rust mirror is `profiler_ebpf::abi`; its layout test
 * compiles against the offsets asserted below, so a change here that is not
 * made there fails the build of one side or the test of the other.
 *
 * Our own types carry the `rprof_` prefix: the kernel already has a
 * `struct sample` and friends, and BTF dedup would otherwise mix them up.
 */
#ifndef RPROF_ABI_H
#define RPROF_ABI_H

/* Frames kept per stack. 127 is the kernel's sysctl_perf_event_max_stack default. */
#define RPROF_MAX_FRAMES 127
/* Bytes of a task's comm, as TASK_COMM_LEN. */
#define RPROF_COMM_LEN 16
/* Processes the --pid filter can hold. */
#define RPROF_MAX_TARGETS 1024

/* rprof_sample.flags */
#define RPROF_FLAG_USER_STACK_ERR   (1u << 0) /* bpf_get_stack for user failed */
#define RPROF_FLAG_KERNEL_STACK_ERR (1u << 1) /* bpf_get_stack for kernel failed */

/*
 * One sample, one ring-buffer record. The size is fixed so the program can
 * bpf_ringbuf_reserve it and let bpf_get_stack write straight into it: no
 * per-CPU scratch copy on the hot path. Unused frame slots are garbage;
 * user_frames/kernel_frames say how many are valid.
 */
struct rprof_sample {
	__u32 pid;            /* tgid: the process */
	__u32 tid;            /* the thread */
	__u32 cpu;
	__u32 flags;          /* RPROF_FLAG_* */
	__u64 time_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 period;         /* the event's sample period (ns for cpu-clock) */
	/*
	 * When the process started: its main thread's task->start_time
	 * (CLOCK_MONOTONIC ns). With pid, what tells two processes apart when
	 * the kernel reuses a pid during a capture.
	 */
	__u64 start_ns;
	/*
	 * The word at the user stack pointer when the sample hit user code, else
	 * 0. In a function without a frame of its own (most leaves: compilers
	 * skip the frame-pointer setup there) this is the return address that
	 * the frame-pointer chain misses; user space decides whether it is one.
	 * Set for frame-pointer stacks, and for table-unwound stacks whose leaf
	 * had no table (then unwound by frame pointers too).
	 */
	__u64 user_sp_word;
	__u32 user_frames;    /* valid entries in user_stack */
	__u32 kernel_frames;  /* valid entries in kernel_stack */
	char comm[RPROF_COMM_LEN]; /* thread name */
	__u64 user_stack[RPROF_MAX_FRAMES];
	__u64 kernel_stack[RPROF_MAX_FRAMES];
	/*
	 * RPROF_STATE_*: what the thread was doing. The off-CPU programs
	 * (offcpu.h) set `period` to the weight in ns and `time_ns` to when the
	 * wait (or the swept piece of it) ended.
	 */
	__u32 state;
	/* The syscall the thread blocked in (orig_rax at its exit), else -1. */
	__s32 syscall;
};

/* Layout facts the Rust mirror asserts too. */
_Static_assert(sizeof(struct rprof_sample) == 80 + 2 * 8 * RPROF_MAX_FRAMES,
	       "rprof_sample size changed: update profiler-ebpf/src/abi.rs");
_Static_assert(__builtin_offsetof(struct rprof_sample, comm) == 56,
	       "rprof_sample.comm moved: update profiler-ebpf/src/abi.rs");
_Static_assert(__builtin_offsetof(struct rprof_sample, user_stack) == 72,
	       "rprof_sample.user_stack moved: update profiler-ebpf/src/abi.rs");

/*
 * Unwind tables (the .eh_frame unwinder).
 *
 * Every executable file's .eh_frame is compiled by user space into rows
 * sorted by file offset; the rows of all files share one mmap-able array
 * (user space writes it directly, no syscall per row). Each process has one
 * rprof_proc_info: its executable mappings, sorted by start, each pointing
 * at its file's rows (row_count 0: no table, use frame pointers).
 *
 * The array is a byte budget shared by all binaries: user space frees the
 * rows of binaries no process maps any more and evicts the least recently
 * used ones under pressure, then writes other tables over them. So that a
 * walk that read a process's mapping list just before it was updated never
 * takes another binary's rows for its own, every table is preceded by a
 * header row whose pc is RPROF_ROW_GEN | gen, gen being unique to that
 * placement (rprof_proc_map.gen). User space zeroes the header before it
 * reuses any of the table's rows, and writes it last when placing a table;
 * the unwinder reads it after the rows it used and gives up on a mismatch.
 * On x86-64 stores are seen in order, so a walk that read any row of the
 * new table sees the zeroed header (a sequence lock, the header being the
 * sequence).
 */
#define RPROF_MAX_UNWIND_ROWS (1u << 19) /* 512K rows x 16 B = 8 MiB, resized by the loader */
#define RPROF_ROW_GEN (1ull << 63)       /* marks a header row; file offsets never reach it */
#define RPROF_MAX_PROC_MAPS   64          /* executable mappings per process */
#define RPROF_MAX_PROCS       4096        /* processes with tables at once */

/* rprof_unwind_row.cfa_reg: how to find the canonical frame address. */
#define RPROF_CFA_NONE 0 /* no unwind info here: fall back to frame pointers */
#define RPROF_CFA_RSP  1 /* CFA = rsp + cfa_offset */
#define RPROF_CFA_RBP  2 /* CFA = rbp + cfa_offset */
#define RPROF_CFA_PLT  3 /* PLT stub: CFA = rsp + 8, +8 more if (ip & 15) >= cfa_offset */
#define RPROF_CFA_END  4 /* outermost frame (_start, thread start): stop, root reached */

struct rprof_unwind_row {
	__u64 pc;          /* file offset where this row starts to apply */
	__s32 cfa_offset;
	__s16 rbp_offset;  /* rbp saved at CFA + rbp_offset; 0: rbp unchanged */
	__u8 cfa_reg;      /* RPROF_CFA_* */
	__u8 _pad;
};

struct rprof_proc_map {
	__u64 start;       /* runtime address range [start, end) */
	__u64 end;
	__u64 offset;      /* file offset of `start` */
	__u32 row_start;   /* first row of the file's table; its header is row_start - 1 */
	__u32 row_count;   /* 0: no table for this file */
	__u32 gen;         /* the header reads RPROF_ROW_GEN | gen while the rows are this table's */
	__u32 _pad;
};

struct rprof_proc_info {
	__u32 count;       /* valid entries in maps */
	__u32 _pad;
	struct rprof_proc_map maps[RPROF_MAX_PROC_MAPS];
};

_Static_assert(sizeof(struct rprof_unwind_row) == 16, "rprof_unwind_row must stay 16 bytes");
_Static_assert(sizeof(struct rprof_proc_map) == 40, "rprof_proc_map must stay 40 bytes");

/* rprof_sample.flags, continued */
#define RPROF_FLAG_DWARF_UNWOUND    (1u << 2) /* user stack from the unwind tables */
#define RPROF_FLAG_REACHED_ROOT     (1u << 3) /* the unwinder stopped at an outermost frame */
/* A frame-pointer step gave a return address in no executable mapping of
 * the process (garbage: rbp was not a frame pointer there); the walk ended
 * before it and the address is not in the stack. */
#define RPROF_FLAG_FP_TRUNCATED     (1u << 6)
/* The walk stopped because a table's rows were being replaced (see
 * RPROF_ROW_GEN); the frames before are good. */
#define RPROF_FLAG_STALE_TABLE      (1u << 7)

/*
 * Off-CPU (offcpu.h). rprof_sample.state: on CPU (a perf-event sample), a
 * voluntary wait (the thread slept), or a preemption (runnable, waiting in
 * the run queue).
 */
#define RPROF_STATE_ON_CPU   0
#define RPROF_STATE_OFF_CPU  1
#define RPROF_STATE_RUNQUEUE 2

/* rprof_sample.flags, off-CPU records (bits 4 and 5; any record: 0-3, 6, 7) */
#define RPROF_FLAG_SWEPT       (1u << 4) /* a still-blocked thread's wait so far, from the sweep */
#define RPROF_FLAG_SINCE_START (1u << 5) /* blocked since before the capture: counted from its start */

/* Per-CPU window of the off-CPU rate limit, in ns. */
#define RPROF_OFFCPU_WINDOW_NS 100000000ull

/*
 * Go pprof labels (go.h). For a process user space registered in go_procs
 * (RPROF_MAP_GO_PROCS: its runtime layout), every record is a
 * struct rprof_go_sample: the sample, then the labels of the goroutine
 * the thread ran (or blocked in), copied at sample time. Other processes'
 * records stay struct rprof_sample; the length tells them apart.
 */
#define RPROF_GO_MAX_LABELS 10  /* labels copied per set; more: RPROF_GO_CUT */
#define RPROF_GO_KEY_LEN    64  /* bytes of a key copied; longer ones are cut */
#define RPROF_GO_VALUE_LEN  128 /* bytes of a value copied; longer ones are cut */
#define RPROF_MAX_GO_PROCS  4096

/* rprof_go_proc.format: what g.labels points at. */
#define RPROF_GO_LABELS_MAP   1 /* *map[string]string (classic hmap): Go <= 1.23 */
#define RPROF_GO_LABELS_SLICE 2 /* LabelSet{list []label}, sorted by key: Go >= 1.24 */

/* How to find the running goroutine's labels in one Go process. */
struct rprof_go_proc {
	__s64 tls_g;     /* offset of the current g from the FS base */
	__u32 g_m;       /* offsetof(runtime.g, m) */
	__u32 g_labels;  /* offsetof(runtime.g, labels) */
	__u32 g_goid;    /* offsetof(runtime.g, goid) */
	__u32 m_curg;    /* offsetof(runtime.m, curg) */
	__u32 m_procid;  /* offsetof(runtime.m, procid): the thread's tid */
	__u32 format;    /* RPROF_GO_LABELS_* */
};

/* rprof_go_labels.status */
#define RPROF_GO_NONE     0 /* no goroutine on the thread (no g, or the scheduler's) */
#define RPROF_GO_OK       1 /* goid and `count` labels are valid (0: unlabelled) */
#define RPROF_GO_MISMATCH 2 /* m.procid is not the thread: chain untrusted, nothing read */
#define RPROF_GO_FAULT    3 /* a read of the runtime's memory failed: labels dropped */
#define RPROF_GO_BAD      4 /* implausible label data (length, map shape): dropped */

/* rprof_go_labels.flags */
#define RPROF_GO_CUT (1u << 0) /* the set had more than RPROF_GO_MAX_LABELS labels */

struct rprof_go_label {
	__u32 key_len;   /* the key's length in Go; above RPROF_GO_KEY_LEN, cut */
	__u32 value_len; /* the value's; above RPROF_GO_VALUE_LEN, cut */
	char key[RPROF_GO_KEY_LEN];
	char value[RPROF_GO_VALUE_LEN];
};

struct rprof_go_labels {
	__u64 goid;      /* curg.goid, when status is RPROF_GO_OK */
	__u32 status;    /* RPROF_GO_* */
	__u16 count;     /* valid entries in labels */
	__u16 flags;     /* RPROF_GO_CUT */
	struct rprof_go_label labels[RPROF_GO_MAX_LABELS];
};

struct rprof_go_sample {
	struct rprof_sample s;
	struct rprof_go_labels go;
};

_Static_assert(sizeof(struct rprof_go_label) == 8 + RPROF_GO_KEY_LEN + RPROF_GO_VALUE_LEN,
	       "rprof_go_label size changed: update profiler-ebpf/src/abi.rs");
_Static_assert(__builtin_offsetof(struct rprof_go_sample, go) == sizeof(struct rprof_sample),
	       "rprof_go_sample.go must follow the sample");

/* Names user space uses to find maps and globals in the object. */
#define RPROF_MAP_SAMPLES "samples"
#define RPROF_MAP_TARGETS "targets"
#define RPROF_MAP_DROPS   "drops"
#define RPROF_MAP_UNWIND_ROWS "unwind_rows"
#define RPROF_MAP_PROCS       "unwind_procs"
#define RPROF_MAP_GO_PROCS "go_procs" /* hash tgid -> struct rprof_go_proc */
#define RPROF_MAP_OFFCPU_EPOCH "offcpu_epoch" /* array[1] of u64: when the capture started (CLOCK_MONOTONIC ns) */
#define RPROF_MAP_OFFCPU_DROPS "offcpu_drops" /* per-CPU u64: waits the rate limit did not record */
#define RPROF_PROG_OFFCPU_SWITCH "rprof_offcpu_switch" /* tp_btf/sched_switch */
#define RPROF_PROG_OFFCPU_EXIT   "rprof_offcpu_sys_exit" /* tp_btf/sys_exit */
#define RPROF_PROG_OFFCPU_SWEEP  "rprof_offcpu_sweep" /* iter.s/task */
/* .rodata globals of offcpu.h: offcpu_period_ns, offcpu_budget. */
/* .rodata globals the loader sets: filter_pids, self_tgid, capture_kernel, wakeup_bytes, dwarf_unwind, fp_fallback. */

#endif /* RPROF_ABI_H */
