//! Value, unit and percentage formatting exactly as pprof prints them.
//!
//! `go tool pprof` is the reference every user compares against, so the
//! numbers must be byte-identical: same unit tables, same auto-scaling rule,
//! same `%.2f` and `%5.2g` rendering. The arithmetic is done in `f64` in the
//! same order as pprof's `internal/measurement` so that rounding agrees.

use std::fmt::Write as _;

/// One unit: its printed name, the (lower-case) spellings that select it,
/// and how many base units it is worth.
struct Unit {
    name: &'static str,
    aliases: &'static [&'static str],
    factor: f64,
}

/// A family of convertible units (memory, time, GCU) with the unit used
/// when the target is not in the family.
struct UnitType {
    default_name: &'static str,
    default_factor: f64,
    units: &'static [Unit],
}

const UNIT_TYPES: &[UnitType] = &[
    UnitType {
        default_name: "B",
        default_factor: 1.0,
        units: &[
            Unit {
                name: "B",
                aliases: &["b", "byte"],
                factor: 1.0,
            },
            Unit {
                name: "kB",
                aliases: &["kb", "kbyte", "kilobyte"],
                factor: 1024.0,
            },
            Unit {
                name: "MB",
                aliases: &["mb", "mbyte", "megabyte"],
                factor: 1048576.0,
            },
            Unit {
                name: "GB",
                aliases: &["gb", "gbyte", "gigabyte"],
                factor: 1073741824.0,
            },
            Unit {
                name: "TB",
                aliases: &["tb", "tbyte", "terabyte"],
                factor: 1099511627776.0,
            },
            Unit {
                name: "PB",
                aliases: &["pb", "pbyte", "petabyte"],
                factor: 1125899906842624.0,
            },
        ],
    },
    UnitType {
        default_name: "s",
        default_factor: 1e9,
        units: &[
            Unit {
                name: "ns",
                aliases: &["ns", "nanosecond"],
                factor: 1.0,
            },
            Unit {
                name: "us",
                aliases: &["μs", "us", "microsecond"],
                factor: 1e3,
            },
            Unit {
                name: "ms",
                aliases: &["ms", "millisecond"],
                factor: 1e6,
            },
            Unit {
                name: "s",
                aliases: &["s", "sec", "second"],
                factor: 1e9,
            },
            Unit {
                name: "hrs",
                aliases: &["hour", "hr"],
                factor: 3.6e12,
            },
        ],
    },
    UnitType {
        default_name: "GCU",
        default_factor: 1.0,
        units: &[
            Unit {
                name: "n*GCU",
                aliases: &["nanogcu"],
                factor: 1e-9,
            },
            Unit {
                name: "u*GCU",
                aliases: &["microgcu"],
                factor: 1e-6,
            },
            Unit {
                name: "m*GCU",
                aliases: &["milligcu"],
                factor: 1e-3,
            },
            Unit {
                name: "GCU",
                aliases: &["gcu"],
                factor: 1.0,
            },
            Unit {
                name: "k*GCU",
                aliases: &["kilogcu"],
                factor: 1e3,
            },
            Unit {
                name: "M*GCU",
                aliases: &["megagcu"],
                factor: 1e6,
            },
            Unit {
                name: "G*GCU",
                aliases: &["gigagcu"],
                factor: 1e9,
            },
            Unit {
                name: "T*GCU",
                aliases: &["teragcu"],
                factor: 1e12,
            },
            Unit {
                name: "P*GCU",
                aliases: &["petagcu"],
                factor: 1e15,
            },
        ],
    },
];

impl UnitType {
    /// Finds the unit a profile's unit string denotes. Like pprof, a plural
    /// "s" is dropped from names longer than two bytes ("seconds" → "second").
    fn sniff(&self, unit: &str) -> Option<&Unit> {
        let lower = unit.to_lowercase();
        let key = if lower.len() > 2 {
            lower.strip_suffix('s').unwrap_or(&lower)
        } else {
            &lower
        };
        self.units.iter().find(|u| u.aliases.contains(&key))
    }

