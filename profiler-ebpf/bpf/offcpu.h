/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * offcpu.h - off-CPU programs: where threads wait, and for how long.
 *
 * Included at the end of profile.bpf.c, so that these programs share its
 * maps (the ring buffer, the pid filter, the unwind tables) and its
 * unwinder. Every hook is a BTF tracepoint or an iterator: the kernels this
 * runs on have no kprobes and no fentry.
 *
 * - tp_btf/sched_switch, the task going off CPU (prev, current): its time
 *   and state in task storage (tasks migrate: never per CPU). A preempted
 *   task (still runnable) is unwound right there, since nothing else runs
 *   in it before it is back in user mode; its stack waits in task storage.
 * - the same tracepoint, the task coming back (next): the wait is known, and
 *   the sampling rule decides (below). Its kernel stack, where it blocked,
 *   is read from the task (bpf_get_task_stack: it is not running yet). A
 *   preempted task's record is complete and sent; a voluntary wait waits
 *   for its user stack (or for the thread's next switch-out, if it comes
 *   first: it is still in that syscall).
 * - tp_btf/sys_exit, back in the task: the user registers are exactly the
 *   blocking syscall's, so the user stack is unwound there, and the syscall
 *   number recorded. Voluntary waits outside a syscall (a major page fault,
 *   a ptrace or job-control stop) get the stack of the next syscall's exit.
 * - iter.s/task, run by user space (at the end of a capture; every second
 *   in the agent): every target thread still off CPU gets a record of its
 *   wait so far, with its kernel stack and a frame-pointer walk of its user
 *   stack (bpf_copy_from_user_task; the table unwinder reads only the
 *   current task), and its clock restarts: nothing is counted twice. The
 *   program can sleep while it reads (a fault, mmap_lock), and the thread
 *   can run meanwhile, changing its stack and goroutine under the reads:
 *   the wait is claimed only after the reads, and only if the thread did not
 *   come back on CPU (else the record is discarded, the wait left whole to
 *   its switch-in).
 *
 * Sampling (Go's block-profile rule): with P the sampling period, a wait of
 * d >= P is kept with weight d, a shorter one with probability d/P and
 * weight P. Unbiased, and the kept records stay about 2/P per thread
 * whatever the switch rate. A per-CPU limit on the stack work (records and
 * preemption unwinds per 100 ms window, `offcpu_budget`) doubles P on that
 * CPU while exceeded, and halves it back when quiet: the rule stays
 * unbiased at the larger P, and the waits the base period would have kept
 * are counted in offcpu_drops. Preemptions are unwound with probability
 * 2^-shift and their weight scaled by 2^shift.
 *
 * Kernel threads are left out: they have no user stack, and their waits
 * are the kernel's own.
 */
#ifndef RPROF_OFFCPU_H
#define RPROF_OFFCPU_H

/* The sampling period P in ns (1e9 / frequency). */
const volatile __u64 offcpu_period_ns = 10000000;
/* Records and preemption unwinds per CPU per RPROF_OFFCPU_WINDOW_NS. */
const volatile __u32 offcpu_budget = 50;

/* One load the compiler neither repeats nor moves (the sweep's checks). */
#define OFFCPU_READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))

#define PF_KTHREAD 0x00200000
#define TASK_RUNNING 0
#define NOT_ARMED 0xff

/*
 * The task_struct fields the off-CPU programs read (a CO-RE flavor of the
 * struct above: the relocations match `task_struct`).
 */
struct task_struct___offcpu {
	int pid;
	int tgid;
	unsigned int flags;
	unsigned int __state;
	int on_cpu;
	__u64 start_time;
	char comm[16];
	struct task_struct___offcpu *group_leader;
} __attribute__((preserve_access_index));

struct bpf_iter_meta;
struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct___offcpu *task;
} __attribute__((preserve_access_index));

/* Per-task state, from the task's switch-out to its switch-in. */
struct offcpu_task {
	__u64 off_ns;   /* when it went off CPU (or was last swept); 0: on CPU */
	__u32 state;    /* RPROF_STATE_* of the wait */
	__u8 armed;     /* preempted and unwound: weight scale shift; NOT_ARMED */
	__u8 pending;   /* a kept voluntary wait waits for its user stack */
	__u8 go_armed;  /* preempted: its goroutine's labels are in offcpu_go */
	__u8 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_task);
} offcpu_tasks SEC(".maps");

