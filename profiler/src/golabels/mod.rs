//! Go's pprof labels (`pprof.Do`, `pprof.SetGoroutineLabels`) on our CPU,
//! off-CPU and wall samples, as Go's own CPU profile carries them.
//!
//! The kernel side (`profiler-ebpf/bpf/go.h`) walks TLS → g → m → m.curg
//! → curg.labels for every sample of a process registered in its
//! `go_procs` map, checks the chain (`m.procid` is the sampled thread),
//! and copies the label strings into the record (a `struct
//! rprof_go_sample`): user space never reads the label set later, when it
//! may have been freed and its memory reused.
//!
//! User space:
//! - [`procs::GoProcs`] registers a Go process: its runtime layout
//!   ([`crate::goruntime::runtime_layout`]: version, TLS offset of g,
//!   struct offsets from DWARF or the table by release), found once per
//!   executable. A release without a known layout gets no labels and one
//!   warning, never a guess.
//! - [`Decoder`] turns a record's labels into a [`GoLabelSet`], interned,
//!   which becomes part of the stack's identity in the store and goes into
//!   pprof as string labels (and `goid`, numeric, with `--go-goid`).
//! - [`GoLabelStats`] counts what could not be trusted or was cut; the
//!   recorder writes them into the profile's comments.

pub mod procs;

use std::collections::HashMap;
use std::sync::Arc;

use profiler_ebpf::abi::{self, GoLabels};

use crate::pprof::{Label, ProfileBuilder};

/// The labels of one goroutine as a sample saw them: sorted by key, as
/// Go's `LabelSet` keeps them; with `--go-goid`, the goroutine's id.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoLabelSet {
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub goid: Option<u64>,
    /// Of the two above, for the store's stack hash.
    hash: u64,
}

impl GoLabelSet {
    pub fn new(mut labels: Vec<(Box<str>, Box<str>)>, goid: Option<u64>) -> GoLabelSet {
        labels.sort();
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            labels.hash(&mut h);
            goid.hash(&mut h);
            h.finish()
        };
        GoLabelSet {
            labels: labels.into(),
            goid,
            hash,
        }
    }

    /// A hash of the labels and goid (stable within one run).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The value of label `key`, if the set has it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }

    /// The pprof labels of a sample with this set: every label as a string
    /// label, as Go's own CPU profile writes them, then `goid` (numeric).
    pub fn pprof_labels(&self, b: &mut ProfileBuilder) -> Vec<Label> {
        let mut out: Vec<Label> = self.labels.iter().map(|(k, v)| b.str_label(k, v)).collect();
        if let Some(id) = self.goid {
            out.push(b.num_label("goid", i64::try_from(id).unwrap_or(i64::MAX)));
        }
        out
    }
}

/// The user side of Go labels in one capture: which processes the BPF
/// programs read labels of, and the decoder of what they copied.
pub struct GoLabeling {
    pub procs: procs::GoProcs,
    pub decoder: Decoder,
}

impl GoLabeling {
    /// From a loaded capture's `go_procs` map; `goid`: `--go-goid`.
    /// `None` (with a warning) if the map cannot be had: no labels.
    pub fn from_capture(capture: &mut crate::capture::Capture, goid: bool) -> Option<GoLabeling> {
        let map = capture.take_go_procs()?;
        match procs::GoProcs::new(map) {
            Ok(procs) => Some(GoLabeling {
                procs,
                decoder: Decoder::new(goid),
            }),
            Err(e) => {
                tracing::warn!("cannot use the go_procs map ({e}): no Go labels");
                None
            }
        }
    }
}

