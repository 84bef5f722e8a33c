//! Building a [`Profile`] without thinking about ids: strings, functions,
//! mappings and locations are interned, and ids are handed out in order.

use std::collections::HashMap;

use super::proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// What makes two functions the same in pprof's eyes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FunctionKey {
    pub name: String,
    pub system_name: String,
    pub filename: String,
    pub start_line: i64,
}

/// Accumulates a profile. Every `add_*`/`intern` call is idempotent for equal
/// inputs, so callers can feed it straight from their own caches.
#[derive(Default)]
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<FunctionKey, u64>,
}

impl ProfileBuilder {
    /// A builder whose string table already holds the mandatory "".
    pub fn new() -> Self {
        let mut b = ProfileBuilder::default();
        b.intern("");
        b
    }

    /// Index of `s` in the string table, adding it if new.
    pub fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    /// A [`ValueType`] from two strings.
    pub fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.intern(ty),
            unit: self.intern(unit),
        }
    }

    /// Sets the sample types, in the order sample values are given.
    pub fn sample_types(&mut self, types: &[(&str, &str)]) {
        self.profile.sample_type = types.iter().map(|(t, u)| self.value_type(t, u)).collect();
    }

    /// Sets the period type and period.
    pub fn period(&mut self, ty: &str, unit: &str, period: i64) {
        self.profile.period_type = Some(self.value_type(ty, unit));
        self.profile.period = period;
    }

    /// Sets the wall-clock start and the duration.
    pub fn time(&mut self, time_nanos: i64, duration_nanos: i64) {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
    }

    /// Adds a free-text comment.
    pub fn comment(&mut self, text: &str) {
        let i = self.intern(text);
        self.profile.comment.push(i);
    }

    /// Adds a mapping and returns its id. Mappings are not deduplicated: the
    /// caller knows which ranges are distinct.
    pub fn add_mapping(&mut self, mut m: Mapping) -> u64 {
        m.id = self.profile.mapping.len() as u64 + 1;
        let id = m.id;
        self.profile.mapping.push(m);
        id
    }

    /// Mutable access to a mapping added earlier (to set the `has_*` flags
    /// once symbolization is known to have succeeded).
    pub fn mapping_mut(&mut self, id: u64) -> Option<&mut Mapping> {
        self.profile.mapping.get_mut((id as usize).checked_sub(1)?)
    }

    /// Id of the function with this key, adding it if new.
    pub fn function(&mut self, key: &FunctionKey) -> u64 {
        if let Some(&id) = self.functions.get(key) {
            return id;
        }
        let f = Function {
            id: self.profile.function.len() as u64 + 1,
            name: self.intern(&key.name),
            system_name: self.intern(&key.system_name),
            filename: self.intern(&key.filename),
            start_line: key.start_line,
        };
        let id = f.id;
        self.profile.function.push(f);
        self.functions.insert(key.clone(), id);
        id
    }

    /// Adds a location and returns its id. The caller deduplicates by
    /// (mapping, address), since it owns that key.
    pub fn add_location(&mut self, mapping_id: u64, address: u64, line: Vec<Line>) -> u64 {
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        id
    }

    /// A string label.
    pub fn str_label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.intern(key),
            str: self.intern(value),
            num: 0,
            num_unit: 0,
        }
    }

    /// A numeric label.
    pub fn num_label(&mut self, key: &str, value: i64) -> Label {
        Label {
            key: self.intern(key),
            str: 0,
            num: value,
            num_unit: 0,
        }
    }

    /// Adds a sample. `location_id[0]` is the leaf.
    pub fn add_sample(&mut self, location_id: Vec<u64>, value: Vec<i64>, label: Vec<Label>) {
        self.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }

    /// The finished profile.
    pub fn finish(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_starts_with_empty_string() {
        let mut b = ProfileBuilder::new();
        assert_eq!(b.intern(""), 0);
        let a = b.intern("main.main");
        assert_eq!(b.intern("main.main"), a);
        let key = FunctionKey {
            name: "f".into(),
            system_name: "f".into(),
            filename: "f.go".into(),
            start_line: 3,
        };
        let f1 = b.function(&key);
        assert_eq!(b.function(&key), f1);
        let p = b.finish();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.function.len(), 1);
        assert_eq!(p.function[0].id, 1);
    }
}
