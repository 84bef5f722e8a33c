//! Stores: where counted stacks live between ingest and profiles.
//!
//! Both front ends intern stacks the same way ([`StackTable`]): one entry
//! per distinct (process, thread, user stack, kernel stack), with its
//! normalized frames, its symbolization once done, and its counts. What
//! differs is time:
//!
//! - the recorder keeps totals ([`totals::Totals`]): counts only grow;
//! - the agent keeps a rolling window ([`window::Window`]): every sample
//!   as a small timed event, so that any time range can be cut, with old
//!   events (and then stacks) dropped by age and by a memory cap.

pub mod totals;
pub mod window;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::identity::{ProcKey, ProcMeta};
use super::ingest::{Ingested, Normalized};
use super::normalize::UserMaps;
use super::resolve::ResolvedLoc;
use super::state::ThreadState;
use crate::golabels::GoLabelSet;

/// What identifies one counted stack.
#[derive(Debug, PartialEq, Eq)]
pub struct StackKey {
    pub proc: ProcKey,
    /// The process's mapping epoch (an `exec`, a library reloaded at the
    /// same address start a new one): identical addresses in two epochs
    /// are different code.
    pub epoch: u32,
    pub tid: u32,
    /// User frames, innermost first (runtime addresses), after the leaf
    /// fix-up and before normalization cut anything.
    pub user: Box<[u64]>,
    /// Kernel frames, innermost first.
    pub kernel: Box<[u64]>,
    /// On CPU or which wait: the same frames running and waiting are two
    /// stacks.
    pub state: ThreadState,
    /// The goroutine's pprof labels: the same frames under two label sets
    /// are two stacks, as in Go's own CPU profile.
    pub go: Option<Arc<GoLabelSet>>,
}

/// Where a store keeps one stack.
pub type StackId = u32;

/// One distinct stack and everything learnt about it.
pub struct StackEntry {
    pub key: Arc<StackKey>,
    pub meta: Arc<ProcMeta>,
    /// The thread's name when the stack was first seen. Kept with the
    /// stack (stacks are per thread) so that it goes with it: a process
    /// churning through threads does not pile up names.
    pub thread: Arc<str>,
    /// The user frames that go into profiles, with their mappings;
    /// `None` until normalized.
    pub norm: Option<Normalized>,
    /// The kept frames named, once some profile needed them.
    pub resolved: Option<Arc<[ResolvedLoc]>>,
    /// Samples, and their summed weight, currently counted here.
    pub samples: u64,
    pub weight: u64,
}

impl StackEntry {
    /// The user frames to encode, each with its mapping (if normalized).
    pub fn user_maps(&self) -> Option<&UserMaps> {
        self.norm.as_ref().map(|n| &n.maps)
    }

    /// Bytes this entry holds, roughly: for memory caps.
    fn bytes(&self) -> usize {
        const BASE: usize = 200;
        BASE + 8 * (self.key.user.len() + self.key.kernel.len())
            + self.norm.as_ref().map_or(0, |n| 8 * n.maps.len())
            + self
                .resolved
                .as_ref()
                .map_or(0, |r| r.len() * std::mem::size_of::<ResolvedLoc>())
    }
}

/// What [`StackTable::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub id: StackId,
    /// The stack's user frames want (re)normalizing: it is new, or it
    /// missed an address and its process's mappings were re-read since.
    pub needs_norm: bool,
}

/// Interned stacks with their counts, in slots reused after a stack is
/// freed. Looking a stack up allocates nothing: the index is keyed by a
/// hash of the sample's frames, compared in full on a hit.
#[derive(Default)]
pub struct StackTable {
    slots: Vec<Option<StackEntry>>,
    free: Vec<StackId>,
    index: HashMap<u64, Ids, BuildHasherDefault<PassThrough>>,
    bytes: usize,
}

/// The stacks under one hash: almost always one.
enum Ids {
    One(StackId),
    Many(Vec<StackId>),
}