    /// The largest unit in which `value` (in base units) is at least 1.
    fn auto_scale(&self, value: f64) -> Option<(f64, &'static str)> {
        let mut best: Option<&Unit> = None;
        for u in self.units {
            if u.factor >= best.map_or(0.0, |b| b.factor) && value / u.factor >= 1.0 {
                best = Some(u);
            }
        }
        best.map(|u| (value / u.factor, u.name))
    }

    fn convert(&self, value: i64, from: &str, to: &str) -> Option<(f64, &'static str)> {
        let from = self.sniff(from)?;
        let v = value as f64 * from.factor;
        if to == "minimum" || to == "auto" {
            return Some(
                self.auto_scale(v)
                    .unwrap_or((v / self.default_factor, self.default_name)),
            );
        }
        Some(match self.sniff(to) {
            Some(t) => (v / t.factor, t.name),
            None => (v / self.default_factor, self.default_name),
        })
    }
}

/// Converts `value` from unit `from` to unit `to` (or the best-fitting unit
/// for "minimum"/"auto"). Returns the scaled value and the unit to print,
/// which is empty for unit-less counts.
pub fn scale(value: i64, from: &str, to: &str) -> (f64, String) {
    if value < 0 && value.wrapping_neg() > 0 {
        let (v, u) = scale(-value, from, to);
        return (-v, u);
    }
    for ut in UNIT_TYPES {
        if let Some((v, u)) = ut.convert(value, from, to) {
            return (v, u.to_string());
        }
    }
    match to {
        "count" | "sample" | "unit" | "minimum" | "auto" => (value as f64, String::new()),
        _ => (value as f64, to.to_string()),
    }
}

/// `value` in unit `from`, printed in unit `to` with two decimals unless
/// they are zero: "2.79s", "120ms", "0".
pub fn scaled_label(value: i64, from: &str, to: &str) -> String {
    let (v, u) = scale(value, from, to);
    let s = format!("{v:.2}");
    let s = s.strip_suffix(".00").unwrap_or(&s);
    if s == "0" || s == "-0" {
        return "0".to_string();
    }
    format!("{s}{u}")
}

/// `value` in unit `unit`, auto-scaled (pprof's `measurement.Label`).
pub fn label(value: i64, unit: &str) -> String {
    scaled_label(value, unit, "auto")
}

/// `value` as a percentage of `total`, six characters wide: "22.29%",
/// "  0.9%", "  100%", "1.2e-05%".
pub fn percentage(value: i64, total: i64) -> String {
    let ratio = if total != 0 {
        (value as f64 / total as f64).abs() * 100.0
    } else {
        0.0
    };
    if (99.95..=100.05).contains(&ratio) {
        "  100%".to_string()
    } else if ratio >= 1.0 {
        format!("{ratio:5.2}%")
    } else {
        format!("{:>5}%", go_g2(ratio))
    }
}

/// Go's `%.2g`: two significant digits, trailing zeros dropped, and
/// exponent notation for very small or large magnitudes.
fn go_g2(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    if !v.is_finite() {
        return format!("{v}");
    }
    // Rust's exponent formatting rounds the exact binary value to nearest,
    // ties to even, as Go's strconv does; it yields "d.de<exp>".
    let e = format!("{:.1e}", v.abs());
    let (mant, exp) = match e.split_once('e') {
        Some((m, x)) => (m, x.parse::<i32>().unwrap_or(0)),
        None => (e.as_str(), 0),
    };
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let sign = if v < 0.0 { "-" } else { "" };
    // Go picks %e when the exponent is below -4 or at least the precision;
    // the precision shrinks to the digit count for integral values.
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let eprec = if 2 > nd && nd >= dp { nd } else { 2 };
    let mut out = String::from(sign);
    if exp < -4 || exp >= eprec {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if dp <= 0 {
        out.push_str("0.");
        for _ in 0..(-dp) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let dp = dp as usize;
        if digits.len() <= dp {
            out.push_str(digits);
            for _ in digits.len()..dp {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..dp]);
            out.push('.');
            out.push_str(&digits[dp..]);
        }
    }
    out
}

