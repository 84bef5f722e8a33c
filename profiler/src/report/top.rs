//! The `-top` table: pprof's text report, reproduced number for number.
//!
//! pprof builds the full graph, drops nodes whose cum is below
//! `nodefraction` (0.5%) of the total and rebuilds the graph without them,
//! sorts by flat, keeps the first `nodecount` nodes (rebuilding again), and
//! drops edges below `edgefraction` (0.1%). The rebuilds matter: a sample
//! whose leaf was dropped adds no flat value to anyone, and the inline marks
//! depend on which callers survived. Then it chooses the output unit from
//! the smallest value shown.

use std::fmt::Write as _;

use super::format::{percentage, scale};
use super::graph::Graph;
use super::prepare::Prepared;

/// pprof's default `nodefraction`.
const NODE_FRACTION: f64 = 0.005;
/// pprof's default `edgefraction`.
const EDGE_FRACTION: f64 = 0.001;

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    /// "", "(inline)" or "(partial-inline)".
    pub inline: &'static str,
    pub flat: i64,
    pub cum: i64,
}

/// The trimmed, sorted graph of a report and what was left out.
struct Trimmed {
    graph: Graph,
    /// Nodes after the nodefraction cut, before nodecount.
    orig_count: usize,
    dropped_nodes: usize,
}

/// pprof's `newTrimmedGraph` for a non-visual, flat-sorted report.
fn trimmed_graph(prep: &Prepared, nodecount: usize) -> Trimmed {
    let stacks = &prep.stacks;
    // The cut needs only cum values; the graph is built again with edges.
    let mut g = Graph::nodes_only(stacks, prep.samples());
    let total = g.flat_total();
    let node_cutoff = ((total as f64 * NODE_FRACTION) as i64).wrapping_abs();
    let edge_cutoff = ((total as f64 * EDGE_FRACTION) as i64).wrapping_abs();

    let mut dropped_nodes = 0;
    let mut kept = None;
    if node_cutoff > 0 {
        let cut: std::collections::HashSet<usize> = g
            .nodes
            .iter()
            .filter(|n| n.cum.wrapping_abs() >= node_cutoff)
            .map(|n| n.id)
            .collect();
        if cut.len() != g.nodes.len() {
            dropped_nodes = g.nodes.len() - cut.len();
            kept = Some(cut);
        }
    }
    g = Graph::new(stacks, prep.samples(), kept.as_ref());
    let orig_count = g.nodes.len();

    g.sort_flat(stacks);
    if nodecount > 0 && nodecount < g.nodes.len() {
        g.nodes.truncate(nodecount);
        let kept = g.node_ids();
        g = Graph::new(stacks, prep.samples(), Some(&kept));
        g.sort_flat(stacks);
    }
    g.trim_low_frequency_edges(edge_cutoff);
    Trimmed {
        graph: g,
        orig_count,
        dropped_nodes,
    }
}

/// pprof's `selectOutputUnit`: with "minimum", the unit that prints the
/// smallest shown value best, moved up a unit when that would still leave
/// it at 0.01 or more and the total needs a bigger unit.
fn select_output_unit(prep: &mut Prepared, g: &Graph) {
    if prep.output_unit != "minimum" || g.nodes.is_empty() {
        return;
    }
    let mut min_value: i64 = 0;
    for n in &g.nodes {
        let mut v = n.flat.wrapping_abs();
        if v == 0 {
            v = n.cum.wrapping_abs();
        }
        if v > 0 && (min_value == 0 || v < min_value) {
            min_value = v;
        }
    }
    let max_value = prep.total;
    if min_value == 0 {
        min_value = max_value;
    }
    let (_, min_unit) = scale(min_value, &prep.sample_unit, "minimum");
    let (_, max_unit) = scale(max_value, &prep.sample_unit, "minimum");
    let mut unit = min_unit.clone();
    if min_unit != max_unit && min_value.wrapping_mul(100) < max_value {
        unit = scale(min_value.wrapping_mul(100), &prep.sample_unit, "minimum").1;
    }
    prep.output_unit = if unit.is_empty() {
        prep.sample_unit.clone()
    } else {
        unit
    };
}

