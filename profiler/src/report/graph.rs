//! Samples → per-function nodes with flat and cumulative values, the way
//! pprof's `internal/graph` computes them at its default "functions"
//! granularity.
//!
//! Every location expands to one node per (inlined) function, innermost
//! first. A node's identity is its function name; nameless frames are told
//! apart by binary (and start line), as pprof's `NodeInfo` does after
//! aggregation. Within one sample a node's cum is counted once however often
//! it recurses, flat goes to the leaf frame, and caller → callee edges
//! remember whether the call was inlined, which is where the `(inline)` and
//! `(partial-inline)` marks in the top table come from.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use regex::Regex;

use super::format::base_name;
use super::model::{LineInfo, Model};

/// A multiply-rotate hasher for node ids and pairs of them: the
/// standard SipHash costs more than the rest of the work on large
/// profiles, and these keys are our own indices, not a client's input.
#[derive(Default)]
pub struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        // hashbrown picks buckets from the low bits and tags from the high
        // ones; a multiply alone leaves the low bits weak (long probes), so
        // mix them (splitmix64's finalizer).
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
}

pub type IndexMap<K, V> = HashMap<K, V, BuildHasherDefault<IndexHasher>>;

pub type IndexSet<K> = HashSet<K, BuildHasherDefault<IndexHasher>>;

/// What identifies a node (pprof's `NodeInfo` with addresses, files and
/// lines aggregated away).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeKey {
    /// The function name; empty for unsymbolized frames.
    pub name: String,
    /// Only kept for nameless functions, as pprof does.
    pub start_line: i64,
    /// The mapping's file; only kept for nameless frames.
    pub objfile: String,
}

impl NodeKey {
    /// The name printed in reports: the function, else `[binary]`, else
    /// `<unknown>`.
    pub fn printable(&self) -> String {
        if !self.name.is_empty() {
            self.name.clone()
        } else if !self.objfile.is_empty() {
            format!("[{}]", base_name(&self.objfile))
        } else {
            "<unknown>".to_string()
        }
    }

    /// Go's `fmt.Sprint` of the `NodeInfo`, pprof's last-resort tie-break.
    fn go_sprint(&self) -> String {
        format!(
            "{{{}  0  {} 0 0 {}}}",
            self.name, self.start_line, self.objfile
        )
    }
}

/// The profile's stacks in node terms, ready to build graphs from.
pub struct Stacks {
    /// Node id → identity.
    pub keys: Vec<NodeKey>,
    /// Node id → printable name.
    pub names: Vec<String>,
    /// Location index → node ids, innermost inlined function first; empty
    /// for a location `--hide` removed.
    pub location_nodes: Vec<Vec<usize>>,
    /// `--hide` matched some location.
    pub hide_matched: bool,
}

impl Stacks {
    /// Expands every location of `model` into nodes. Functions matching
    /// `hide` (by name or source file) are left out, and so are locations
    /// whose mapping matches it (pprof's `-hide`). Then, with `noinlines`,
    /// only the physical (outermost) function of each location is kept.
    pub fn new(model: &Model, noinlines: bool, hide: Option<&Regex>) -> Stacks {
        let mut hide_matched = false;
        let mut ids: HashMap<NodeKey, usize> = HashMap::new();
        let mut keys = Vec::new();
        let mut intern = |key: NodeKey| -> usize {
            *ids.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            })
        };
        let location_nodes = model
            .locations
            .iter()
            .map(|loc| {
                let objfile = model.mapping_file(loc);
                let shown: Vec<LineInfo>;
                let mut lines = &loc.lines[..];
                if let Some(re) = hide {
                    if model.mapping_matches(loc, re) {
                        hide_matched = true;
                        return Vec::new();
                    }
                    if lines.iter().any(|l| model.function_matches(l.function, re)) {
                        hide_matched = true;
                        shown = lines
                            .iter()
                            .filter(|l| !model.function_matches(l.function, re))
                            .copied()
                            .collect();
                        if shown.is_empty() {
                            return Vec::new();
                        }
                        lines = &shown[..];
                    }
                }
                if noinlines && lines.len() > 1 {
                    lines = &lines[lines.len() - 1..];
                }
                if lines.is_empty() {
                    return vec![intern(NodeKey {
                        name: String::new(),
                        start_line: 0,
                        objfile: objfile.to_string(),
                    })];
                }
                lines
                    .iter()
                    .map(|ln| {
                        let f = &model.functions[ln.function];
                        intern(if f.name.is_empty() {
                            NodeKey {
                                name: String::new(),
                                start_line: f.start_line,
                                objfile: objfile.to_string(),
                            }
                        } else {
                            NodeKey {
                                name: f.name.clone(),
                                start_line: 0,
                                objfile: String::new(),
                            }
                        })
                    })
                    .collect()
            })
            .collect();
        let names = keys.iter().map(NodeKey::printable).collect();
        Stacks {
            keys,
            names,
            location_nodes,
            hide_matched,
        }
    }

    /// The frames of a sample from the root down: (node id, whether the
    /// frame was inlined into its caller).
    pub fn frames_root_first<'a>(
        &'a self,
        locations: &'a [usize],
    ) -> impl Iterator<Item = (usize, bool)> + 'a {
        locations.iter().rev().flat_map(move |&l| {
            let nodes = &self.location_nodes[l];
            nodes
                .iter()
                .enumerate()
                .rev()
                .map(move |(i, &n)| (n, i + 1 != nodes.len()))
        })
    }
}

