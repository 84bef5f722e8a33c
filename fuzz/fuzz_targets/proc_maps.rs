//! Fuzz target `proc_maps`: see `rprof_bpf::fuzzing::proc_maps` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rprof_bpf::fuzzing::proc_maps(data));
