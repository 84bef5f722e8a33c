//! The heap and allocs profiles, encoded as Go's `runtime/pprof`
//! (`writeHeapProto`) encodes them for `/debug/pprof/heap` and `/allocs`
//! at debug=0: four sample types, period `space/bytes` = `MemProfileRate`,
//! values unsampled by `1/(1 - exp(-avg/rate))`, a numeric `bytes` label
//! (the average object size), and the runtime's own allocation frames
//! (`runtime.mallocgc`...) hidden from the top of each stack.

use crate::pprof::{Profile, ProfileBuilder};

use super::mprof::{MemBucket, MemForm};
use super::symbols::Locator;
use super::vars::Var;
use super::{GoProcess, GoRuntimeError};

/// The runtime's default `MemProfileRate`, which `--enable` restores.
pub(crate) const DEFAULT_MEM_PROFILE_RATE: u64 = 512 * 1024;

/// Which of the two views of the memory profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeapView {
    /// `/debug/pprof/heap`: no default sample type (pprof shows inuse_space).
    Heap,
    /// `/debug/pprof/allocs`: `alloc_space` by default.
    Allocs,
}

/// State of memory profiling in the target.
pub(crate) struct MemProfiling {
    pub rate: u64,
    pub linker_disabled: bool,
    rate_addr: u64,
}

impl GoProcess {
    /// Reads `MemProfileRate` and `disableMemoryProfiling`.
    pub(crate) fn mem_profiling(&self) -> Result<MemProfiling, GoRuntimeError> {
        let rate_addr = self.var(Var::MemProfileRate)?;
        let rate = self.mem.u64(rate_addr)?;
        if rate > 1 << 40 {
            return Err(self.invalid("runtime.MemProfileRate", format!("implausible rate {rate}")));
        }
        let linker_disabled = match self.var(Var::DisableMemoryProfiling) {
            Ok(a) => self.mem.u8(a)? != 0,
            Err(_) => false,
        };
        Ok(MemProfiling {
            rate,
            linker_disabled,
            rate_addr,
        })
    }

    /// Turns memory profiling on (`--enable`): one word written into the
    /// target, `MemProfileRate = 512 KiB`, as if the program had set it.
    pub(crate) fn enable_mem_profiling(&self, state: &MemProfiling) -> Result<(), GoRuntimeError> {
        Ok(self
            .mem
            .write_u64(state.rate_addr, DEFAULT_MEM_PROFILE_RATE)?)
    }

    /// The message for a target whose memory profiling is off.
    pub(crate) fn mem_profiling_off(&self, state: &MemProfiling) -> GoRuntimeError {
        let why = if state.linker_disabled {
            "memory profiling is disabled: the linker turned it off because the program never \
             references runtime.MemProfile (it does not import runtime/pprof)"
        } else {
            "memory profiling is disabled: the program set runtime.MemProfileRate to 0"
        };
        GoRuntimeError::Disabled {
            pid: self.pid,
            exe: self.exe.clone(),
            what: format!(
                "{why}; rerun with --enable to set MemProfileRate to {DEFAULT_MEM_PROFILE_RATE} \
                 in the process (this changes the target: allocations are sampled from then on)"
            ),
        }
    }
}

/// Go's `scaleHeapSample`.
fn unsample(count: i64, size: i64, rate: i64) -> (i64, i64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, size);
    }
    let avg = size as f64 / count as f64;
    let scale = 1.0 / (1.0 - (-avg / rate as f64).exp());
    ((count as f64 * scale) as i64, (size as f64 * scale) as i64)
}

/// Drops the leading `runtime.*` frames of an allocation stack, as Go's
/// writer does (only when some non-runtime frame follows).
fn hide_runtime(loc: &Locator<'_>, stack: &[u64]) -> usize {
    for (i, &pc) in stack.iter().enumerate() {
        let runtime = loc
            .func_for_pc(pc)
            .is_some_and(|f| f.starts_with("runtime.") || f.starts_with("internal/runtime/"));
        if !runtime {
            return i;
        }
    }
    0
}

/// Encodes the memory-profile buckets.
pub(crate) fn encode(
    p: &GoProcess,
    buckets: &[MemBucket],
    form: MemForm,
    rate: u64,
    view: HeapView,
    comments: &[String],
) -> Profile {
    let mut b = ProfileBuilder::new();
    b.sample_types(&[
        ("alloc_objects", "count"),
        ("alloc_space", "bytes"),
        ("inuse_objects", "count"),
        ("inuse_space", "bytes"),
    ]);
    let rate = rate as i64;
    b.period("space", "bytes", rate);
    if view == HeapView::Allocs {
        let i = b.intern("alloc_space");
        b.set_default_sample_type(i);
    }
    for c in comments {
        b.comment(c);
    }
    let mut loc = Locator::new(p, &mut b, false);
    for bucket in buckets {
        let a = &bucket.active;
        let mut stack = &bucket.stack[hide_runtime(&loc, &bucket.stack)..];
        let mut ids = loc.locations(&mut b, stack);
        if ids.is_empty() {
            stack = &bucket.stack;
            ids = loc.locations(&mut b, stack);
        }
        let (allocs, alloc_bytes) = (a.allocs as i64, a.alloc_bytes as i64);
        let inuse = allocs.wrapping_sub(a.frees as i64);
        let inuse_bytes = alloc_bytes.wrapping_sub(a.free_bytes as i64);
        let (ao, ab) = unsample(allocs, alloc_bytes, rate);
        let (io, ib) = unsample(inuse, inuse_bytes, rate);
        // Go writes the object size; before the short record form, only
        // when it can compute it as bytes / objects.
        let mut labels = Vec::new();
        match form {
            MemForm::Short => labels.push(b.num_label("bytes", bucket.size as i64)),
            MemForm::Long if allocs > 0 && alloc_bytes / allocs != 0 => {
                labels.push(b.num_label("bytes", alloc_bytes / allocs));
            }
            MemForm::Long => {}
        }
        b.add_sample(ids, vec![ao, ab, io, ib], labels);
    }
    b.time(now_nanos(), 0);
    b.finish()
}

pub(crate) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsamples_like_go() {
        // One 64 KiB object sampled at 512 KiB: scale 1/(1-e^-0.125).
        let (c, s) = unsample(1, 65536, 524288);
        assert_eq!((c, s), (8, 557_738));
        assert_eq!(unsample(0, 10, 524288), (0, 0));
        assert_eq!(unsample(3, 300, 1), (3, 300));
    }
}
