//! Runtime PCs of Go stacks to pprof locations, with the rules Go's own
//! profile writer (`runtime/pprof`'s `appendLocsForStack`) applies, so our
//! profiles have the same frames as the process's own:
//!
//! * PCs are return addresses: each is looked up at `pc - 1`.
//! * Stacks from `runtime.callers` hold one PC per *logical* frame: an
//!   inlined call contributes a virtual PC (its inline mark + 1) for each
//!   outer frame. Stacks from frame-pointer unwinding hold physical frames
//!   only. Like `runtime.CallersFrames`, a PC yields its innermost frame,
//!   and its outer inlined frames too unless the next PC is already the
//!   parent's.
//! * For stacks we unwind ourselves (goroutines), compiler-generated
//!   wrappers (`go` statement wrappers, method value wrappers...) are
//!   elided, as Go's tracebacks do; frames inlined into a wrapper stay.
//!   Stacks recorded by the runtime already are what Go shows (its
//!   frame-pointer block and mutex stacks keep wrappers, and so do we).
//! * Consecutive frames of one physical function (an inline chain) share a
//!   Location, innermost line first; `runtime.goexit` is dropped.

use std::collections::HashMap;

use crate::pprof::{Line, Mapping, ProfileBuilder};
use crate::symbolize::go::GoFrame;
use crate::symbolize::Frame;

use super::GoProcess;

/// One logical frame: the frame and its physical function's entry.
#[derive(Clone)]
struct Logical {
    pc: u64,
    frame: Option<GoFrame>,
    entry: u64,
}

/// Turns stacks into location ids in one profile.
pub(crate) struct Locator<'a> {
    p: &'a GoProcess,
    mapping_id: u64,
    /// Frames at `pc - 1`, innermost first, with the physical entry.
    frames: HashMap<u64, (Vec<GoFrame>, u64)>,
    /// Location ids by (first PC, lines).
    locations: HashMap<(u64, Vec<(u64, i64)>), u64>,
    /// The `funcID` of wrappers in this binary.
    wrapper: Option<u8>,
}

impl<'a> Locator<'a> {
    /// Adds the executable's mapping to `b`. `elide_wrappers` for stacks
    /// from our own unwinding.
    pub(crate) fn new(
        p: &'a GoProcess,
        b: &mut ProfileBuilder,
        elide_wrappers: bool,
    ) -> Locator<'a> {
        let m = &p.mapping;
        let mapping = Mapping {
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.offset,
            filename: b.intern(&p.exe),
            build_id: b.intern(&m.build_id),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..Default::default()
        };
        let mapping_id = b.add_mapping(mapping);
        Locator {
            p,
            mapping_id,
            frames: HashMap::new(),
            locations: HashMap::new(),
            wrapper: if elide_wrappers {
                p.table.wrapper_func_id()
            } else {
                None
            },
        }
    }

    /// Frames at return address `pc` (innermost first) and the entry of the
    /// physical function; empty if no Go function covers it.
    fn lookup(&mut self, pc: u64) -> (Vec<GoFrame>, u64) {
        if let Some(v) = self.frames.get(&pc) {
            return v.clone();
        }
        let at = self.p.link_addr(pc).wrapping_sub(1);
        let mut frames = self.p.table.lookup(at).unwrap_or_default();
        if self.wrapper.is_some() && self.p.table.func_id(at) == self.wrapper {
            frames.pop();
        }
        let entry = self.p.table.function(at).map_or(0, |(e, _)| e);
        self.frames.insert(pc, (frames.clone(), entry));
        (frames, entry)
    }

    /// The innermost function at return address `pc`, as `FuncForPC` names
    /// it (looked up at `pc` itself).
    pub(crate) fn func_for_pc(&self, pc: u64) -> Option<String> {
        let at = self.p.link_addr(pc);
        self.p
            .table
            .lookup(at)
            .and_then(|f| f.into_iter().next())
            .map(|f| f.function)
    }

    /// The logical frames of `stack`.
    fn logical(&mut self, stack: &[u64]) -> Vec<Logical> {
        let mut out = Vec::with_capacity(stack.len());
        for (i, &pc) in stack.iter().enumerate() {
            let (chain, entry) = self.lookup(pc);
            if chain.is_empty() {
                // No Go function (kept as an address), or an elided wrapper.
                if entry == 0 {
                    out.push(Logical {
                        pc,
                        frame: None,
                        entry: 0,
                    });
                }
                continue;
            }
            let next_is_parent = chain.len() > 1
                && stack.get(i + 1).is_some_and(|&n| {
                    let (c, e) = self.lookup(n);
                    e == entry && c.len() + 1 == chain.len() && c[0].function == chain[1].function
                });
            let take = if next_is_parent { 1 } else { chain.len() };
            for f in chain.into_iter().take(take) {
                out.push(Logical {
                    pc,
                    frame: Some(f),
                    entry,
                });
            }
        }
        out
    }

    /// Location ids (leaf first) for `stack`.
    pub(crate) fn locations(&mut self, b: &mut ProfileBuilder, stack: &[u64]) -> Vec<u64> {
        let logical = self.logical(stack);
        let mut ids = Vec::new();
        let mut deck: Vec<Logical> = Vec::new();
        for l in logical {
            if l.frame
                .as_ref()
                .is_some_and(|f| f.function == "runtime.goexit")
            {
                self.emit(b, &mut deck, &mut ids);
                continue;
            }
            let joins = deck.last().is_some_and(|last| {
                let (Some(lf), Some(nf)) = (&last.frame, &l.frame) else {
                    return false;
                };
                lf.inlined && last.entry != 0 && last.entry == l.entry && lf.function != nf.function
            });
            if !joins {
                self.emit(b, &mut deck, &mut ids);
            }
            deck.push(l);
        }
        self.emit(b, &mut deck, &mut ids);
        ids
    }

    /// Emits the pending inline chain as one location.
    fn emit(&mut self, b: &mut ProfileBuilder, deck: &mut Vec<Logical>, ids: &mut Vec<u64>) {
        let Some(first) = deck.first() else { return };
        let address = first.pc.wrapping_sub(1);
        let lines: Vec<Line> = deck
            .iter()
            .filter_map(|l| l.frame.as_ref())
            .map(|f| crate::engine::encode::line(b, &Frame::from(f.clone())))
            .collect();
        let key = (
            address,
            lines.iter().map(|l| (l.function_id, l.line)).collect(),
        );
        let id = match self.locations.get(&key) {
            Some(&id) => id,
            None => {
                let id = b.add_location(self.mapping_id, address, lines);
                self.locations.insert(key, id);
                id
            }
        };
        ids.push(id);
        deck.clear();
    }
}
