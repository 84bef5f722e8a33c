//! Completing user stacks beyond what the frame-pointer chain gives.
//!
//! [`table`] compiles `.eh_frame` into the rows the BPF unwinder searches
//! ([`cgo`] adds rules for the Go code C calls into), [`loader`] puts them
//! in the BPF maps, [`worker`] does that off the sample loop, and [`leaf`]
//! repairs the caller of a frameless leaf where only frame pointers were
//! walked.

pub mod cgo;
pub mod leaf;
pub mod loader;
pub mod table;
pub mod worker;
