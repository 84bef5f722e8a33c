//! The call tree behind flame graphs: every distinct path from the root,
//! with the value of the samples through it. Built once per view on the
//! server; the browser gets only the frames wide enough to draw
//! ([`Tree::frames`]).
//!
//! A diff keeps two values per frame: the new profile's and the base's
//! (as a positive amount), so the page can size frames by both and colour
//! them by the change.

use regex::Regex;

use crate::report::graph::{IndexMap, Stacks};
use crate::report::prepare::Prepared;

/// Marks the synthetic root.
pub const ROOT: u32 = u32::MAX;

/// One frame of the tree.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Node id in [`Stacks`], or [`ROOT`].
    pub node: u32,
    pub parent: u32,
    /// Inlined into its caller.
    pub inline: bool,
    /// Value of the samples through this frame (the new profile's, in a
    /// diff).
    pub value: i64,
    /// A diff's base value through this frame, as a positive amount.
    pub base: i64,
    /// Value of the samples ending here.
    pub self_value: i64,
    pub self_base: i64,
    pub children: Vec<u32>,
}

impl Frame {
    /// How wide it is drawn: both profiles' amounts in a diff.
    pub fn width(&self) -> i64 {
        self.value.saturating_add(self.base)
    }
}

/// The call tree; frame 0 is the root.
pub struct Tree {
    pub frames: Vec<Frame>,
}

fn frame(node: u32, parent: u32, inline: bool) -> Frame {
    Frame {
        node,
        parent,
        inline,
        value: 0,
        base: 0,
        self_value: 0,
        self_base: 0,
        children: Vec::new(),
    }
}

impl Tree {
    /// Builds the tree of the prepared profile's remaining samples, root
    /// first. Samples with no positive amount (values of zero or less
    /// outside a diff base) are left out, as flame graphs cannot show them.
    pub fn new(prep: &Prepared) -> Tree {
        Tree::build(prep, |path, out| {
            out.extend_from_slice(path);
            true
        })
    }

    /// The tree of what `function` calls: every stack through it, cut at
    /// its root-most occurrence, which becomes the root's only child.
    pub fn callees(prep: &Prepared, function: usize) -> Tree {
        Tree::build(prep, |path, out| {
            let Some(cut) = path.iter().position(|&(n, _)| n == function) else {
                return false;
            };
            out.extend_from_slice(&path[cut..]);
            true
        })
    }

    /// The tree of who calls `function`: every stack through it from its
    /// root-most occurrence back to the root, `function` first and its
    /// callers under it (an inverted flame graph). A frame's inline mark
    /// still says it was inlined into the frame it called.
    pub fn callers(prep: &Prepared, function: usize) -> Tree {
        Tree::build(prep, |path, out| {
            let Some(cut) = path.iter().position(|&(n, _)| n == function) else {
                return false;
            };
            out.extend(path[..=cut].iter().rev());
            true
        })
    }

    /// Builds a tree from the kept samples; `part` turns each sample's
    /// frames (root first) into the path to insert, or refuses the sample.
    fn build(
        prep: &Prepared,
        mut part: impl FnMut(&[(usize, bool)], &mut Vec<(usize, bool)>) -> bool,
    ) -> Tree {
        let mut frames = vec![frame(ROOT, ROOT, false)];
        let mut children: IndexMap<(u32, u32, bool), u32> = IndexMap::default();
        let mut path: Vec<(usize, bool)> = Vec::with_capacity(128);
        let mut cut: Vec<(usize, bool)> = Vec::with_capacity(128);
        for (locations, v, is_base) in prep.stacks_with_base() {
            let (value, base) = if is_base { (0, -v) } else { (v, 0) };
            if value <= 0 && base <= 0 {
                continue;
            }
            path.clear();
            path.extend(prep.stacks.frames_root_first(locations));
            cut.clear();
            if !part(&path, &mut cut) {
                continue;
            }
            let mut at = 0u32;
            add(&mut frames[0], value, base);
            for &(node, inline) in &cut {
                let key = (at, node as u32, inline);
                let next = match children.get(&key) {
                    Some(&c) => c,
                    None => {
                        let c = frames.len() as u32;
                        frames.push(frame(node as u32, at, inline));
                        frames[at as usize].children.push(c);
                        children.insert(key, c);
                        c
                    }
                };
                add(&mut frames[next as usize], value, base);
                at = next;
            }
            let f = &mut frames[at as usize];
            f.self_value = f.self_value.saturating_add(value);
            f.self_base = f.self_base.saturating_add(base);
        }
        let mut tree = Tree { frames };
        tree.sort_children();
        tree
    }