impl StackTable {
    /// Counts one sample, interning its stack if new.
    pub fn add(&mut self, s: &Ingested<'_>) -> Added {
        let key = s.meta.key;
        let h = hash_stack(
            key,
            s.epoch,
            s.tid,
            s.state,
            &s.user,
            s.kernel,
            s.go.as_deref(),
        );
        let found = self.index.get(&h).and_then(|ids| {
            let same = |id: &StackId| {
                self.slots[*id as usize].as_ref().is_some_and(|e| {
                    e.key.proc == key
                        && e.key.epoch == s.epoch
                        && e.key.tid == s.tid
                        && e.key.state == s.state
                        && *e.key.user == *s.user
                        && *e.key.kernel == *s.kernel
                        && e.key.go == s.go
                })
            };
            match ids {
                Ids::One(id) => same(id).then_some(*id),
                Ids::Many(v) => v.iter().copied().find(|id| same(id)),
            }
        });
        let (id, fresh) = match found {
            Some(id) => (id, false),
            None => (self.intern(h, s), true),
        };
        let Some(e) = self.slots[id as usize].as_mut() else {
            return Added {
                id,
                needs_norm: false,
            };
        };
        e.samples += 1;
        e.weight = e.weight.saturating_add(s.weight);
        let stale = e
            .norm
            .as_ref()
            .is_some_and(|n| n.missed && n.maps_gen != s.maps_gen);
        Added {
            id,
            needs_norm: fresh || stale,
        }
    }

