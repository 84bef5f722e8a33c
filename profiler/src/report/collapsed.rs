//! Brendan Gregg's folded ("collapsed") stack format: one line per distinct
//! stack, frames root first joined by `;`, a space, and the summed value.
//! It is what flame graph tools (inferno, FlameGraph, speedscope) read, and
//! the input of our own SVG.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;

use super::prepare::Prepared;

/// Marks an inlined frame in flame graphs.
pub const INLINE_SUFFIX: &str = " (inline)";

/// A frame name safe for the folded format, where `;` separates frames and
/// a line ends the stack. (Rust names such as `<[u8; 8]>::fmt` contain `;`.)
fn sanitize(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ",").replace(['\n', '\r'], " ").into()
    } else {
        name.into()
    }
}

/// The distinct stacks of the prepared profile with their summed values,
/// sorted by stack. Samples with no frames or a value of zero or less are
/// left out: the format cannot express them. With `mark_inline`, frames
/// that were inlined into their caller carry [`INLINE_SUFFIX`].
pub fn folded(prep: &Prepared, mark_inline: bool) -> Vec<(String, i64)> {
    let mut stacks: BTreeMap<String, i64> = BTreeMap::new();
    let mut line = String::new();
    for (locations, value) in prep.samples() {
        if value <= 0 {
            continue;
        }
        line.clear();
        for (node, inline) in prep.stacks.frames_root_first(locations) {
            if !line.is_empty() {
                line.push(';');
            }
            line.push_str(&sanitize(&prep.stacks.names[node]));
            if mark_inline && inline {
                line.push_str(INLINE_SUFFIX);
            }
        }
        if line.is_empty() {
            continue;
        }
        let v = stacks.entry(line.clone()).or_insert(0);
        *v = v.saturating_add(value);
    }
    stacks.into_iter().collect()
}

/// Writes the folded stacks, one per line.
pub fn write(prep: &Prepared, out: &mut dyn Write) -> Result<()> {
    for (stack, value) in folded(prep, false) {
        writeln!(out, "{stack} {value}")?;
    }
    Ok(())
}
