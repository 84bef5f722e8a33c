//! Fuzz target `pprof`: see `rprof_bpf::fuzzing::pprof` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rprof_bpf::fuzzing::pprof(data));
