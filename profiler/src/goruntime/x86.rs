//! Just enough amd64 decoding to find the runtime's variables in stripped
//! binaries: the RIP-relative memory operands of a function's instructions.
//!
//! Why no full decoder: the Go compiler reaches a package variable with a
//! handful of instruction forms (`MOVQ sym(SB), R`, `MOVL`, `MOVBLZX`,
//! `LEAQ`, `MOVQ R, sym(SB)`, `MOVQ $imm, sym(SB)`, `CMPB/CMPL/CMPQ $imm,
//! sym(SB)`), each with ModRM `mod=00 rm=101` (disp32 from the next
//! instruction). We match those forms byte by byte, stepping over a match
//! whole. A false match inside another instruction's bytes is possible, so
//! every caller validates what it finds by reading the target's memory.

/// What an instruction does with its RIP-relative operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// 8-byte load into a register.
    Load8,
    /// 4-byte load into a register.
    Load4,
    /// 1-byte zero-extending load (`movzbl`).
    LoadByte,
    /// Address taken (`lea`).
    Lea,
    /// 8-byte store from a register.
    Store8,
    /// 8-byte store of an immediate.
    StoreImm8,
    /// Compare of a byte with an immediate.
    CmpByte,
    /// Compare of a 4- or 8-byte word with an immediate.
    CmpWord,
}

/// One RIP-relative reference: the instruction's address and the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RipRef {
    pub at: u64,
    pub access: Access,
    pub target: u64,
}

/// ModRM with mod=00, rm=101: `[rip + disp32]`, any register field.
fn is_rip_modrm(b: u8) -> bool {
    b & 0xc7 == 0x05
}

fn disp(code: &[u8], at: usize) -> Option<i64> {
    let b = code.get(at..at + 4)?;
    Some(i64::from(i32::from_le_bytes(b.try_into().ok()?)))
}

/// Matches one instruction form at `i`: (access, disp offset, length).
fn match_at(code: &[u8], i: usize) -> Option<(Access, usize, usize)> {
    let b = |k: usize| code.get(i + k).copied();
    let rex = b(0).filter(|&r| r & 0xf0 == 0x40);
    let (w, o) = match rex {
        Some(r) => (r & 0x08 != 0, 1),
        None => (false, 0),
    };
    let op = b(o)?;
    let modrm = b(o + 1);
    let rip = modrm.is_some_and(is_rip_modrm);
    match op {
        0x8b if rip => Some((if w { Access::Load8 } else { Access::Load4 }, o + 2, o + 6)),
        0x8d if rip && w => Some((Access::Lea, o + 2, o + 6)),
        0x89 if rip && w => Some((Access::Store8, o + 2, o + 6)),
        0xc7 if w && modrm == Some(0x05) => Some((Access::StoreImm8, o + 2, o + 10)),
        0x0f if b(o + 1) == Some(0xb6) && b(o + 2).is_some_and(is_rip_modrm) => {
            Some((Access::LoadByte, o + 3, o + 7))
        }
        0x80 if modrm == Some(0x3d) => Some((Access::CmpByte, o + 2, o + 7)),
        0x83 if modrm == Some(0x3d) => Some((Access::CmpWord, o + 2, o + 7)),
        _ => None,
    }
}

/// The RIP-relative references in `code`, which is loaded at `vaddr`.
pub(crate) fn rip_refs(code: &[u8], vaddr: u64) -> Vec<RipRef> {
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < code.len() {
        let Some((access, d, len)) = match_at(code, i) else {
            i += 1;
            continue;
        };
        let Some(disp) = disp(code, i + d) else { break };
        let next = vaddr.wrapping_add((i + len) as u64);
        out.push(RipRef {
            at: vaddr + i as u64,
            access,
            target: next.wrapping_add_signed(disp),
        });
        i += len;
    }
    out
}

