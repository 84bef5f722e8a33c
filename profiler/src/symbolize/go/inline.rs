//! Inline trees: turning one PC into the chain of functions the compiler
//! inlined there.
//!
//! Facts (from Go's `runtime/symtabinl.go` and the 1.19 `runtime/symtab.go`):
//!
//! * A function with inlined calls has an inline tree in funcdata slot
//!   `FUNCDATA_InlTree`, and a pc-value table `PCDATA_InlTreeIndex` giving, for
//!   each PC, the index of the innermost inlined call covering it (-1: none).
//! * Go 1.20+ entries (16 bytes): `funcID u8, pad [3]u8, nameOff i32,
//!   parentPc i32, startLine i32`. Go 1.12–1.19 entries (20 bytes): `parent
//!   i16, funcID u8, pad u8, file i32, line i32, func_ i32 (nameOff),
//!   parentPc i32`.
//! * Unwinding: the frame for entry `i` is named by its `nameOff`, and its
//!   file:line is the pcfile/pcln value at the current PC. The caller's
//!   current PC becomes `entry + parentPc` (an instruction whose position is
//!   the call site); look up the index again there, until it is -1. The
//!   physical function comes last.
//!
//! Go 1.9–1.11 used a different entry layout without `parentPc`; those
//! binaries are symbolized without inline frames (see `Layout`).

use super::bytes::{slice_at, u16_at, u32_at, u8_at, Endian};
use super::funcs::{DecodedFunc, TableView};
use super::header::Version;

/// Depth limit for an inline chain, so a corrupt tree cannot loop forever.
const MAX_DEPTH: usize = 128;

/// Entry layout of an inline tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Go 1.12–1.19 (20-byte entries).
    Go112,
    /// Go 1.20+ (16-byte entries).
    Go120,
}

impl Layout {
    /// The layout used by a table version.
    pub fn for_version(v: Version) -> Layout {
        if v >= Version::V120 {
            Layout::Go120
        } else {
            Layout::Go112
        }
    }

    fn entry_size(self) -> usize {
        match self {
            Layout::Go112 => 20,
            Layout::Go120 => 16,
        }
    }
}

/// One decoded inline tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InlinedCall {
    pub name_off: u32,
    pub parent_pc: u32,
    /// 0 when unknown (before 1.20).
    pub start_line: u32,
}

/// The inline tree of one function: bytes from its start to the end of the
/// containing segment (the tree's length is not recorded anywhere).
#[derive(Clone, Copy)]
pub(crate) struct InlineTree<'a> {
    pub bytes: &'a [u8],
    pub layout: Layout,
    pub endian: Endian,
}

impl InlineTree<'_> {
    /// Entry `idx`, checked for the invariants that hold in real binaries
    /// (zero padding, non-negative offsets and lines).
    pub fn get(&self, idx: usize) -> Option<InlinedCall> {
        let size = self.layout.entry_size();
        let b = slice_at(self.bytes, idx.checked_mul(size)?, size)?;
        let e = self.endian;
        let nonneg = |v: u32| (v as i32 >= 0).then_some(v);
        match self.layout {
            Layout::Go120 => {
                if slice_at(b, 1, 3)? != [0, 0, 0] {
                    return None;
                }
                Some(InlinedCall {
                    name_off: nonneg(u32_at(b, 4, e)?)?,
                    parent_pc: nonneg(u32_at(b, 8, e)?)?,
                    start_line: nonneg(u32_at(b, 12, e)?)?,
                })
            }
            Layout::Go112 => {
                let parent = u16_at(b, 0, e)? as i16;
                if parent < -1 || u8_at(b, 3)? != 0 {
                    return None;
                }
                Some(InlinedCall {
                    name_off: nonneg(u32_at(b, 12, e)?)?,
                    parent_pc: nonneg(u32_at(b, 16, e)?)?,
                    start_line: 0,
                })
            }
        }
    }
}

/// One frame before conversion to owned strings.
#[derive(Clone, Debug)]
pub(crate) struct RawFrame<'a> {
    pub name: &'a [u8],
    pub file: Option<&'a [u8]>,
    pub line: u32,
    pub start_line: u32,
    pub inlined: bool,
}

/// Frames for `pc` in `d`, innermost first, physical function last.
///
/// A malformed inline entry ends the inline chain (the physical frame is
/// still reported, like the runtime's non-strict unwinder); an unreadable
/// physical function name makes the whole lookup fail.
pub(crate) fn frames<'a>(
    view: &TableView<'a>,
    d: &DecodedFunc,
    pc: u64,
    tree: Option<&InlineTree<'_>>,
) -> Option<Vec<RawFrame<'a>>> {
    let f = &d.func;
    let mut out = Vec::with_capacity(4);
    let mut cur = pc;
    if let Some(tree) = tree {
        while out.len() < MAX_DEPTH {
            let Some(call) = inlined_at(d, tree, cur) else {
                break;
            };
            let Some(name) = view.func_name(call.name_off) else {
                break;
            };
            let Some(parent) = f
                .entry
                .checked_add(u64::from(call.parent_pc))
                .filter(|p| *p < f.end)
            else {
                break;
            };
            let (file, line) = view.file_line(d, cur);
            out.push(RawFrame {
                name,
                file,
                line,
                start_line: call.start_line,
                inlined: true,
            });
            cur = parent;
        }
    }
    let (file, line) = view.file_line(d, cur);
    let start_line = u32::try_from(f.start_line).unwrap_or(0);
    out.push(RawFrame {
        name: view.func_name(f.name_off)?,
        file,
        line,
        start_line,
        inlined: false,
    });
    Some(out)
}

/// The innermost inlined call covering `pc`, if any.
fn inlined_at(d: &DecodedFunc, tree: &InlineTree<'_>, pc: u64) -> Option<InlinedCall> {
    tree.get(usize::try_from(d.inl.at(pc)?).ok()?)
}

/// Whether `tree` is a believable inline tree for `d`: every index its
/// `PCDATA_InlTreeIndex` table uses must decode, name a function and have a
/// `parentPc` inside the function. Used to pick `moduledata.gofunc` among
/// candidates.
pub(crate) fn plausible(view: &TableView<'_>, d: &DecodedFunc, tree: &InlineTree<'_>) -> bool {
    let Some(max) = d.inl.max().filter(|m| *m >= 0) else {
        return false;
    };
    let size = d.func.end.saturating_sub(d.func.entry);
    (0..=max).all(|i| {
        let call = usize::try_from(i).ok().and_then(|i| tree.get(i));
        call.is_some_and(|c| view.is_name_start(c.name_off) && u64::from(c.parent_pc) < size)
    })
}