/*
 * A record being assembled: a preempted task's user stack until its
 * switch-in, a voluntary wait's kernel stack until its syscall exits.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rprof_sample);
} offcpu_pending SEC(".maps");

/*
 * The labels of a Go thread's goroutine (go.h), read when its user stack
 * is: kept until the record is sent. Only threads of Go processes have one.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct rprof_go_labels);
} offcpu_go SEC(".maps");

/* When the capture started: waits that began before count from here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_epoch SEC(".maps");

/* Waits the base period would have kept that the rate limit did not. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_drops SEC(".maps");

struct offcpu_limit {
	__u64 window_start;
	__u32 used;
	__u32 shift; /* the period on this CPU is P << shift */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offcpu_limit);
} offcpu_limits SEC(".maps");

/* This CPU's limiter, its window rolled over (and its period adapted). */
static __always_inline struct offcpu_limit *offcpu_limiter(__u64 now)
{
	__u32 zero = 0;
	struct offcpu_limit *l = bpf_map_lookup_elem(&offcpu_limits, &zero);

	if (!l)
		return NULL;
	if (now - l->window_start >= RPROF_OFFCPU_WINDOW_NS) {
		/* P << shift stays below 2^32 ns: the rule's product fits 64 bits. */
		if (l->used > offcpu_budget && l->shift < 31 &&
		    (offcpu_period_ns << (l->shift + 1)) < (1ull << 32))
			l->shift++;
		else if (l->used < offcpu_budget / 4 && l->shift > 0)
			l->shift--;
		l->used = 0;
		l->window_start = now;
	}
	return l;
}

/* Go's rule: the weight a wait of d ns is kept with under period p, or 0. */
static __always_inline __u64 rule_weight(__u64 d, __u64 p, __u32 r)
{
	if (d >= p)
		return d;
	return (((__u64)r * p) >> 32) < d ? p : 0;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&offcpu_drops, &zero);

	if (n)
		*n += 1;
}

static __always_inline int offcpu_wanted(struct task_struct___offcpu *t, __u32 tgid)
{
	if (tgid == 0 || tgid == self_tgid || (t->flags & PF_KTHREAD))
		return 0;
	return !filter_pids || bpf_map_lookup_elem(&targets, &tgid);
}

