//! Reads of committed data, and transactions: atomic sets of writes whose own reads see what they staged.

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::{Serialize, de::DeserializeOwned};

use super::{Result, StorageError, Store, Table};

/// Where a scan runs: keys under `prefix` from `from` (inclusive), forwards
/// or backwards, stopping before `until` and after `limit` rows.
#[derive(Clone, Copy)]
pub struct ScanRange<'a> {
    prefix: &'a [u8],
    from: &'a [u8],
    until: Option<&'a [u8]>,
    backwards: bool,
    limit: usize,
}

impl ScanRange<'_> {
    /// Whether `key`, met in scan order, is still inside the range.
    fn admits(&self, key: &[u8]) -> bool {
        if !key.starts_with(self.prefix) {
            return false;
        }
        match self.until {
            Some(u) if self.backwards => key > u,
            Some(u) => key < u,
            None => true,
        }
    }

    /// Whether `key` lies on the scanned side of `from`.
    fn past_start(&self, key: &[u8]) -> bool {
        if self.backwards {
            key <= self.from
        } else {
            key >= self.from
        }
    }

    /// Whether `a` comes before `b` in scan order.
    fn before(&self, a: &[u8], b: &[u8]) -> bool {
        if self.backwards { a > b } else { a < b }
    }
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads, either of committed data ([`Store`]) or of a transaction's view
/// of it ([`Txn`]: committed data with the transaction's changes on top).
pub(super) trait Read {
    #[doc(hidden)]
    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>>;
    #[doc(hidden)]
    fn scan_raw(&self, cf: &'static str, range: ScanRange<'_>) -> Result<Rows>;

    fn get<V: Serialize + DeserializeOwned>(&self, t: Table<V>, key: &[u8]) -> Result<Option<V>> {
        self.get_raw(t.name(), key)?
            .map(|b| t.decode(&b))
            .transpose()
    }

    fn contains<V: Serialize + DeserializeOwned>(&self, t: Table<V>, key: &[u8]) -> Result<bool> {
        Ok(self.get_raw(t.name(), key)?.is_some())
    }

    /// All entries whose key starts with `prefix`, in key order.
    fn scan_prefix<V: Serialize + DeserializeOwned>(
        &self,
        t: Table<V>,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, V)>> {
        self.scan(t, prefix, prefix, None, false, usize::MAX)
    }

    /// Entries under `prefix` starting at `from` (inclusive), forwards or
    /// backwards, at most `limit`, stopping at `until` (exclusive) if given.
    fn scan<V: Serialize + DeserializeOwned>(
        &self,
        t: Table<V>,
        prefix: &[u8],
        from: &[u8],
        until: Option<&[u8]>,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, V)>> {
        let range = ScanRange {
            prefix,
            from,
            until,
            backwards,
            limit,
        };
        self.scan_raw(t.name(), range)?
            .into_iter()
            .map(|(k, v)| Ok((k, t.decode(&v)?)))
            .collect()
    }
}

impl Read for Store {
    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf)?, key)?
            .map(|b| b.to_vec()))
    }

    fn scan_raw(&self, cf: &'static str, range: ScanRange<'_>) -> Result<Rows> {
        let handle = self.cf(cf)?;
        let dir = if range.backwards {
            Direction::Reverse
        } else {
            Direction::Forward
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(handle, IteratorMode::From(range.from, dir))
        {
            if out.len() >= range.limit {
                break;
            }
            let (k, v) = item?;
            if !range.admits(&k) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

/// A set of writes applied atomically: all of it survives a crash, or none.
/// Reads through it see what it has staged so far.
pub struct Txn<'a> {
    store: &'a Store,
    inner: WriteBatch,
    /// Staged changes by column family and key (`None`: deleted).
    pending: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    error: Option<StorageError>,
}

impl<'a> Txn<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Txn {
            store,
            inner: WriteBatch::default(),
            pending: BTreeMap::new(),
            error: None,
        }
    }

    pub(super) fn put<V: Serialize + DeserializeOwned>(
        &mut self,
        t: Table<V>,
        key: &[u8],
        value: &V,
    ) {
        match (self.store.cf(t.name()), serde_json::to_vec(value)) {
            (Ok(cf), Ok(bytes)) => {
                self.inner.put_cf(cf, key, &bytes);
                self.pending.insert((t.name(), key.to_vec()), Some(bytes));
            }
            (Err(e), _) => self.error = Some(e),
            (_, Err(e)) => {
                self.error = Some(StorageError::Corrupt {
                    table: t.name(),
                    message: e.to_string(),
                })
            }
        }
    }

    pub(super) fn delete<V: Serialize + DeserializeOwned>(&mut self, t: Table<V>, key: &[u8]) {
        match self.store.cf(t.name()) {
            Ok(cf) => {
                self.inner.delete_cf(cf, key);
                self.pending.insert((t.name(), key.to_vec()), None);
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Whether nothing has been staged.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.error.is_none()
    }

    /// Writes everything through the WAL; returns only once RocksDB has it.
    pub fn commit(self) -> Result<()> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(self.store.sync_writes);
        self.store.db.write_opt(self.inner, &opts)?;
        Ok(())
    }

    /// Staged rows of `cf` inside `range`, in scan order.
    fn staged_in(&self, cf: &'static str, range: ScanRange<'_>) -> Vec<(&[u8], Option<&[u8]>)> {
        let mut rows: Vec<_> = self
            .pending
            .range((cf, range.prefix.to_vec())..)
            .take_while(|((c, k), _)| *c == cf && k.starts_with(range.prefix))
            .filter(|((_, k), _)| range.past_start(k) && range.admits(k))
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()))
            .collect();
        if range.backwards {
            rows.reverse();
        }
        rows
    }
}

