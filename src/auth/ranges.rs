//! Key ranges as permissions and requests name them, and whether a set of
//! granted ranges covers a requested one.

/// A half-open key interval `[start, end)`; `end` None reaches past every key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInterval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyInterval {
    /// etcd's spelling: an empty `range_end` is the single key, `"\0"` every
    /// key from `key` on, anything else `[key, range_end)`.
    pub fn of(key: &[u8], range_end: &[u8]) -> KeyInterval {
        let end = match range_end {
            [] => Some([key, &[0]].concat()),
            [0] => None,
            end if end <= key => {
                // An empty request range: asking for it needs no more than its first key.
                Some([key, &[0]].concat())
            }
            end => Some(end.to_vec()),
        };
        KeyInterval { start: key.to_vec(), end }
    }
}

/// True when the permission range `(key, range_end)`, spelled as
/// `KeyInterval::of` reads it, holds `wanted`: the single-key check,
/// without building intervals.
pub fn holds(key: &[u8], range_end: &[u8], wanted: &[u8]) -> bool {
    match range_end {
        [0] => wanted >= key,
        end if end.is_empty() || end <= key => wanted == key,
        end => key <= wanted && wanted < end,
    }
}

/// True when the union of `granted` holds every key of `wanted`.
pub fn covers<'a>(granted: impl IntoIterator<Item = &'a KeyInterval>, wanted: &KeyInterval) -> bool {
    let mut granted: Vec<&KeyInterval> = granted.into_iter().collect();
    granted.sort_by(|a, b| a.start.cmp(&b.start));
    // Everything before `reached` is known to be covered, from wanted.start on.
    let mut reached: Option<&[u8]> = Some(&wanted.start);
    for interval in granted {
        let Some(at) = reached else { return true };
        if interval.start.as_slice() > at {
            break;
        }
        reached = match (&interval.end, at) {
            (None, _) => None,
            (Some(end), at) if end.as_slice() > at => Some(end),
            _ => Some(at),
        };
        if let (Some(at), Some(end)) = (reached, &wanted.end) {
            if at >= end.as_slice() {
                return true;
            }
        }
    }
    match (reached, &wanted.end) {
        (None, _) => true,
        (Some(at), Some(end)) => at >= end.as_slice(),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(key: &str, end: &str) -> KeyInterval {
        KeyInterval::of(key.as_bytes(), end.as_bytes())
    }

    #[test]
    fn single_keys_and_ranges() {
        let granted = [iv("a", "c"), iv("x", "")];
        assert!(covers(&granted, &iv("b", "")));
        assert!(covers(&granted, &iv("a", "c")));
        assert!(covers(&granted, &iv("x", "")));
        assert!(!covers(&granted, &iv("c", "")));
        assert!(!covers(&granted, &iv("a", "d")));
        assert!(!covers(&granted, &iv("x", "y")), "a single key does not cover the range after it");
        assert!(!covers(&[], &iv("a", "")));
    }

    #[test]
    fn adjacent_and_overlapping_grants_join() {
        let granted = [iv("c", "e"), iv("a", "c"), iv("b", "d")];
        assert!(covers(&granted, &iv("a", "e")));
        assert!(!covers(&granted, &iv("a", "f")));
        let gap = [iv("a", "b"), iv("c", "d")];
        assert!(!covers(&gap, &iv("a", "d")));
    }

    #[test]
    fn holds_agrees_with_covers_for_single_keys() {
        let grants = [("a", "c"), ("x", ""), ("m", "\0"), ("q", "p")];
        for wanted in ["", "a", "b", "c", "x", "x\0", "m", "zz", "q", "p"] {
            for (key, end) in grants {
                assert_eq!(
                    holds(key.as_bytes(), end.as_bytes(), wanted.as_bytes()),
                    covers(&[iv(key, end)], &iv(wanted, "")),
                    "{key:?}..{end:?} holds {wanted:?}"
                );
            }
        }
    }

    #[test]
    fn from_key_ranges() {
        let everything = [iv("", "\0")];
        assert!(covers(&everything, &iv("anything", "\0")));
        assert!(covers(&everything, &iv("", "\0")));
        let from_m = [iv("m", "\0")];
        assert!(covers(&from_m, &iv("z", "")));
        assert!(!covers(&from_m, &iv("a", "\0")));
        assert!(!covers(&[iv("a", "z")], &iv("b", "\0")), "a bounded grant never covers an unbounded request");
    }
}
