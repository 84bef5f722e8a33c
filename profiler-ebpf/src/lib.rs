//! The kernel side of rprof-bpf.
//!
//! This crate carries two things and nothing else:
//! - [`OBJECT`]: the compiled BPF program (`bpf/profile.bpf.c`), ready for aya;
//! - [`abi`]: `#[repr(C)]` mirrors of `bpf/abi.h`, the one definition of the
//!   records and maps shared by the kernel and user sides.
//!
//! The object is committed so a machine with only Rust can build the
//! profiler. `cargo xtask bpf` regenerates it with clang-19; the
//! [`build`] module holds the exact compiler invocation, shared by the xtask
//! and by the freshness test.

pub mod abi;
pub mod build;

/// Wrapper that gives the embedded bytes 8-byte alignment: the ELF parser
/// reads 64-bit fields in place and rejects a misaligned buffer.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!("../bpf/profile.bpf.o"));

/// The compiled BPF object (ELF, `-target bpf`).
pub static OBJECT: &[u8] = &ALIGNED.0;

/// Name of the perf_event program inside [`OBJECT`].
pub const PROGRAM: &str = "rprof_sample_stack";
