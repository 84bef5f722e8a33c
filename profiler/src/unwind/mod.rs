//! Completing user stacks beyond what the frame-pointer chain gives.
//!
//! [`table`] compiles `.eh_frame` into the rows the BPF unwinder searches
//! ([`cgo`] adds rules for the Go code C calls into); [`loader`] keeps one
//! table per binary in the kernel, refcounted by the processes mapping it
//! and evicted least recently used first under a byte budget ([`alloc`]
//! finds room for rows, [`kernel`] writes the BPF maps); [`worker`] does
//! all of that off the sample loop. [`leaf`] repairs the caller of a
//! frameless leaf where only frame pointers were walked.

mod alloc;
pub mod cgo;
mod heat;
mod kernel;
pub mod leaf;
pub mod loader;
pub mod options;
pub mod table;
pub mod worker;
