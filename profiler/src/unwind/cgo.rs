//! Unwind rules for the Go code that C calls: cgo's `crosscall2`.
//!
//! Go text has no `.eh_frame`, and the BPF unwinder walks it with frame
//! pointers. That is right for Go calling Go, and for Go calling C:
//! `runtime.asmcgocall` leaves the Go frame pointer in rbp, which C keeps
//! (it is callee-saved), so the walk resumes in Go after the C frames.
//!
//! The way back breaks. C calls `crosscall2`, whose hand-written frame
//! stacks two frame-pointer links (the assembler's prologue, then the
//! register-save macro's own), so a frame-pointer walk reads a saved
//! register as a return address; and the C above it, built without frame
//! pointers, has no chain to follow anyway.
//!
//! The Go function table's `pcsp` deltas say where the return address is at
//! every PC of `crosscall2` (CFA = rsp + delta + 8). That is all the BPF
//! unwinder needs to step from `crosscall2` back into C, where `.eh_frame`
//! takes over. Restoring rbp matters too (C up the stack may use it): both
//! layouts Go has used save the caller's rbp at CFA-16 (a `push %rbp`
//! prologue since Go 1.21, a `mov %rbp, 40(%rsp)` before), and we read the
//! instruction bytes to find where that save happens rather than assume it.

use crate::symbolize::go::{GoTable, SpDeltas};

use super::table::Rule;

/// Go functions that C code calls directly.
const TRAMPOLINES: &[&str] = &["crosscall2"];

/// Where the caller's rbp lives relative to the CFA once saved.
const RBP_SLOT: i32 = -16;

/// Rules `(start, end, rule)`, in link-time addresses, for the trampolines
/// this Go binary has (none unless it uses cgo).
pub fn trampoline_rules(go: &GoTable) -> Vec<(u64, u64, Rule)> {
    TRAMPOLINES
        .iter()
        .filter_map(|name| go.sp_deltas(name))
        .flat_map(|d| {
            let code = go.code(d.entry, usize::try_from(d.end - d.entry).unwrap_or(0));
            rules(&d, code.unwrap_or_default())
        })
        .collect()
}

/// The rules of one function from its SP deltas and its code bytes.
fn rules(d: &SpDeltas, code: &[u8]) -> Vec<(u64, u64, Rule)> {
    let save = rbp_save(d, code);
    let mut out = Vec::with_capacity(d.spans.len() + 1);
    for &(start, end, delta) in &d.spans {
        if delta < 0 {
            continue;
        }
        let Ok(offset) = i16::try_from(delta).map(|d| i32::from(d) + 8) else {
            continue;
        };
        // Saved from the save point while the frame holding the slot stands.
        let saved_from = save
            .filter(|&(_, at_delta)| delta >= at_delta)
            .map(|(pc, _)| pc);
        let rule = |rbp| Rule::Rsp { offset, rbp };
        match saved_from {
            Some(pc) if pc <= start => out.push((start, end, rule(RBP_SLOT as i16))),
            Some(pc) if pc < end => {
                out.push((start, pc, rule(0)));
                out.push((pc, end, rule(RBP_SLOT as i16)));
            }
            _ => out.push((start, end, rule(0))),
        }
    }
    out
}

/// The PC just after the instruction that saves the caller's rbp at
/// CFA-16, and the SP delta there; `None` if no such instruction is found
/// (then rbp is left as is, which only costs C frames that need it).
fn rbp_save(d: &SpDeltas, code: &[u8]) -> Option<(u64, i32)> {
    const PUSH_RBP: u8 = 0x55;
    // `push %rbp` as the first SP change: the delta goes 0 → 8 right after.
    let push = d.spans.windows(2).find_map(|w| {
        let ((_, _, before), (start, _, after)) = (w[0], w[1]);
        let at = usize::try_from(start.checked_sub(d.entry)?.checked_sub(1)?).ok()?;
        (before == 0 && after == 8 && code.get(at) == Some(&PUSH_RBP)).then_some((start, 8))
    });
    // `mov %rbp, disp8(%rsp)` (48 89 6c 24 disp8) into the CFA-16 slot.
    let mov = code.windows(5).enumerate().find_map(|(i, w)| {
        let [0x48, 0x89, 0x6c, 0x24, disp] = *w else {
            return None;
        };
        let pc = d.entry + i as u64;
        let delta = delta_at(d, pc)?;
        (i32::from(disp as i8) - delta - 8 == RBP_SLOT).then_some((pc + 5, delta))
    });
    match (push, mov) {
        (Some(p), Some(m)) => Some(if p.0 <= m.0 { p } else { m }),
        (p, m) => p.or(m),
    }
}