/// The displacement of the first `mov %fs:DISP, reg` (8-byte load from an
/// absolute FS-relative address) in `code`: where the runtime keeps `g`.
///
/// Position-independent executables load it through a register instead:
/// `mov $DISP, %reg; mov %fs:(%reg), reg2` (the linker resolved the TLS
/// offset to an immediate), which gives the same displacement.
pub(crate) fn first_fs_load(code: &[u8]) -> Option<i64> {
    (0..code.len()).find_map(|i| {
        let w = &code[i..];
        // 64 REX.W 8B modrm(mod=00 rm=100) SIB(0x25: no base, no index) disp32
        if w.len() >= 9
            && w[0] == 0x64
            && w[1] & 0xf8 == 0x48
            && w[2] == 0x8b
            && w[3] & 0xc7 == 0x04
            && w[4] == 0x25
        {
            return disp(w, 5);
        }
        // REX.W C7 modrm(mod=11 reg=0 rm=r) imm32, then
        // 64 REX.W 8B modrm(mod=00 rm=r): r neither 100 (SIB) nor 101.
        if w.len() >= 11
            && w[0] & 0xfe == 0x48
            && w[1] == 0xc7
            && w[2] & 0xf8 == 0xc0
            && w[7] == 0x64
            && w[8] & 0xf8 == 0x48
            && (w[8] & 1) == (w[0] & 1)
            && w[9] == 0x8b
            && w[10] & 0xc0 == 0
            && w[10] & 7 == w[2] & 7
            && !matches!(w[2] & 7, 4 | 5)
        {
            return disp(w, 3);
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_forms_go_emits() {
        // Bytes from a Go 1.27 runtime (objdump), at their addresses.
        let code = [
            0x8b, 0x0d, 0x2b, 0xba, 0x62, 0x00, // 4463b3: mov 0x62ba2b(%rip),%ecx
            0x48, 0x8b, 0x05, 0x43, 0x8f, 0x60, 0x00, // mov 0x608f43(%rip),%rax
            0x80, 0x3d, 0xb1, 0xf7, 0x61, 0x00, 0x00, // cmpb $0x0,0x61f7b1(%rip)
            0x48, 0xc7, 0x05, 0xe4, 0x11, 0x5b, 0x00, 0, 0, 0, 0, // movq $0x0,..(%rip)
        ];
        let refs = rip_refs(&code, 0x4463b3);
        let got: Vec<_> = refs.iter().map(|r| (r.access, r.target)).collect();
        assert_eq!(
            got,
            vec![
                (Access::Load4, 0x4463b3 + 6 + 0x62ba2b),
                (Access::Load8, 0x4463b3 + 13 + 0x608f43),
                (Access::CmpByte, 0x4463b3 + 20 + 0x61f7b1),
                (Access::StoreImm8, 0x4463b3 + 31 + 0x5b11e4),
            ]
        );
    }

    #[test]
    fn finds_the_tls_load_of_g() {
        // mov %fs:0xfffffffffffffff8,%rax
        let code = [0x90, 0x64, 0x48, 0x8b, 0x04, 0x25, 0xf8, 0xff, 0xff, 0xff];
        assert_eq!(first_fs_load(&code), Some(-8));
        assert_eq!(first_fs_load(&[0x90; 12]), None);
        // A PIE's: mov $0xfffffffffffffff8,%rcx; mov %fs:(%rcx),%rax
        let pie = [
            0x48, 0xc7, 0xc1, 0xf8, 0xff, 0xff, 0xff, 0x64, 0x48, 0x8b, 0x01, 0x48, 0x39,
        ];
        assert_eq!(first_fs_load(&pie), Some(-8));
        // The load through another register than the one set: not it.
        let other = [
            0x48, 0xc7, 0xc1, 0xf8, 0xff, 0xff, 0xff, 0x64, 0x48, 0x8b, 0x02,
        ];
        assert_eq!(first_fs_load(&other), None);
    }
}
