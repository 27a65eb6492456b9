//! Room state: each room's record (version, forward extremities, depth), its current state, the state snapshots, and the snapshot of the state before each event.

use std::collections::BTreeMap;

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};

use super::{Read, Result, Table, Txn, keys};
use crate::rooms::{RoomRecord, snapshots::Snapshot};

const ROOMS: Table<RoomRecord> = Table::new("rooms");
/// `(room, type, state_key) -> event`.
const ROOM_STATE: Table<OwnedEventId> = Table::new("room_state");
/// `id -> snapshot`.
const STATE_SNAPSHOTS: Table<Snapshot> = Table::new("state_snapshots");
/// `event -> snapshot of the room state just before it`.
const EVENT_STATE: Table<u64> = Table::new("event_state");

/// `(type, state_key) -> event`.
pub type StateMap = BTreeMap<(String, String), OwnedEventId>;

fn snapshot_key(id: u64) -> Vec<u8> {
    keys::KeyBuf::new().u64(id).into_vec()
}

pub trait RoomStateRead {
    fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>>;
    /// Every room this server knows.
    fn room_ids(&self) -> Result<Vec<OwnedRoomId>>;
    fn state_event_id(
        &self,
        room: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>>;
    fn current_state(&self, room: &RoomId) -> Result<StateMap>;
    fn snapshot(&self, id: u64) -> Result<Option<Snapshot>>;
    /// The highest snapshot ID in use.
    fn last_snapshot_id(&self) -> Result<u64>;
    /// The snapshot of the state before `event`, if recorded.
    fn snapshot_before(&self, event: &EventId) -> Result<Option<u64>>;
}

pub trait RoomStateWrite {
    fn put_room(&mut self, room: &RoomId, record: &RoomRecord);
    /// Sets (or with `None` removes) a current state entry.
    fn set_state(&mut self, room: &RoomId, kind: &str, state_key: &str, event: Option<&EventId>);
    fn put_snapshot(&mut self, id: u64, snapshot: &Snapshot);
    fn put_snapshot_before(&mut self, event: &EventId, id: u64);
}

impl<R: Read + ?Sized> RoomStateRead for R {
    fn room(&self, room: &RoomId) -> Result<Option<RoomRecord>> {
        self.get(ROOMS, room.as_bytes())
    }

    fn room_ids(&self) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .scan_prefix(ROOMS, &[])?
            .into_iter()
            .filter_map(|(k, _)| {
                std::str::from_utf8(&k)
                    .ok()
                    .and_then(|s| OwnedRoomId::try_from(s).ok())
            })
            .collect())
    }

    fn state_event_id(
        &self,
        room: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        self.get(ROOM_STATE, &keys::strs(&[room.as_str(), kind, state_key]))
    }

    fn current_state(&self, room: &RoomId) -> Result<StateMap> {
        let rows = self.scan_prefix(ROOM_STATE, &keys::strs(&[room.as_str()]))?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, id)| {
                let p = keys::split_strs(&k)?;
                Some(((p.get(1)?.to_string(), p.get(2)?.to_string()), id))
            })
            .collect())
    }

    fn snapshot(&self, id: u64) -> Result<Option<Snapshot>> {
        self.get(STATE_SNAPSHOTS, &snapshot_key(id))
    }

    fn last_snapshot_id(&self) -> Result<u64> {
        let last = self.scan(STATE_SNAPSHOTS, b"", &[0xFF; 9], None, true, 1)?;
        Ok(last
            .first()
            .and_then(|(k, _)| keys::trailing_u64(k))
            .unwrap_or(0))
    }

    fn snapshot_before(&self, event: &EventId) -> Result<Option<u64>> {
        self.get(EVENT_STATE, event.as_bytes())
    }
}

impl RoomStateWrite for Txn<'_> {
    fn put_room(&mut self, room: &RoomId, record: &RoomRecord) {
        self.put(ROOMS, room.as_bytes(), record);
    }

    fn set_state(&mut self, room: &RoomId, kind: &str, state_key: &str, event: Option<&EventId>) {
        let key = keys::strs(&[room.as_str(), kind, state_key]);
        match event {
            Some(id) => self.put(ROOM_STATE, &key, &id.to_owned()),
            None => self.delete(ROOM_STATE, &key),
        }
    }

    fn put_snapshot(&mut self, id: u64, snapshot: &Snapshot) {
        self.put(STATE_SNAPSHOTS, &snapshot_key(id), snapshot);
    }

    fn put_snapshot_before(&mut self, event: &EventId, id: u64) {
        self.put(EVENT_STATE, event.as_bytes(), &id);
    }
}
