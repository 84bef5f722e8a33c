//! A bounded cache of decoded functions, shared by concurrent lookups.
//!
//! Decoding a function's pc-value tables costs a scan proportional to its
//! size; profiles hit the same few thousand functions over and over, so each
//! decoded function is kept and later PCs in it cost binary searches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Values (decoded functions) by index, an approximate LRU that needs no per-hit
/// bookkeeping: each shard has a young and an old generation; inserts go to
/// the young one, and when it is full it becomes the old one (dropping the
/// previous old one). A hit in the old generation moves the entry back to the
/// young one, so entries in use survive and memory stays bounded. Sharding
/// keeps lock contention low when several threads symbolize at once.
pub(crate) struct Cache<T> {
    shards: [Mutex<Generations<T>>; CACHE_SHARDS],
}

/// The two generations of one shard.
struct Generations<T> {
    young: HashMap<usize, Arc<T>>,
    old: HashMap<usize, Arc<T>>,
}

impl<T> Default for Generations<T> {
    fn default() -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

/// Number of cache shards.
const CACHE_SHARDS: usize = 16;
/// Functions per generation per shard (at most 8192 decoded functions kept).
const CACHE_GENERATION: usize = 256;

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl<T> Generations<T> {
    /// Adds an entry to the young generation, aging it first if it is full.
    fn insert(&mut self, idx: usize, d: Arc<T>) {
        if self.young.len() >= CACHE_GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(idx, d);
    }

    /// Finds an entry, promoting it from the old generation.
    fn get(&mut self, idx: usize) -> Option<Arc<T>> {
        if let Some(d) = self.young.get(&idx) {
            return Some(d.clone());
        }
        let d = self.old.remove(&idx)?;
        self.insert(idx, d.clone());
        Some(d)
    }
}

impl<T> Cache<T> {
    /// The cached function `idx`, decoding (outside the lock) on a miss.
    pub fn get_or_insert(&self, idx: usize, decode: impl FnOnce() -> Option<T>) -> Option<Arc<T>> {
        let shard = &self.shards[idx % CACHE_SHARDS];
        if let Some(d) = lock(shard).get(idx) {
            return Some(d);
        }
        let d = Arc::new(decode()?);
        lock(shard).insert(idx, d.clone());
        Some(d)
    }
}

/// Locks a cache shard. A panic elsewhere cannot leave a shard inconsistent
/// (inserts are single calls), so a poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_entries_survive_and_size_is_bounded() {
        let cache: Cache<usize> = Cache::default();
        let mut decodes = 0;
        let mut get = |i: usize| {
            cache.get_or_insert(i, || {
                decodes += 1;
                Some(i)
            })
        };
        for i in 0..100_000 {
            assert_eq!(get(i).as_deref(), Some(&i));
            assert_eq!(get(7).as_deref(), Some(&7));
        }
        // 7 was decoded once; everything else once each.
        assert_eq!(decodes, 100_000);
        let held: usize = cache
            .shards
            .iter()
            .map(|s| {
                let g = lock(s);
                g.young.len() + g.old.len()
            })
            .sum();
        assert!(
            held <= CACHE_SHARDS * 2 * CACHE_GENERATION,
            "{held} entries held"
        );
    }

    #[test]
    fn failed_decodes_are_not_cached() {
        let cache: Cache<u8> = Cache::default();
        assert_eq!(cache.get_or_insert(1, || None), None);
        assert_eq!(cache.get_or_insert(1, || Some(5)).as_deref(), Some(&5));
    }
}
