//! Fuzz target `eh_frame`: see `rprof_bpf::fuzzing::eh_frame` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rprof_bpf::fuzzing::eh_frame(data));
