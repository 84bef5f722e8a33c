//! Interactive SVG flame graphs (search, click to zoom) drawn by `inferno`
//! from the folded stacks of [`super::collapsed`].

use std::collections::HashMap;
use std::io::Write;

use anyhow::{anyhow, Result};
use inferno::flamegraph::{self, Options as FlameOptions};

use super::collapsed::folded;
use super::format::{base_name, scale, scaled_label};
use super::prepare::Prepared;

/// What the profile is of, for a title: the `process` label when samples
/// carry one (the heaviest processes first when there are several), else
/// the main binary's name.
pub fn default_title(prep: &Prepared) -> String {
    let mut by_process: HashMap<&str, i64> = HashMap::new();
    for s in prep.kept_samples() {
        if let Some(name) = prep
            .model
            .labels(s)
            .labels
            .get("process")
            .and_then(|v| v.first())
        {
            let v = by_process.entry(name.as_str()).or_default();
            *v = v.saturating_add(s.values[prep.index].saturating_abs());
        }
    }
    let mut processes: Vec<(&str, i64)> = by_process.into_iter().collect();
    processes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    match processes.len() {
        0 => prep
            .model
            .mappings
            .first()
            .filter(|m| !m.file.is_empty())
            .map_or_else(|| "profile".to_string(), |m| base_name(&m.file).to_string()),
        1..=3 => processes.iter().map(|p| p.0).collect::<Vec<_>>().join(", "),
        n => format!(
            "{}, {}, {} and {} more processes",
            processes[0].0,
            processes[1].0,
            processes[2].0,
            n - 3
        ),
    }
}

/// The unit shown in frame tooltips and the factor that converts sample
/// values to it: time in the unit that suits the smallest stack ("ms" for
/// 100 Hz CPU profiles), other units as they are.
fn count_unit(prep: &Prepared, stacks: &[(String, i64)]) -> (String, f64) {
    let min = stacks
        .iter()
        .map(|s| s.1)
        .filter(|&v| v > 0)
        .min()
        .unwrap_or(1);
    let (_, unit) = scale(min, &prep.sample_unit, "minimum");
    let (factor, time_unit) = scale(1, &prep.sample_unit, &unit);
    if matches!(unit.as_str(), "ns" | "us" | "ms" | "s" | "hrs") && time_unit == unit {
        return (unit, factor);
    }
    let name = match prep.sample_unit.as_str() {
        "" | "count" => prep.sample_type.clone(),
        u => u.to_string(),
    };
    (name, 1.0)
}

/// How many samples the shown stacks stand for: the `samples/count` value
/// when the profile has one (CPU profiles do), else the number of sample
/// records.
fn sample_count(prep: &Prepared) -> i64 {
    let counts = prep
        .model
        .sample_types
        .iter()
        .position(|t| t.ty == "samples" && t.unit == "count");
    match counts {
        Some(i) => prep
            .kept_samples()
            .fold(0i64, |a, s| a.saturating_add(s.values[i])),
        None => prep.kept.len() as i64,
    }
}

/// Draws the flame graph of the prepared profile into `out`.
pub fn write(prep: &Prepared, title: &str, out: &mut dyn Write) -> Result<()> {
    let stacks = folded(prep, true);
    if stacks.is_empty() {
        return Err(anyhow!("the profile has no samples to draw"));
    }
    let (count_name, factor) = count_unit(prep, &stacks);
    let lines: Vec<String> = stacks.iter().map(|(s, v)| format!("{s} {v}")).collect();

    let shown = stacks.iter().fold(0i64, |a, s| a.saturating_add(s.1));
    let samples = sample_count(prep);
    let mut subtitle = format!(
        "{} {}, {} sample{}",
        if prep.sample_type.is_empty() {
            "value"
        } else {
            &prep.sample_type
        },
        prep.format_value(shown),
        samples,
        if samples == 1 { "" } else { "s" }
    );
    if prep.model.duration_nanos > 0 {
        subtitle.push_str(&format!(
            ", duration {}",
            scaled_label(prep.model.duration_nanos, "nanoseconds", "auto")
        ));
    }
    if !prep.active_filters.is_empty() {
        subtitle.push_str(&format!(" ({})", prep.active_filters.join(", ")));
    }

    let mut opts = FlameOptions::default();
    opts.title = title.to_string();
    opts.subtitle = Some(subtitle);
    opts.count_name = count_name;
    opts.factor = factor;
    // The same function gets the same colour in every graph.
    opts.hash = true;
    opts.deterministic = true;
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(|e| anyhow!("drawing the flame graph: {e}"))
}
