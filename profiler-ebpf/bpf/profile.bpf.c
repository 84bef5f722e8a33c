// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * profile.bpf.c - the sampling program.
 *
 * Attached to one perf event per online CPU (cpu-clock or cycles). Each time
 * the event fires it decides whether the current task is wanted, then writes
 * one struct rprof_sample into the ring buffer: the user stack, unwound with
 * the .eh_frame tables user space loaded for the process (falling back to
 * frame pointers where no table covers the code, or bpf_get_stack's
 * frame-pointer walk for processes without tables), optionally the kernel
 * stack, and the process's start time.
 *
 * The start time is read from task_struct through CO-RE relocations, which
 * the loader resolves against the running kernel's BTF; the user registers
 * come from the uapi pt_regs layout, which is ABI. Needs bpf_loop and
 * bpf_task_pt_regs: Linux 5.17 or later.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "abi.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * The task's saved user registers. On x86-64 the kernel's struct pt_regs
 * has the layout of the uapi one (asm/ptrace.h), which is ABI, so reading
 * it needs no CO-RE relocation.
 */
static __always_inline void user_regs(__u64 *ip, __u64 *sp, __u64 *bp)
{
	struct pt_regs *r = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());

	bpf_probe_read_kernel(ip, sizeof(*ip), &r->rip);
	bpf_probe_read_kernel(sp, sizeof(*sp), &r->rsp);
	bpf_probe_read_kernel(bp, sizeof(*bp), &r->rbp);
}

/* Set by the loader before load (EbpfLoader::override_global). */
const volatile __u8 filter_pids = 0;    /* 1: only tgids in `targets` */
const volatile __u32 self_tgid = 0;     /* the profiler itself: never sampled */
const volatile __u8 capture_kernel = 1; /* 0: --user-only */
/*
 * Wake the reader only once this many bytes are waiting. Below it, records
 * are submitted silently and user space drains on a timer: at 100 Hz a
 * wakeup per sample would cost more than the sample itself.
 */
const volatile __u64 wakeup_bytes = 0;
/* 1: unwind user stacks with the .eh_frame tables where a process has them. */
const volatile __u8 dwarf_unwind = 0;
/* 1: where no table covers the code, continue with frame pointers. */
const volatile __u8 fp_fallback = 1;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} samples SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RPROF_MAX_TARGETS);
	__type(key, __u32);   /* tgid */
	__type(value, __u8);  /* unused */
} targets SEC(".maps");

/* Samples lost because the ring buffer was full. Per CPU: no atomics needed. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, RPROF_MAX_UNWIND_ROWS); /* resized by the loader */
	__type(key, __u32);
	__type(value, struct rprof_unwind_row);
} unwind_rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RPROF_MAX_PROCS);
	__type(key, __u32);   /* tgid */
	__type(value, struct rprof_proc_info);
} unwind_procs SEC(".maps");

/* Frames being unwound, per CPU: too big for the 512-byte BPF stack. */
struct rprof_frames {
	__u64 pc[RPROF_MAX_FRAMES];
};

/*
 * One slot per program that unwinds (UNWIND_SLOT_*): a perf-event sample
 * can interrupt the off-CPU sys_exit program mid-unwind on the same CPU.
 */
#define UNWIND_SLOT_PERF   0
#define UNWIND_SLOT_SWITCH 1
#define UNWIND_SLOT_EXIT   2

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct rprof_frames);
} unwind_scratch SEC(".maps");

/* Registers of the frame being unwound, carried across bpf_loop steps. */
struct unwind_state {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 pid;
	__u32 depth;
	__u32 root;
	__u32 leaf_fp; /* the leaf frame was unwound with frame pointers */
	__u32 fp_truncated; /* a frame-pointer step led nowhere mapped */
	__u32 stale;   /* a table was being replaced under us */
	__u32 slot;    /* UNWIND_SLOT_* of unwind_scratch */
};

