//! Where each byte of one volume lives at a point in time, for the bytes
//! the journal changed after the replica: a map of non-overlapping
//! extents, each either a run of journal data or a run of zeros. A newer
//! record laid over older ones trims, splits or replaces them, so the map
//! always answers "who wrote this byte last".

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Data of journal record `record` (an index into the view's list of
    /// records), this byte at file offset `at` of its segment.
    Journal {
        record: u32,
        at: u64,
    },
    Zero,
}

impl Source {
    /// The same source `skip` bytes further in.
    fn advanced(self, skip: u64) -> Source {
        match self {
            Source::Journal { record, at } => Source::Journal { record, at: at + skip },
            Source::Zero => Source::Zero,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub source: Source,
}

#[derive(Debug, Default, Clone)]
pub struct ExtentMap {
    /// Extent start → extent; extents never overlap.
    extents: BTreeMap<u64, Extent>,
}

impl ExtentMap {
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Lays `[start, start+len)` from `source` over whatever was there.
    pub fn insert(&mut self, start: u64, len: u64, source: Source) {
        if len == 0 {
            return;
        }
        let end = start + len;
        // An extent that begins before `start` and reaches into the range
        // keeps its head (and its tail if it also passes `end`).
        if let Some((&s, &e)) = self.extents.range(..start).next_back() {
            let e_end = s + e.len;
            if e_end > start {
                self.extents.insert(s, Extent { len: start - s, source: e.source });
                if e_end > end {
                    self.extents.insert(end, Extent { len: e_end - end, source: e.source.advanced(end - s) });
                }
            }
        }
        // Extents that begin inside the range lose what it covers.
        let inside: Vec<(u64, Extent)> = self.extents.range(start..end).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in inside {
            self.extents.remove(&s);
            let e_end = s + e.len;
            if e_end > end {
                self.extents.insert(end, Extent { len: e_end - end, source: e.source.advanced(end - s) });
            }
        }
        self.extents.insert(start, Extent { len, source });
    }

    /// The pieces of `[start, start+len)` the map covers, clipped to it,
    /// in order: (offset, length, source at that offset).
    pub fn overlapping(&self, start: u64, len: u64) -> Vec<(u64, u64, Source)> {
        let end = start + len;
        let mut out = Vec::new();
        let first = self.extents.range(..=start).next_back().map(|(s, _)| *s).unwrap_or(start);
        for (&s, e) in self.extents.range(first..end) {
            let (from, to) = (s.max(start), (s + e.len).min(end));
            if from < to {
                out.push((from, to - from, e.source.advanced(from - s)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SPACE: u64 = 256;

    /// The model: one "writer id" per byte (0 = zero source).
    fn apply_model(model: &mut [u64], start: u64, len: u64, id: u64) {
        for b in &mut model[start as usize..(start + len) as usize] {
            *b = id;
        }
    }

    proptest! {
        #[test]
        fn map_matches_a_byte_model(ops in prop::collection::vec((0..SPACE, 1..64u64, any::<bool>()), 1..40)) {
            let mut map = ExtentMap::default();
            // Each write's "journal offset" encodes its id, so the source of
            // any byte tells which write it came from and where in it.
            let mut model = vec![u64::MAX; SPACE as usize];
            let mut starts = std::collections::HashMap::new();
            for (i, (start, len, zero)) in ops.into_iter().enumerate() {
                let len = len.min(SPACE - start);
                let id = i as u64 + 1;
                let source = if zero { Source::Zero } else { Source::Journal { record: 0, at: id << 20 } };
                map.insert(start, len, source);
                apply_model(&mut model, start, len, if zero { 0 } else { id });
                starts.insert(id, start);
            }
            let mut seen = vec![u64::MAX; SPACE as usize];
            let mut last_end = 0;
            for (off, len, source) in map.overlapping(0, SPACE) {
                prop_assert!(off >= last_end, "pieces overlap or go backwards");
                last_end = off + len;
                for b in off..off + len {
                    seen[b as usize] = match source.advanced(b - off) {
                        Source::Zero => 0,
                        Source::Journal { at, .. } => {
                            let id = at >> 20;
                            prop_assert_eq!(at & 0xfffff, b - starts[&id], "offset inside write {} is wrong", id);
                            id
                        }
                    };
                }
            }
            prop_assert_eq!(seen, model);
            // A clipped query agrees with the full one.
            for (off, len, _) in map.overlapping(100, 50) {
                prop_assert!(off >= 100 && off + len <= 150);
            }
        }
    }
}
