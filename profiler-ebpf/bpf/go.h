/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * go.h - the pprof labels of the goroutine a Go thread runs, for the
 * sampling and off-CPU programs: TLS -> g -> m -> m.curg -> curg.labels.
 *
 * User space registers each Go process in go_procs with its runtime layout
 * (goruntime::runtime_layout: the TLS offset of g, struct offsets from
 * DWARF or a table by release, the label format). For those processes:
 *
 * - g = *(fsbase + tls_g), the thread's current g. fsbase is
 *   task->thread.fsbase (CO-RE), which Go sets through the kernel (clone's
 *   CLONE_SETTLS, arch_prctl), so the saved value is the live one. R14 is
 *   not used: it holds g only while Go code runs, not in the kernel, in C
 *   or in the runtime's assembly.
 * - m = g->m, curg = m->curg: g may be g0 or gsignal (the scheduler, a
 *   signal handler), which carry no labels; curg is the user goroutine the
 *   thread runs, and NULL in the scheduler.
 * - The chain is checked before it is trusted: m->procid must be the
 *   sampled thread's tid (the runtime stores gettid() there for every M).
 *   If not, nothing more is read and the record says so (MISMATCH).
 * - curg->labels is an immutable label set, reachable (so neither freed
 *   nor reused) while the goroutine is stopped under us: the thread is in
 *   this program, or off CPU for the sweep. Its strings are copied into
 *   the record now, so user space never reads memory that may have been
 *   freed and reused since.
 *
 * Bounded: at most RPROF_GO_MAX_LABELS labels, RPROF_GO_KEY_LEN bytes of
 * a key and RPROF_GO_VALUE_LEN of a value (their Go lengths are recorded,
 * so user space knows what was cut), and for the map form (Go <= 1.23) at
 * most GO_MAX_BUCKET_READS buckets. Every read that fails, and every
 * length or map shape that cannot be right, drops the whole set (FAULT,
 * BAD): never a partial or garbage set.
 */
#ifndef RPROF_GO_H
#define RPROF_GO_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RPROF_MAX_GO_PROCS);
	__type(key, __u32);   /* tgid */
	__type(value, struct rprof_go_proc);
} go_procs SEC(".maps");

/*
 * Reserves the ring record of a sample of process `tgid`: for a registered
 * Go process a struct rprof_go_sample, with *gp its layout and *gs the
 * record; else a struct rprof_sample (*gp, *gs NULL). NULL if the ring is
 * full.
 */
static __always_inline struct rprof_sample *go_reserve(__u32 tgid, struct rprof_go_proc **gp,
						       struct rprof_go_sample **gs)
{
	*gs = NULL;
	*gp = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!*gp)
		return bpf_ringbuf_reserve(&samples, sizeof(struct rprof_sample), 0);
	*gs = bpf_ringbuf_reserve(&samples, sizeof(struct rprof_go_sample), 0);
	return *gs ? &(*gs)->s : NULL;
}

/*
 * One scratch slot per program that reads labels: a perf-event sample can
 * interrupt the sys_exit program, and the sweep (sleepable) can be
 * preempted by any of them on its CPU.
 */
#define GO_SLOT_PERF   0
#define GO_SLOT_SWITCH 1
#define GO_SLOT_EXIT   2
#define GO_SLOT_SWEEP  3

/* A map[string]string bucket: 8 tophash bytes, 8 keys, 8 values, overflow. */
#define GO_BUCKET_SIZE (8 + 8 * 16 + 8 * 16 + 8)
/* tophash values below this are empty or evacuated slots. */
#define GO_MIN_TOPHASH 5
/* Buckets (and overflow buckets) read per map: 10 labels fit in 2. */
#define GO_MAX_BUCKET_READS 4
/* Longer than this is no label set: garbage. */
#define GO_MAX_PLAUSIBLE (1ull << 20)

struct go_string {
	__u64 ptr;
	__u64 len;
};

/* runtime/pprof's label{key, value string}, as in a LabelSet's list. */
struct go_pair {
	struct go_string key;
	struct go_string value;
};

struct go_scratch {
	struct go_pair pairs[RPROF_GO_MAX_LABELS];
	__u8 bucket[GO_BUCKET_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct go_scratch);
} go_scratch SEC(".maps");

/* The one task_struct field read here (CO-RE: matches `task_struct`). */
struct thread_struct___go {
	unsigned long fsbase;
} __attribute__((preserve_access_index));

