//! The recorder's store: counts that only grow, for one bounded capture.

use super::{Added, StackId, StackTable, Store};
use crate::engine::ingest::{Ingested, Normalized};

/// Every stack of the capture with its total counts.
#[derive(Default)]
pub struct Totals {
    stacks: StackTable,
    samples: u64,
}

impl Totals {
    pub fn new() -> Totals {
        Totals::default()
    }

    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    pub fn stacks_mut(&mut self) -> &mut StackTable {
        &mut self.stacks
    }

    /// Samples counted.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Distinct processes with samples.
    pub fn processes(&self) -> usize {
        let mut keys: Vec<_> = self.stacks.iter().map(|(_, e)| e.key.proc).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }
}

impl Store for Totals {
    fn add(&mut self, s: &Ingested<'_>) -> Added {
        self.samples += 1;
        self.stacks.add(s)
    }

    fn set_norm(&mut self, id: StackId, norm: Normalized) {
        self.stacks.set_norm(id, norm);
    }
}
