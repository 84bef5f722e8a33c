//! The BPF object is committed (`bpf/profile.bpf.o`) so that a machine with
//! only a Rust toolchain can build the profiler. `cargo xtask bpf` rebuilds it
//! from the C with clang-19; the `committed_object_is_fresh` test catches a
//! stale object. Here we only tell cargo when to rebuild this crate.
fn main() {
    for f in [
        "bpf/profile.bpf.o",
        "bpf/abi.h",
        "bpf/profile.bpf.c",
        "bpf/offcpu.h",
        "bpf/go.h",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
}