static __always_inline __u64 ring_wake_flags(void)
{
	return bpf_ringbuf_query(&samples, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									      : BPF_RB_NO_WAKEUP;
}

/*
 * The labels of the goroutine the current task (tgid, tid) runs, read now
 * into its offcpu_go storage; NULL if the process is not a registered Go
 * process (or the storage cannot be had: the record goes without).
 */
static __always_inline struct rprof_go_labels *offcpu_go_now(struct task_struct *task, __u32 tgid,
							      __u32 tid, __u32 slot)
{
	struct rprof_go_proc *gp = bpf_map_lookup_elem(&go_procs, &tgid);

	if (!gp)
		return NULL;
	struct rprof_go_labels *go =
		bpf_task_storage_get(&offcpu_go, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!go)
		return NULL;
	go_labels(go, gp, task, tid, NULL, slot);
	return go;
}

/*
 * Sends an assembled record, with its goroutine's labels when `go` is set
 * (a struct rprof_go_sample); a full ring counts as a lost sample.
 */
static __always_inline void offcpu_send(struct rprof_sample *s, struct rprof_go_labels *go)
{
	if (!go) {
		if (bpf_ringbuf_output(&samples, s, sizeof(*s), ring_wake_flags()) < 0)
			count_lost();
		return;
	}
	struct rprof_go_sample *r = bpf_ringbuf_reserve(&samples, sizeof(*r), 0);
	if (!r) {
		count_lost();
		return;
	}
	bpf_probe_read_kernel(&r->s, sizeof(r->s), s);
	bpf_probe_read_kernel(&r->go, sizeof(r->go), go);
	bpf_ringbuf_submit(r, ring_wake_flags());
}

/* The identity and timing fields of a record about task t. */
static __always_inline void offcpu_meta(struct rprof_sample *s, struct task_struct___offcpu *t,
					__u64 now, __u64 weight, __u32 state)
{
	s->pid = t->tgid;
	s->tid = t->pid;
	s->cpu = bpf_get_smp_processor_id();
	s->time_ns = now;
	s->period = weight;
	s->start_ns = BPF_CORE_READ(t, group_leader, start_time);
	bpf_probe_read_kernel(s->comm, sizeof(s->comm), t->comm);
	s->state = state;
	s->syscall = -1;
}

/* The kernel stack of task t (not running), where it blocked. */
static __always_inline void offcpu_kernel_stack(struct rprof_sample *s,
						struct task_struct___offcpu *t)
{
	s->kernel_frames = 0;
	if (!capture_kernel)
		return;
	long n = bpf_get_task_stack((struct task_struct *)t, s->kernel_stack,
				    sizeof(s->kernel_stack), 0);
	if (n < 0) {
		s->flags |= RPROF_FLAG_KERNEL_STACK_ERR;
		n = 0;
	}
	s->kernel_frames = n / sizeof(__u64);
}

/* prev (current) goes off CPU. */
static __always_inline void offcpu_out(void *ctx, struct task_struct___offcpu *prev, int preempt,
				       unsigned int prev_state, __u64 now)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!offcpu_wanted(prev, tgid))
		return;
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)prev, 0,
						     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t)
		return;
	if (t->pending) {
		/*
		 * Off CPU again before the kept wait's syscall exits: still in
		 * that syscall, so its user stack is the one to send, now.
		 */
		struct rprof_sample *s = bpf_task_storage_get(&offcpu_pending, (struct task_struct *)prev, 0, 0);
		t->pending = 0;
		if (s) {
			struct pt_regs *r = (void *)bpf_task_pt_regs((struct task_struct *)prev);
			long nr = -1;
			bpf_probe_read_kernel(&nr, sizeof(nr), &r->orig_rax);
			s->syscall = nr;
			user_stack(ctx, s, tgid, UNWIND_SLOT_SWITCH);
			offcpu_send(s, offcpu_go_now((struct task_struct *)prev, tgid, prev->pid,
						     GO_SLOT_SWITCH));
		}
	}
	int runq = preempt || prev_state == TASK_RUNNING;
	t->state = runq ? RPROF_STATE_RUNQUEUE : RPROF_STATE_OFF_CPU;
	t->armed = NOT_ARMED;
	t->go_armed = 0;
	if (runq) {
		struct offcpu_limit *l = offcpu_limiter(now);
		__u32 shift = l ? l->shift : 0;
		if (shift > 7)
			shift = 7;
		if ((bpf_get_prandom_u32() & ((1u << shift) - 1)) == 0) {
			struct rprof_sample *s = bpf_task_storage_get(
				&offcpu_pending, (struct task_struct *)prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (s) {
				s->flags = 0;
				user_stack(ctx, s, tgid, UNWIND_SLOT_SWITCH);
				t->go_armed = offcpu_go_now((struct task_struct *)prev, tgid, prev->pid,
							    GO_SLOT_SWITCH) != NULL;
				t->armed = shift;
				if (l)
					l->used++;
			}
		}
	}
	__sync_lock_test_and_set(&t->off_ns, now);
}

