//! Fuzz target `http_query`: see `rprof_bpf::fuzzing::http_query` for what it exercises.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rprof_bpf::fuzzing::http_query(data));