/*
 * Binary searches below update their bounds without branches: with a
 * branch per halving the verifier would walk every path (2^22 of them for
 * the row table) instead of one. `right` is 1 when the probed entry starts
 * at or below the key (both are below 2^63), computed with arithmetic the
 * compiler cannot turn back into a branch (barrier_var, from bpf_helpers.h).
 */

static __always_inline __u32 le_bit(__u64 entry, __u64 key)
{
	__u64 right = ((key - entry) >> 63) ^ 1;

	barrier_var(right);
	return (__u32)right;
}

/* The mapping of `proc` holding pc, or NULL (unknown code: JIT, anonymous). */
static __always_inline struct rprof_proc_map *find_map(struct rprof_proc_info *proc, __u64 pc)
{
	__u32 lo = 0, hi = proc->count;

	if (hi > RPROF_MAX_PROC_MAPS)
		hi = RPROF_MAX_PROC_MAPS;
	/* Last mapping with start <= pc: 7 halvings cover 64 entries. */
	for (int k = 0; k < 7; k++) {
		if (lo >= hi)
			break;
		__u32 mid = (lo + hi) / 2;
		__u32 right = le_bit(proc->maps[mid & (RPROF_MAX_PROC_MAPS - 1)].start, pc);
		lo += right * (mid + 1 - lo);
		hi = mid + right * (hi - mid);
	}
	if (lo == 0)
		return NULL;
	struct rprof_proc_map *m = &proc->maps[(lo - 1) & (RPROF_MAX_PROC_MAPS - 1)];
	return pc < m->end ? m : NULL;
}

/* The row in effect at file offset `off` among `count` rows from `first`, or NULL. */
static __always_inline struct rprof_unwind_row *find_row(__u32 first, __u32 count, __u64 off)
{
	__u32 lo = first, hi = first + count;

	/* Last row with pc <= off: 22 halvings cover 4M rows. */
	for (int k = 0; k < 22; k++) {
		if (lo >= hi)
			break;
		__u32 mid = lo + (hi - lo) / 2;
		struct rprof_unwind_row *r = bpf_map_lookup_elem(&unwind_rows, &mid);
		if (!r)
			return NULL;
		__u32 right = le_bit(r->pc, off);
		lo += right * (mid + 1 - lo);
		hi = mid + right * (hi - mid);
	}
	if (lo == first)
		return NULL;
	__u32 idx = lo - 1;
	return bpf_map_lookup_elem(&unwind_rows, &idx);
}

/*
 * Whether the rows from `first` still belong to the table placement `gen`:
 * read after the rows themselves (see RPROF_ROW_GEN in abi.h).
 */
static __always_inline int table_is_current(__u32 first, __u32 gen)
{
	__u32 hdr = first - 1;

	/* The rows were read before this: keep the compiler from moving
	 * those loads after the header's. */
	asm volatile("" ::: "memory");
	struct rprof_unwind_row *h = bpf_map_lookup_elem(&unwind_rows, &hdr);
	return h && *(volatile __u64 *)&h->pc == (RPROF_ROW_GEN | gen);
}

/*
 * One frame: record the pc, find its rule, compute the caller's registers.
 * Returns 1 to stop the loop.
 */