/// What the label walk could not trust or had to cut, over a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoLabelStats {
    /// Samples of registered Go processes with a goroutine's labels read
    /// (labelled or not).
    pub read: u64,
    /// Of those, samples with at least one label.
    pub labelled: u64,
    /// Samples whose `m.procid` was not the sampled thread: the chain was
    /// not trusted and no labels were read.
    pub mismatched: u64,
    /// Samples whose labels were dropped because a read of the runtime's
    /// memory failed.
    pub faults: u64,
    /// Samples whose label data could not be right (lengths, map shape):
    /// dropped.
    pub bad: u64,
    /// Samples whose set had more labels than were copied, or a key or
    /// value longer than its cap: kept, cut.
    pub cut: u64,
}

impl GoLabelStats {
    /// Samples whose labels were dropped.
    pub fn dropped(&self) -> u64 {
        self.mismatched + self.faults + self.bad
    }

    /// The profile comment, if any Go process was sampled.
    pub fn comment(&self) -> Option<String> {
        let seen = self.read + self.dropped();
        (seen > 0).then(|| {
            format!(
                "go_labels: {} of {} Go samples labelled; dropped: procid_mismatch={} read_fault={} implausible={}; cut={} (at most {} labels, keys of {} and values of {} bytes)",
                self.labelled,
                seen,
                self.mismatched,
                self.faults,
                self.bad,
                self.cut,
                abi::GO_MAX_LABELS,
                abi::GO_KEY_LEN,
                abi::GO_VALUE_LEN
            )
        })
    }
}

/// Interned label sets kept at most: a long-running front end with
/// `--go-goid` sees ever new goids. Past it the cache starts over (the
/// store compares sets by value, so nothing but the sharing is lost).
const CACHE_MAX: usize = 4096;

/// Records' labels to interned [`GoLabelSet`]s.
pub struct Decoder {
    goid: bool,
    cache: HashMap<Box<[u8]>, Arc<GoLabelSet>>,
    key: Vec<u8>,
    stats: GoLabelStats,
}

impl Decoder {
    /// `goid`: add each goroutine's id (`--go-goid`).
    pub fn new(goid: bool) -> Decoder {
        Decoder {
            goid,
            cache: HashMap::new(),
            key: Vec::new(),
            stats: GoLabelStats::default(),
        }
    }

    pub fn stats(&self) -> GoLabelStats {
        self.stats
    }

    /// The label set of a sample, if it has one. Records of processes not
    /// registered as Go, and of threads running no goroutine, have none;
    /// so do those whose chain or data failed a check (counted).
    pub fn decode(&mut self, go: &GoLabels) -> Option<Arc<GoLabelSet>> {
        match go.status {
            abi::GO_OK => {}
            abi::GO_MISMATCH => {
                self.stats.mismatched += 1;
                return None;
            }
            abi::GO_FAULT => {
                self.stats.faults += 1;
                return None;
            }
            abi::GO_BAD => {
                self.stats.bad += 1;
                return None;
            }
            _ => return None,
        }
        self.stats.read += 1;
        let labels = go.valid();
        if !labels.is_empty() {
            self.stats.labelled += 1;
        }
        if go.flags & abi::GO_CUT != 0 || labels.iter().any(abi::GoLabel::is_cut) {
            self.stats.cut += 1;
        }
        if labels.is_empty() && !self.goid {
            return None;
        }
        self.cache_key(go);
        if let Some(set) = self.cache.get(self.key.as_slice()) {
            return Some(set.clone());
        }
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        let set = Arc::new(GoLabelSet::new(
            labels
                .iter()
                .map(|l| (text(l.key()), text(l.value())))
                .collect(),
            self.goid.then_some(go.goid),
        ));
        self.cache.insert(self.key.as_slice().into(), set.clone());
        Some(set)
    }

    /// The bytes that make a set what it is: each label's lengths and
    /// copied bytes, and the goid when it is kept.
    fn cache_key(&mut self, go: &GoLabels) {
        self.key.clear();
        for l in go.valid() {
            self.key.extend_from_slice(&l.key_len.to_le_bytes());
            self.key.extend_from_slice(&l.value_len.to_le_bytes());
            self.key.extend_from_slice(l.key());
            self.key.extend_from_slice(l.value());
        }
        if self.goid {
            self.key.extend_from_slice(&go.goid.to_le_bytes());
        }
    }
}

