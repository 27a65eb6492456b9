//! The only code that touches RocksDB: typed tables over column families, transactions, schema migrations.

pub mod accounts;
pub mod directory;
pub mod e2ee;
pub mod events;
pub mod federation;
mod keys;
pub mod media;
pub mod membership;
pub mod meta;
mod migrations;
pub mod outbox;
pub mod relations;
pub mod room_state;
mod txn;
pub mod user_data;

use std::{marker::PhantomData, path::Path, sync::Arc};

use rocksdb::{ColumnFamilyDescriptor, DB, Options};
use serde::{Serialize, de::DeserializeOwned};

pub use accounts::{AccountRead, AccountWrite};
pub use directory::{DirectoryRead, DirectoryWrite};
pub use e2ee::{E2eeRead, E2eeWrite};
pub use events::{EventRead, EventWrite};
pub use federation::{FederationRead, FederationWrite};
pub use media::{MediaRead, MediaWrite};
pub use membership::{MembershipRead, MembershipWrite};
pub use meta::{MetaRead, MetaWrite};
pub use migrations::SCHEMA_VERSION;
pub use outbox::{OutboxRead, OutboxWrite};
pub use relations::{RelationRead, RelationWrite};
pub use room_state::{RoomStateRead, RoomStateWrite, StateMap};
use txn::Read;
pub use txn::Txn;
pub use user_data::{UserDataRead, UserDataWrite};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt value in table {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    #[error("unknown column family {0}")]
    MissingTable(&'static str),
    #[error("database schema version {found} is newer than this binary understands ({supported})")]
    TooNew { found: u32, supported: u32 },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Every column family; each domain module owns the tables it declares.
pub const COLUMN_FAMILIES: &[&str] = &[
    "meta",
    "users",
    "devices",
    "tokens",
    "txns",
    "events",
    "timeline",
    "room_state",
    "rooms",
    "user_rooms",
    "account_data",
    "aliases",
    "filters",
    "user_rooms_by_room",
    "receipts",
    "receipt_log",
    "read_upto",
    "presence",
    "presence_log",
    "notifications",
    "notification_log",
    "pushers",
    "relations",
    "thread_activity",
    "thread_latest",
    "public_rooms",
    "reports",
    "membership_log",
    "device_keys",
    "one_time_keys",
    "fallback_keys",
    "cross_signing_keys",
    "key_signatures",
    "device_list_log",
    "to_device",
    "to_device_txns",
    "backup_versions",
    "backup_keys",
    "media",
    "media_usage",
    "media_thumbnails",
    "media_pending",
    "federation_queue",
    "federation_txns",
    "server_keys",
    "invite_state",
    "state_snapshots",
    "event_state",
    "openid_tokens",
    "remote_devices",
    "event_log",
    "room_activity",
    "outbox",
];

/// A typed table: a column family whose values are JSON-encoded `V`.
pub(in crate::storage) struct Table<V> {
    cf: &'static str,
    _v: PhantomData<fn() -> V>,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Table<V> {}

impl<V: Serialize + DeserializeOwned> Table<V> {
    pub(in crate::storage) const fn new(cf: &'static str) -> Self {
        Table {
            cf,
            _v: PhantomData,
        }
    }

    pub(in crate::storage) fn name(&self) -> &'static str {
        self.cf
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
            table: self.cf,
            message: e.to_string(),
        })
    }
}

/// The embedded database.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    sync_writes: bool,
}

impl Store {
    /// Opens (or creates) the database and brings its schema up to date.
    pub fn open(path: &Path, sync_writes: bool) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Memtables are arena-allocated per column family: the 64 MiB default
        // (with 8 MiB arena blocks) would cost ~110 MiB RSS for 14 mostly tiny
        // tables. Small buffers plus one budget for all of them.
        opts.set_db_write_buffer_size(64 << 20);
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            cf.set_write_buffer_size(if matches!(*name, "events" | "timeline") {
                16 << 20
            } else {
                4 << 20
            });
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let store = Store {
            db: Arc::new(db),
            sync_writes,
        };
        migrations::run(&store)?;
        Ok(store)
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or(StorageError::MissingTable(name))
    }

    /// An atomic set of writes whose reads see its own pending changes.
    pub fn transaction(&self) -> Txn<'_> {
        Txn::new(self)
    }

    /// Convenience for a single write.
    fn put<V: Serialize + DeserializeOwned>(
        &self,
        t: Table<V>,
        key: &[u8],
        value: &V,
    ) -> Result<()> {
        let mut b = self.transaction();
        b.put(t, key, value);
        b.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Read;

    const T: Table<String> = Table::new("meta");

    #[test]
    fn batch_is_atomic_and_scans_are_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let mut b = store.transaction();
        for i in [3u64, 1, 2] {
            let k = keys::KeyBuf::new().str("p").u64(i).into_vec();
            b.put(T, &k, &format!("v{i}"));
        }
        b.commit().unwrap();
        let prefix = keys::strs(&["p"]);
        let all: Vec<String> = store
            .scan_prefix(T, &prefix)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(all, ["v1", "v2", "v3"]);
        let end = keys::KeyBuf::new().str("p").u64(u64::MAX).into_vec();
        let back = store.scan(T, &prefix, &end, None, true, 2).unwrap();
        assert_eq!(
            back.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            ["v3", "v2"]
        );
    }

    #[test]
    fn reopen_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), true).unwrap();
            store.put(T, b"k", &"v".to_owned()).unwrap();
        }
        let store = Store::open(dir.path(), false).unwrap();
        assert_eq!(store.get(T, b"k").unwrap().as_deref(), Some("v"));
        assert_eq!(
            migrations::current_version(&store).unwrap(),
            Some(SCHEMA_VERSION)
        );
    }
}
