//! Events and timelines: every event by ID, each room's timeline by position, the global event log, each room's latest activity, and the device transactions that sent them.

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};

use super::{Read, Result, Table, Txn, keys};
use crate::rooms::pdu::StoredEvent;

const EVENTS: Table<StoredEvent> = Table::new("events");
/// `(room, pos) -> event`.
const TIMELINE: Table<OwnedEventId> = Table::new("timeline");
/// `pos -> (room, event)`.
const EVENT_LOG: Table<(OwnedRoomId, OwnedEventId)> = Table::new("event_log");
/// `room -> position of its latest activity`.
const ROOM_ACTIVITY: Table<u64> = Table::new("room_activity");
/// `(sender, device, txn ID) -> event`.
const TXNS: Table<OwnedEventId> = Table::new("txns");

fn timeline_key(room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().str(room.as_str()).u64(pos).into_vec()
}

fn pos_key(pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().u64(pos).into_vec()
}

/// Reads of events and timelines.
pub trait EventRead {
    fn event(&self, id: &str) -> Result<Option<StoredEvent>>;
    fn has_event(&self, id: &str) -> Result<bool>;
    /// Timeline entries with `lo < pos <= hi`: oldest first, or newest
    /// first when `backwards`; at most `limit`.
    fn timeline(
        &self,
        room: &RoomId,
        lo: u64,
        hi: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedEventId)>>;
    /// Every room's timeline events with `after < pos <= upto`, oldest first.
    fn event_log(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedRoomId, OwnedEventId)>>;
    fn room_activity(&self, room: &RoomId) -> Result<Option<u64>>;
    /// The event a device's transaction created, if it did.
    fn sent_by_txn(&self, sender: &UserId, device: &str, txn: &str)
    -> Result<Option<OwnedEventId>>;
}

/// Writes of events and timelines.
pub trait EventWrite {
    fn put_event(&mut self, event: &StoredEvent);
    fn put_timeline(&mut self, room: &RoomId, pos: u64, event: &EventId);
    fn log_event(&mut self, pos: u64, room: &RoomId, event: &EventId);
    fn set_room_activity(&mut self, room: &RoomId, pos: u64);
    fn put_sent_by_txn(&mut self, sender: &UserId, device: &str, txn: &str, event: &EventId);
}

impl<R: Read + ?Sized> EventRead for R {
    fn event(&self, id: &str) -> Result<Option<StoredEvent>> {
        self.get(EVENTS, id.as_bytes())
    }

    fn has_event(&self, id: &str) -> Result<bool> {
        self.contains(EVENTS, id.as_bytes())
    }

    fn timeline(
        &self,
        room: &RoomId,
        lo: u64,
        hi: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedEventId)>> {
        if lo >= hi || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = keys::strs(&[room.as_str()]);
        let rows = if backwards {
            self.scan(
                TIMELINE,
                &prefix,
                &timeline_key(room, hi),
                Some(&timeline_key(room, lo)),
                true,
                limit,
            )?
        } else {
            let until = hi.checked_add(1).map(|h| timeline_key(room, h));
            self.scan(
                TIMELINE,
                &prefix,
                &timeline_key(room, lo + 1),
                until.as_deref(),
                false,
                limit,
            )?
        };
        Ok(rows
            .into_iter()
            .map(|(k, id)| (keys::trailing_u64(&k).unwrap_or(0), id))
            .collect())
    }

    fn event_log(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedRoomId, OwnedEventId)>> {
        let until = upto.checked_add(1).map(pos_key);
        let rows = self.scan(
            EVENT_LOG,
            &[],
            &pos_key(after.saturating_add(1)),
            until.as_deref(),
            false,
            limit,
        )?;
        Ok(rows
            .into_iter()
            .map(|(k, (room, event))| (keys::trailing_u64(&k).unwrap_or(0), room, event))
            .collect())
    }

    fn room_activity(&self, room: &RoomId) -> Result<Option<u64>> {
        self.get(ROOM_ACTIVITY, room.as_bytes())
    }

    fn sent_by_txn(
        &self,
        sender: &UserId,
        device: &str,
        txn: &str,
    ) -> Result<Option<OwnedEventId>> {
        self.get(TXNS, &keys::strs(&[sender.as_str(), device, txn]))
    }
}

impl EventWrite for Txn<'_> {
    fn put_event(&mut self, event: &StoredEvent) {
        self.put(EVENTS, event.event_id.as_bytes(), event);
    }

    fn put_timeline(&mut self, room: &RoomId, pos: u64, event: &EventId) {
        self.put(TIMELINE, &timeline_key(room, pos), &event.to_owned());
    }

    fn log_event(&mut self, pos: u64, room: &RoomId, event: &EventId) {
        self.put(
            EVENT_LOG,
            &pos_key(pos),
            &(room.to_owned(), event.to_owned()),
        );
    }

    fn set_room_activity(&mut self, room: &RoomId, pos: u64) {
        self.put(ROOM_ACTIVITY, room.as_bytes(), &pos);
    }

    fn put_sent_by_txn(&mut self, sender: &UserId, device: &str, txn: &str, event: &EventId) {
        self.put(
            TXNS,
            &keys::strs(&[sender.as_str(), device, txn]),
            &event.to_owned(),
        );
    }
}