/// An edge into a node.
#[derive(Clone, Copy, Debug)]
pub struct Edge {
    pub weight: i64,
    /// The edge skips nodes that were left out of the graph.
    pub residual: bool,
    /// Every call along this edge was inlined.
    pub inline: bool,
}

/// A node of the graph.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: usize,
    pub flat: i64,
    pub cum: i64,
    /// Incoming edges by source node id.
    pub in_edges: IndexMap<usize, Edge>,
}

/// The call graph (pprof's `graph.Graph`).
pub struct Graph {
    pub nodes: Vec<Node>,
}

impl Graph {
    /// Builds the graph of `samples` (location lists with the selected
    /// value), keeping only the nodes in `kept` when given: frames of other
    /// nodes are skipped and leave residual edges, and a sample whose leaf
    /// is skipped adds no flat value anywhere (exactly pprof's `newGraph`).
    pub fn new<'a>(
        stacks: &Stacks,
        samples: impl Iterator<Item = (&'a [usize], i64)>,
        kept: Option<&HashSet<usize>>,
    ) -> Graph {
        Graph::build(stacks, samples, kept, true)
    }

    /// [`Graph::new`] without edges: only flat and cum, for the cuts that
    /// need nothing else (edges cost a hash map update per frame).
    pub fn nodes_only<'a>(
        stacks: &Stacks,
        samples: impl Iterator<Item = (&'a [usize], i64)>,
    ) -> Graph {
        Graph::build(stacks, samples, None, false)
    }

    fn build<'a>(
        stacks: &Stacks,
        samples: impl Iterator<Item = (&'a [usize], i64)>,
        kept: Option<&HashSet<usize>>,
        edges: bool,
    ) -> Graph {
        let n = stacks.keys.len();
        let mut flat = vec![0i64; n];
        let mut cum = vec![0i64; n];
        let mut in_edges: Vec<IndexMap<usize, Edge>> = vec![IndexMap::default(); n];
        let mut seen_node = vec![usize::MAX; n];
        let mut seen_edge: IndexSet<(usize, usize)> = IndexSet::default();
        let skipped: Option<Vec<bool>> = kept.map(|k| (0..n).map(|i| !k.contains(&i)).collect());
        for (si, (locations, w)) in samples.enumerate() {
            if w == 0 {
                continue;
            }
            seen_edge.clear();
            let mut parent: Option<usize> = None;
            let mut residual = false;
            for (node, inline) in stacks.frames_root_first(locations) {
                if skipped.as_ref().is_some_and(|s| s[node]) {
                    residual = true;
                    continue;
                }
                if seen_node[node] != si {
                    seen_node[node] = si;
                    cum[node] = cum[node].wrapping_add(w);
                }
                if let (Some(p), true) = (parent, edges) {
                    if p != node && seen_edge.insert((p, node)) {
                        in_edges[node]
                            .entry(p)
                            .and_modify(|e| {
                                e.weight = e.weight.wrapping_add(w);
                                e.residual |= residual;
                                e.inline &= inline;
                            })
                            .or_insert(Edge {
                                weight: w,
                                residual,
                                inline,
                            });
                    }
                }
                parent = Some(node);
                residual = false;
            }
            if let (Some(p), false) = (parent, residual) {
                flat[p] = flat[p].wrapping_add(w);
            }
        }
        let nodes = in_edges
            .into_iter()
            .enumerate()
            .filter(|&(id, _)| flat[id] != 0 || cum[id] != 0)
            .map(|(id, in_edges)| Node {
                id,
                flat: flat[id],
                cum: cum[id],
                in_edges,
            })
            .collect();
        Graph { nodes }
    }

    /// The sum of the flat values (pprof's `Nodes.Sum`).
    pub fn flat_total(&self) -> i64 {
        self.nodes.iter().fold(0i64, |a, n| a.wrapping_add(n.flat))
    }

    /// Sorts by |flat| descending, then name, then |cum| descending (pprof's
    /// `FlatNameOrder`, the order of `-top`).
    pub fn sort_flat(&mut self, stacks: &Stacks) {
        self.nodes.sort_by(|l, r| {
            r.flat
                .wrapping_abs()
                .cmp(&l.flat.wrapping_abs())
                .then_with(|| stacks.names[l.id].cmp(&stacks.names[r.id]))
                .then_with(|| r.cum.wrapping_abs().cmp(&l.cum.wrapping_abs()))
                .then_with(|| {
                    if l.id == r.id {
                        Ordering::Equal
                    } else {
                        stacks.keys[l.id]
                            .go_sprint()
                            .cmp(&stacks.keys[r.id].go_sprint())
                    }
                })
        });
    }

