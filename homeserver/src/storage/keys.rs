//! Explicit byte encodings of composite keys, so that RocksDB's byte order is the order we need.
//!
//! Strings are joined with 0xFF, a byte that never occurs in UTF-8, so a
//! prefix of components is a byte prefix of the key and no component can
//! masquerade as a separator. Integers are big-endian, so they sort
//! numerically.

pub const SEP: u8 = 0xFF;

/// Builds a key from parts; see the module comment for the layout.
#[derive(Debug, Default, Clone)]
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new() -> Self {
        KeyBuf(Vec::with_capacity(64))
    }
    /// Appends a string component followed by the separator.
    pub fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(SEP);
        self
    }
    /// Appends a big-endian u64 (fixed width, so no separator is needed).
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Shorthand for a key made only of string components.
pub fn strs(parts: &[&str]) -> Vec<u8> {
    parts.iter().fold(KeyBuf::new(), |k, p| k.str(p)).into_vec()
}

/// Splits a key made only of string components back into them.
pub fn split_strs(key: &[u8]) -> Option<Vec<&str>> {
    let body = key.strip_suffix(&[SEP])?;
    body.split(|b| *b == SEP)
        .map(|p| std::str::from_utf8(p).ok())
        .collect()
}

/// Reads a big-endian u64 at the end of a key.
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_parts_round_trip() {
        let k = strs(&["@alice:example.org", "DEVICE", ""]);
        assert_eq!(
            split_strs(&k).unwrap(),
            vec!["@alice:example.org", "DEVICE", ""]
        );
    }

    #[test]
    fn prefix_of_parts_is_byte_prefix_and_never_ambiguous() {
        // "ab" must not be a prefix match for the component "abc".
        let parent = strs(&["!room:x", "ab"]);
        let child = strs(&["!room:x", "abc", "k"]);
        assert!(!child.starts_with(&parent));
        let real_child = strs(&["!room:x", "ab", "k"]);
        assert!(real_child.starts_with(&parent));
    }

    #[test]
    fn u64_orders_numerically() {
        let a = KeyBuf::new().str("!r").u64(9).into_vec();
        let b = KeyBuf::new().str("!r").u64(10).into_vec();
        let c = KeyBuf::new().str("!r").u64(256).into_vec();
        assert!(a < b && b < c);
        assert_eq!(trailing_u64(&c), Some(256));
    }

    #[test]
    fn malformed_keys_are_rejected_not_panicking() {
        assert_eq!(split_strs(b"no-separator"), None);
        assert_eq!(split_strs(&[0xC3, SEP]), None);
        assert_eq!(trailing_u64(b"short"), None);
    }
}
