//! Fuzz target `cgroup`: see `rprof_bpf::fuzzing::cgroup` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rprof_bpf::fuzzing::cgroup(data));
