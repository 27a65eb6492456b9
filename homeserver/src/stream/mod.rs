//! The one way to write: positions, an atomic transaction, publication in order and wake-ups, behind `Stream::write`.

pub mod notifier;
pub mod positions;

use std::{collections::BTreeSet, sync::Arc};

use ruma::{OwnedUserId, UserId};

use crate::{
    error::Result,
    storage::{Store, Txn},
};
pub use notifier::Notifier;
pub use positions::{FIRST_POSITION, Positions};

/// Orders everything a client can sync. Every durable write that takes a
/// position, or that must check something before writing it (uniqueness),
/// goes through [`Stream::write`]: the closure stages its changes in one
/// transaction and takes positions from it; `write` commits atomically,
/// makes the positions visible in order, then wakes whoever waits.
pub struct Stream {
    store: Store,
    positions: Positions,
    notifier: Arc<Notifier>,
    /// One writer at a time today; callers never see it, so a
    /// multi-writer scheme can replace it without touching them.
    writer: tokio::sync::Mutex<()>,
}

/// Work to run once a write is committed (queue wake-ups and the like).
type AfterCommit = Box<dyn FnOnce() + Send>;

/// One write in progress: a transaction (reads see its own changes), the
/// positions it took, and who to wake once it is committed.
pub struct Write<'a> {
    txn: Txn<'a>,
    positions: &'a Positions,
    taken: Vec<u64>,
    reserve: Option<u64>,
    wake: BTreeSet<OwnedUserId>,
    after_commit: Vec<AfterCommit>,
}

impl<'a> Write<'a> {
    /// A new stream position for something this write records.
    pub fn next_pos(&mut self) -> u64 {
        let a = self.positions.allocate(&mut self.txn);
        self.taken.push(a.pos);
        if let Some(r) = a.reserve {
            self.reserve = Some(self.reserve.unwrap_or(0).max(r));
        }
        a.pos
    }

    /// Wakes `users`' waiting syncs once the write is visible.
    pub fn wake<'u>(&mut self, users: impl IntoIterator<Item = &'u UserId>) {
        self.wake.extend(users.into_iter().map(ToOwned::to_owned));
    }

    /// Runs `f` once the write is committed and visible.
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }
}

impl<'a> std::ops::Deref for Write<'a> {
    type Target = Txn<'a>;
    fn deref(&self) -> &Txn<'a> {
        &self.txn
    }
}

impl std::ops::DerefMut for Write<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.txn
    }
}

impl Stream {
    pub fn new(store: Store, notifier: Arc<Notifier>) -> Result<Self> {
        Ok(Stream {
            positions: Positions::load(&store)?,
            store,
            notifier,
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The newest position whose data, and everything before it, is readable.
    pub fn current(&self) -> u64 {
        self.positions.current()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Runs `f` as one atomic write. Keep `f` to staging: anything slow
    /// (building and signing events, push rules, state resolution) belongs
    /// before the call. If `f` fails, nothing is written and its positions
    /// are skipped.
    pub async fn write<T>(&self, f: impl FnOnce(&mut Write<'_>) -> Result<T>) -> Result<T> {
        let guard = self.writer.lock().await;
        let mut w = Write {
            txn: self.store.transaction(),
            positions: &self.positions,
            taken: Vec::new(),
            reserve: None,
            wake: BTreeSet::new(),
            after_commit: Vec::new(),
        };
        let outcome = f(&mut w);
        let Write {
            txn,
            taken,
            reserve,
            wake,
            after_commit,
            ..
        } = w;
        let committed = match outcome {
            Ok(v) => txn.commit().map(|()| v).map_err(Into::into),
            Err(e) => Err(e),
        };
        if committed.is_ok()
            && let Some(r) = reserve
        {
            self.positions.reserved(r);
        }
        self.positions.complete(&taken);
        drop(guard);
        let value = committed?;
        self.notifier.wake(wake.iter().map(|u| u.as_ref()));
        for f in after_commit {
            f();
        }
        Ok(value)
    }

    /// Takes a position for a change kept outside the database (typing),
    /// so syncs holding an older token see it.
    pub async fn advance(&self) -> Result<u64> {
        self.write(|w| Ok(w.next_pos())).await
    }
}
