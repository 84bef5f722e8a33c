//! First-fit allocation of row ranges in the shared unwind-row array.
//!
//! Tables are large (up to millions of rows) and few (tens to hundreds),
//! and come and go with the binaries processes map: a free list of extents
//! sorted by start, merged with their neighbours on free, is all it takes.
//! First fit keeps the low end of the array packed, so the high-water mark
//! (what [`RowAllocator::reused`] measures against) only grows when the
//! array is really fuller.
//!
//! There is no compaction: when no free extent is large enough, the caller
//! evicts tables (least recently used first) until one is. A table no larger
//! than the array therefore always fits in the end; fragmentation can only
//! cost extra evictions.

use std::collections::BTreeMap;

/// A range of rows: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub start: u32,
    pub len: u32,
}

impl Extent {
    pub fn end(self) -> u32 {
        self.start + self.len
    }
}

/// The free extents of an array of `capacity` rows.
#[derive(Debug)]
pub(crate) struct RowAllocator {
    capacity: u32,
    /// start -> len; never empty extents, never two touching.
    free: BTreeMap<u32, u32>,
    free_rows: u32,
    /// One past the highest row ever handed out.
    high_water: u32,
}

impl RowAllocator {
    pub fn new(capacity: u32) -> RowAllocator {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        RowAllocator {
            capacity,
            free,
            free_rows: capacity,
            high_water: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Rows not handed out.
    #[cfg(test)]
    pub fn free_rows(&self) -> u32 {
        self.free_rows
    }

    /// One past the highest row ever handed out: how much of the array has
    /// ever been written.
    pub fn high_water(&self) -> u32 {
        self.high_water
    }

    /// The lowest free extent of at least `len` rows, taken. `None` if
    /// there is none (or `len` is 0).
    pub fn alloc(&mut self, len: u32) -> Option<Extent> {
        if len == 0 {
            return None;
        }
        let (&start, &have) = self.free.iter().find(|(_, &l)| l >= len)?;
        self.free.remove(&start);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        self.free_rows -= len;
        self.high_water = self.high_water.max(start + len);
        Some(Extent { start, len })
    }

    /// How many rows of `e` had been handed out before (rows a freed table
    /// used): with first fit, exactly those below the high-water mark as it
    /// was before `e` was allocated. Call with the mark from before.
    pub fn reused(e: Extent, high_water_before: u32) -> u32 {
        high_water_before.min(e.end()).saturating_sub(e.start)
    }

    /// Gives `e` back, merging it with free neighbours.
    pub fn free(&mut self, e: Extent) {
        debug_assert!(e.len > 0 && e.end() <= self.capacity);
        debug_assert!(self.is_allocated(e), "double free of {e:?}");
        let mut start = e.start;
        let mut len = e.len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.free.remove(&e.end()) {
            len += nl;
        }
        self.free.insert(start, len);
        self.free_rows += e.len;
    }

    /// Whether no free extent overlaps `e`.
    fn is_allocated(&self, e: Extent) -> bool {
        let before = self
            .free
            .range(..e.end())
            .next_back()
            .is_some_and(|(&s, &l)| s + l > e.start);
        !before
    }

    /// The largest free extent, in rows.
    #[cfg(test)]
    pub fn largest_free(&self) -> u32 {
        self.free.values().copied().max().unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small deterministic random source for the model tests: each call
    /// gives a number below its argument.
    pub(crate) fn xorshift(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    #[test]
    fn first_fit_and_merging() {
        let mut a = RowAllocator::new(100);
        let x = a.alloc(30).unwrap();
        let y = a.alloc(30).unwrap();
        let z = a.alloc(30).unwrap();
        assert_eq!((x.start, y.start, z.start), (0, 30, 60));
        assert_eq!(a.free_rows(), 10);
        assert!(a.alloc(11).is_none());
        // A hole between two tables: a small request takes it, the rest
        // of it stays free.
        a.free(y);
        let w = a.alloc(10).unwrap();
        assert_eq!(w.start, 30);
        assert_eq!(a.largest_free(), 20);
        // Freeing the neighbours merges everything back.
        a.free(x);
        a.free(w);
        a.free(z);
        assert_eq!(a.free_rows(), 100);
        assert_eq!(a.largest_free(), 100);
        assert_eq!(a.alloc(100), Some(Extent { start: 0, len: 100 }));
        assert!(a.alloc(0).is_none());
    }

    #[test]
    fn reuse_is_measured_against_the_high_water_mark() {
        let mut a = RowAllocator::new(100);
        let x = a.alloc(40).unwrap();
        assert_eq!(RowAllocator::reused(x, 0), 0);
        let hw = a.high_water();
        a.free(x);
        // Half of the new table lands on rows the freed one had used.
        let y = a.alloc(60).unwrap();
        assert_eq!(y.start, 0);
        assert_eq!(RowAllocator::reused(y, hw), 40);
        assert_eq!(a.high_water(), 60);
    }

    /// Random allocations and frees against a model of every row: the
    /// free list never overlaps what is handed out, and the count of free
    /// rows always matches.
    #[test]
    fn random_traffic_keeps_the_free_list_exact() {
        let mut a = RowAllocator::new(1000);
        let mut owned = vec![false; 1000];
        let mut live: Vec<Extent> = Vec::new();
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            if live.is_empty() || next(3) > 0 {
                let len = 1 + next(120) as u32;
                if let Some(e) = a.alloc(len) {
                    for r in e.start..e.end() {
                        assert!(!owned[r as usize], "row {r} handed out twice");
                        owned[r as usize] = true;
                    }
                    live.push(e);
                } else {
                    // First fit fails only when no hole is large enough.
                    assert!(a.largest_free() < len);
                }
            } else {
                let e = live.swap_remove(next(live.len() as u64) as usize);
                for r in e.start..e.end() {
                    owned[r as usize] = false;
                }
                a.free(e);
            }
            let free = owned.iter().filter(|&&o| !o).count() as u32;
            assert_eq!(a.free_rows(), free);
        }
    }
}
