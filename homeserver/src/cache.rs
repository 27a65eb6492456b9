//! A bounded in-memory cache whose writers invalidate what they change, so a reader racing a write never caches what was just replaced.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::Mutex,
};

/// A map that keeps its `capacity` most recently inserted entries. Writers
/// invalidate what they change after committing; a load that began before
/// an invalidation is not cached (it may hold what was just replaced).
pub(crate) struct Cache<K, V> {
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
}

struct Inner<K, V> {
    map: HashMap<K, V>,
    /// Insertion order, for eviction.
    order: VecDeque<K>,
    generation: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                generation: 0,
            }),
            capacity,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner().map.get(key).cloned()
    }

    /// The generation to pass to [`Cache::insert`] for a load about to start.
    pub(crate) fn generation(&self) -> u64 {
        self.inner().generation
    }

    /// Caches what a load that started at `generation` found, unless
    /// something was invalidated meanwhile.
    pub(crate) fn insert(&self, generation: u64, key: K, value: V) {
        let mut inner = self.inner();
        if inner.generation != generation {
            return;
        }
        if inner.map.insert(key.clone(), value).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }

    /// Records the value a writer just committed (a racing reader's older
    /// load is then refused, as after an invalidation).
    pub(crate) fn set(&self, key: K, value: V) {
        let generation = {
            let mut inner = self.inner();
            inner.generation += 1;
            inner.generation
        };
        self.insert(generation, key, value);
    }

    /// Forgets entries that were just changed.
    pub(crate) fn invalidate<'a, Q>(&self, keys: impl IntoIterator<Item = &'a Q>)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        let mut inner = self.inner();
        inner.generation += 1;
        for k in keys {
            inner.map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a slow reader loaded before a writer's change never lands in
    /// the cache after it.
    #[test]
    fn a_load_overtaken_by_a_change_is_not_cached() {
        let cache: Cache<String, u32> = Cache::new(2);
        let before = cache.generation();
        cache.invalidate(["k"]);
        cache.insert(before, "k".into(), 1);
        assert_eq!(cache.get("k"), None);
        let now = cache.generation();
        cache.insert(now, "k".into(), 2);
        assert_eq!(cache.get("k"), Some(2));
        cache.insert(now, "a".into(), 3);
        cache.insert(now, "b".into(), 4);
        assert_eq!(cache.get("k"), None, "the oldest entry makes room");
    }
}
