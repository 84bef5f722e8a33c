//! What the API answers: the query a page sends, the view it selects (a
//! filtered, aggregated profile, cached per snapshot), and the JSON of
//! each panel. Numbers come from the same code as `report --top`, so the
//! page's top table is the terminal's, cell for cell.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Value};

use super::source::Snapshot;
use super::tree::{Tree, ROOT};
use crate::report::format::percentage;
use crate::report::model::BASE_LABEL;
use crate::report::prepare::Prepared;
use crate::report::top::{self, Row};
use crate::report::Options;

/// Widest canvas we lay out for, and the narrowest frame sent (in px).
const MAX_WIDTH: u32 = 16384;
const MIN_FRAME_PX: f64 = 0.5;
/// Most frames sent for one flame graph, whatever the width.
const MAX_FRAMES: usize = 40_000;
/// Most values listed per label key in the tag filter menu.
const MAX_LABEL_VALUES: usize = 200;
/// Most source lines shown for one function, and the largest file read.
const MAX_SOURCE_LINES: usize = 3000;
const MAX_SOURCE_BYTES: u64 = 8 << 20;

/// The page's query: which view, and what to draw of it.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub view: ViewParams,
    /// The snapshot the page is looking at (from `/api/meta`).
    pub snap: Option<u64>,
    /// Flame graph zoom: frame names from the root.
    pub zoom: Vec<String>,
    /// Flame graph search.
    pub search: Option<Regex>,
    /// Function of the source and callers/callees panels.
    pub function: Option<String>,
    /// Width of the flame graph in px.
    pub width: u32,
    /// Top table by cum instead of flat.
    pub sort_cum: bool,
}

/// What selects a view: the options of `report` (all rows of the top
/// table), and for a diff whether it is normalized.
#[derive(Clone, Debug, Default)]
pub struct ViewParams {
    pub opts: Options,
    pub normalized: bool,
}

impl ViewParams {
    /// The cache key of the view.
    pub fn key(&self) -> String {
        format!("{self:?}")
    }
}

fn flag(k: &str, v: &str) -> Result<bool, String> {
    match v {
        "" | "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        _ => Err(format!("{k}={v:?}: expected 0 or 1")),
    }
}