    fn intern(&mut self, h: u64, s: &Ingested<'_>) -> StackId {
        let entry = StackEntry {
            key: Arc::new(StackKey {
                proc: s.meta.key,
                epoch: s.epoch,
                tid: s.tid,
                user: s.user.as_ref().into(),
                kernel: s.kernel.into(),
                state: s.state,
                go: s.go.clone(),
            }),
            meta: s.meta.clone(),
            thread: String::from_utf8_lossy(s.thread).into(),
            norm: None,
            resolved: None,
            samples: 0,
            weight: 0,
        };
        self.bytes += entry.bytes();
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(entry);
                id
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as StackId
            }
        };
        match self.index.get_mut(&h) {
            None => {
                self.index.insert(h, Ids::One(id));
            }
            Some(Ids::One(other)) => {
                let other = *other;
                self.index.insert(h, Ids::Many(vec![other, id]));
            }
            Some(Ids::Many(v)) => v.push(id),
        }
        id
    }

    /// Sets a stack's normalized frames (dropping an older
    /// symbolization, which named other frames).
    pub fn set_norm(&mut self, id: StackId, norm: Normalized) {
        if let Some(e) = self.slots.get_mut(id as usize).and_then(Option::as_mut) {
            let before = e.bytes();
            e.norm = Some(norm);
            e.resolved = None;
            self.bytes = self.bytes - before + e.bytes();
        }
    }

    /// Stores a symbolization made elsewhere, unless the slot now holds
    /// another stack (or the same one normalized again).
    pub fn set_resolved(&mut self, id: StackId, key: &Arc<StackKey>, locs: Arc<[ResolvedLoc]>) {
        if let Some(e) = self.slots.get_mut(id as usize).and_then(Option::as_mut) {
            let same_norm = e.norm.as_ref().is_some_and(|n| n.maps.len() == locs.len());
            if Arc::ptr_eq(&e.key, key) && e.resolved.is_none() && same_norm {
                let before = e.bytes();
                e.resolved = Some(locs);
                self.bytes = self.bytes - before + e.bytes();
            }
        }
    }

    /// One sample fewer for stack `id`, of weight `weight`; the stack is
    /// freed with its last sample. Returns whether it was freed.
    pub fn release(&mut self, id: StackId, weight: u64) -> bool {
        let Some(e) = self.slots.get_mut(id as usize).and_then(Option::as_mut) else {
            return false;
        };
        e.samples = e.samples.saturating_sub(1);
        e.weight = e.weight.saturating_sub(weight);
        if e.samples > 0 {
            return false;
        }
        let Some(e) = self.slots[id as usize].take() else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(e.bytes());
        self.free.push(id);
        let h = hash_stack(
            e.key.proc,
            e.key.epoch,
            e.key.tid,
            e.key.state,
            &e.key.user,
            &e.key.kernel,
            e.key.go.as_deref(),
        );
        match self.index.get_mut(&h) {
            Some(Ids::Many(v)) => {
                v.retain(|&x| x != id);
                if let [only] = v[..] {
                    self.index.insert(h, Ids::One(only));
                }
            }
            Some(Ids::One(_)) => {
                self.index.remove(&h);
            }
            None => {}
        }
        true
    }

    pub fn get(&self, id: StackId) -> Option<&StackEntry> {
        self.slots.get(id as usize)?.as_ref()
    }

    /// Every stack, with its id.
    pub fn iter(&self) -> impl Iterator<Item = (StackId, &StackEntry)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i as StackId, e.as_ref()?)))
    }

    /// Distinct stacks held.
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held, roughly (see [`StackEntry::bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes + self.len() * std::mem::size_of::<Option<StackEntry>>()
    }
}

/// What the engine needs of a store: count a sample, take normalized
/// frames. The recorder's [`totals::Totals`] and the agent's
/// [`window::Window`] are the two; the agent's sits behind a lock.
pub trait Store {
    fn add(&mut self, s: &Ingested<'_>) -> Added;
    fn set_norm(&mut self, id: StackId, norm: Normalized);
}

/// FxHash's step: the stack hash only needs to spread, not to resist
/// adversaries (samples come from our own BPF program).
fn hash_stack(
    key: ProcKey,
    epoch: u32,
    tid: u32,
    state: ThreadState,
    user: &[u64],
    kernel: &[u64],
    go: Option<&GoLabelSet>,
) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h: u64 = 0;
    let mut mix = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    mix(u64::from(key.pid));
    mix(key.start_ns);
    mix(u64::from(epoch));
    mix(u64::from(tid) | (state as u64) << 32);
    mix(user.len() as u64);
    user.iter().for_each(|&a| mix(a));
    kernel.iter().for_each(|&a| mix(a));
    mix(go.map_or(0, GoLabelSet::hash));
    h
}

/// The index's keys are hashes already.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn meta(pid: u32) -> Arc<ProcMeta> {
        Arc::new(ProcMeta::new(
            ProcKey { pid, start_ns: 1 },
            0,
            "p".into(),
            String::new(),
            Default::default(),
        ))
    }

    fn ing<'a>(m: &Arc<ProcMeta>, tid: u32, user: &'a [u64]) -> Ingested<'a> {
        Ingested {
            meta: m.clone(),
            tid,
            thread: b"t",
            user: Cow::Borrowed(user),
            kernel: &[],
            time_ns: 0,
            weight: 10,
            state: ThreadState::OnCpu,
            maps_gen: 0,
            epoch: 0,
            go: None,
        }
    }

    #[test]
    fn interns_counts_and_frees() {
        let (a, b) = (meta(1), meta(2));
        let mut t = StackTable::default();
        let x = t.add(&ing(&a, 1, &[1, 2]));
        assert!(x.needs_norm);
        let y = t.add(&ing(&a, 1, &[1, 2]));
        assert_eq!(x.id, y.id);
        assert!(!y.needs_norm);
        assert_ne!(t.add(&ing(&a, 2, &[1, 2])).id, x.id, "other thread");
        assert_ne!(t.add(&ing(&b, 1, &[1, 2])).id, x.id, "other process");
        assert_ne!(t.add(&ing(&a, 1, &[1])).id, x.id, "other stack");
        assert_eq!(t.len(), 4);
        let e = t.get(x.id).unwrap();
        assert_eq!((e.samples, e.weight), (2, 20));
        assert!(!t.release(x.id, 10));
        assert!(t.release(x.id, 10));
        assert_eq!(t.len(), 3);
        // The freed slot is reused, and the old stack is a new one again.
        let z = t.add(&ing(&a, 1, &[1, 2]));
        assert!(z.needs_norm);
        assert_eq!(z.id, x.id);
    }

    #[test]
    fn a_missed_stack_is_normalized_again_after_the_maps_change() {
        let a = meta(1);
        let mut t = StackTable::default();
        let x = t.add(&ing(&a, 1, &[1]));
        t.set_norm(
            x.id,
            Normalized {
                maps: vec![None].into(),
                missed: true,
                truncated: false,
                maps_gen: 0,
            },
        );
        assert!(!t.add(&ing(&a, 1, &[1])).needs_norm, "same generation");
        let mut newer = ing(&a, 1, &[1]);
        newer.maps_gen = 1;
        assert!(t.add(&newer).needs_norm);
    }

    #[test]
    fn colliding_hashes_stay_apart() {
        let a = meta(1);
        let mut t = StackTable::default();
        let x = t.add(&ing(&a, 1, &[1]));
        let y = t.add(&ing(&a, 1, &[2]));
        // Force both under one hash bucket, as a collision would.
        let hx = hash_stack(a.key, 0, 1, ThreadState::OnCpu, &[1], &[], None);
        let hy = hash_stack(a.key, 0, 1, ThreadState::OnCpu, &[2], &[], None);
        t.index.remove(&hy);
        if let Some(Ids::One(id)) = t.index.remove(&hx) {
            t.index.insert(hx, Ids::Many(vec![id, y.id]));
        }
        // [1] is still found among the bucket's stacks, and freeing [2]
        // leaves it alone.
        assert_eq!(t.add(&ing(&a, 1, &[1])).id, x.id);
        assert!(t.release(y.id, 10));
        assert_eq!(t.add(&ing(&a, 1, &[1])).id, x.id);
    }
}
