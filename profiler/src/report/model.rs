//! A checked, resolved view of a pprof [`Profile`]: strings looked up, ids
//! turned into indices, and every reference verified, so the reports below
//! never index out of bounds on a malformed file.
//!
//! The checks follow what `go tool pprof` rejects (string indices out of
//! range, unknown location or function ids, duplicate or zero ids, value
//! counts that disagree with `sample_type`), so a file we accept is one
//! pprof accepts too. Like pprof, an unknown mapping id is tolerated and
//! simply means "no mapping".
//!
//! The transformations pprof applies before building a report also live
//! here: `drop_frames`/`keep_frames` pruning and `--focus`/`--ignore`.

use std::collections::{BTreeMap, HashMap};

use regex::Regex;

use crate::pprof::Profile;

/// A sample type or period type, resolved to strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueKind {
    pub ty: String,
    pub unit: String,
}

/// A mapped file.
#[derive(Clone, Debug)]
pub struct MappingInfo {
    pub file: String,
    pub build_id: String,
}

/// A function.
#[derive(Clone, Debug)]
pub struct FunctionInfo {
    pub name: String,
    pub filename: String,
    pub start_line: i64,
}

/// One (possibly inlined) function at a location; `function` indexes
/// [`Model::functions`]. `line` is the source line (0 when unknown).
#[derive(Clone, Copy, Debug)]
pub struct LineInfo {
    pub function: usize,
    pub line: i64,
}

/// A location: `lines` lists the innermost inlined function first and the
/// physical function last, as in the profile.
#[derive(Clone, Debug)]
pub struct LocationInfo {
    pub mapping: Option<usize>,
    pub lines: Vec<LineInfo>,
}

/// The labels of a sample. Samples share them: a system-wide profile has
/// a million samples but only as many label sets as threads, so they are
/// stored once in [`Model::label_sets`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSet {
    /// String labels: key → values in file order.
    pub labels: BTreeMap<String, Vec<String>>,
    /// Numeric labels: key → (value, unit) in file order; the unit is ""
    /// when the file gives none.
    pub num_labels: BTreeMap<String, Vec<(i64, String)>>,
}

/// The label pprof puts on the samples of a diff base.
pub const BASE_LABEL: &str = "pprof::base";

/// A sample: `locations` index [`Model::locations`], leaf first.
#[derive(Clone, Debug)]
pub struct SampleInfo {
    pub locations: Vec<usize>,
    pub values: Vec<i64>,
    /// Index into [`Model::label_sets`].
    pub label_set: usize,
    /// The sample comes from a diff base (its values are negated).
    pub base: bool,
}

/// The resolved profile.
#[derive(Clone, Debug)]
pub struct Model {
    pub sample_types: Vec<ValueKind>,
    pub default_sample_type: String,
    pub mappings: Vec<MappingInfo>,
    pub functions: Vec<FunctionInfo>,
    pub locations: Vec<LocationInfo>,
    pub samples: Vec<SampleInfo>,
    pub label_sets: Vec<LabelSet>,
    pub comments: Vec<String>,
    pub drop_frames: String,
    pub keep_frames: String,
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub doc_url: String,
}

/// Looks up a string-table index, failing on out-of-range indices as pprof
/// does ("malformed profile format") instead of guessing.
fn string(p: &Profile, index: i64, what: &str) -> Result<String, String> {
    usize::try_from(index)
        .ok()
        .and_then(|i| p.string_table.get(i))
        .cloned()
        .ok_or_else(|| {
            format!(
                "{what} refers to string {index}, but the string table has {} entries",
                p.string_table.len()
            )
        })
}

/// Maps ids to dense indices, rejecting id 0 and duplicates.
fn index_ids(ids: impl Iterator<Item = u64>, what: &str) -> Result<HashMap<u64, usize>, String> {
    let mut map = HashMap::new();
    for (i, id) in ids.enumerate() {
        if id == 0 {
            return Err(format!("found {what} with reserved id 0"));
        }
        if map.insert(id, i).is_some() {
            return Err(format!("multiple {what}s with id {id}"));
        }
    }
    Ok(map)
}

