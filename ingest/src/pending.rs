//! The ids a partition holds that its store may not have applied yet — appended (offset known)
//! or in flight — against which the write path drops retried events. Each id is one shared
//! string, held by the set and by the append that reserved it, together with the hash the set
//! gave it, so that recording it once appended and forgetting it when old neither hashes nor
//! compares its text again.

use hashbrown::HashTable;
use std::collections::VecDeque;
use std::sync::Arc;

/// An id as the pending set holds it, shared with the append that reserved it, with its hash
/// under that set's hasher (so only the set that made it may take it back).
#[derive(Clone)]
pub(crate) struct Id {
    hash: u64,
    text: Arc<str>,
}

impl std::ops::Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

/// The pending ids of one partition.
#[derive(Default)]
pub(crate) struct PendingIds {
    /// Whether the ids of the log's tail the store has not applied were read in.
    pub(crate) loaded: bool,
    hasher: ahash::RandomState,
    held: HashTable<Arc<str>>,
    /// Appended ids in the order they were recorded, with their offset (offsets ascending but
    /// for concurrent appends, whose ids then stay a little longer).
    by_offset: VecDeque<(u64, Id)>,
}

impl PendingIds {
    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Whether `id`, of `hash`, is held (appended or in flight).
    fn holds(&self, hash: u64, id: &str) -> bool {
        self.held.find(hash, |h| &**h == id).is_some()
    }

    /// Holds `id`, of `hash`, known not to be held.
    fn hold(&mut self, hash: u64, id: Arc<str>) {
        let hasher = &self.hasher;
        self.held.insert_unique(hash, id, |h| hasher.hash_one(&**h));
    }

    /// `text` as an id of this set (hashed once, here).
    pub(crate) fn id(&self, text: &str) -> Id {
        Id {
            hash: self.hash(text),
            text: Arc::from(text),
        }
    }

    #[cfg(test)]
    fn contains(&self, id: &str) -> bool {
        self.holds(self.hash(id), id)
    }

    /// Holds `id` as in flight and returns it shared, or `None` when it is held already.
    pub(crate) fn reserve(&mut self, id: &str) -> Option<Id> {
        let id = self.id(id);
        if self.holds(id.hash, &id) {
            return None;
        }
        self.hold(id.hash, id.text.clone());
        Some(id)
    }

    /// Notes that `id` (made by this set) was appended at `offset`, holding it if it was not.
    pub(crate) fn record(&mut self, id: Id, offset: u64) {
        if !self.holds(id.hash, &id) {
            self.hold(id.hash, id.text.clone());
        }
        self.by_offset.push_back((offset, id));
    }

    /// Lets go of `id` (its append failed, or the store rejected it).
    pub(crate) fn forget(&mut self, id: &str) {
        if let Ok(entry) = self.held.find_entry(self.hash(id), |h| &**h == id) {
            entry.remove();
        }
    }

    /// Forgets ids below `stored`: from there on the store's index answers for them.
    pub(crate) fn prune(&mut self, stored: u64) {
        while self.by_offset.front().is_some_and(|(o, _)| *o < stored) {
            self.forget_oldest();
        }
    }

    /// Forgets the oldest appended ids beyond `keep` (a node without a store to prune against).
    pub(crate) fn cap(&mut self, keep: usize) {
        while self.by_offset.len() > keep {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        let Some((_, id)) = self.by_offset.pop_front() else {
            return;
        };
        // Mostly the very string the set holds, so no text is read; an id recorded twice (the
        // log's tail read after a restart) is found by its text.
        if let Ok(entry) = self
            .held
            .find_entry(id.hash, |h| Arc::ptr_eq(h, &id.text) || **h == *id)
        {
            entry.remove();
        }
    }

    /// Ids held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn pending_ids_are_pruned_below_the_store_and_capped_without_one() {
        let mut pending = PendingIds::default();
        for i in 0..10 {
            let id = pending.id(&format!("id{i}"));
            pending.record(id, i);
        }
        pending.prune(3);
        assert!(!pending.contains("id2"));
        assert!(pending.contains("id3"));
        pending.cap(4);
        assert_eq!(pending.by_offset.len(), 4);
        assert_eq!(pending.len(), 4);
        assert!(pending.contains("id9"));
        assert!(!pending.contains("id5"));
    }

    /// What the write path does with a partition's pending ids.
    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u8),
        Record(u8, u64),
        Forget(u8),
        Prune(u64),
        Cap(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Reserve),
            (any::<u8>(), 0..64u64).prop_map(|(i, o)| Op::Record(i, o)),
            any::<u8>().prop_map(Op::Forget),
            (0..64u64).prop_map(Op::Prune),
            (0..32usize).prop_map(Op::Cap),
        ]
    }

    proptest! {
        /// Against the plain model it replaced: a set of strings and a queue of (offset, id).
        #[test]
        fn pending_ids_hold_what_a_set_and_a_queue_of_strings_hold(ops in proptest::collection::vec(op(), 0..400)) {
            let mut pending = PendingIds::default();
            let mut set: HashSet<String> = HashSet::new();
            let mut queue: VecDeque<(u64, String)> = VecDeque::new();
            let forget_front = |set: &mut HashSet<String>, queue: &mut VecDeque<(u64, String)>| {
                if let Some((_, id)) = queue.pop_front() {
                    set.remove(&id);
                }
            };
            for op in ops {
                match op {
                    Op::Reserve(i) => {
                        let id = format!("id{}", i % 40);
                        let fresh = set.insert(id.clone());
                        prop_assert_eq!(pending.reserve(&id).is_some(), fresh);
                    }
                    Op::Record(i, offset) => {
                        let id = format!("id{}", i % 40);
                        set.insert(id.clone());
                        queue.push_back((offset, id.clone()));
                        let id = pending.id(&id);
                        pending.record(id, offset);
                    }
                    Op::Forget(i) => {
                        let id = format!("id{}", i % 40);
                        set.remove(&id);
                        pending.forget(&id);
                    }
                    Op::Prune(stored) => {
                        while queue.front().is_some_and(|(o, _)| *o < stored) {
                            forget_front(&mut set, &mut queue);
                        }
                        pending.prune(stored);
                    }
                    Op::Cap(keep) => {
                        while queue.len() > keep {
                            forget_front(&mut set, &mut queue);
                        }
                        pending.cap(keep);
                    }
                }
                prop_assert_eq!(pending.len(), set.len());
                for i in 0..40 {
                    let id = format!("id{i}");
                    prop_assert_eq!(pending.contains(&id), set.contains(&id));
                }
            }
        }
    }
}