    /// Children widest first (the "left heavy" layout), ties by node id
    /// so the layout is stable.
    fn sort_children(&mut self) {
        for i in 0..self.frames.len() {
            let mut kids = std::mem::take(&mut self.frames[i].children);
            kids.sort_by(|&a, &b| {
                let (fa, fb) = (&self.frames[a as usize], &self.frames[b as usize]);
                fb.width()
                    .cmp(&fa.width())
                    .then(fa.node.cmp(&fb.node))
                    .then(fa.inline.cmp(&fb.inline))
            });
            self.frames[i].children = kids;
        }
    }

    /// Follows `path` (frame names from the root, as [`Tree::label`] gives
    /// them) as far as it goes; returns the frames from the root to where
    /// it stopped.
    pub fn walk(&self, stacks: &Stacks, path: &[String]) -> Vec<u32> {
        let mut at = vec![0u32];
        for name in path {
            let here = self.frames[*at.last().unwrap_or(&0) as usize]
                .children
                .iter()
                .copied()
                .find(|&c| self.label(stacks, c) == *name);
            match here {
                Some(c) => at.push(c),
                None => break,
            }
        }
        at
    }

    /// A frame's printed name: the function, marked `(inline)` when it
    /// was inlined into its caller.
    pub fn label(&self, stacks: &Stacks, f: u32) -> String {
        let fr = &self.frames[f as usize];
        if fr.node == ROOT {
            return "root".to_string();
        }
        let name = &stacks.names[fr.node as usize];
        if fr.inline {
            format!("{name}{}", crate::report::collapsed::INLINE_SUFFIX)
        } else {
            name.clone()
        }
    }

    /// The value (new, base) of the samples through any frame whose
    /// function matches `re`, each sample counted once: the sum over the
    /// matching frames that have no matching ancestor.
    pub fn matched(&self, stacks: &Stacks, re: &Regex) -> (i64, i64) {
        let hits: Vec<bool> = stacks.names.iter().map(|n| re.is_match(n)).collect();
        let (mut v, mut b) = (0i64, 0i64);
        let mut todo = vec![0u32];
        while let Some(f) = todo.pop() {
            let fr = &self.frames[f as usize];
            if fr.node != ROOT && hits[fr.node as usize] {
                v = v.saturating_add(fr.value);
                b = b.saturating_add(fr.base);
                continue;
            }
            todo.extend(&fr.children);
        }
        (v, b)
    }

    /// The frames under `top` (inclusive) at least `min_width` wide, in
    /// preorder, each with its depth below `top`: what the page draws.
    /// Also stops at `max_frames`.
    pub fn visible(&self, top: u32, min_width: i64, max_frames: usize) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        let mut todo = vec![(top, 0usize)];
        while let Some((f, depth)) = todo.pop() {
            if out.len() >= max_frames {
                break;
            }
            out.push((f, depth));
            let kids = &self.frames[f as usize].children;
            // Reversed so that the widest child comes out first.
            for &c in kids.iter().rev() {
                if self.frames[c as usize].width() >= min_width {
                    todo.push((c, depth + 1));
                }
            }
        }
        out
    }
}

fn add(f: &mut Frame, value: i64, base: i64) {
    f.value = f.value.saturating_add(value);
    f.base = f.base.saturating_add(base);
}