/// Resolves the labels of one sample.
fn label_set(p: &Profile, raw: &[crate::pprof::Label]) -> Result<LabelSet, String> {
    let mut set = LabelSet::default();
    for l in raw {
        let key = string(p, l.key, "a label key")?;
        // Like pprof: a label with neither a string nor a number nor a
        // unit carries nothing and is dropped.
        if l.str != 0 {
            set.labels
                .entry(key)
                .or_default()
                .push(string(p, l.str, "a label value")?);
        } else if l.num != 0 || l.num_unit != 0 {
            let unit = string(p, l.num_unit, "a label unit")?;
            set.num_labels.entry(key).or_default().push((l.num, unit));
        }
    }
    Ok(set)
}

impl Model {
    /// Resolves and checks `p`. The error says what is wrong without the
    /// file name; callers add it.
    pub fn new(p: &Profile) -> Result<Model, String> {
        let sample_types = p
            .sample_type
            .iter()
            .map(|vt| {
                Ok(ValueKind {
                    ty: string(p, vt.r#type, "a sample type")?,
                    unit: string(p, vt.unit, "a sample unit")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if sample_types.is_empty() && !p.sample.is_empty() {
            return Err("missing sample type information".into());
        }

        let mapping_ids = index_ids(p.mapping.iter().map(|m| m.id), "mapping")?;
        let mappings = p
            .mapping
            .iter()
            .map(|m| {
                Ok(MappingInfo {
                    file: string(p, m.filename, "a mapping's file name")?,
                    build_id: string(p, m.build_id, "a mapping's build id")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        let function_ids = index_ids(p.function.iter().map(|f| f.id), "function")?;
        let functions = p
            .function
            .iter()
            .map(|f| {
                string(p, f.system_name, "a function's system name")?;
                Ok(FunctionInfo {
                    name: string(p, f.name, "a function name")?,
                    filename: string(p, f.filename, "a function's file name")?,
                    start_line: f.start_line,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        let location_ids = index_ids(p.location.iter().map(|l| l.id), "location")?;
        let locations = p
            .location
            .iter()
            .map(|l| {
                let lines = l
                    .line
                    .iter()
                    .map(|ln| {
                        function_ids
                            .get(&ln.function_id)
                            .map(|&function| LineInfo {
                                function,
                                line: ln.line,
                            })
                            .ok_or_else(|| {
                                format!(
                                    "location {} refers to function {}, which does not exist",
                                    l.id, ln.function_id
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(LocationInfo {
                    // pprof tolerates unknown mapping ids: no mapping.
                    mapping: mapping_ids.get(&l.mapping_id).copied(),
                    lines,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        let mut label_sets: Vec<LabelSet> = Vec::new();
        let mut label_set_ids: HashMap<Vec<(i64, i64, i64, i64)>, usize> = HashMap::new();
        let mut raw = Vec::new();
        let samples = p
            .sample
            .iter()
            .enumerate()
            .map(|(si, s)| {
                if s.value.len() != sample_types.len() {
                    return Err(format!(
                        "sample {si} has {} values but there are {} sample types",
                        s.value.len(),
                        sample_types.len()
                    ));
                }
                let locations = s
                    .location_id
                    .iter()
                    .map(|id| {
                        location_ids.get(id).copied().ok_or_else(|| {
                            format!("sample {si} refers to location {id}, which does not exist")
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                raw.clear();
                raw.extend(s.label.iter().map(|l| (l.key, l.str, l.num, l.num_unit)));
                let label_set = match label_set_ids.get(&raw) {
                    Some(&id) => id,
                    None => {
                        label_sets.push(label_set(p, &s.label)?);
                        label_set_ids.insert(raw.clone(), label_sets.len() - 1);
                        label_sets.len() - 1
                    }
                };
                Ok(SampleInfo {
                    locations,
                    values: s.value.clone(),
                    label_set,
                    base: false,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        if let Some(pt) = &p.period_type {
            string(p, pt.r#type, "the period type")?;
            string(p, pt.unit, "the period unit")?;
        }
        let comments = p
            .comment
            .iter()
            .map(|&c| string(p, c, "a comment"))
            .collect::<Result<Vec<_>, String>>()?;

        Ok(Model {
            sample_types,
            default_sample_type: string(p, p.default_sample_type, "the default sample type")?,
            mappings,
            functions,
            locations,
            samples,
            label_sets,
            comments,
            drop_frames: string(p, p.drop_frames, "drop_frames")?,
            keep_frames: string(p, p.keep_frames, "keep_frames")?,
            time_nanos: p.time_nanos,
            duration_nanos: p.duration_nanos,
            doc_url: string(p, p.doc_url, "the documentation URL")?,
        })
    }

    /// The file of a location's mapping, or "" when it has none.
    pub fn mapping_file(&self, loc: &LocationInfo) -> &str {
        loc.mapping
            .and_then(|m| self.mappings.get(m))
            .map_or("", |m| m.file.as_str())
    }

    /// Applies the profile's own `drop_frames`/`keep_frames` (Go heap
    /// profiles use them to hide the allocator's frames), as pprof does
    /// when it reads a file.
    pub fn remove_uninteresting(&mut self) -> Result<(), String> {
        if self.drop_frames.is_empty() {
            return Ok(());
        }
        let drop = Regex::new(&format!("^(?:{})$", self.drop_frames))
            .map_err(|e| format!("bad drop_frames regexp {}: {e}", self.drop_frames))?;
        let keep = if self.keep_frames.is_empty() {
            None
        } else {
            Some(
                Regex::new(&format!("^(?:{})$", self.keep_frames))
                    .map_err(|e| format!("bad keep_frames regexp {}: {e}", self.keep_frames))?,
            )
        };
        self.prune(&drop, keep.as_ref());
        Ok(())
    }

    /// Removes, from every sample, the frames from the root-most frame that
    /// matches `drop` (and not `keep`) down to the leaf, keeping at least
    /// the frames above the first non-matching one (pprof's `Prune`).
    fn prune(&mut self, drop: &Regex, keep: Option<&Regex>) {
        let mut cache: HashMap<usize, bool> = HashMap::new();
        let mut prune = vec![false; self.locations.len()];
        let mut prune_beneath = vec![false; self.locations.len()];
        for (li, loc) in self.locations.iter_mut().enumerate() {
            let mut found = None;
            for i in (0..loc.lines.len()).rev() {
                let f = &self.functions[loc.lines[i].function];
                if f.name.is_empty() {
                    continue;
                }
                let matched = *cache.entry(loc.lines[i].function).or_insert_with(|| {
                    let simple = simplify_func(&f.name);
                    drop.is_match(simple) && !keep.is_some_and(|k| k.is_match(simple))
                });
                if matched {
                    found = Some(i);
                    break;
                }
            }
            if let Some(i) = found {
                prune_beneath[li] = true;
                if i == loc.lines.len() - 1 {
                    prune[li] = true;
                } else {
                    loc.lines.drain(..=i);
                }
            }
        }
        for s in &mut self.samples {
            let mut found_user = false;
            for i in (0..s.locations.len()).rev() {
                let id = s.locations[i];
                if !prune[id] && !prune_beneath[id] {
                    found_user = true;
                    continue;
                }
                if !found_user {
                    continue;
                }
                if prune[id] {
                    s.locations.drain(..=i);
                } else {
                    s.locations.drain(..i);
                }
                break;
            }
        }
    }

    /// Whether any function name or source file at `loc`, or its mapping's
    /// file, matches `re` (pprof's `Location.matchesName`).
    fn location_matches(&self, loc: &LocationInfo, re: &Regex) -> bool {
        loc.lines
            .iter()
            .any(|ln| self.function_matches(ln.function, re))
            || self.mapping_matches(loc, re)
    }

    /// Whether function `f`'s name or source file matches `re`.
    pub fn function_matches(&self, f: usize, re: &Regex) -> bool {
        let f = &self.functions[f];
        re.is_match(&f.name) || re.is_match(&f.filename)
    }

    /// Whether the file of `loc`'s mapping matches `re`.
    pub fn mapping_matches(&self, loc: &LocationInfo, re: &Regex) -> bool {
        loc.mapping
            .and_then(|m| self.mappings.get(m))
            .is_some_and(|m| re.is_match(&m.file))
    }

    /// Marks the locations for `--focus`/`--ignore` (pprof's
    /// `FilterSamplesByName`): a sample is kept when at least one of its
    /// frames matches `focus` (any frame when there is no focus) and none
    /// matches `ignore`. The model itself is left alone, so one model
    /// serves many filtered views.
    pub fn focus_marks(&self, focus: Option<&Regex>, ignore: Option<&Regex>) -> FocusMarks {
        if focus.is_none() && ignore.is_none() {
            return FocusMarks {
                marks: None,
                focus_matched: true,
                ignore_matched: false,
            };
        }
        let (mut fm, mut im) = (false, false);
        let marks: Vec<Option<bool>> = self
            .locations
            .iter()
            .map(|loc| {
                if ignore.is_some_and(|re| self.location_matches(loc, re)) {
                    im = true;
                    Some(false)
                } else if focus.is_none_or(|re| self.location_matches(loc, re)) {
                    fm = true;
                    Some(true)
                } else {
                    None
                }
            })
            .collect();
        FocusMarks {
            marks: Some(marks),
            focus_matched: fm,
            ignore_matched: im,
        }
    }

    /// The labels of sample `s`.
    pub fn labels(&self, s: &SampleInfo) -> &LabelSet {
        &self.label_sets[s.label_set]
    }

    /// Subtracts `base` from this profile, as `go tool pprof -diff_base`
    /// does: the base's samples join this profile's with their values
    /// negated and the `pprof::base` label, so every aggregate becomes
    /// "new minus old", and reports take their total from the base. With
    /// `normalize`, this profile's values are first scaled so that each
    /// sample type sums to the base's (`-normalize`). Only the sample
    /// types both profiles have are kept, in this profile's order.
    pub fn subtract_base(mut self, mut base: Model, normalize: bool) -> Result<Model, String> {
        let common: Vec<ValueKind> = self
            .sample_types
            .iter()
            .filter(|t| base.sample_types.iter().any(|b| b.ty == t.ty))
            .cloned()
            .collect();
        if common.is_empty() {
            return Err("the profile and its base have no sample type in common".into());
        }
        for t in &common {
            let b = base.sample_types.iter().find(|b| b.ty == t.ty);
            if let Some(b) = b.filter(|b| b.unit != t.unit) {
                return Err(format!(
                    "sample type {} is in {} in the profile but in {} in the base",
                    t.ty, t.unit, b.unit
                ));
            }
        }
        self.keep_sample_types(&common);
        base.keep_sample_types(&common);

        if normalize {
            let sums = |m: &Model| {
                let mut v = vec![0i64; common.len()];
                for s in &m.samples {
                    for (a, x) in v.iter_mut().zip(&s.values) {
                        *a = a.wrapping_add(*x);
                    }
                }
                v
            };
            let (src, dst) = (sums(&self), sums(&base));
            let ratios: Vec<f64> = src
                .iter()
                .zip(&dst)
                .map(|(&s, &b)| if s == 0 { 0.0 } else { b as f64 / s as f64 })
                .collect();
            self.scale(&ratios);
        }
        base.scale(&vec![-1.0; common.len()]);

        // The base's tables go after ours, its indices shifted.
        let (nm, nf, nl, ns) = (
            self.mappings.len(),
            self.functions.len(),
            self.locations.len(),
            self.label_sets.len(),
        );
        self.mappings.append(&mut base.mappings);
        self.functions.append(&mut base.functions);
        for mut loc in base.locations {
            loc.mapping = loc.mapping.map(|m| m + nm);
            for ln in &mut loc.lines {
                ln.function += nf;
            }
            self.locations.push(loc);
        }
        for mut set in base.label_sets {
            set.labels
                .entry(BASE_LABEL.to_string())
                .or_default()
                .push("true".to_string());
            self.label_sets.push(set);
        }
        for mut s in base.samples {
            for l in &mut s.locations {
                *l += nl;
            }
            s.label_set += ns;
            s.base = true;
            self.samples.push(s);
        }
        // Headers as pprof's merge combines them.
        let mut time = 0;
        for t in [self.time_nanos, base.time_nanos] {
            if time == 0 || t < time {
                time = t;
            }
        }
        self.time_nanos = time;
        self.duration_nanos = self.duration_nanos.wrapping_add(base.duration_nanos);
        for c in base.comments {
            if !self.comments.contains(&c) {
                self.comments.push(c);
            }
        }
        if self.default_sample_type.is_empty() {
            self.default_sample_type = base.default_sample_type;
        }
        if self.doc_url.is_empty() {
            self.doc_url = base.doc_url;
        }
        Ok(self)
    }

    /// Keeps only the sample types in `types` (which this profile has), in
    /// that order; a default type that goes becomes the first kept one.
    fn keep_sample_types(&mut self, types: &[ValueKind]) {
        if self.sample_types.as_slice() == types {
            return;
        }
        let pick: Vec<usize> = types
            .iter()
            .filter_map(|t| self.sample_types.iter().position(|s| s.ty == t.ty))
            .collect();
        for s in &mut self.samples {
            s.values = pick.iter().map(|&i| s.values[i]).collect();
        }
        self.sample_types = types.to_vec();
        if !types.iter().any(|t| t.ty == self.default_sample_type) {
            self.default_sample_type = types[0].ty.clone();
        }
    }

    /// Multiplies each value by its type's ratio, rounding as pprof's
    /// `ScaleN` does, and drops samples left all zero.
    fn scale(&mut self, ratios: &[f64]) {
        if ratios.iter().all(|&r| r == 1.0) {
            return;
        }
        self.samples.retain_mut(|s| {
            let mut keep = false;
            for (v, &r) in s.values.iter_mut().zip(ratios) {
                if r != 1.0 {
                    *v = (*v as f64 * r).round() as i64;
                }
                keep |= *v != 0;
            }
            keep
        });
    }
}

/// Which locations `--focus` and `--ignore` matched.
pub struct FocusMarks {
    /// Per location: None neither, Some(true) focused, Some(false) ignored.
    /// None overall when there is neither expression.
    marks: Option<Vec<Option<bool>>>,
    pub focus_matched: bool,
    pub ignore_matched: bool,
}

impl FocusMarks {
    /// Whether a sample with these locations is kept.
    pub fn keeps(&self, locations: &[usize]) -> bool {
        let Some(marks) = &self.marks else {
            return true;
        };
        let mut focused = false;
        for &l in locations {
            match marks[l] {
                Some(false) => return false,
                Some(true) => focused = true,
                None => {}
            }
        }
        focused
    }
}

/// Strips an argument list from a function name before matching
/// `drop_frames`, leaving "(anonymous namespace)" and "operator()" alone
/// (pprof's `simplifyFunc`).
fn simplify_func(name: &str) -> &str {
    let name = name.strip_prefix('.').unwrap_or(name);
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &name[i..];
        if rest.starts_with("(anonymous namespace)") {
            i += "(anonymous namespace)".len();
        } else if rest.starts_with("operator()") {
            i += "operator()".len();
        } else if bytes[i] == b'(' {
            return &name[..i];
        } else {
            i += 1;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::{Function, Line, Location, Sample, ValueType};

    fn profile() -> Profile {
        let mut p = Profile {
            string_table: ["", "samples", "count", "main", "malloc", "runtime.x"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        };
        p.sample_type.push(ValueType { r#type: 1, unit: 2 });
        for (id, name) in [(1u64, 3i64), (2, 4), (3, 5)] {
            p.function.push(Function {
                id,
                name,
                ..Default::default()
            });
            p.location.push(Location {
                id,
                line: vec![Line {
                    function_id: id,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        p.sample.push(Sample {
            location_id: vec![3, 2, 1],
            value: vec![5],
            label: vec![],
        });
        p
    }

    #[test]
    fn resolves_a_valid_profile() {
        let m = Model::new(&profile()).unwrap();
        assert_eq!(m.samples[0].locations, vec![2, 1, 0]);
        assert_eq!(m.functions[m.locations[1].lines[0].function].name, "malloc");
    }

    #[test]
    fn rejects_bad_references() {
        let mut p = profile();
        p.sample[0].location_id.push(99);
        assert!(Model::new(&p).unwrap_err().contains("location 99"));

        let mut p = profile();
        p.location[0].line[0].function_id = 7;
        assert!(Model::new(&p).unwrap_err().contains("function 7"));

        let mut p = profile();
        p.function[0].name = 100;
        assert!(Model::new(&p).unwrap_err().contains("string 100"));

        let mut p = profile();
        p.sample[0].value.push(1);
        assert!(Model::new(&p).unwrap_err().contains("2 values"));

        let mut p = profile();
        p.location[1].id = 1;
        assert!(Model::new(&p).unwrap_err().contains("multiple locations"));

        let mut p = profile();
        p.function[1].id = 0;
        assert!(Model::new(&p).unwrap_err().contains("reserved id 0"));
    }

    #[test]
    fn unknown_mapping_is_no_mapping() {
        let mut p = profile();
        p.location[0].mapping_id = 42;
        let m = Model::new(&p).unwrap();
        assert!(m.locations[0].mapping.is_none());
    }

    #[test]
    fn drop_frames_prunes_below_the_match() {
        let mut p = profile();
        p.drop_frames = 4; // "malloc"
        let mut m = Model::new(&p).unwrap();
        m.remove_uninteresting().unwrap();
        // main → malloc → runtime.x: malloc and everything below it go.
        assert_eq!(m.samples[0].locations, vec![0]);
    }

    #[test]
    fn simplify_func_keeps_reserved_names() {
        assert_eq!(simplify_func("foo(int)"), "foo");
        assert_eq!(simplify_func(".foo"), "foo");
        assert_eq!(
            simplify_func("(anonymous namespace)::operator()(int)"),
            "(anonymous namespace)::operator()"
        );
    }

    #[test]
    fn focus_and_ignore() {
        let m = Model::new(&profile()).unwrap();
        let re = Regex::new("malloc").unwrap();
        let f = m.focus_marks(Some(&re), None);
        assert!(f.focus_matched && !f.ignore_matched);
        assert!(f.keeps(&m.samples[0].locations));
        let i = m.focus_marks(None, Some(&re));
        assert!(i.focus_matched && i.ignore_matched);
        assert!(!i.keeps(&m.samples[0].locations));
    }

    #[test]
    fn samples_share_label_sets() {
        let mut p = profile();
        p.string_table.push("thread".into());
        p.string_table.push("t1".into());
        let label = crate::pprof::Label {
            key: 6,
            str: 7,
            ..Default::default()
        };
        p.sample[0].label.push(label.clone());
        let mut twin = p.sample[0].clone();
        twin.location_id = vec![1];
        p.sample.push(twin);
        let m = Model::new(&p).unwrap();
        assert_eq!(m.label_sets.len(), 1);
        assert_eq!(m.samples[0].label_set, m.samples[1].label_set);
        assert_eq!(m.labels(&m.samples[1]).labels["thread"], ["t1"]);
    }

    #[test]
    fn subtracting_a_base_negates_and_labels_it() {
        let new = Model::new(&profile()).unwrap();
        let mut old = profile();
        old.sample[0].value = vec![2];
        let old = Model::new(&old).unwrap();
        let d = new.clone().subtract_base(old.clone(), false).unwrap();
        assert_eq!(d.samples.len(), 2);
        assert_eq!(d.samples[1].values, vec![-2]);
        assert!(d.samples[1].base && !d.samples[0].base);
        assert_eq!(d.labels(&d.samples[1]).labels[BASE_LABEL], ["true"]);
        // Indices of the base point into its own (appended) tables.
        assert_eq!(d.samples[1].locations, vec![5, 4, 3]);
        // Normalized: 5 scaled to the base's 2.
        let n = new.subtract_base(old, true).unwrap();
        assert_eq!(n.samples[0].values, vec![2]);
    }
}
