//! The steps every report shares, in pprof's order: resolve and check the
//! profile, apply its `drop_frames`, pick the sample value, compute the
//! total (before filtering, so percentages stay relative to the whole
//! profile as pprof's are), apply `--focus`/`--ignore`, and expand
//! locations into function nodes. Also the header lines pprof prints above
//! its reports.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;

use super::format::{base_name, local_time, percentage, scale, scaled_label};
use super::graph::Stacks;
use super::model::{Model, SampleInfo};
use super::tags::TagFilter;
use super::Options;
use crate::pprof::Profile;

/// A profile ready for reporting.
pub struct Prepared {
    /// The whole profile (shared: the browser UI prepares many views of one
    /// model); [`Prepared::kept`] says which samples the filters left.
    pub model: Arc<Model>,
    /// Indices of the samples that passed focus/ignore/hide/tag filters.
    pub kept: Vec<usize>,
    /// The kept samples summed per distinct stack (and per profile, for a
    /// diff): (a sample with that stack, the sum of the reported value).
    /// Aggregates are sums over samples, so building them from these gives
    /// the same numbers for much less work: a million samples often have
    /// only thousands of distinct stacks.
    pub summed: Vec<(usize, i64)>,
    /// Index of the reported value in each sample.
    pub index: usize,
    pub sample_type: String,
    pub sample_unit: String,
    /// Sum of |value| over all samples, before focus/ignore; for a diff,
    /// over the base's samples only (as pprof).
    pub total: i64,
    /// Unit for printed values: a unit name, or "minimum"/"auto".
    pub output_unit: String,
    /// `focus=...`/`ignore=...`, for the "Active filters" header.
    pub active_filters: Vec<String>,
    pub stacks: Stacks,
    /// Problems worth telling the user that do not stop the report.
    pub warnings: Vec<String>,
    /// The unit of each numeric label key, for printing label values.
    pub num_label_units: BTreeMap<String, String>,
}

/// The unit of each numeric label key: the first unit the profile gives
/// for it, else "bytes" for pprof's well-known allocation keys, else the
/// key itself (pprof's `NumLabelUnits`).
pub fn num_label_units(model: &Model) -> BTreeMap<String, String> {
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    for set in &model.label_sets {
        for (key, values) in &set.num_labels {
            let entry = units.entry(key.clone()).or_default();
            if entry.is_empty() {
                if let Some((_, u)) = values.iter().find(|(_, u)| !u.is_empty()) {
                    entry.clone_from(u);
                }
            }
        }
    }
    for (key, unit) in &mut units {
        if unit.is_empty() {
            *unit = match key.as_str() {
                "alignment" | "request" => "bytes".to_string(),
                _ => key.clone(),
            };
        }
    }
    units
}

/// Picks the sample value to report: by index or type name; by default the
/// profile's `default_sample_type`, else the last one (as pprof does).
pub fn sample_index(model: &Model, wanted: Option<&str>) -> Result<usize> {
    let types = &model.sample_types;
    if types.is_empty() {
        bail!("profile has no samples");
    }
    let names = || {
        let list: Vec<&str> = types.iter().map(|t| t.ty.as_str()).collect();
        format!("[{}]", list.join(" "))
    };
    let Some(wanted) = wanted.filter(|w| !w.is_empty()) else {
        let default = &model.default_sample_type;
        if !default.is_empty() {
            if let Some(i) = types.iter().position(|t| &t.ty == default) {
                return Ok(i);
            }
        }
        return Ok(types.len() - 1);
    };
    if let Ok(i) = wanted.parse::<i64>() {
        return usize::try_from(i)
            .ok()
            .filter(|&i| i < types.len())
            .ok_or_else(|| {
                anyhow!(
                    "sample index {wanted} is outside the range [0..{}]",
                    types.len() - 1
                )
            });
    }
    // pprof accepts the legacy "inuse_space" for a type named "space".
    let no_inuse = wanted.strip_prefix("inuse_").unwrap_or(wanted);
    types
        .iter()
        .position(|t| t.ty == wanted || t.ty == no_inuse)
        .ok_or_else(|| anyhow!("sample index {wanted:?} must be one of: {}", names()))
}

