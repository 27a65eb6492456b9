//! Schema versioning: records the layout version in `meta` and upgrades older databases step by step.

use super::{Read, StorageError, Store, Table, Txn};

/// The layout this binary writes. Bump it together with a new step in `run`.
pub const SCHEMA_VERSION: u32 = 2;

const META: Table<u32> = Table::new("meta");
const KEY: &[u8] = b"schema_version";

pub fn current_version(store: &Store) -> Result<Option<u32>, StorageError> {
    store.get(META, KEY)
}

pub fn run(store: &Store) -> Result<(), StorageError> {
    match current_version(store)? {
        // A fresh database starts at the current layout.
        None => store.put(META, KEY, &SCHEMA_VERSION),
        Some(v) if v > SCHEMA_VERSION => Err(StorageError::TooNew {
            found: v,
            supported: SCHEMA_VERSION,
        }),
        // Each step upgrades v -> v+1 in one transaction that also records
        // the new version, so an interrupted upgrade resumes where it stopped.
        Some(mut v) => {
            while v < SCHEMA_VERSION {
                let mut txn = store.transaction();
                if v == 1 {
                    federation_queue_into_outbox(store, &mut txn)?;
                }
                v += 1;
                txn.put(META, KEY, &v);
                txn.commit()?;
            }
            Ok(())
        }
    }
}

/// v1 -> v2: the federation queue `(server, seq) -> item` became the
/// outbox, whose destinations are tagged by kind (`("s", server), seq`).
/// Items keep their JSON form (`{"Pdu": id}` / `{"Edu": edu}`).
fn federation_queue_into_outbox(store: &Store, txn: &mut Txn<'_>) -> Result<(), StorageError> {
    const OLD: Table<serde_json::Value> = Table::new("federation_queue");
    const NEW: Table<serde_json::Value> = Table::new("outbox");
    for (key, item) in store.scan_prefix(OLD, b"")? {
        let Some(split) = key.len().checked_sub(8) else {
            continue;
        };
        let (dest, seq) = key.split_at(split);
        let Some(server) =
            super::keys::split_strs(dest).and_then(|p| p.first().map(|s| s.to_string()))
        else {
            continue;
        };
        let mut new_key = super::keys::strs(&["s", &server]);
        new_key.extend_from_slice(seq);
        txn.put(NEW, &new_key, &item);
        txn.delete(OLD, &key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys;

    /// A database written by the previous layout, with a message still
    /// queued for another server, opens with that message in the outbox.
    #[test]
    fn the_old_federation_queue_moves_into_the_outbox() {
        const OLD: Table<serde_json::Value> = Table::new("federation_queue");
        const NEW: Table<serde_json::Value> = Table::new("outbox");
        let dir = tempfile::tempdir().unwrap();
        let seq = 1_700_000_000_000_000u64;
        {
            let store = Store::open(dir.path(), false).unwrap();
            let old_key = keys::KeyBuf::new().str("them.example").u64(seq).into_vec();
            store
                .put(OLD, &old_key, &serde_json::json!({"Pdu": "$event"}))
                .unwrap();
            store.put(META, KEY, &1).unwrap();
        }
        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(current_version(&store).unwrap(), Some(SCHEMA_VERSION));
        assert!(store.scan_prefix(OLD, b"").unwrap().is_empty());
        let moved = store.scan_prefix(NEW, b"").unwrap();
        let new_key = keys::KeyBuf::new()
            .str("s")
            .str("them.example")
            .u64(seq)
            .into_vec();
        assert_eq!(moved, vec![(new_key, serde_json::json!({"Pdu": "$event"}))]);
    }
}
