//! The single stream position that orders everything a client can sync, and the per-user wake-ups.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

use crate::storage::{Batch, StorageError, Store, Table};

const META: Table<u64> = Table::new("meta");
const KEY: &[u8] = b"stream_position";

/// Hands out stream positions. A position is only handed out under the
/// writer lock and is recorded in the same batch as the data it orders, so
/// after a crash the counter restarts past everything that was written.
pub struct StreamPositions {
    committed: AtomicU64,
    /// Serialises every write that takes a position, so positions become
    /// visible in order and a reader never sees N+1 before N.
    pub writer: tokio::sync::Mutex<()>,
}

/// A new database starts its stream here rather than at 0, so history
/// fetched later from other servers (backfill) can be slotted below a
/// room's first local event without renumbering anything.
pub const FIRST_POSITION: u64 = 1 << 20;

impl StreamPositions {
    pub fn load(store: &Store) -> Result<Self, StorageError> {
        Ok(StreamPositions {
            committed: AtomicU64::new(store.get(META, KEY)?.unwrap_or(FIRST_POSITION)),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The newest position whose data is durable and readable.
    pub fn current(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// The next position; call with the writer lock held and record it with
    /// `record` in the batch that uses it.
    pub fn next(&self) -> u64 {
        self.current() + 1
    }

    pub fn record(&self, batch: &mut Batch<'_>, pos: u64) {
        batch.put(META, KEY, &pos);
    }

    /// Publishes `pos` once its batch is committed.
    pub fn publish(&self, pos: u64) {
        self.committed.fetch_max(pos, Ordering::AcqRel);
    }
}

/// One `Notify` per user with a sync waiting; writers wake exactly the users
/// an update concerns, so idle users cost nothing.
#[derive(Default)]
pub struct Notifier {
    waiters: Mutex<HashMap<OwnedUserId, Arc<Notify>>>,
}

impl Notifier {
    pub fn handle(&self, user: &UserId) -> Arc<Notify> {
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Drop handles nobody holds any more, so the map tracks live syncs only.
        if map.len() > 1024 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(user.to_owned()).or_default().clone()
    }

    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for u in users {
            if let Some(n) = map.get(u) {
                n.notify_waiters();
            }
        }
    }
}