/* next comes back on CPU (current is still prev). */
static __always_inline void offcpu_in(struct task_struct___offcpu *next, __u64 now)
{
	__u32 tgid = next->tgid;

	if (!offcpu_wanted(next, tgid))
		return;
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)next, 0, 0);
	__u64 since, flags = 0;
	__u32 state;
	if (t) {
		since = __sync_lock_test_and_set(&t->off_ns, 0);
		if (!since)
			return; /* never seen going off CPU */
		state = t->state;
	} else {
		/* Off CPU since before the capture, or a new thread's first run. */
		__u32 zero = 0;
		__u64 *epoch = bpf_map_lookup_elem(&offcpu_epoch, &zero);
		if (!epoch || !*epoch || next->start_time > *epoch)
			return;
		since = *epoch;
		state = RPROF_STATE_OFF_CPU;
		flags = RPROF_FLAG_SINCE_START;
		t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)next, 0,
					 BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!t)
			return;
		/*
		 * A sweep may be reading this thread right now (it claims the
		 * wait from the epoch, then checks the claim): taking the claim
		 * back makes it discard its record. One it already sent left
		 * its end here, and the state it saw: the wait goes on from it.
		 */
		__u64 claim = __sync_lock_test_and_set(&t->off_ns, 0);
		if (claim && claim != *epoch) {
			since = claim;
			state = t->state;
			flags = 0;
		}
	}
	if (now <= since)
		return;
	__u64 d = now - since;

	struct offcpu_limit *l = offcpu_limiter(now);
	__u32 shift = l ? l->shift : 0;
	__u32 r = bpf_get_prandom_u32();
	int armed = state != RPROF_STATE_RUNQUEUE || (t && t->armed != NOT_ARMED);
	__u64 w = armed ? rule_weight(d, offcpu_period_ns << shift, r) : 0;
	if (!w) {
		if (rule_weight(d, offcpu_period_ns, r))
			count_drop();
		return;
	}
	if (l)
		l->used++;

	if (state == RPROF_STATE_RUNQUEUE) {
		/* Its user stack was taken as it was preempted. */
		struct rprof_sample *s = bpf_task_storage_get(&offcpu_pending, (struct task_struct *)next, 0, 0);
		if (!s || !t)
			return;
		w <<= t->armed;
		t->armed = NOT_ARMED;
		offcpu_meta(s, next, now, w, state);
		s->flags |= flags;
		offcpu_kernel_stack(s, next);
		struct rprof_go_labels *go = NULL;
		if (t->go_armed)
			go = bpf_task_storage_get(&offcpu_go, (struct task_struct *)next, 0, 0);
		t->go_armed = 0;
		offcpu_send(s, go);
		return;
	}

	if (!t) {
		t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)next, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!t)
			return;
	}
	struct rprof_sample *s =
		bpf_task_storage_get(&offcpu_pending, (struct task_struct *)next, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s)
		return;
	s->flags = flags;
	offcpu_meta(s, next, now, w, state);
	offcpu_kernel_stack(s, next);
	t->pending = 1;
}

SEC("tp_btf/sched_switch")
int rprof_offcpu_switch(unsigned long long *ctx)
{
	int preempt = (int)ctx[0];
	struct task_struct___offcpu *prev = (void *)ctx[1];
	struct task_struct___offcpu *next = (void *)ctx[2];
	unsigned int prev_state = (unsigned int)ctx[3];
	__u64 now = bpf_ktime_get_ns();

	offcpu_out(ctx, prev, preempt, prev_state, now);
	offcpu_in(next, now);
	return 0;
}

/* Back in a task with a kept voluntary wait: its user stack, as it blocked. */
SEC("tp_btf/sys_exit")
int rprof_offcpu_sys_exit(unsigned long long *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)task, 0, 0);

	if (!t || !t->pending)
		return 0;
	t->pending = 0;
	struct rprof_sample *s = bpf_task_storage_get(&offcpu_pending, (struct task_struct *)task, 0, 0);
	if (!s)
		return 0;
	struct pt_regs *regs = (void *)ctx[0];
	long nr = -1;
	bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_rax);
	s->syscall = nr;
	user_stack(ctx, s, s->pid, UNWIND_SLOT_EXIT);
	struct offcpu_limit *l = offcpu_limiter(bpf_ktime_get_ns());
	if (l)
		l->used++;
	offcpu_send(s, offcpu_go_now(task, s->pid, s->tid, GO_SLOT_EXIT));
	return 0;
}

/*
 * A frame-pointer walk of another task's user stack, with the word at its
 * stack pointer for the leaf fix-up (bpf_copy_from_user_task: sleepable).
 */
