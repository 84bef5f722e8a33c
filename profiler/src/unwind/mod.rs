//! Completing user stacks beyond what the frame-pointer chain gives.
//!
//! Today this is the leaf fix-up ([`leaf`]); the `.eh_frame`-driven unwinder
//! tables will live here too.

pub mod leaf;
pub mod loader;
pub mod table;
