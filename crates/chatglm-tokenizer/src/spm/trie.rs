//! A compact byte trie mapping piece strings to ids, used for prefix searches.

/// A read-only byte trie. Children of a node are stored contiguously, sorted by label.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trie {
    /// `first_child[n]..first_child[n + 1]` indexes `labels`/`targets` for node `n`.
    first_child: Vec<u32>,
    labels: Vec<u8>,
    targets: Vec<u32>,
    /// Value stored at each node, `u32::MAX` for none.
    values: Vec<u32>,
    /// Child of the root for each first byte (`u32::MAX` for none): rejects most text at once.
    root: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Trie {
    /// Builds a trie from `(key, value)` pairs. Empty keys are ignored; for duplicate keys the
    /// first value wins.
    pub(crate) fn new<'a>(entries: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        let mut keys: Vec<(&[u8], u32)> =
            entries.into_iter().filter(|(k, _)| !k.is_empty()).collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        keys.dedup_by(|b, a| a.0 == b.0);
        let mut trie = Trie::default();
        // Breadth-first layout: each queue item is (depth, key range) for one node.
        let mut queue = std::collections::VecDeque::new();
        trie.values.push(NONE);
        queue.push_back((0usize, 0usize, keys.len()));
        let mut node = 0usize;
        let mut child_lists: Vec<Vec<(u8, u32)>> = Vec::new();
        while let Some((depth, lo, hi)) = queue.pop_front() {
            let mut children = Vec::new();
            let mut i = lo;
            while i < hi {
                if keys[i].0.len() == depth {
                    trie.values[node] = keys[i].1;
                    i += 1;
                    continue;
                }
                let label = keys[i].0[depth];
                let mut j = i;
                while j < hi && keys[j].0[depth] == label {
                    j += 1;
                }
                let child = trie.values.len() as u32;
                trie.values.push(NONE);
                children.push((label, child));
                queue.push_back((depth + 1, i, j));
                i = j;
            }
            child_lists.push(children);
            node += 1;
        }
        trie.first_child.reserve(child_lists.len() + 1);
        for children in &child_lists {
            trie.first_child.push(trie.labels.len() as u32);
            for &(label, target) in children {
                trie.labels.push(label);
                trie.targets.push(target);
            }
        }
        trie.first_child.push(trie.labels.len() as u32);
        trie.root = vec![NONE; 256];
        if let Some(children) = child_lists.first() {
            for &(label, target) in children {
                trie.root[usize::from(label)] = target;
            }
        }
        trie
    }

    #[inline]
    fn child(&self, node: u32, label: u8) -> Option<u32> {
        let lo = self.first_child[node as usize] as usize;
        let hi = self.first_child[node as usize + 1] as usize;
        let labels = &self.labels[lo..hi];
        if labels.len() <= 8 {
            labels
                .iter()
                .position(|&l| l == label)
                .map(|p| self.targets[lo + p])
        } else {
            labels
                .binary_search(&label)
                .ok()
                .map(|p| self.targets[lo + p])
        }
    }

    /// Calls `f(length, value)` for every key that is a prefix of `text`, shortest first.
    #[inline]
    pub(crate) fn for_each_prefix(&self, text: &[u8], mut f: impl FnMut(usize, u32)) {
        let Some(&first) = text.first() else { return };
        let Some(&start) = self.root.get(usize::from(first)) else {
            return;
        };
        if start == NONE {
            return;
        }
        let mut node = start;
        if self.values[node as usize] != NONE {
            f(1, self.values[node as usize]);
        }
        for (i, &b) in text.iter().enumerate().skip(1) {
            match self.child(node, b) {
                Some(next) => node = next,
                None => return,
            }
            let v = self.values[node as usize];
            if v != NONE {
                f(i + 1, v);
            }
        }
    }

    /// The longest key that is a prefix of `text`, as `(length, value)`.
    pub(crate) fn longest_prefix(&self, text: &[u8]) -> Option<(usize, u32)> {
        let mut best = None;
        self.for_each_prefix(text, |len, v| best = Some((len, v)));
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_found() {
        let trie = Trie::new([(&b"a"[..], 1), (b"ab", 2), (b"abc", 3), (b"b", 4), (b"", 9)]);
        let mut seen = Vec::new();
        trie.for_each_prefix(b"abd", |l, v| seen.push((l, v)));
        assert_eq!(seen, vec![(1, 1), (2, 2)]);
        assert_eq!(trie.longest_prefix(b"abcz"), Some((3, 3)));
        assert_eq!(trie.longest_prefix(b"zz"), None);
        assert!(Trie::new(std::iter::empty()).longest_prefix(b"a").is_none());
    }
}
