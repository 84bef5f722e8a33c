//! Tag filters (`--tagfocus`, `--tagignore`): keep or drop samples by
//! their labels, with `go tool pprof`'s syntax and semantics.
//!
//! - `key=regex[,regex...]`: a string label `key` with a value matching any
//!   of the expressions;
//! - `regex[,regex...]`: every expression matches some `key:value` of the
//!   sample's string labels;
//! - `[key=]N[unit]`, `N:`, `:N`, `N:M`: a numeric label (of `key`, else of
//!   any key) equal to N, at least N, at most N, or within [N, M], with
//!   units scaled as pprof does (`pid=1234`, `bytes=64kb:`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use regex::Regex;

use super::format::scale;
use super::model::LabelSet;

/// A numeric range: (low, high) bounds in `unit`, either open.
#[derive(Debug)]
struct Range {
    unit: String,
    low: Option<f64>,
    high: Option<f64>,
}

impl Range {
    fn contains(&self, v: i64, unit: &str) -> bool {
        let (sv, su) = scale(v, unit, &self.unit);
        su == self.unit && self.low.is_none_or(|l| sv >= l) && self.high.is_none_or(|h| sv <= h)
    }
}

#[derive(Debug)]
enum Test {
    Range(Range),
    Regexes(Vec<Regex>),
}

/// A compiled tag filter.
#[derive(Debug)]
pub struct TagFilter {
    key: Option<String>,
    test: Test,
    /// The unit of each numeric label key (pprof's `NumLabelUnits`).
    units: BTreeMap<String, String>,
}

/// pprof's `parseTagFilterRange`: a number with an optional unit, or a
/// range of two; None when `filter` is not one (it is then a regex).
fn parse_range(filter: &str) -> Result<Option<Range>> {
    static RX: OnceLock<Regex> = OnceLock::new();
    let rx =
        RX.get_or_init(|| Regex::new("([+-]?[[:digit:]]+)([[:alpha:]]+)?").expect("a valid regex"));
    let found: Vec<regex::Captures> = rx.captures_iter(filter).take(2).collect();
    let Some(first) = found.first() else {
        return Ok(None);
    };
    let number = |c: &regex::Captures| -> Result<(i64, String, String)> {
        let digits = &c[1];
        let v = digits
            .parse::<i64>()
            .with_context(|| format!("tag filter number {digits:?} is out of range"))?;
        let unit = c.get(2).map_or("", |m| m.as_str()).to_string();
        Ok((v, unit, c[0].to_string()))
    };
    let (v, unit, text) = number(first)?;
    let (low, unit) = scale(v, &unit, &unit);
    if found.len() == 1 {
        let (lo, hi) = if filter == text {
            (Some(low), Some(low))
        } else if filter == format!("{text}:") {
            (Some(low), None)
        } else if filter == format!(":{text}") {
            (None, Some(low))
        } else {
            return Ok(None);
        };
        return Ok(Some(Range {
            unit,
            low: lo,
            high: hi,
        }));
    }
    let (v2, unit2, text2) = number(&found[1])?;
    if filter != format!("{text}:{text2}") {
        return Ok(None);
    }
    let (high, unit2) = scale(v2, &unit2, &unit);
    if unit2 != unit {
        return Ok(None);
    }
    Ok(Some(Range {
        unit,
        low: Some(low),
        high: Some(high),
    }))
}

impl TagFilter {
    /// Compiles `value` for option `option` (named in errors).
    pub fn new(option: &str, value: &str, units: &BTreeMap<String, String>) -> Result<TagFilter> {
        let (key, value) = match value.split_once('=') {
            Some((k, v)) => (Some(k.to_string()), v),
            None => (None, value),
        };
        let test = match parse_range(value)? {
            Some(r) => Test::Range(r),
            None => Test::Regexes(
                value
                    .split(',')
                    .map(|r| {
                        Regex::new(r).map_err(|e| anyhow!("parsing {option} regexp {r:?}: {e}"))
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(TagFilter {
            key,
            test,
            units: units.clone(),
        })
    }

    /// Whether a sample with these labels matches.
    pub fn matches(&self, set: &LabelSet) -> bool {
        match (&self.test, &self.key) {
            (Test::Range(r), key) => {
                let unit = |k: &str| self.units.get(k).map_or("", String::as_str);
                let hit = |k: &str, vals: &[(i64, String)]| {
                    vals.iter().any(|(v, _)| r.contains(*v, unit(k)))
                };
                match key {
                    Some(k) => set.num_labels.get(k).is_some_and(|vals| hit(k, vals)),
                    None => set.num_labels.iter().any(|(k, vals)| hit(k, vals)),
                }
            }
            (Test::Regexes(rxs), Some(k)) => set
                .labels
                .get(k)
                .is_some_and(|vals| rxs.iter().any(|rx| vals.iter().any(|v| rx.is_match(v)))),
            (Test::Regexes(rxs), None) => rxs.iter().all(|rx| {
                set.labels
                    .iter()
                    .any(|(k, vals)| vals.iter().any(|v| rx.is_match(&format!("{k}:{v}"))))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(labels: &[(&str, &str)], nums: &[(&str, i64)]) -> LabelSet {
        let mut s = LabelSet::default();
        for (k, v) in labels {
            s.labels
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
        }
        for (k, v) in nums {
            s.num_labels
                .entry(k.to_string())
                .or_default()
                .push((*v, String::new()));
        }
        s
    }

    fn units() -> BTreeMap<String, String> {
        [("pid", "pid"), ("bytes", "bytes")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn f(v: &str) -> TagFilter {
        TagFilter::new("tagfocus", v, &units()).unwrap()
    }

    #[test]
    fn numeric_ranges() {
        let s = set(&[], &[("pid", 1234), ("bytes", 65536)]);
        assert!(f("pid=1234").matches(&s));
        assert!(!f("pid=1235").matches(&s));
        assert!(f("pid=1000:2000").matches(&s));
        assert!(f("pid=:1234").matches(&s));
        assert!(!f("pid=1235:").matches(&s));
        assert!(f("bytes=64kb").matches(&s));
        assert!(f("bytes=32kb:1mb").matches(&s));
        assert!(!f("bytes=1mb:").matches(&s));
        // No key: any numeric label.
        assert!(f("1234").matches(&s));
    }

    #[test]
    fn string_regexes() {
        let s = set(&[("thread", "worker-1"), ("process", "web")], &[]);
        assert!(f("thread=worker-1").matches(&s));
        assert!(f("thread=nope,^work").matches(&s));
        assert!(!f("process=worker").matches(&s));
        // No key: every expression matches some key:value.
        assert!(f("thread:work,process:web").matches(&s));
        assert!(!f("thread:work,process:db").matches(&s));
        assert!(TagFilter::new("tagfocus", "x=(", &units()).is_err());
    }
}