/// Parses the query string pairs. Parameters the UI does not know are
/// the source's (the agent's `pid`, `seconds`) and are left alone.
/// Errors are the text of a 400 answer.
pub fn parse_query(pairs: &[(String, String)]) -> Result<Query, String> {
    let mut q = Query {
        width: 1200,
        view: ViewParams {
            opts: Options {
                nodecount: 0,
                ..Options::default()
            },
            normalized: false,
        },
        ..Query::default()
    };
    let text = |v: &str| Some(v.to_string()).filter(|v| !v.is_empty());
    for (k, v) in pairs {
        match k.as_str() {
            "si" => q.view.opts.sample_index = text(v),
            "focus" => q.view.opts.focus = text(v),
            "ignore" => q.view.opts.ignore = text(v),
            "hide" => q.view.opts.hide = text(v),
            "tf" => q.view.opts.tagfocus = text(v),
            "ti" => q.view.opts.tagignore = text(v),
            "noinlines" => q.view.opts.noinlines = flag(k, v)?,
            "norm" => q.view.normalized = flag(k, v)?,
            "snap" => {
                q.snap = Some(
                    v.parse()
                        .map_err(|_| format!("snap={v:?}: not a snapshot id"))?,
                )
            }
            "z" => q.zoom.push(v.clone()),
            "search" if !v.is_empty() => {
                q.search = Some(
                    Regex::new(v)
                        .map_err(|e| format!("search={v:?}: bad regular expression: {e}"))?,
                )
            }
            "fn" => q.function = text(v),
            "w" => {
                q.width = v
                    .parse()
                    .ok()
                    .filter(|w| (1..=MAX_WIDTH).contains(w))
                    .ok_or_else(|| format!("w={v:?}: expected a width from 1 to {MAX_WIDTH}"))?
            }
            "sort" => {
                q.sort_cum = match v.as_str() {
                    "" | "flat" => false,
                    "cum" => true,
                    _ => return Err(format!("sort={v:?}: expected flat or cum")),
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// A filtered, aggregated profile: the prepared samples and the top table
/// (which also fixes the unit values are printed in); the call tree is
/// built when a flame graph is first asked for.
pub struct View {
    pub prep: Prepared,
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    tree: OnceLock<Tree>,
}

impl View {
    /// Computes the view `params` selects on `snap`. Errors (a bad regex,
    /// an unknown sample type) are the text of a 400 answer.
    pub fn new(snap: &Snapshot, params: &ViewParams) -> Result<View, String> {
        let model = snap.model(params.normalized)?;
        let mut prep = Prepared::from_model(model, &params.opts).map_err(|e| format!("{e:#}"))?;
        let (header, rows) = top::items(&mut prep, 0);
        Ok(View {
            prep,
            header,
            rows,
            tree: OnceLock::new(),
        })
    }

    pub fn tree(&self) -> &Tree {
        self.tree.get_or_init(|| Tree::new(&self.prep))
    }

    /// The node id of the function named `name`, if the view has it.
    fn function(&self, name: &str) -> Option<usize> {
        self.prep.stacks.names.iter().position(|n| n == name)
    }
}

/// `/api/meta`: what the page needs to build its controls.
pub fn meta(snap: &Snapshot, id: u64) -> Value {
    let m = &snap.model;
    let default = crate::report::prepare::sample_index(m, None).unwrap_or(0);
    let types: Vec<Value> = m
        .sample_types
        .iter()
        .map(|t| json!({"type": t.ty, "unit": t.unit}))
        .collect();
    // Label keys and their values, heaviest (most samples) first.
    let mut weights: BTreeMap<&str, HashMap<String, u64>> = BTreeMap::new();
    let mut per_set = vec![0u64; m.label_sets.len()];
    for s in &m.samples {
        per_set[s.label_set] += 1;
    }
    for (set, n) in m.label_sets.iter().zip(per_set) {
        for (k, vals) in &set.labels {
            if k == BASE_LABEL {
                continue;
            }
            for v in vals {
                *weights.entry(k).or_default().entry(v.clone()).or_default() += n;
            }
        }
        for (k, vals) in &set.num_labels {
            for (v, _) in vals {
                *weights
                    .entry(k)
                    .or_default()
                    .entry(v.to_string())
                    .or_default() += n;
            }
        }
    }
    let labels: serde_json::Map<String, Value> = weights
        .into_iter()
        .map(|(k, vals)| {
            let numeric = m.label_sets.iter().any(|s| s.num_labels.contains_key(k));
            let mut vals: Vec<(String, u64)> = vals.into_iter().collect();
            vals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let count = vals.len();
            vals.truncate(MAX_LABEL_VALUES);
            let list: Vec<&str> = vals.iter().map(|v| v.0.as_str()).collect();
            (
                k.to_string(),
                json!({"values": list, "count": count, "numeric": numeric}),
            )
        })
        .collect();
    json!({
        "snap": id.to_string(),
        "title": snap.title,
        "diff": snap.diff,
        "sample_types": types,
        "default_type": m.sample_types.get(default).map(|t| t.ty.as_str()).unwrap_or(""),
        "labels": labels,
        "samples": m.samples.len(),
    })
}

/// `/api/top`: the top table, every row past pprof's 0.5% cut.
pub fn top_table(view: &View, sort_cum: bool) -> Value {
    let prep = &view.prep;
    let mut rows = view.rows.clone();
    if sort_cum {
        top::sort_cum(&mut rows);
    }
    let cells = top::cells(prep, &rows);
    let list: Vec<Value> = rows
        .iter()
        .zip(cells)
        .map(|(r, [flat, flat_pct, sum_pct, cum, cum_pct])| {
            json!({
                "name": r.name,
                "inline": r.inline,
                "flat": flat,
                "flat_pct": flat_pct.trim(),
                "sum_pct": sum_pct.trim(),
                "cum": cum,
                "cum_pct": cum_pct.trim(),
            })
        })
        .collect();
    json!({
        "header": view.header,
        "warnings": prep.warnings,
        "sort": if sort_cum { "cum" } else { "flat" },
        "rows": list,
    })
}

/// The frames of `tree` under `top` that are wide enough for `width` px,
/// with the path above `top` drawn full width: `[name, depth, value, base,
/// self, self_base, inline, matched]` each, names in a table.
fn frames_json(
    view: &View,
    tree: &Tree,
    path: &[u32],
    width: u32,
    search: Option<&Regex>,
) -> Value {
    let stacks = &view.prep.stacks;
    let top = *path.last().unwrap_or(&0);
    let min = ((tree.frames[top as usize].width() as f64) * MIN_FRAME_PX / f64::from(width))
        .ceil()
        .max(1.0) as i64;
    let mut names: Vec<String> = Vec::new();
    let mut name_ids: HashMap<String, usize> = HashMap::new();
    let hits: Option<Vec<bool>> =
        search.map(|re| stacks.names.iter().map(|n| re.is_match(n)).collect());
    let mut out = Vec::new();
    let above = path.len() - 1;
    let ancestors = path[..above].iter().enumerate().map(|(d, &f)| (f, d));
    let below = tree
        .visible(top, min, MAX_FRAMES)
        .into_iter()
        .map(|(f, d)| (f, d + above));
    for (f, depth) in ancestors.chain(below) {
        let fr = &tree.frames[f as usize];
        let label = tree.label(stacks, f);
        let next = names.len();
        let id = *name_ids.entry(label.clone()).or_insert_with(|| {
            names.push(label);
            next
        });
        let matched = fr.node != ROOT && hits.as_ref().is_some_and(|h| h[fr.node as usize]);
        out.push(json!([
            id,
            depth,
            fr.value,
            fr.base,
            fr.self_value,
            fr.self_base,
            u8::from(fr.inline),
            u8::from(matched)
        ]));
    }
    json!({"names": names, "frames": out, "zoom": above})
}

/// Values as the top table prints them, for the page's labels.
fn printed(view: &View, v: i64) -> String {
    view.prep.format_value(v)
}

/// `/api/flame`: the flame graph, zoomed to `q.zoom`, with the search's
/// matches marked and summed.
pub fn flame(view: &View, q: &Query) -> Value {
    let tree = view.tree();
    let prep = &view.prep;
    let path = tree.walk(&prep.stacks, &q.zoom);
    let mut out = frames_json(view, tree, &path, q.width, q.search.as_ref());
    let found: Vec<String> = path[1..]
        .iter()
        .map(|&f| tree.label(&prep.stacks, f))
        .collect();
    let root = &tree.frames[0];
    out["path"] = json!(found);
    out["total"] = json!(prep.total);
    out["total_text"] = json!(printed(view, prep.total));
    out["unit"] = json!(prep.sample_unit);
    out["type"] = json!(prep.sample_type);
    out["shown"] = json!(root.value);
    out["shown_base"] = json!(root.base);
    if let Some(re) = &q.search {
        let (v, b) = tree.matched(&prep.stacks, re);
        let delta = v.saturating_sub(b);
        out["matched"] = json!({
            "value": v,
            "base": b,
            "text": printed(view, if b != 0 { delta } else { v }),
            "pct": percentage(if b != 0 { delta } else { v }, prep.total).trim(),
        });
    }
    out
}

/// `/api/peek`: who calls a function and what it calls (a sandwich), as
/// two flame graphs rooted at it, and the direct callers and callees.
pub fn peek(view: &View, q: &Query) -> Result<Value, (u16, String)> {
    let name = q
        .function
        .as_deref()
        .ok_or((400, "fn: which function? (fn=NAME)".to_string()))?;
    let f = view
        .function(name)
        .ok_or_else(|| (404, format!("no function {name:?} in this view")))?;
    let prep = &view.prep;
    let callers = Tree::callers(prep, f);
    let callees = Tree::callees(prep, f);
    // The function is the root's only child in both trees.
    let direct = |t: &Tree| -> Vec<Value> {
        let Some(&at) = t.frames[0].children.first() else {
            return Vec::new();
        };
        t.frames[at as usize]
            .children
            .iter()
            .map(|&c| {
                let fr = &t.frames[c as usize];
                let v = fr.value.saturating_sub(fr.base);
                json!({
                    "name": t.label(&prep.stacks, c),
                    "value": printed(view, v),
                    "pct": percentage(v, prep.total).trim(),
                })
            })
            .collect()
    };
    let root = |t: &Tree| t.frames[0].children.first().map_or(0, |&c| c);
    Ok(json!({
        "function": name,
        "callers": frames_json(view, &callers, &[0, root(&callers)], q.width, None),
        "callees": frames_json(view, &callees, &[0, root(&callees)], q.width, None),
        "direct_callers": direct(&callers),
        "direct_callees": direct(&callees),
        "total": prep.total,
        "unit": prep.sample_unit,
    }))
}

/// Per-line values of one function (pprof's `list`): cum once per sample
/// and line, flat on the sample's innermost line.
fn line_values(prep: &Prepared, name: &str) -> BTreeMap<(String, i64), (i64, i64)> {
    let model = &prep.model;
    let wanted: Vec<bool> = model.functions.iter().map(|f| f.name == name).collect();
    let mut out: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    let mut seen: Vec<(usize, i64)> = Vec::new();
    for s in prep.kept_samples() {
        let v = s.values[prep.index];
        seen.clear();
        for (li, &l) in s.locations.iter().enumerate() {
            for (j, ln) in model.locations[l].lines.iter().enumerate() {
                if !wanted[ln.function] {
                    continue;
                }
                let key = (ln.function, ln.line);
                let e = out
                    .entry((model.functions[ln.function].filename.clone(), ln.line))
                    .or_default();
                if li == 0 && j == 0 {
                    e.0 = e.0.wrapping_add(v);
                }
                if !seen.contains(&key) {
                    seen.push(key);
                    e.1 = e.1.wrapping_add(v);
                }
            }
        }
    }
    out
}

/// Reads a source file if it is here and not too large.
fn read_source(path: &str) -> Result<Vec<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if meta.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "{path}: larger than {} MiB",
            MAX_SOURCE_BYTES >> 20
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .map(str::to_string)
        .collect())
}

/// `/api/source`: a function's source with per-line flat and cum, where
/// the source file is readable on this machine.
pub fn source(view: &View, q: &Query) -> Result<Value, (u16, String)> {
    let name = q
        .function
        .as_deref()
        .ok_or((400, "fn: which function? (fn=NAME)".to_string()))?;
    let prep = &view.prep;
    let values = line_values(prep, name);
    if values.is_empty() {
        return Err((404, format!("no samples in function {name:?} in this view")));
    }
    let start_line = prep
        .model
        .functions
        .iter()
        .find(|f| f.name == name)
        .map_or(0, |f| f.start_line);
    let mut by_file: BTreeMap<&str, Vec<(i64, i64, i64)>> = BTreeMap::new();
    for ((file, line), (flat, cum)) in &values {
        by_file.entry(file).or_default().push((*line, *flat, *cum));
    }
    let (mut total_flat, mut total_cum) = (0i64, 0i64);
    let files: Vec<Value> = by_file
        .into_iter()
        .map(|(file, lines)| {
            let first = lines
                .iter()
                .map(|l| l.0)
                .filter(|&l| l > 0)
                .min()
                .unwrap_or(1);
            let last = lines.iter().map(|l| l.0).max().unwrap_or(1);
            let from = if start_line > 0 && start_line <= first {
                start_line
            } else {
                first
            };
            let from = (from - 2).max(1);
            let to = (last + 2).min(from + MAX_SOURCE_LINES as i64);
            let text = read_source(file);
            let at: HashMap<i64, (i64, i64)> = lines.iter().map(|&(l, f, c)| (l, (f, c))).collect();
            for &(_, f, c) in &lines {
                total_flat = total_flat.wrapping_add(f);
                total_cum = total_cum.max(c);
            }
            let rows: Vec<Value> = (from..=to)
                .map(|n| {
                    let (f, c) = at.get(&n).copied().unwrap_or_default();
                    let src = text
                        .as_ref()
                        .ok()
                        .and_then(|t| t.get((n - 1) as usize))
                        .cloned();
                    json!({
                        "n": n,
                        "flat": if f != 0 { printed(view, f) } else { String::new() },
                        "cum": if c != 0 { printed(view, c) } else { String::new() },
                        "text": src,
                    })
                })
                .collect();
            json!({
                "file": file,
                "error": text.err(),
                "lines": rows,
            })
        })
        .collect();
    Ok(json!({
        "function": name,
        "flat": printed(view, total_flat),
        "files": files,
    }))
}
