//! The pprof format: messages, a builder that interns strings and ids, and
//! gzip read/write.
//!
//! The messages are written by hand with `prost` derives so no `protoc` is
//! needed; the field numbers are those of pprof's `profile.proto`.

mod builder;
mod io;
mod proto;

pub use builder::{FunctionKey, ProfileBuilder};
pub use io::{decode, encode_gzip, read_file, write_file_atomic, ReadError};
pub use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