impl Read for Txn<'_> {
    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.pending.get(&(cf, key.to_vec())) {
            Some(staged) => Ok(staged.clone()),
            None => self.store.get_raw(cf, key),
        }
    }

    fn scan_raw(&self, cf: &'static str, range: ScanRange<'_>) -> Result<Rows> {
        let staged = self.staged_in(cf, range);
        if staged.is_empty() {
            return self.store.scan_raw(cf, range);
        }
        // Staged deletes may hide committed rows: read enough to fill the
        // limit anyway, then merge the two ordered lists.
        let wider = ScanRange {
            limit: range.limit.saturating_add(staged.len()),
            ..range
        };
        let mut committed = self.store.scan_raw(cf, wider)?.into_iter().peekable();
        let mut staged = staged.into_iter().peekable();
        let mut out = Vec::new();
        while out.len() < range.limit {
            let from_staged = match (committed.peek(), staged.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((ck, _)), Some((sk, _))) => {
                    if ck.as_slice() == *sk {
                        // The staged change replaces the committed row.
                        committed.next();
                        true
                    } else {
                        range.before(sk, ck)
                    }
                }
            };
            if from_staged {
                if let Some((k, Some(v))) = staged.next() {
                    out.push((k.to_vec(), v.to_vec()));
                }
            } else if let Some(row) = committed.next() {
                out.push(row);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys;

    const T: Table<String> = Table::new("meta");

    fn key(i: u64) -> Vec<u8> {
        keys::KeyBuf::new().str("p").u64(i).into_vec()
    }

    fn values(rows: Vec<(Vec<u8>, String)>) -> Vec<String> {
        rows.into_iter().map(|(_, v)| v).collect()
    }

    /// A transaction reads its own puts and deletes, merged in order with
    /// committed rows, in both directions and with limits.
    #[test]
    fn reads_inside_a_transaction_see_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let mut b = store.transaction();
        for i in [1u64, 3, 5] {
            b.put(T, &key(i), &format!("c{i}"));
        }
        b.commit().unwrap();

        let mut t = store.transaction();
        t.put(T, &key(2), &"t2".to_owned());
        t.put(T, &key(5), &"t5".to_owned());
        t.delete(T, &key(3));
        assert_eq!(t.get(T, &key(2)).unwrap().as_deref(), Some("t2"));
        assert_eq!(t.get(T, &key(3)).unwrap(), None);
        assert_eq!(store.get(T, &key(3)).unwrap().as_deref(), Some("c3"));
        let prefix = keys::strs(&["p"]);
        let all = values(t.scan_prefix(T, &prefix).unwrap());
        assert_eq!(all, ["c1", "t2", "t5"]);
        let back = t.scan(T, &prefix, &key(u64::MAX), None, true, 2).unwrap();
        assert_eq!(values(back), ["t5", "t2"]);
        let bounded = t
            .scan(T, &prefix, &key(2), Some(&key(5)), false, 10)
            .unwrap();
        assert_eq!(values(bounded), ["t2"]);
        // Nothing is visible outside until commit.
        assert_eq!(
            values(store.scan_prefix(T, &prefix).unwrap()),
            ["c1", "c3", "c5"]
        );
        t.commit().unwrap();
        assert_eq!(
            values(store.scan_prefix(T, &prefix).unwrap()),
            ["c1", "t2", "t5"]
        );
    }
}
