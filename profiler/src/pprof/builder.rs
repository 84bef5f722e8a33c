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
    /// Largest function id of the profile this builder continued.
    max_function_id: u64,
}

impl ProfileBuilder {
    /// A builder whose string table already holds the mandatory "".
    pub fn new() -> Self {
        let mut b = ProfileBuilder::default();
        b.intern("");
        b
    }

    /// A builder that continues an existing profile: its strings and
    /// functions are indexed so new ones are only added when really new.
    pub fn from_profile(profile: Profile) -> Self {
        let mut strings = HashMap::new();
        for (i, s) in profile.string_table.iter().enumerate() {
            strings.entry(s.clone()).or_insert(i as i64);
        }
        let max_function_id = profile.function.iter().map(|f| f.id).max().unwrap_or(0);
        let mut b = ProfileBuilder {
            profile,
            strings,
            functions: HashMap::new(),
            max_function_id,
        };
        if b.profile.string_table.is_empty() {
            b.intern("");
        }
        let keys: Vec<(FunctionKey, u64)> = b
            .profile
            .function
            .iter()
            .map(|f| {
                let key = FunctionKey {
                    name: b.profile.str(f.name).to_owned(),
                    system_name: b.profile.str(f.system_name).to_owned(),
                    filename: b.profile.str(f.filename).to_owned(),
                    start_line: f.start_line,
                };
                (key, f.id)
            })
            .collect();
        for (k, id) in keys {
            b.functions.entry(k).or_insert(id);
        }
        b
    }

    /// Ids need only be unique: continue after the largest one (for
    /// profiles made here, the count).
    fn next_function_id(&self) -> u64 {
        self.profile
            .function
            .last()
            .map_or(0, |f| f.id)
            .max(self.max_function_id)
            + 1
    }

    /// The profile so far, for reading.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Mutable access to a location added earlier, by position.
    pub fn location_at_mut(&mut self, index: usize) -> Option<&mut Location> {
        self.profile.location.get_mut(index)
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

    /// Sets the sample type `go tool pprof` shows by default (a string
    /// index, as from [`ProfileBuilder::intern`]).
    pub fn set_default_sample_type(&mut self, string_index: i64) {
        self.profile.default_sample_type = string_index;
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
        self.profile.mapping.iter_mut().find(|m| m.id == id)
    }

    /// Id of the function with this key, adding it if new.
    pub fn function(&mut self, key: &FunctionKey) -> u64 {
        if let Some(&id) = self.functions.get(key) {
            return id;
        }
        let f = Function {
            id: self.next_function_id(),
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
