//! Fuzz target `gopclntab`: see `rprof_bpf::fuzzing::gopclntab` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rprof_bpf::fuzzing::gopclntab(data));
