//! Schema versioning: records the layout version in `meta` and upgrades older databases step by step.

use super::{Read, StorageError, Store, Table};

/// The layout this binary writes. Bump it together with a new step in `run`.
pub const SCHEMA_VERSION: u32 = 1;

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
        // Each future step upgrades v -> v+1 in its own batch, then records it,
        // so an interrupted upgrade resumes where it stopped.
        Some(_) => Ok(()),
    }
}