static long unwind_step(__u32 i, void *ctx)
{
	struct unwind_state *st = ctx;
	struct rprof_frames *out = bpf_map_lookup_elem(&unwind_scratch, &st->slot);
	struct rprof_proc_info *proc = bpf_map_lookup_elem(&unwind_procs, &st->pid);
	__u32 d = st->depth;

	if (!out || !proc || d >= RPROF_MAX_FRAMES)
		return 1;
	out->pc[d] = st->ip;
	st->depth = d + 1;

	/* A return address points after its call: look up the call itself. */
	__u64 pc = d == 0 ? st->ip : st->ip - 1;
	struct rprof_proc_map *m = find_map(proc, pc);
	if (!m)
		return 1;

	__u8 rule = RPROF_CFA_NONE;
	__s32 cfa_off = 0;
	__s16 rbp_off = 0;
	/* Once: user space may rewrite this mapping list while we walk. */
	__u32 first = m->row_start, count = m->row_count, gen = m->gen;
	if (count) {
		struct rprof_unwind_row *r = find_row(first, count, pc - m->start + m->offset);
		if (r) {
			rule = r->cfa_reg;
			cfa_off = r->cfa_offset;
			rbp_off = r->rbp_offset;
		}
		if (!table_is_current(first, gen)) {
			st->stale = 1;
			return 1;
		}
	}

	__u64 cfa;
	int fp_step = 0;
	switch (rule) {
	case RPROF_CFA_END:
		st->root = 1;
		return 1;
	case RPROF_CFA_RSP:
		cfa = st->sp + cfa_off;
		break;
	case RPROF_CFA_RBP:
		cfa = st->bp + cfa_off;
		break;
	case RPROF_CFA_PLT:
		cfa = st->sp + 8 + ((st->ip & 15) >= (__u64)cfa_off ? 8 : 0);
		break;
	default:
		/* No table here (Go code, hand-written asm): frame pointers. */
		if (!fp_fallback || !st->bp)
			return 1;
		if (d == 0)
			st->leaf_fp = 1;
		cfa = st->bp + 16;
		rbp_off = -16;
		fp_step = 1;
		break;
	}

	__u64 ra = 0;
	if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8)) < 0 || !ra)
		return 1;
	/*
	 * A frame-pointer step through code that does not keep rbp as a frame
	 * pointer reads some saved value as the return address. Where that
	 * lands in no executable mapping it is garbage: end the walk here,
	 * without it. (A table's return address outside every mapping is
	 * real, code mapped since user space looked: it is kept, and user
	 * space re-reads the maps.)
	 */
	if (fp_step && !find_map(proc, ra - 1)) {
		st->fp_truncated = 1;
		return 1;
	}
	if (rbp_off) {
		__u64 bp = 0;
		if (bpf_probe_read_user(&bp, sizeof(bp), (void *)(cfa + rbp_off)) < 0)
			return 1;
		st->bp = bp;
	}
	st->sp = cfa;
	st->ip = ra;
	return 0;
}

/*
 * Unwinds the current task's user stack with the tables into s->user_stack.
 * Returns the number of frames, or -1 if this process has no tables.
 */
static __always_inline long unwind_user(struct rprof_sample *s, __u32 tgid, __u32 slot)
{
	if (!dwarf_unwind || !bpf_map_lookup_elem(&unwind_procs, &tgid))
		return -1;

	struct unwind_state st = { .pid = tgid, .slot = slot };
	user_regs(&st.ip, &st.sp, &st.bp);
	/* Kernel threads have no user registers worth reading. */
	if (!st.ip)
		return 0;
	__u64 sp0 = st.sp;
	bpf_loop(RPROF_MAX_FRAMES, unwind_step, &st, 0);

	struct rprof_frames *out = bpf_map_lookup_elem(&unwind_scratch, &slot);
	__u32 n = st.depth;
	if (!out || n == 0)
		return 0;
	if (n > RPROF_MAX_FRAMES)
		n = RPROF_MAX_FRAMES;
	bpf_probe_read_kernel(s->user_stack, n * sizeof(__u64), out->pc);
	if (st.root)
		s->flags |= RPROF_FLAG_REACHED_ROOT;
	if (st.fp_truncated)
		s->flags |= RPROF_FLAG_FP_TRUNCATED;
	if (st.stale)
		s->flags |= RPROF_FLAG_STALE_TABLE;
	/* A frameless leaf hides its caller from frame pointers: hand user
	 * space the word at the stack pointer, as in frame-pointer mode. */
	if (st.leaf_fp &&
	    bpf_probe_read_user(&s->user_sp_word, sizeof(s->user_sp_word), (void *)sp0) < 0)
		s->user_sp_word = 0;
	s->flags |= RPROF_FLAG_DWARF_UNWOUND;
	return n;
}

