//! Per-topic client state in first-use order, found by name.
//!
//! Sends nearly always repeat the previous send's topic, so the last topic
//! found is checked first with one string compare; only a different topic
//! costs a hash lookup.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// What a [`TopicTable`] holds: something with a topic name.
pub(crate) trait Named {
    fn name(&self) -> &str;
}

/// Topics in the order first inserted; never removed.
#[derive(Debug)]
pub(crate) struct TopicTable<T> {
    entries: Vec<T>,
    by_name: HashMap<Arc<str>, usize>,
    /// Index of the topic [`find`](Self::find) returned last.
    last: usize,
}

impl<T> Default for TopicTable<T> {
    fn default() -> TopicTable<T> {
        TopicTable {
            entries: Vec::new(),
            by_name: HashMap::new(),
            last: 0,
        }
    }
}

impl<T: Named> TopicTable<T> {
    /// Index of `name`, remembered as the last one found.
    pub(crate) fn find(&mut self, name: &str) -> Option<usize> {
        if self
            .entries
            .get(self.last)
            .is_some_and(|e| e.name() == name)
        {
            return Some(self.last);
        }
        let i = self.position(name)?;
        self.last = i;
        Some(i)
    }

    /// Index of `name`, without touching the last-found mark.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Adds `entry` unless its topic is there already; returns its index.
    pub(crate) fn insert(&mut self, entry: T) -> usize {
        if let Some(i) = self.position(entry.name()) {
            return i;
        }
        let i = self.entries.len();
        self.by_name.insert(Arc::from(entry.name()), i);
        self.entries.push(entry);
        i
    }
}

impl<T> Deref for TopicTable<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.entries
    }
}

impl<T> DerefMut for TopicTable<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Named for String {
        fn name(&self) -> &str {
            self
        }
    }

    #[test]
    fn topics_are_found_by_name_whichever_was_used_last() {
        let mut table = TopicTable::default();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(table.insert(name.to_owned()), i);
        }
        assert_eq!(table.insert("b".to_owned()), 1, "a topic is added once");
        assert_eq!(table.len(), 3);
        for name in ["a", "a", "c", "b", "c", "a", "b", "b"] {
            let t = table.find(name).unwrap();
            assert_eq!(table[t], name);
            assert_eq!(table.last, t);
        }
        assert_eq!(table.find("d"), None);
        assert_eq!(table[table.last], "b");
    }
}
