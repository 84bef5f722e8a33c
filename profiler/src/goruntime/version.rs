//! Go versions as the runtime readers need them: the minor release picks
//! struct layouts and profile semantics.

use std::fmt;

/// The Go releases whose runtime data we know how to read (amd64).
pub(crate) const SUPPORTED: std::ops::RangeInclusive<u32> = 19..=27;

/// A Go release `1.MINOR` (patch level ignored: runtime layouts change only
/// between minor releases).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub minor: u32,
}

impl GoVersion {
    /// Parses `go1.27.3`, `go1.22rc1`, `go1.24-20240101-RC00 cl/...`,
    /// `devel go1.25-abcdef ...`; `None` for anything else.
    pub fn parse(s: &str) -> Option<GoVersion> {
        let at = s.find("go1.")?;
        let rest = &s[at + 4..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(GoVersion {
            minor: digits.parse().ok()?,
        })
    }

    pub fn is_supported(self) -> bool {
        SUPPORTED.contains(&self.minor)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go1.{}", self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_rc_and_devel_strings() {
        assert_eq!(GoVersion::parse("go1.27.3").unwrap().minor, 27);
        assert_eq!(GoVersion::parse("go1.22rc1").unwrap().minor, 22);
        assert_eq!(
            GoVersion::parse("devel go1.25-abcdef Tue").unwrap().minor,
            25
        );
        assert_eq!(GoVersion::parse("go1.19").unwrap().minor, 19);
        assert!(GoVersion::parse("go2").is_none());
        assert!(!GoVersion::parse("go1.18.1").unwrap().is_supported());
        assert!(!GoVersion::parse("go1.28").unwrap().is_supported());
    }
}