/// The SP delta at `pc`.
fn delta_at(d: &SpDeltas, pc: u64) -> Option<i32> {
    d.spans
        .iter()
        .find(|&&(start, end, _)| start <= pc && pc < end)
        .map(|s| s.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(offset: i32, rbp: i16) -> Rule {
        Rule::Rsp { offset, rbp }
    }

    /// Go 1.21+: `push %rbp; mov %rsp,%rbp; sub $0x30,%rsp; ...` — the
    /// prologue's push saves the caller's rbp.
    #[test]
    fn push_prologue_saves_rbp_at_cfa_minus_16() {
        let entry = 0x1000;
        let mut code = vec![0x90; 0x68];
        code[0] = 0x55; // push %rbp
        code[1..4].copy_from_slice(&[0x48, 0x89, 0xe5]); // mov %rsp,%rbp
                                                         // The macro's second link: mov %rbp,0x28(%rsp) at delta 0x38 saves
                                                         // the new rbp at CFA-24, which must not be taken for the caller's.
        code[8..13].copy_from_slice(&[0x48, 0x89, 0x6c, 0x24, 0x28]);
        let d = SpDeltas {
            entry,
            end: entry + 0x68,
            spans: vec![
                (0x1000, 0x1001, 0),
                (0x1001, 0x1004, 8),
                (0x1004, 0x102a, 0x38),
                (0x102a, 0x1041, 0x50),
                (0x1041, 0x1062, 0x38),
                (0x1062, 0x1066, 8),
                (0x1066, 0x1068, 0),
            ],
        };
        assert_eq!(rbp_save(&d, &code), Some((0x1001, 8)));
        assert_eq!(
            rules(&d, &code),
            vec![
                (0x1000, 0x1001, rsp(8, 0)),
                (0x1001, 0x1004, rsp(16, -16)),
                (0x1004, 0x102a, rsp(0x40, -16)),
                (0x102a, 0x1041, rsp(0x58, -16)),
                (0x1041, 0x1062, rsp(0x40, -16)),
                (0x1062, 0x1066, rsp(16, -16)),
                (0x1066, 0x1068, rsp(8, 0)),
            ]
        );
    }

    /// Before Go 1.21 (SysV): `sub $0x30,%rsp; mov %rbp,0x28(%rsp)`, no
    /// prologue: the save is mid-span, which splits it.
    #[test]
    fn register_save_macro_splits_its_span() {
        let entry = 0x2000;
        let mut code = vec![0x90; 0x40];
        code[4..9].copy_from_slice(&[0x48, 0x89, 0x6c, 0x24, 0x28]);
        let d = SpDeltas {
            entry,
            end: entry + 0x40,
            spans: vec![
                (0x2000, 0x2004, 0),
                (0x2004, 0x2030, 0x30),
                (0x2030, 0x2040, 0),
            ],
        };
        assert_eq!(rbp_save(&d, &code), Some((0x2009, 0x30)));
        assert_eq!(
            rules(&d, &code),
            vec![
                (0x2000, 0x2004, rsp(8, 0)),
                (0x2004, 0x2009, rsp(0x38, 0)),
                (0x2009, 0x2030, rsp(0x38, -16)),
                (0x2030, 0x2040, rsp(8, 0)),
            ]
        );
    }

    /// No recognisable save: rbp is left alone rather than guessed.
    #[test]
    fn unknown_code_leaves_rbp_unchanged() {
        let d = SpDeltas {
            entry: 0x3000,
            end: 0x3010,
            spans: vec![(0x3000, 0x3001, 0), (0x3001, 0x3010, 8)],
        };
        let code = [0x53; 0x10]; // push %rbx, not %rbp
        assert_eq!(rbp_save(&d, &code), None);
        assert!(rules(&d, &code)
            .iter()
            .all(|r| matches!(r.2, Rule::Rsp { rbp: 0, .. })));
    }
}
