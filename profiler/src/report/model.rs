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
/// [`Model::functions`].
#[derive(Clone, Copy, Debug)]
pub struct LineInfo {
    pub function: usize,
}

/// A location: `lines` lists the innermost inlined function first and the
/// physical function last, as in the profile.
#[derive(Clone, Debug)]
pub struct LocationInfo {
    pub mapping: Option<usize>,
    pub lines: Vec<LineInfo>,
}

/// A sample: `locations` index [`Model::locations`], leaf first.
#[derive(Clone, Debug)]
pub struct SampleInfo {
    pub locations: Vec<usize>,
    pub values: Vec<i64>,
    /// String labels: key → values in file order.
    pub labels: BTreeMap<String, Vec<String>>,
    /// Numeric labels: key → (value, unit) in file order; the unit is ""
    /// when the file gives none.
    pub num_labels: BTreeMap<String, Vec<(i64, String)>>,
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
                            .map(|&function| LineInfo { function })
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
                let mut labels: BTreeMap<String, Vec<String>> = BTreeMap::new();
                let mut num_labels: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
                for l in &s.label {
                    let key = string(p, l.key, "a label key")?;
                    // Like pprof: a label with neither a string nor a number
                    // nor a unit carries nothing and is dropped.
                    if l.str != 0 {
                        labels
                            .entry(key)
                            .or_default()
                            .push(string(p, l.str, "a label value")?);
                    } else if l.num != 0 || l.num_unit != 0 {
                        let unit = string(p, l.num_unit, "a label unit")?;
                        num_labels.entry(key).or_default().push((l.num, unit));
                    }
                }
                Ok(SampleInfo {
                    locations,
                    values: s.value.clone(),
                    labels,
                    num_labels,
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
        loc.lines.iter().any(|ln| {
            let f = &self.functions[ln.function];
            re.is_match(&f.name) || re.is_match(&f.filename)
        }) || loc
            .mapping
            .and_then(|m| self.mappings.get(m))
            .is_some_and(|m| re.is_match(&m.file))
    }

    /// Keeps the samples with at least one frame matching `focus` (any frame
    /// when there is no focus) and none matching `ignore`. Returns whether
    /// each expression matched any location, for pprof's warnings.
    pub fn filter(&mut self, focus: Option<&Regex>, ignore: Option<&Regex>) -> (bool, bool) {
        if focus.is_none() && ignore.is_none() {
            return (true, false);
        }
        let (mut fm, mut im) = (false, false);
        // None: neither; Some(true): focused; Some(false): ignored.
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
        self.samples.retain(|s| {
            let mut focused = false;
            for &l in &s.locations {
                match marks[l] {
                    Some(false) => return false,
                    Some(true) => focused = true,
                    None => {}
                }
            }
            focused
        });
        (fm, im)
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
        let mut m = Model::new(&profile()).unwrap();
        let re = Regex::new("malloc").unwrap();
        assert_eq!(m.clone().filter(Some(&re), None), (true, false));
        let (fm, im) = m.filter(None, Some(&re));
        assert!(fm && im);
        assert!(m.samples.is_empty());
    }
}