struct task_struct___go {
	struct thread_struct___go thread;
} __attribute__((preserve_access_index));

/*
 * Reads the current task's user memory, or `remote`'s (only from a
 * sleepable program). Called with a constant NULL elsewhere, so the
 * compiler drops the sleepable helper from those programs.
 */
static __always_inline long go_read(void *dst, __u32 size, __u64 src, struct task_struct *remote)
{
	if (remote)
		return bpf_copy_from_user_task(dst, size, (void *)src, remote, 0);
	return bpf_probe_read_user(dst, size, (void *)src);
}

static __always_inline long go_word(__u64 *out, __u64 addr, struct task_struct *remote)
{
	*out = 0;
	return go_read(out, sizeof(*out), addr, remote);
}

/*
 * The (key, value) string headers of a LabelSet (Go >= 1.24): `set`
 * points at its list's slice header. Returns the number of pairs in
 * sc->pairs, or -RPROF_GO_* on failure.
 */
static __always_inline int go_gather_slice(struct go_scratch *sc, __u64 set,
					   struct rprof_go_labels *out, struct task_struct *remote)
{
	__u64 hdr[2] = {};

	if (go_read(hdr, sizeof(hdr), set, remote))
		return -RPROF_GO_FAULT;
	__u64 ptr = hdr[0], len = hdr[1];
	if (len > GO_MAX_PLAUSIBLE || (len && !ptr))
		return -RPROF_GO_BAD;
	__u32 n = len;
	if (len > RPROF_GO_MAX_LABELS) {
		n = RPROF_GO_MAX_LABELS;
		out->flags |= RPROF_GO_CUT;
	}
	if (n == 0)
		return 0;
	__u32 size = n * sizeof(struct go_pair);
	if (size > sizeof(sc->pairs))
		size = sizeof(sc->pairs);
	if (go_read(sc->pairs, size, ptr, remote))
		return -RPROF_GO_FAULT;
	return n;
}

/*
 * The same from a map[string]string (Go <= 1.23): `set` points at the
 * map, itself a pointer to the hmap (count at 0, B at 9, buckets at 16).
 * Live slots (tophash >= 5) of the buckets in order, each followed by its
 * overflow chain. A set the bounded walk did not find whole (more labels
 * than it reached, a map still growing) is dropped.
 */
static __always_inline int go_gather_map(struct go_scratch *sc, __u64 set,
					 struct rprof_go_labels *out, struct task_struct *remote)
{
	__u64 hmap = 0, h[3] = {};

	if (go_word(&hmap, set, remote))
		return -RPROF_GO_FAULT;
	if (!hmap)
		return 0;
	if (go_read(h, sizeof(h), hmap, remote))
		return -RPROF_GO_FAULT;
	__u64 count = h[0], buckets = h[2];
	__u32 b = (h[1] >> 8) & 0xff;
	if (count > GO_MAX_PLAUSIBLE || b > 20)
		return -RPROF_GO_BAD;
	if (count == 0)
		return 0;
	if (!buckets)
		return -RPROF_GO_BAD;
	__u32 want = count;
	if (count > RPROF_GO_MAX_LABELS) {
		want = RPROF_GO_MAX_LABELS;
		out->flags |= RPROF_GO_CUT;
	}
	__u64 nbuckets = 1ull << b, idx = 0, at = buckets;
	__u32 n = 0;
	for (int r = 0; r < GO_MAX_BUCKET_READS; r++) {
		if (n >= want)
			break;
		if (go_read(sc->bucket, GO_BUCKET_SIZE, at, remote))
			return -RPROF_GO_FAULT;
#pragma unroll
		for (int j = 0; j < 8; j++) {
			if (sc->bucket[j] < GO_MIN_TOPHASH || n >= want || n >= RPROF_GO_MAX_LABELS)
				continue;
			__builtin_memcpy(&sc->pairs[n].key, sc->bucket + 8 + j * 16, 16);
			__builtin_memcpy(&sc->pairs[n].value, sc->bucket + 8 + 128 + j * 16, 16);
			n++;
		}
		__u64 next = 0;
		__builtin_memcpy(&next, sc->bucket + GO_BUCKET_SIZE - 8, 8);
		if (next) {
			at = next;
		} else {
			if (++idx >= nbuckets)
				break;
			at = buckets + idx * GO_BUCKET_SIZE;
		}
	}
	return n < want ? -RPROF_GO_BAD : (int)n;
}

