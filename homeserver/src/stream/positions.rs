//! Stream positions: handed out to writers, made visible to readers in order, and reserved durably in blocks.

use std::{collections::BTreeSet, sync::Mutex};

use crate::storage::{MetaRead, MetaWrite, StorageError, Store, Txn};

/// How many positions one durable reservation covers: a restart resumes
/// after the reserved block, so positions never repeat, and only one write
/// in this many records the counter.
const RESERVE: u64 = 1024;

/// A new database starts its stream here rather than at 0, so history
/// fetched later from other servers (backfill) can be slotted below a
/// room's first local event without renumbering anything.
pub const FIRST_POSITION: u64 = 1 << 20;

/// The position generator. Positions are allocated in increasing order and
/// may complete in any order; readers only ever see `current()`, below
/// which every position has completed (committed or abandoned), as
/// Synapse's stream ID generators do. Several writers could therefore
/// allocate concurrently without a reader seeing N+1 before N.
pub struct Positions {
    state: Mutex<State>,
}

struct State {
    last_allocated: u64,
    /// Allocated, not yet completed.
    in_flight: BTreeSet<u64>,
    /// Every position up to here has completed.
    current: u64,
    /// The durable high-water mark: after a restart, allocation resumes
    /// above it.
    reserved: u64,
}

impl Positions {
    pub fn load(store: &Store) -> Result<Self, StorageError> {
        let start = store.reserved_position()?.unwrap_or(FIRST_POSITION);
        Ok(Positions {
            state: Mutex::new(State {
                last_allocated: start,
                in_flight: BTreeSet::new(),
                current: start,
                reserved: start,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest position whose data (and that of every position before
    /// it) is durable and readable.
    pub fn current(&self) -> u64 {
        self.state().current
    }

    /// A new position for a write; if it passes the reserved block, `txn`
    /// reserves the next block (the caller calls `reserved` once it commits).
    pub(super) fn allocate(&self, txn: &mut Txn<'_>) -> Allocated {
        let mut s = self.state();
        s.last_allocated += 1;
        let pos = s.last_allocated;
        s.in_flight.insert(pos);
        let reserve = (pos > s.reserved).then(|| {
            let upto = pos + RESERVE;
            txn.put_reserved_position(upto);
            upto
        });
        Allocated { pos, reserve }
    }

    /// Records that a reservation made by `allocate` is now durable.
    pub(super) fn reserved(&self, upto: u64) {
        let mut s = self.state();
        s.reserved = s.reserved.max(upto);
    }

    /// Marks positions as done (committed, or abandoned by a failed write)
    /// and advances what readers see as far as no earlier one is pending.
    pub(super) fn complete(&self, positions: &[u64]) {
        let mut s = self.state();
        for p in positions {
            s.in_flight.remove(p);
        }
        s.current = match s.in_flight.first() {
            Some(first) => first - 1,
            None => s.last_allocated,
        };
    }
}

pub(super) struct Allocated {
    pub pos: u64,
    pub reserve: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions() -> (tempfile::TempDir, Store, Positions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let p = Positions::load(&store).unwrap();
        (dir, store, p)
    }

    /// Readers never see a later position before an earlier one completes.
    #[test]
    fn positions_become_visible_in_order() {
        let (_dir, store, p) = positions();
        let mut t = store.transaction();
        let a = p.allocate(&mut t).pos;
        let b = p.allocate(&mut t).pos;
        assert_eq!(p.current(), FIRST_POSITION);
        p.complete(&[b]);
        assert_eq!(p.current(), FIRST_POSITION, "{b} is done but {a} is not");
        p.complete(&[a]);
        assert_eq!(p.current(), b);
    }

    /// After a restart, allocation resumes above everything handed out
    /// before, even positions that wrote nothing durable of their own.
    #[test]
    fn a_restart_never_reuses_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut highest = 0;
        for _ in 0..3 {
            let store = Store::open(dir.path(), false).unwrap();
            let p = Positions::load(&store).unwrap();
            for _ in 0..(RESERVE + 10) {
                let mut t = store.transaction();
                let a = p.allocate(&mut t);
                assert!(a.pos > highest, "{} reused (had {highest})", a.pos);
                highest = a.pos;
                t.commit().unwrap();
                if let Some(r) = a.reserve {
                    p.reserved(r);
                }
                p.complete(&[a.pos]);
            }
        }
    }
}