fn compile(option: &str, value: Option<&str>) -> Result<Option<Regex>> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => Regex::new(v)
            .map(Some)
            .with_context(|| format!("parsing {option} regexp {v:?}")),
    }
}

/// Reads a profile into a checked model, subtracting `base` (pprof's
/// `-diff_base`, with `-normalize` if asked) and applying the profile's
/// own `drop_frames`: everything reports share that does not depend on
/// their options. Errors say what is wrong without a file name.
pub fn load_model(profile: &Profile, base: Option<(&Profile, bool)>) -> Result<Model> {
    let mut model = Model::new(profile).map_err(|e| anyhow!("malformed profile: {e}"))?;
    if let Some((base, normalize)) = base {
        let base = Model::new(base).map_err(|e| anyhow!("malformed base profile: {e}"))?;
        model = model
            .subtract_base(base, normalize)
            .map_err(|e| anyhow!("cannot diff: {e}"))?;
    }
    model
        .remove_uninteresting()
        .map_err(|e| anyhow!("malformed profile: {e}"))?;
    Ok(model)
}

/// The sum of |value| that percentages are of: over every sample, or for
/// a diff over the base's samples when they sum to anything (pprof's
/// `computeTotal`).
fn total(model: &Model, index: usize) -> i64 {
    let (mut all, mut base) = (0i64, 0i64);
    for s in &model.samples {
        let v = s.values[index].wrapping_abs();
        all = all.wrapping_add(v);
        if s.base {
            base = base.wrapping_add(v);
        }
    }
    if base > 0 {
        base
    } else {
        all
    }
}

/// Sums the value `index` of the `kept` samples per (stack, is base),
/// in order of first appearance.
fn sum_stacks(model: &Model, kept: &[usize], index: usize) -> Vec<(usize, i64)> {
    let mut at: HashMap<(&[usize], bool), usize> = HashMap::with_capacity(kept.len() / 4);
    let mut out: Vec<(usize, i64)> = Vec::new();
    for &i in kept {
        let s = &model.samples[i];
        let v = s.values[index];
        match at.entry((&s.locations[..], s.base)) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let slot = &mut out[*e.get()].1;
                *slot = slot.wrapping_add(v);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push((i, v));
            }
        }
    }
    out
}

impl Prepared {
    /// Runs the shared steps on `profile`.
    pub fn new(profile: &Profile, opts: &Options) -> Result<Prepared> {
        Prepared::from_model(Arc::new(load_model(profile, None)?), opts)
    }

    /// Runs the option-dependent steps on a loaded model, in pprof's
    /// order: sample index, total (before any filter), focus/ignore/hide,
    /// then tag filters.
    pub fn from_model(model: Arc<Model>, opts: &Options) -> Result<Prepared> {
        let index = sample_index(&model, opts.sample_index.as_deref())?;
        let kind = model.sample_types[index].clone();
        let total = total(&model, index);

        let num_label_units = num_label_units(&model);
        let focus = compile("focus", opts.focus.as_deref())?;
        let ignore = compile("ignore", opts.ignore.as_deref())?;
        let hide = compile("hide", opts.hide.as_deref())?;
        let nonempty = |o: &Option<String>| o.clone().filter(|v| !v.is_empty());
        let tagfocus = nonempty(&opts.tagfocus)
            .map(|v| TagFilter::new("tagfocus", &v, &num_label_units))
            .transpose()?;
        let tagignore = nonempty(&opts.tagignore)
            .map(|v| TagFilter::new("tagignore", &v, &num_label_units))
            .transpose()?;
        let mut active_filters = Vec::new();
        for (name, value) in [
            ("focus", &opts.focus),
            ("ignore", &opts.ignore),
            ("hide", &opts.hide),
            ("tagfocus", &opts.tagfocus),
            ("tagignore", &opts.tagignore),
        ] {
            if let Some(v) = nonempty(value) {
                active_filters.push(format!("{name}={v}"));
            }
        }

        let marks = model.focus_marks(focus.as_ref(), ignore.as_ref());
        let stacks = Stacks::new(&model, opts.noinlines, hide.as_ref());
        let hiding = hide.is_some() && stacks.hide_matched;
        let (mut tfm, mut tim) = (false, false);
        let kept: Vec<usize> = model
            .samples
            .iter()
            .enumerate()
            .filter(|(_, s)| marks.keeps(&s.locations))
            .filter(|(_, s)| {
                !hiding
                    || s.locations
                        .iter()
                        .any(|&l| !stacks.location_nodes[l].is_empty())
            })
            .filter(|(_, s)| {
                if tagfocus.is_none() && tagignore.is_none() {
                    return true;
                }
                let set = model.labels(s);
                let focused = tagfocus.as_ref().is_none_or(|t| t.matches(set));
                let ignored = tagignore.as_ref().is_some_and(|t| t.matches(set));
                tfm |= focused;
                tim |= ignored;
                focused && !ignored
            })
            .map(|(i, _)| i)
            .collect();

        let mut warnings = Vec::new();
        for (given, matched, what) in [
            (focus.is_some(), marks.focus_matched, "Focus"),
            (ignore.is_some(), marks.ignore_matched, "Ignore"),
            (hide.is_some(), stacks.hide_matched, "Hide"),
            (tagfocus.is_some(), tfm, "TagFocus"),
            (tagignore.is_some(), tim, "TagIgnore"),
        ] {
            if given && !matched {
                warnings.push(format!("{what} expression matched no samples"));
            }
        }

        let summed = sum_stacks(&model, &kept, index);
        let output_unit = if opts.unit.is_empty() {
            "minimum".to_string()
        } else {
            opts.unit.clone()
        };
        Ok(Prepared {
            model,
            kept,
            summed,
            index,
            sample_type: kind.ty,
            sample_unit: kind.unit,
            total,
            output_unit,
            active_filters,
            stacks,
            warnings,
            num_label_units,
        })
    }