static __always_inline void offcpu_task_user_stack(struct rprof_sample *s, struct task_struct *task)
{
	struct pt_regs *r = (void *)bpf_task_pt_regs(task);
	__u64 ip = 0, sp = 0, bp = 0;

	s->user_frames = 0;
	s->user_sp_word = 0;
	bpf_probe_read_kernel(&ip, sizeof(ip), &r->rip);
	bpf_probe_read_kernel(&sp, sizeof(sp), &r->rsp);
	bpf_probe_read_kernel(&bp, sizeof(bp), &r->rbp);
	if (!ip)
		return;
	if (bpf_copy_from_user_task(&s->user_sp_word, sizeof(s->user_sp_word), (void *)sp, task, 0))
		s->user_sp_word = 0;
	s->user_stack[0] = ip;
	__u32 n = 1;
	for (int i = 1; i < RPROF_MAX_FRAMES; i++) {
		__u64 frame[2];
		if (!bp || bpf_copy_from_user_task(frame, sizeof(frame), (void *)bp, task, 0))
			break;
		if (!frame[1])
			break;
		s->user_stack[i] = frame[1];
		n = i + 1;
		bp = frame[0];
	}
	s->user_frames = n;
}

/*
 * Run by user space: a record for every target thread still off CPU, its
 * wait so far, and its clock restarted from now.
 */
SEC("iter.s/task")
int rprof_offcpu_sweep(struct bpf_iter__task *ctx)
{
	struct task_struct___offcpu *task = ctx->task;

	if (!task || !offcpu_wanted(task, task->tgid))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct offcpu_task *t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)task, 0, 0);
	__u64 since, flags = RPROF_FLAG_SWEPT;
	__u32 state;
	int fresh = 0;
	if (t) {
		since = OFFCPU_READ_ONCE(t->off_ns);
		if (!since || now <= since)
			return 0; /* on CPU */
		state = t->state;
	} else {
		/* Never seen switching since the capture started. */
		if (task->on_cpu)
			return 0;
		__u32 zero = 0;
		__u64 *epoch = bpf_map_lookup_elem(&offcpu_epoch, &zero);
		if (!epoch || !*epoch || task->start_time > *epoch || now <= *epoch)
			return 0;
		since = *epoch;
		state = task->__state == TASK_RUNNING ? RPROF_STATE_RUNQUEUE : RPROF_STATE_OFF_CPU;
		flags |= RPROF_FLAG_SINCE_START;
		t = bpf_task_storage_get(&offcpu_tasks, (struct task_struct *)task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!t)
			return 0; /* its switch-in counts the wait from the epoch */
		t->state = state;
		t->armed = NOT_ARMED;
		/* Claimed as if seen going off at the epoch; a switch-out since
		 * (off_ns set) means it ran: the switches count it. */
		if (__sync_val_compare_and_swap(&t->off_ns, 0, since) != 0)
			return 0;
		fresh = 1;
	}
	__u64 w = rule_weight(now - since, offcpu_period_ns, bpf_get_prandom_u32());
	if (!w) {
		/* Sampled out: nothing is read, the wait so far is spent. */
		__sync_val_compare_and_swap(&t->off_ns, since, now);
		return 0;
	}
	__u32 tgid = task->tgid;
	struct rprof_go_proc *gp;
	struct rprof_go_sample *gs;
	struct rprof_sample *s = go_reserve(tgid, &gp, &gs);
	if (!s) {
		/* Counted as lost, so spent: never also sent later. */
		count_lost();
		__sync_val_compare_and_swap(&t->off_ns, since, now);
		return 0;
	}
	s->flags = flags;
	offcpu_meta(s, task, now, w, state);
	offcpu_kernel_stack(s, task);
	offcpu_task_user_stack(s, (struct task_struct *)task);
	/* Still blocked: the goroutine it blocked in, from its memory. */
	if (gs && gp)
		go_labels(&gs->go, gp, (struct task_struct *)task, task->pid, (struct task_struct *)task,
			  GO_SLOT_SWEEP);
	/*
	 * Only now is the wait ours: if the thread came back on CPU while we
	 * read (a switch-in takes off_ns), what we read may be of its later
	 * state, and its switch-in counts the whole wait instead.
	 */
	asm volatile("" ::: "memory");
	if (OFFCPU_READ_ONCE(task->on_cpu) || __sync_val_compare_and_swap(&t->off_ns, since, now) != since) {
		if (fresh)
			__sync_val_compare_and_swap(&t->off_ns, since, 0);
		bpf_ringbuf_discard(s, 0);
		return 0;
	}
	bpf_ringbuf_submit(s, ring_wake_flags());
	return 0;
}

#endif /* RPROF_OFFCPU_H */