    /// Drops edges lighter than `cutoff` (pprof's `TrimLowFrequencyEdges`).
    pub fn trim_low_frequency_edges(&mut self, cutoff: i64) {
        for n in &mut self.nodes {
            n.in_edges.retain(|_, e| e.weight.wrapping_abs() >= cutoff);
        }
    }

    /// The ids of the nodes, in the current order.
    pub fn node_ids(&self) -> HashSet<usize> {
        self.nodes.iter().map(|n| n.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::{Function, Line, Location, Profile, Sample, ValueType};

    /// Builds a profile from stacks of locations; each location is a list
    /// of function names, innermost first.
    fn profile(locs: &[&[&str]], samples: &[(&[u64], i64)]) -> Model {
        let mut p = Profile {
            string_table: vec!["".into(), "samples".into(), "count".into()],
            ..Default::default()
        };
        p.sample_type.push(ValueType { r#type: 1, unit: 2 });
        let mut fids: HashMap<String, u64> = HashMap::new();
        for (i, lines) in locs.iter().enumerate() {
            let mut loc = Location {
                id: i as u64 + 1,
                ..Default::default()
            };
            for name in lines.iter() {
                let next = fids.len() as u64 + 1;
                let fid = *fids.entry(name.to_string()).or_insert_with(|| {
                    p.string_table.push(name.to_string());
                    p.function.push(Function {
                        id: next,
                        name: p.string_table.len() as i64 - 1,
                        ..Default::default()
                    });
                    next
                });
                loc.line.push(Line {
                    function_id: fid,
                    ..Default::default()
                });
            }
            p.location.push(loc);
        }
        for (ids, v) in samples {
            p.sample.push(Sample {
                location_id: ids.to_vec(),
                value: vec![*v],
                label: vec![],
            });
        }
        Model::new(&p).unwrap()
    }

    fn graph(m: &Model, noinlines: bool) -> (Stacks, Graph) {
        let stacks = Stacks::new(m, noinlines, None);
        let mut g = Graph::new(
            &stacks,
            m.samples.iter().map(|s| (&s.locations[..], s.values[0])),
            None,
        );
        g.sort_flat(&stacks);
        (stacks, g)
    }

    fn row(s: &Stacks, g: &Graph, name: &str) -> (i64, i64) {
        let n = g
            .nodes
            .iter()
            .find(|n| s.names[n.id] == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        (n.flat, n.cum)
    }

    #[test]
    fn recursion_counts_cum_once_per_sample() {
        // main → f → f → f (leaf), twice; main → g once.
        let m = profile(
            &[&["main"], &["f"], &["g"]],
            &[(&[2, 2, 2, 1], 1), (&[2, 2, 2, 1], 1), (&[3, 1], 1)],
        );
        let (s, g) = graph(&m, false);
        assert_eq!(row(&s, &g, "f"), (2, 2));
        assert_eq!(row(&s, &g, "main"), (0, 3));
        assert_eq!(s.names[g.nodes[0].id], "f");
    }

    #[test]
    fn inline_frames_become_nodes_and_fold_with_noinlines() {
        // Location 2 is `mix` inlined into `spin`.
        let m = profile(&[&["main"], &["mix", "spin"]], &[(&[2, 1], 3)]);
        let (s, g) = graph(&m, false);
        assert_eq!(row(&s, &g, "mix"), (3, 3));
        assert_eq!(row(&s, &g, "spin"), (0, 3));
        let mix = g.nodes.iter().find(|n| s.names[n.id] == "mix").unwrap();
        assert!(mix.in_edges.values().all(|e| e.inline));

        let (s, g) = graph(&m, true);
        assert_eq!(row(&s, &g, "spin"), (3, 3));
        assert!(g.nodes.iter().all(|n| s.names[n.id] != "mix"));
    }

    #[test]
    fn unkept_leaf_gets_no_flat() {
        let m = profile(&[&["main"], &["leaf"]], &[(&[2, 1], 5)]);
        let s = Stacks::new(&m, false, None);
        let main_id = s.names.iter().position(|n| n == "main").unwrap();
        let kept: HashSet<usize> = [main_id].into_iter().collect();
        let g = Graph::new(
            &s,
            m.samples.iter().map(|x| (&x.locations[..], x.values[0])),
            Some(&kept),
        );
        assert_eq!(g.nodes.len(), 1);
        assert_eq!((g.nodes[0].flat, g.nodes[0].cum), (0, 5));
    }

    #[test]
    fn sort_ties_break_by_name_then_cum() {
        let m = profile(&[&["main"], &["b"], &["a"]], &[(&[2, 1], 1), (&[3, 1], 1)]);
        let (s, g) = graph(&m, false);
        let order: Vec<&str> = g.nodes.iter().map(|n| s.names[n.id].as_str()).collect();
        assert_eq!(order, ["a", "b", "main"]);
    }
}