/// A label's bytes as text: UTF-8 (Go strings almost always are), an
/// incomplete character at the end of a cut string dropped, anything else
/// invalid replaced.
fn text(b: &[u8]) -> Box<str> {
    match std::str::from_utf8(b) {
        Ok(s) => s.into(),
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&b[..e.valid_up_to()]).into(),
        Err(_) => String::from_utf8_lossy(b).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(status: u32, labels: &[(&str, &str)], goid: u64) -> GoLabels {
        let mut s = GoLabels {
            status,
            goid,
            count: labels.len() as u16,
            ..GoLabels::default()
        };
        for (l, (k, v)) in s.labels.iter_mut().zip(labels) {
            l.key_len = k.len() as u32;
            l.value_len = v.len() as u32;
            let (kc, vc) = (k.len().min(abi::GO_KEY_LEN), v.len().min(abi::GO_VALUE_LEN));
            l.key[..kc].copy_from_slice(&k.as_bytes()[..kc]);
            l.value[..vc].copy_from_slice(&v.as_bytes()[..vc]);
        }
        s
    }

    #[test]
    fn decodes_sorts_and_interns() {
        let mut d = Decoder::new(false);
        let a = d
            .decode(&sample(abi::GO_OK, &[("z", "1"), ("endpoint", "/a")], 7))
            .unwrap();
        assert_eq!(
            a.labels.iter().map(|(k, _)| &**k).collect::<Vec<_>>(),
            ["endpoint", "z"]
        );
        assert_eq!(a.get("endpoint"), Some("/a"));
        assert_eq!(a.goid, None);
        let b = d
            .decode(&sample(abi::GO_OK, &[("z", "1"), ("endpoint", "/a")], 8))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same set, another goroutine: shared");
        let c = d
            .decode(&sample(abi::GO_OK, &[("endpoint", "/b")], 7))
            .unwrap();
        assert_ne!(a, c);
        assert!(d.decode(&sample(abi::GO_OK, &[], 7)).is_none());
        assert_eq!(d.stats().read, 4);
        assert_eq!(d.stats().labelled, 3);
    }

    #[test]
    fn goid_makes_sets_per_goroutine() {
        let mut d = Decoder::new(true);
        let a = d.decode(&sample(abi::GO_OK, &[("k", "v")], 7)).unwrap();
        let b = d.decode(&sample(abi::GO_OK, &[("k", "v")], 8)).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.goid, Some(8));
        let none = d.decode(&sample(abi::GO_OK, &[], 9)).unwrap();
        assert!(none.labels.is_empty() && none.goid == Some(9));
    }

    #[test]
    fn untrusted_records_carry_nothing_and_are_counted() {
        let mut d = Decoder::new(true);
        for st in [abi::GO_MISMATCH, abi::GO_FAULT, abi::GO_BAD] {
            assert!(d.decode(&sample(st, &[("k", "v")], 1)).is_none());
        }
        assert!(d.decode(&sample(abi::GO_NONE, &[("k", "v")], 1)).is_none());
        let st = d.stats();
        assert_eq!((st.mismatched, st.faults, st.bad, st.read), (1, 1, 1, 0));
        assert!(st.comment().unwrap().contains("procid_mismatch=1"));
        assert_eq!(Decoder::new(false).stats().comment(), None);
    }

    #[test]
    fn cut_strings_end_on_a_character() {
        // 201 bytes: the cap (128) falls inside a character.
        let long = format!("a{}", "é".repeat(100));
        let mut d = Decoder::new(false);
        let s = d.decode(&sample(abi::GO_OK, &[("k", &long)], 1)).unwrap();
        let v = s.get("k").unwrap();
        assert_eq!(v.len(), abi::GO_VALUE_LEN - 1);
        assert!(long.starts_with(v));
        assert_eq!(d.stats().cut, 1);
    }
}
