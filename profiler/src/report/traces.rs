//! Every sample's stack with its labels and value, in the format of
//! `go tool pprof -traces`: useful to see exactly what was recorded,
//! including per-thread and per-process labels that the aggregated
//! reports fold away.

use std::fmt::Write as _;

use super::format::label;
use super::prepare::Prepared;

/// The line pprof prints between samples.
const SEPARATOR: &str = "-----------+-------------------------------------------------------";

/// Renders the traces report.
pub fn render(prep: &Prepared) -> String {
    let mut out = String::new();
    for l in prep.profile_labels() {
        out.push_str(&l);
        out.push('\n');
    }
    for s in prep.kept_samples() {
        let set = prep.model.labels(s);
        let frames: Vec<(usize, bool)> = prep
            .stacks
            .frames_root_first(&s.locations)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if frames.is_empty() {
            continue;
        }
        out.push_str(SEPARATOR);
        out.push('\n');

        let mut labels: Vec<String> = set
            .labels
            .iter()
            .map(|(k, vs)| format!("{k:>10}:  {}\n", vs.join(" ")))
            .collect();
        labels.sort();
        labels.iter().for_each(|l| out.push_str(l));

        let mut nums: Vec<String> = set
            .num_labels
            .iter()
            .map(|(k, vs)| {
                let unit = prep.num_label_units.get(k).map_or("", String::as_str);
                let vals: Vec<String> = vs.iter().map(|(v, _)| label(*v, unit)).collect();
                format!("{k:>10}:  {}\n", vals.join(" "))
            })
            .collect();
        nums.sort();
        nums.iter().for_each(|l| out.push_str(l));

        let value = prep.format_value(s.values[prep.index]);
        for (i, (node, inline)) in frames.iter().enumerate() {
            let v = if i == 0 { value.as_str() } else { "" };
            let inl = if *inline { " (inline)" } else { "" };
            let _ = writeln!(out, "{v:>10}   {}{inl}", prep.stacks.names[*node]);
        }
    }
    out.push_str(SEPARATOR);
    out.push('\n');
    out
}
