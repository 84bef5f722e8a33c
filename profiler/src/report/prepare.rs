//! The steps every report shares, in pprof's order: resolve and check the
//! profile, apply its `drop_frames`, pick the sample value, compute the
//! total (before filtering, so percentages stay relative to the whole
//! profile as pprof's are), apply `--focus`/`--ignore`, and expand
//! locations into function nodes. Also the header lines pprof prints above
//! its reports.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;

use super::format::{base_name, local_time, percentage, scale, scaled_label};
use super::graph::Stacks;
use super::model::Model;
use super::Options;
use crate::pprof::Profile;

/// A profile ready for reporting.
pub struct Prepared {
    pub model: Model,
    /// Index of the reported value in each sample.
    pub index: usize,
    pub sample_type: String,
    pub sample_unit: String,
    /// Sum of |value| over all samples, before focus/ignore.
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
fn num_label_units(model: &Model) -> BTreeMap<String, String> {
    let mut units: BTreeMap<String, String> = BTreeMap::new();
    for s in &model.samples {
        for (key, values) in &s.num_labels {
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

impl Prepared {
    /// Runs the shared steps on `profile`.
    pub fn new(profile: &Profile, opts: &Options) -> Result<Prepared> {
        let mut model = Model::new(profile).map_err(|e| anyhow!("malformed profile: {e}"))?;
        model
            .remove_uninteresting()
            .map_err(|e| anyhow!("malformed profile: {e}"))?;
        let index = sample_index(&model, opts.sample_index.as_deref())?;
        let kind = model.sample_types[index].clone();
        let total = model
            .samples
            .iter()
            .map(|s| s.values[index].wrapping_abs())
            .fold(0i64, i64::wrapping_add);

        let num_label_units = num_label_units(&model);
        let focus = compile("focus", opts.focus.as_deref())?;
        let ignore = compile("ignore", opts.ignore.as_deref())?;
        let mut active_filters = Vec::new();
        let mut warnings = Vec::new();
        if let Some(f) = opts.focus.as_deref().filter(|f| !f.is_empty()) {
            active_filters.push(format!("focus={f}"));
        }
        if let Some(i) = opts.ignore.as_deref().filter(|i| !i.is_empty()) {
            active_filters.push(format!("ignore={i}"));
        }
        let (fm, im) = model.filter(focus.as_ref(), ignore.as_ref());
        if focus.is_some() && !fm {
            warnings.push("Focus expression matched no samples".to_string());
        }
        if ignore.is_some() && !im {
            warnings.push("Ignore expression matched no samples".to_string());
        }

        let stacks = Stacks::new(&model, opts.noinlines);
        let output_unit = if opts.unit.is_empty() {
            "minimum".to_string()
        } else {
            opts.unit.clone()
        };
        Ok(Prepared {
            model,
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

    /// The (location list, value) of every remaining sample.
    pub fn samples(&self) -> impl Iterator<Item = (&[usize], i64)> + '_ {
        self.model
            .samples
            .iter()
            .map(|s| (&s.locations[..], s.values[self.index]))
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