/*
 * The current task's user stack into s (tables where the process has them,
 * else bpf_get_stack's frame-pointer walk), with the word at its stack
 * pointer for the leaf fix-up. `ctx` is the program's context.
 */
static __always_inline void user_stack(void *ctx, struct rprof_sample *s, __u32 tgid, __u32 slot)
{
	s->user_sp_word = 0;
	long n = unwind_user(s, tgid, slot);
	if (n >= 0) {
		s->user_frames = n;
	} else {
		n = bpf_get_stack(ctx, s->user_stack, sizeof(s->user_stack), BPF_F_USER_STACK);
		if (n < 0) {
			s->flags |= RPROF_FLAG_USER_STACK_ERR;
			n = 0;
		}
		s->user_frames = n / sizeof(__u64);
	}

	/*
	 * The word at the user stack pointer, from the task's saved user
	 * registers: right for samples in user and in kernel mode (a syscall
	 * from a frameless libc wrapper). Kernel threads have no user stack.
	 */
	if (n > 0 && !(s->flags & RPROF_FLAG_DWARF_UNWOUND)) {
		__u64 ip, sp, bp;
		user_regs(&ip, &sp, &bp);
		if (bpf_probe_read_user(&s->user_sp_word, sizeof(s->user_sp_word), (void *)sp) < 0)
			s->user_sp_word = 0;
	}
}

/*
 * The two task_struct fields we read. preserve_access_index makes clang
 * emit CO-RE relocations, which the loader resolves against the running
 * kernel's BTF: no kernel headers, and no fixed offsets.
 */
struct task_struct {
	__u64 start_time;
	struct task_struct *group_leader;
} __attribute__((preserve_access_index));

/* The current process's start time (its main thread's), 0 if unreadable. */
static __always_inline __u64 process_start_ns(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, group_leader, start_time);
}

#include "go.h"

/* A record the full ring buffer could not take. */
static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&drops, &zero);

	if (lost)
		*lost += 1;
}

SEC("perf_event")
int rprof_sample_stack(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 tid = (__u32)id;

	/* The idle task, where nothing of the user's runs; and ourselves, whose
	 * own symbolization would otherwise dominate what we measure. */
	if (tgid == 0 || tgid == self_tgid)
		return 0;
	if (filter_pids && !bpf_map_lookup_elem(&targets, &tgid))
		return 0;

	/* A Go process's records carry its goroutine's labels (go.h). */
	struct rprof_go_proc *gp;
	struct rprof_go_sample *gs;
	struct rprof_sample *s = go_reserve(tgid, &gp, &gs);
	if (!s) {
		count_lost();
		return 0;
	}

	s->pid = tgid;
	s->tid = tid;
	s->cpu = bpf_get_smp_processor_id();
	s->flags = 0;
	s->time_ns = bpf_ktime_get_ns();
	s->period = ctx->sample_period;
	s->start_ns = process_start_ns();
	bpf_get_current_comm(s->comm, sizeof(s->comm));

	s->state = RPROF_STATE_ON_CPU;
	s->syscall = -1;
	user_stack(ctx, s, tgid, UNWIND_SLOT_PERF);

	s->kernel_frames = 0;
	if (capture_kernel) {
		long n = bpf_get_stack(ctx, s->kernel_stack, sizeof(s->kernel_stack), 0);
		if (n < 0) {
			s->flags |= RPROF_FLAG_KERNEL_STACK_ERR;
			n = 0;
		}
		s->kernel_frames = n / sizeof(__u64);
	}

	if (gs && gp)
		go_labels(&gs->go, gp, (struct task_struct *)bpf_get_current_task(), tid, NULL,
			  GO_SLOT_PERF);

	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&samples, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(s, flags);
	return 0;
}

/*
 * The off-CPU programs share this object's maps (one ring buffer, the pid
 * filter, the unwind tables): aya cannot share maps between objects.
 */
#include "offcpu.h"
