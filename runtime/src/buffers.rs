//! Buffers by name, each at a fixed place for as long as the collection holds it, so that a
//! program resolves the names it binds once and finds its buffers by place from then on
//! ([`crate::Executable::run`]): hashing and comparing some fifteen names every step was a
//! tenth of a tiny model's step. A collection is told apart from every other by an identity
//! no clone shares, and its places change only when a buffer is removed, which counts as a new
//! layout; replacing a buffer under its name keeps its place (and the program checks every
//! buffer's length and type on every run, as before).

use std::sync::atomic::{AtomicU64, Ordering};

use rustc_hash::FxHashMap;

use crate::Buffer;

/// Named buffers with stable places.
#[derive(Debug)]
pub struct Buffers {
    /// This collection's identity (see [`Buffers::layout`]).
    id: u64,
    /// Bumped when places change.
    layout: u64,
    places: FxHashMap<String, usize>,
    entries: Vec<(String, Buffer)>,
}

/// The identities handed out so far.
static IDS: AtomicU64 = AtomicU64::new(0);

impl Default for Buffers {
    fn default() -> Buffers {
        Buffers {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            layout: 0,
            places: FxHashMap::default(),
            entries: Vec::new(),
        }
    }
}

impl Clone for Buffers {
    /// A copy with an identity of its own.
    fn clone(&self) -> Buffers {
        Buffers {
            places: self.places.clone(),
            entries: self.entries.clone(),
            ..Buffers::default()
        }
    }
}

impl Buffers {
    /// An empty collection.
    pub fn new() -> Buffers {
        Buffers::default()
    }

    /// Which collection this is and the version of its places: equal layouts mean every name
    /// is where it was.
    pub fn layout(&self) -> (u64, u64) {
        (self.id, self.layout)
    }

    /// The place of `name`.
    pub fn place(&self, name: &str) -> Option<usize> {
        self.places.get(name).copied()
    }

    /// The buffer at `place`.
    ///
    /// # Panics
    /// If no buffer is there.
    pub fn at_mut(&mut self, place: usize) -> &mut Buffer {
        &mut self.entries[place].1
    }

    /// Holds `buffer` under `name`, in the place of the buffer it replaces if any, which it
    /// returns.
    pub fn insert(&mut self, name: String, buffer: Buffer) -> Option<Buffer> {
        match self.places.get(&name) {
            Some(&place) => Some(std::mem::replace(&mut self.entries[place].1, buffer)),
            None => {
                self.places.insert(name.clone(), self.entries.len());
                self.entries.push((name, buffer));
                None
            }
        }
    }

    /// Takes the buffer named `name` out; the last buffer takes its place.
    pub fn remove(&mut self, name: &str) -> Option<Buffer> {
        let place = self.places.remove(name)?;
        let (_, buffer) = self.entries.swap_remove(place);
        if let Some((moved, _)) = self.entries.get(place) {
            self.places.insert(moved.clone(), place);
        }
        self.layout += 1;
        Some(buffer)
    }

    /// The buffer named `name`.
    pub fn get(&self, name: &str) -> Option<&Buffer> {
        self.place(name).map(|place| &self.entries[place].1)
    }

    /// The buffer named `name`, to write.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Buffer> {
        self.place(name).map(|place| &mut self.entries[place].1)
    }

    /// Whether a buffer is named `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.places.contains_key(name)
    }

    /// How many buffers it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The names and buffers, in the order they came.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Buffer)> {
        self.entries.iter().map(|(name, b)| (name, b))
    }

    /// The names and buffers, to write.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Buffer)> {
        self.entries.iter_mut().map(|(name, b)| (&*name, b))
    }

    /// The names, in the order they came.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(name, _)| name)
    }

    /// The buffers, in the order they came.
    pub fn values(&self) -> impl Iterator<Item = &Buffer> {
        self.entries.iter().map(|(_, b)| b)
    }
}

impl Extend<(String, Buffer)> for Buffers {
    fn extend<I: IntoIterator<Item = (String, Buffer)>>(&mut self, items: I) {
        for (name, buffer) in items {
            self.insert(name, buffer);
        }
    }
}

impl FromIterator<(String, Buffer)> for Buffers {
    fn from_iter<I: IntoIterator<Item = (String, Buffer)>>(items: I) -> Buffers {
        let mut buffers = Buffers::new();
        buffers.extend(items);
        buffers
    }
}

impl std::ops::Index<&str> for Buffers {
    type Output = Buffer;

    /// The buffer named `name`.
    ///
    /// # Panics
    /// If none is.
    fn index(&self, name: &str) -> &Buffer {
        self.get(name)
            .unwrap_or_else(|| panic!("no buffer named `{name}`"))
    }
}

impl<'a> IntoIterator for &'a Buffers {
    type Item = (&'a String, &'a Buffer);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Buffer)>,
        fn(&'a (String, Buffer)) -> (&'a String, &'a Buffer),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(name, b)| (name, b))
    }
}

impl IntoIterator for Buffers {
    type Item = (String, Buffer);
    type IntoIter = std::vec::IntoIter<(String, Buffer)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Elem;

    fn buffer(v: f64) -> Buffer {
        let mut b = Buffer::zeros(1, Elem::F64);
        b.write_f64(&[v]);
        b
    }

    #[test]
    fn places_hold_until_a_removal_changes_the_layout() {
        let mut store: Buffers = [("a", 1.0), ("b", 2.0), ("c", 3.0)]
            .into_iter()
            .map(|(n, v)| (n.to_string(), buffer(v)))
            .collect();
        let value = |s: &Buffers, name: &str| s.get(name).map(|b| b.get(0));
        let before = store.layout();
        let replaced = store.insert("b".into(), buffer(4.0));
        assert_eq!(replaced.map(|b| b.get(0)), Some(2.0));
        assert_eq!((store.place("b"), store.layout()), (Some(1), before));
        assert_eq!(store.remove("a").map(|b| b.get(0)), Some(1.0));
        assert_ne!(store.layout(), before);
        assert_eq!(store.place("c"), Some(0));
        assert_eq!(value(&store, "c"), Some(3.0));
        assert_eq!(value(&store, "b"), Some(4.0));
        assert_eq!(value(&store, "a"), None);
        let copy = store.clone();
        assert_eq!(value(&copy, "b"), Some(4.0));
        assert_ne!(
            copy.layout().0,
            store.layout().0,
            "a clone is another collection"
        );
    }
}
