// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * profile.bpf.c - the sampling program.
 *
 * Attached to one perf event per online CPU (cpu-clock or cycles). Each time
 * the event fires it decides whether the current task is wanted, then writes
 * one struct rprof_sample into the ring buffer with the user stack (frame
 * pointers, via bpf_get_stack) and optionally the kernel stack.
 *
 * It needs no kernel type definitions beyond the uapi headers: everything
 * comes from helpers, so the object loads on any 5.8+ kernel unchanged.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "abi.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * The one kernel type we read, reduced to the one field we need. CO-RE
 * relocates the offset of `sp` against the running kernel's BTF; the
 * ___rprof suffix keeps it apart from the uapi struct pt_regs.
 */
struct pt_regs___rprof {
	unsigned long sp;
} __attribute__((preserve_access_index));

/* Set by the loader before load (EbpfLoader::override_global). */
const volatile __u8 filter_pids = 0;    /* 1: only tgids in `targets` */
const volatile __u8 capture_kernel = 1; /* 0: --user-only */
/*
 * Wake the reader only once this many bytes are waiting. Below it, records
 * are submitted silently and user space drains on a timer: at 100 Hz a
 * wakeup per sample would cost more than the sample itself.
 */
const volatile __u64 wakeup_bytes = 0;

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

SEC("perf_event")
int rprof_sample_stack(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__u32 tid = (__u32)id;

	/* The idle task: nothing of the user's is running. */
	if (tgid == 0)
		return 0;
	if (filter_pids && !bpf_map_lookup_elem(&targets, &tgid))
		return 0;

	struct rprof_sample *s = bpf_ringbuf_reserve(&samples, sizeof(*s), 0);
	if (!s) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&drops, &zero);
		if (lost)
			*lost += 1;
		return 0;
	}

	s->pid = tgid;
	s->tid = tid;
	s->cpu = bpf_get_smp_processor_id();
	s->flags = 0;
	s->time_ns = bpf_ktime_get_ns();
	s->period = ctx->sample_period;
	bpf_get_current_comm(s->comm, sizeof(s->comm));

	/* regs are the interrupted context: user registers only if CPL is 3. */
	s->user_sp_word = 0;
	if ((ctx->regs.cs & 3) == 3 &&
	    bpf_probe_read_user(&s->user_sp_word, sizeof(s->user_sp_word), (void *)ctx->regs.rsp) < 0)
		s->user_sp_word = 0;

	long n = bpf_get_stack(ctx, s->user_stack, sizeof(s->user_stack), BPF_F_USER_STACK);
	if (n < 0) {
		s->flags |= RPROF_FLAG_USER_STACK_ERR;
		n = 0;
	}
	s->user_frames = n / sizeof(__u64);

	/*
	 * The word at the user stack pointer, from the task's saved user
	 * registers: right for samples in user and in kernel mode (a syscall
	 * from a frameless libc wrapper). Kernel threads have no user stack.
	 */
	s->user_sp_word = 0;
	if (n > 0) {
		struct pt_regs___rprof *uregs =
			(void *)bpf_task_pt_regs(bpf_get_current_task_btf());
		unsigned long sp = BPF_CORE_READ(uregs, sp);
		if (bpf_probe_read_user(&s->user_sp_word, sizeof(s->user_sp_word), (void *)sp) < 0)
			s->user_sp_word = 0;
	}

	s->kernel_frames = 0;
	if (capture_kernel) {
		n = bpf_get_stack(ctx, s->kernel_stack, sizeof(s->kernel_stack), 0);
		if (n < 0) {
			s->flags |= RPROF_FLAG_KERNEL_STACK_ERR;
			n = 0;
		}
		s->kernel_frames = n / sizeof(__u64);
	}

	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&samples, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(s, flags);
	return 0;
}