/* Copies up to `cap` bytes of a Go string into dst; its length to *len. */
static __always_inline int go_copy_string(char *dst, __u32 cap, struct go_string *str, __u32 *len,
					  struct task_struct *remote)
{
	__u64 n = str->len;

	if (n > GO_MAX_PLAUSIBLE || (n && !str->ptr))
		return RPROF_GO_BAD;
	*len = n;
	__u32 c = n < cap ? n : cap;
	if (c && go_read(dst, c, str->ptr, remote))
		return RPROF_GO_FAULT;
	return RPROF_GO_OK;
}

/* Copies the gathered pairs' strings into out->labels. */
static __always_inline int go_copy_pairs(struct rprof_go_labels *out, struct go_scratch *sc, __u32 n,
					 struct task_struct *remote)
{
	for (__u32 i = 0; i < RPROF_GO_MAX_LABELS; i++) {
		if (i >= n)
			break;
		struct go_pair *p = &sc->pairs[i];
		struct rprof_go_label *l = &out->labels[i];
		int st = go_copy_string(l->key, RPROF_GO_KEY_LEN, &p->key, &l->key_len, remote);
		if (st != RPROF_GO_OK)
			return st;
		st = go_copy_string(l->value, RPROF_GO_VALUE_LEN, &p->value, &l->value_len, remote);
		if (st != RPROF_GO_OK)
			return st;
	}
	return RPROF_GO_OK;
}

/* The walk; returns the status for out. */
static __always_inline __u32 go_walk(struct rprof_go_labels *out, const struct rprof_go_proc *gp,
				     struct task_struct *task, __u32 tid, struct task_struct *remote,
				     __u32 slot)
{
	__u64 fsbase = BPF_CORE_READ((struct task_struct___go *)task, thread.fsbase);
	__u64 g = 0, m = 0, curg = 0, procid = 0, goid = 0, set = 0;

	if (!fsbase)
		return RPROF_GO_NONE;
	if (go_word(&g, fsbase + gp->tls_g, remote))
		return RPROF_GO_FAULT;
	if (!g)
		return RPROF_GO_NONE; /* a thread Go did not start (cgo), before its first callback */
	if (go_word(&m, g + gp->g_m, remote))
		return RPROF_GO_FAULT;
	if (!m)
		return RPROF_GO_NONE;
	if (go_word(&procid, m + gp->m_procid, remote))
		return RPROF_GO_FAULT;
	if (procid != tid)
		return RPROF_GO_MISMATCH;
	if (go_word(&curg, m + gp->m_curg, remote))
		return RPROF_GO_FAULT;
	if (!curg)
		return RPROF_GO_NONE; /* the scheduler: no user goroutine */
	if (go_word(&goid, curg + gp->g_goid, remote) || go_word(&set, curg + gp->g_labels, remote))
		return RPROF_GO_FAULT;
	out->goid = goid;
	if (!set)
		return RPROF_GO_OK;

	struct go_scratch *sc = bpf_map_lookup_elem(&go_scratch, &slot);
	if (!sc)
		return RPROF_GO_FAULT;
	int n = gp->format == RPROF_GO_LABELS_SLICE ? go_gather_slice(sc, set, out, remote)
						     : go_gather_map(sc, set, out, remote);
	if (n < 0)
		return -n;
	int st = go_copy_pairs(out, sc, n, remote);
	if (st != RPROF_GO_OK)
		return st;
	out->count = n;
	return RPROF_GO_OK;
}

/*
 * The labels of the goroutine on thread `tid` (of `task`: the current task,
 * or with `remote` set another one, from a sleepable program) into out.
 * Only labels the whole checked chain led to are kept.
 */
static __always_inline void go_labels(struct rprof_go_labels *out, const struct rprof_go_proc *gp,
				      struct task_struct *task, __u32 tid, struct task_struct *remote,
				      __u32 slot)
{
	out->goid = 0;
	out->count = 0;
	out->flags = 0;
	__u32 st = go_walk(out, gp, task, tid, remote, slot);
	if (st != RPROF_GO_OK) {
		out->goid = 0;
		out->flags = 0;
	}
	out->status = st;
}

#endif /* RPROF_GO_H */