    /// The samples the filters kept.
    pub fn kept_samples(&self) -> impl Iterator<Item = &SampleInfo> + '_ {
        self.kept.iter().map(|&i| &self.model.samples[i])
    }

    /// The (location list, value) of every remaining distinct stack, its
    /// samples summed.
    pub fn samples(&self) -> impl Iterator<Item = (&[usize], i64)> + '_ {
        self.summed
            .iter()
            .map(|&(i, v)| (&self.model.samples[i].locations[..], v))
    }

    /// [`Prepared::samples`] with whether each comes from a diff base.
    pub fn stacks_with_base(&self) -> impl Iterator<Item = (&[usize], i64, bool)> + '_ {
        self.summed.iter().map(|&(i, v)| {
            let s = &self.model.samples[i];
            (&s.locations[..], v, s.base)
        })
    }

    /// A value in the report's output unit ("2.79s", "120ms", "279").
    pub fn format_value(&self, v: i64) -> String {
        scaled_label(v, &self.sample_unit, &self.output_unit)
    }

    /// The header lines pprof prints about the profile itself (its
    /// `ProfileLabels`): file, build ID, comments, type, time, duration.
    pub fn profile_labels(&self) -> Vec<String> {
        let m = &self.model;
        let mut out = Vec::new();
        if let Some(main) = m.mappings.first() {
            if !main.file.is_empty() {
                out.push(format!("File: {}", base_name(&main.file)));
            }
            if !main.build_id.is_empty() {
                out.push(format!("Build ID: {}", main.build_id));
            }
        }
        out.extend(m.comments.iter().filter(|c| !c.starts_with('#')).cloned());
        if !self.sample_type.is_empty() {
            out.push(format!("Type: {}", self.sample_type));
        }
        if !m.doc_url.is_empty() {
            out.push(format!("Doc: {}", m.doc_url));
        }
        if m.time_nanos != 0 {
            out.push(format!("Time: {}", local_time(m.time_nanos)));
        }
        if m.duration_nanos != 0 {
            let duration = scaled_label(m.duration_nanos, "nanoseconds", "auto");
            let (total_ns, unit) = scale(self.total, &self.sample_unit, "nanoseconds");
            let ratio = if unit == "ns" && total_ns != 0.0 {
                format!("({})", percentage(total_ns as i64, m.duration_nanos))
            } else {
                String::new()
            };
            // The space before an empty ratio is pprof's too.
            out.push(format!(
                "Duration: {duration}, Total samples = {} {ratio}",
                self.format_value(self.total)
            ));
        }
        out
    }
}
