//! The frameless-leaf fix-up.
//!
//! Compilers skip the frame-pointer prologue in leaf functions, even with
//! `-fno-omit-frame-pointer` (GCC) and always in Go for leaves without
//! locals. When a sample lands in such a function, `rbp` still points at the
//! caller's frame, so the frame-pointer walk goes from the leaf straight to
//! the caller's caller: the direct caller is lost, exactly the frame users
//! look for. The lost return address is the word at the stack pointer,
//! which the BPF program records. We insert it when it really is a return
//! address: it points into an executable mapping, right after a call
//! instruction.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::process::Process;

/// Decides, once per (process, word), whether a stack-top word is a
/// return address, and patches stacks accordingly. A process is its pid
/// and start time, so a reused pid never inherits another's verdicts.
#[derive(Default)]
pub struct LeafFixer {
    verdicts: HashMap<(u32, u64, u64), bool>,
}

impl LeafFixer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The user stack of a sample with the leaf's caller restored when it
    /// was missing. `sp_word` is the word at the user stack pointer.
    /// `process` is the process's snapshot (`None`: unknown, nothing is
    /// inserted) and `id` its (pid, start time).
    pub fn user_stack<'a>(
        &mut self,
        process: Option<&Process>,
        id: (u32, u64),
        stack: &'a [u64],
        sp_word: u64,
    ) -> Cow<'a, [u64]> {
        if sp_word == 0 || stack.is_empty() || stack.get(1) == Some(&sp_word) {
            return Cow::Borrowed(stack);
        }
        let Some(process) = process else {
            return Cow::Borrowed(stack);
        };
        let verdict = *self
            .verdicts
            .entry((id.0, id.1, sp_word))
            .or_insert_with(|| is_return_site(process, sp_word));
        if !verdict {
            return Cow::Borrowed(stack);
        }
        let mut fixed = Vec::with_capacity(stack.len() + 1);
        fixed.push(stack[0]);
        fixed.push(sp_word);
        fixed.extend_from_slice(&stack[1..]);
        fixed.truncate(profiler_ebpf::abi::MAX_FRAMES);
        Cow::Owned(fixed)
    }
}

/// Whether `addr` follows a call instruction in an executable file mapping.
fn is_return_site(p: &Process, addr: u64) -> bool {
    let Some((entry, Some(bin))) = p.find(addr) else {
        return false;
    };
    let Some(data) = bin.data.as_deref() else {
        return false;
    };
    let Ok(off) = usize::try_from(entry.file_offset(addr)) else {
        return false;
    };
    let Some(before) = off.checked_sub(7).and_then(|s| data.get(s..off)) else {
        return false;
    };
    ends_with_call(before.try_into().unwrap_or([0; 7]))
}