/// Go's `filepath.Base`: the last path element, "." for an empty path.
pub fn base_name(path: &str) -> &str {
    if path.is_empty() {
        return ".";
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Formats a Unix time in nanoseconds as pprof does ("2006-01-02 15:04:05
/// MST"), in the local time zone (TZ or /etc/localtime), like Go's `time`.
pub fn local_time(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let Some(t) = libc::time_t::try_from(secs).ok() else {
        return String::new();
    };
    // SAFETY: `localtime_r` only writes to the `tm` we own; an all-zero `tm`
    // is a valid value of this plain C struct. `tm_zone` points to static
    // storage owned by libc's time zone state and is read immediately.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        let zone = if tm.tm_zone.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(tm.tm_zone)
                .to_string_lossy()
                .into_owned()
        };
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {}",
            i64::from(tm.tm_year) + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            zone
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_labels_match_pprof() {
        assert_eq!(scaled_label(3_320_000_000, "nanoseconds", "ms"), "3320ms");
        assert_eq!(scaled_label(3_320_000_000, "nanoseconds", "s"), "3.32s");
        assert_eq!(scaled_label(10_000_000, "nanoseconds", "s"), "0.01s");
        assert_eq!(scaled_label(16_600_000, "nanoseconds", "ms"), "16.60ms");
        assert_eq!(scaled_label(0, "nanoseconds", "ms"), "0");
        assert_eq!(scaled_label(279, "count", "count"), "279");
        assert_eq!(scaled_label(2048, "bytes", "minimum"), "2kB");
        assert_eq!(scaled_label(-10_000_000, "nanoseconds", "ms"), "-10ms");
        assert_eq!(label(3_000_000_000, "nanoseconds"), "3s");
        assert_eq!(label(1234, "pid"), "1234");
        // Unknown target units fall back to the family's default unit.
        assert_eq!(scaled_label(1_500_000_000, "nanoseconds", "bogus"), "1.50s");
        assert_eq!(scaled_label(7, "widgets", "minimum"), "7");
    }

    #[test]
    fn percentages_match_go_formatting() {
        // Expected strings are Go's fmt output for the same inputs.
        assert_eq!(percentage(740, 3320), "22.29%");
        assert_eq!(percentage(3, 332), "  0.9%");
        assert_eq!(percentage(1, 3320), " 0.03%");
        assert_eq!(percentage(0, 3320), "    0%");
        assert_eq!(percentage(0, 0), "    0%");
        assert_eq!(percentage(3320, 3320), "  100%");
        assert_eq!(percentage(1, 10_000_000), "1e-05%");
        assert_eq!(percentage(123, 1_000_000_000), "1.2e-05%");
        assert_eq!(percentage(125, 100_000), " 0.12%");
        assert_eq!(percentage(9949, 1_000_000), " 0.99%");
        assert_eq!(percentage(5, 1_000_000), "0.0005%");
        assert_eq!(percentage(-5, 100), " 5.00%");
        assert_eq!(percentage(9996, 1_000_000), "    1%");
    }

    #[test]
    fn g2_edge_cases() {
        assert_eq!(go_g2(0.5), "0.5");
        assert_eq!(go_g2(0.045), "0.045");
        assert_eq!(go_g2(0.0001234), "0.00012");
        assert_eq!(go_g2(0.00001234), "1.2e-05");
        assert_eq!(go_g2(0.995), "0.99");
        assert_eq!(go_g2(0.996), "1");
        assert_eq!(go_g2(99.995), "1e+02");
        assert_eq!(go_g2(12.345), "12");
    }

    #[test]
    fn base_name_is_go_filepath_base() {
        assert_eq!(base_name("/usr/bin/goprog"), "goprog");
        assert_eq!(base_name("[kernel.kallsyms]"), "[kernel.kallsyms]");
        assert_eq!(base_name("dir/"), "dir");
        assert_eq!(base_name("/"), "/");
        assert_eq!(base_name(""), ".");
    }
}
