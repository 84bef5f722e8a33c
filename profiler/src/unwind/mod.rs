//! Completing user stacks beyond what the frame-pointer chain gives.
//!
//! [`table`] compiles `.eh_frame` into the rows the BPF unwinder searches
//! ([`cgo`] adds rules for the Go code C calls into), [`loader`] puts them
//! in the BPF maps, [`worker`] does that off the sample loop, [`leaf`]
//! repairs the caller of a frameless leaf where only frame pointers were
//! walked, and [`chain_end`] cuts a frame-pointer walk that ran off the end
//! of its stack.

pub mod cgo;
pub mod chain_end;
pub mod leaf;
pub mod loader;
pub mod table;
pub mod worker;
