//! Where a user stack really ends: before its first address 0.
//!
//! The kernel's frame-pointer walk (`bpf_get_stack` with
//! `BPF_F_USER_STACK`, which the BPF program uses for processes without
//! unwind tables, and the agent for all) stores the return address of every
//! frame record it can read, 0 included, and goes on while the next frame
//! pointer still points at readable memory. No code runs at address 0, so a
//! return address of 0 means the record was not a frame: `rbp` used as a
//! plain register by code built without frame pointers (the shell, libc), or
//! the zeroed words at the bottom of a fresh process's stack. What the walk
//! reads after it follows the same bogus chain (seen in a system-wide
//! capture with shell churn: one more "frame" in the shell's heap). So the
//! stack ends before the first 0, and nothing at address 0 is ever emitted.
//!
//! The `.eh_frame` unwinder stops at a zero return address on its own; this
//! is the one place the frame-pointer path is checked, at ingest
//! ([`crate::engine::ingest`]).

use profiler_ebpf::abi::Sample;

/// A sample's user stack, innermost first, up to its first address 0.
pub fn user_frames(sample: &Sample) -> &[u64] {
    until_chain_end(sample.user_stack())
}

/// The frames of `stack` before its first address 0.
pub fn until_chain_end(stack: &[u64]) -> &[u64] {
    let end = stack.iter().position(|&a| a == 0).unwrap_or(stack.len());
    &stack[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_end_before_their_first_zero() {
        // As seen in a system-wide capture: libc frames, a 0, then a heap word.
        let seen = [0x7f68_270c_cad7, 0x7f68_270c_c0c5, 0, 0x55aa_2784_0065];
        assert_eq!(until_chain_end(&seen), &seen[..2]);
        assert_eq!(until_chain_end(&[0x401000, 0]), &[0x401000]);
        // A jump to address 0 leaves nothing trustworthy.
        assert!(until_chain_end(&[0, 0x401000]).is_empty());
        assert!(until_chain_end(&[]).is_empty());
        let whole = [0x401000, 0x401200, 0x7f00_0000_1000];
        assert_eq!(until_chain_end(&whole), &whole);
    }
}