/// The header lines and rows of the top table (pprof's `TextItems`). This
/// fixes the output unit of `prep`.
pub fn items(prep: &mut Prepared, nodecount: usize) -> (Vec<String>, Vec<Row>) {
    let t = trimmed_graph(prep, nodecount);
    select_output_unit(prep, &t.graph);

    let shown: i64 = t.graph.flat_total();
    let mut labels = prep.profile_labels();
    if !prep.active_filters.is_empty() {
        labels.push("Active filters:".to_string());
        for f in &prep.active_filters {
            // pprof cuts at 80 bytes; we stop at the char boundary below.
            let f = if f.len() > 80 {
                let mut cut = 80;
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{}…", &f[..cut])
            } else {
                f.clone()
            };
            labels.push(format!("   {f}"));
        }
    }
    labels.push(format!(
        "Showing nodes accounting for {}, {} of {} total",
        prep.format_value(shown),
        percentage(shown, prep.total).trim(),
        prep.format_value(prep.total)
    ));
    if prep.total != 0 {
        if t.dropped_nodes > 0 {
            let cutoff = ((prep.total as f64 * NODE_FRACTION) as i64).wrapping_abs();
            labels.push(format!(
                "Dropped {} node{} (cum <= {})",
                t.dropped_nodes,
                if t.dropped_nodes > 1 { "s" } else { "" },
                prep.format_value(cutoff)
            ));
        }
        let count = t.graph.nodes.len();
        if count > 0 && count < t.orig_count {
            labels.push(format!("Showing top {count} nodes out of {}", t.orig_count));
        }
    }

    let rows = t
        .graph
        .nodes
        .iter()
        .map(|n| {
            let inline = n.in_edges.values().any(|e| e.inline);
            let noinline = n.in_edges.values().any(|e| !e.inline);
            Row {
                name: prep.stacks.names[n.id].clone(),
                inline: match (inline, noinline) {
                    (true, true) => "(partial-inline)",
                    (true, false) => "(inline)",
                    _ => "",
                },
                flat: n.flat,
                cum: n.cum,
            }
        })
        .collect();
    (labels, rows)
}

/// The printed cells of a row: flat, flat%, sum%, cum, cum%.
pub type Cells = [String; 5];

/// Formats rows as pprof prints them, `sum%` running over the rows in
/// their order.
pub fn cells(prep: &Prepared, rows: &[Row]) -> Vec<Cells> {
    let mut sum = 0i64;
    rows.iter()
        .map(|r| {
            sum = sum.wrapping_add(r.flat);
            [
                prep.format_value(r.flat),
                percentage(r.flat, prep.total),
                percentage(sum, prep.total),
                prep.format_value(r.cum),
                percentage(r.cum, prep.total),
            ]
        })
        .collect()
}

/// Sorts rows by |cum| descending, then name, then |flat| descending
/// (pprof's `CumNameOrder`, the order of `-top -cum`).
pub fn sort_cum(rows: &mut [Row]) {
    rows.sort_by(|l, r| {
        r.cum
            .wrapping_abs()
            .cmp(&l.cum.wrapping_abs())
            .then_with(|| l.name.cmp(&r.name))
            .then_with(|| r.flat.wrapping_abs().cmp(&l.flat.wrapping_abs()))
    });
}

/// The complete top table, as `go tool pprof -top` prints it.
pub fn render(prep: &mut Prepared, nodecount: usize) -> String {
    let (labels, rows) = items(prep, nodecount);
    let mut out = String::new();
    for l in &labels {
        out.push_str(l);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{:>10} {:>5}% {:>5}% {:>10} {:>5}%",
        "flat", "flat", "sum", "cum", "cum"
    );
    for (r, [flat, flat_pct, sum_pct, cum, cum_pct]) in rows.iter().zip(cells(prep, &rows)) {
        let inline = if r.inline.is_empty() {
            String::new()
        } else {
            format!(" {}", r.inline)
        };
        let _ = writeln!(
            out,
            "{flat:>10} {flat_pct} {sum_pct} {cum:>10} {cum_pct}  {}{inline}",
            r.name
        );
    }
    out
}