/// Whether the 7 bytes before a return address end with an x86-64 call:
/// `call rel32` (E8), or `call r/m64` (FF /2) in its register, memory,
/// disp8, disp32, SIB and RIP-relative forms.
pub fn ends_with_call(b: [u8; 7]) -> bool {
    // ModRM with reg field 2 (the /2 of FF /2) and the given mod.
    let call_modrm = |m: u8, md: u8| m >> 6 == md && (m >> 3) & 7 == 2;
    let rm = |m: u8| m & 7;
    // call rel32: E8 + 4 bytes.
    b[2] == 0xe8
        // call reg: FF D0+r.
        || (b[5] == 0xff && call_modrm(b[6], 3))
        // call [reg]: FF 10+r (not SIB=4, not RIP=5).
        || (b[5] == 0xff && call_modrm(b[6], 0) && rm(b[6]) != 4 && rm(b[6]) != 5)
        // call [reg+disp8]: FF 50+r d8.
        || (b[4] == 0xff && call_modrm(b[5], 1) && rm(b[5]) != 4)
        // call [SIB]: FF 14 sib.
        || (b[4] == 0xff && call_modrm(b[5], 0) && rm(b[5]) == 4)
        // call [SIB+disp8]: FF 54 sib d8.
        || (b[3] == 0xff && call_modrm(b[4], 1) && rm(b[4]) == 4)
        // call [rip+disp32] or [reg+disp32]: FF 15/90+r d32.
        || (b[1] == 0xff && (b[2] == 0x15 || (call_modrm(b[2], 2) && rm(b[2]) != 4)))
        // call [SIB+disp32]: FF 94 sib d32.
        || (b[0] == 0xff && call_modrm(b[1], 2) && rm(b[1]) == 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(bytes: &[u8]) -> [u8; 7] {
        let mut b = [0x90u8; 7];
        b[7 - bytes.len()..].copy_from_slice(bytes);
        b
    }

    #[test]
    fn recognizes_call_forms() {
        assert!(ends_with_call(tail(&[0xe8, 1, 2, 3, 4]))); // call rel32
        assert!(ends_with_call(tail(&[0xff, 0xd0]))); // call rax
        assert!(ends_with_call(tail(&[0x41, 0xff, 0xd3]))); // call r11
        assert!(ends_with_call(tail(&[0xff, 0x10]))); // call [rax]
        assert!(ends_with_call(tail(&[0xff, 0x50, 0x08]))); // call [rax+8]
        assert!(ends_with_call(tail(&[0xff, 0x14, 0x24]))); // call [rsp]
        assert!(ends_with_call(tail(&[0xff, 0x54, 0x24, 0x08]))); // call [rsp+8]
        assert!(ends_with_call(tail(&[0xff, 0x15, 1, 2, 3, 4]))); // call [rip+d32]
        assert!(ends_with_call(tail(&[0xff, 0x90, 1, 2, 3, 4]))); // call [rax+d32]
        assert!(ends_with_call(tail(&[0xff, 0x94, 0x24, 1, 2, 3, 4]))); // call [rsp+d32]
    }

    #[test]
    fn rejects_non_calls() {
        assert!(!ends_with_call([0x90; 7]));
        assert!(!ends_with_call(tail(&[0xff, 0xe0]))); // jmp rax (FF /4)
        assert!(!ends_with_call(tail(&[0xff, 0x25, 1, 2, 3, 4]))); // jmp [rip+d32]
        assert!(!ends_with_call(tail(&[0x48, 0x89, 0xe5]))); // mov rbp, rsp
        assert!(!ends_with_call(tail(&[0xc3]))); // ret
    }

    #[test]
    fn inserts_a_real_return_address_of_this_process() {
        // The return address of a real call in this test binary: the
        // address right after `call` into an inner function.
        #[inline(never)]
        fn callee() -> usize {
            std::hint::black_box(0)
        }
        #[inline(never)]
        fn caller_ret_addr() -> Option<u64> {
            // Find a call to `callee` inside `caller`: scan our own code for
            // E8 rel32 targeting it.
            let target = callee as *const () as u64;
            let start = caller as *const () as u64;
            (start..start + 256).find_map(|a| {
                // SAFETY: reading our own mapped code.
                let op = unsafe { *(a as *const u8) };
                let rel = unsafe { std::ptr::read_unaligned((a + 1) as *const i32) };
                (op == 0xe8 && (a + 5).wrapping_add(rel as i64 as u64) == target).then_some(a + 5)
            })
        }
        #[inline(never)]
        fn caller() -> usize {
            callee() + 1
        }
        assert_eq!(caller(), 1);
        let ret = caller_ret_addr().expect("caller calls callee directly");
        let pid = std::process::id();
        let mut procs = crate::process::ProcessTable::new();
        let p = procs.observe(pid);
        let id = (pid, 1);
        let mut fixer = LeafFixer::new();
        let stack = [0x1000u64, 0x2000];
        let fixed = fixer.user_stack(p, id, &stack, ret);
        assert_eq!(&*fixed, &[0x1000, ret, 0x2000]);
        // Not code after a call: left alone.
        let data = 0xdead_beefu64;
        assert_eq!(&*fixer.user_stack(p, id, &stack, data), &stack);
        // Already the caller: left alone.
        let st2 = [0x1000u64, ret];
        assert_eq!(&*fixer.user_stack(p, id, &st2, ret), &st2);
        // An unknown process: nothing to check against, left alone.
        assert_eq!(&*fixer.user_stack(None, id, &stack, ret), &stack);
    }
}
