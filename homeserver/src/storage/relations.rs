//! The relations index: each event's children (edits, reactions, thread replies, references) by position, and threads ordered by their latest reply.

use ruma::{EventId, OwnedEventId, RoomId};

use super::{Read, Result, Table, Txn, keys};
use crate::rooms::relations::Relation;

/// `(room, parent, pos) -> child`.
const RELATIONS: Table<Relation> = Table::new("relations");
/// `(room, latest reply pos) -> thread root`.
const THREAD_ACTIVITY: Table<OwnedEventId> = Table::new("thread_activity");
/// `(room, root) -> latest reply pos`.
const THREAD_LATEST: Table<u64> = Table::new("thread_latest");

fn rel_key(room: &RoomId, parent: &str, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new()
        .str(room.as_str())
        .str(parent)
        .u64(pos)
        .into_vec()
}

fn activity_key(room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().str(room.as_str()).u64(pos).into_vec()
}

pub trait RelationRead {
    /// Children of `parent`, oldest first, with their positions.
    fn children(&self, room: &RoomId, parent: &str) -> Result<Vec<(u64, Relation)>>;
    /// Thread roots by latest reply, newest first, from activity position
    /// `from` (inclusive) down.
    fn threads_by_activity(&self, room: &RoomId, from: u64) -> Result<Vec<(u64, OwnedEventId)>>;
}

pub trait RelationWrite {
    fn put_relation(&mut self, room: &RoomId, parent: &str, pos: u64, relation: &Relation);
    fn delete_relation(&mut self, room: &RoomId, parent: &str, pos: u64);
    /// Moves a thread to the front of its room's thread list.
    fn set_thread_activity(&mut self, room: &RoomId, root: &EventId, pos: u64) -> Result<()>;
}

impl<R: Read + ?Sized> RelationRead for R {
    fn children(&self, room: &RoomId, parent: &str) -> Result<Vec<(u64, Relation)>> {
        Ok(self
            .scan_prefix(RELATIONS, &keys::strs(&[room.as_str(), parent]))?
            .into_iter()
            .map(|(k, r)| (keys::trailing_u64(&k).unwrap_or(0), r))
            .collect())
    }

    fn threads_by_activity(&self, room: &RoomId, from: u64) -> Result<Vec<(u64, OwnedEventId)>> {
        let prefix = keys::strs(&[room.as_str()]);
        Ok(self
            .scan(
                THREAD_ACTIVITY,
                &prefix,
                &activity_key(room, from),
                None,
                true,
                usize::MAX,
            )?
            .into_iter()
            .map(|(k, root)| (keys::trailing_u64(&k).unwrap_or(0), root))
            .collect())
    }
}

impl RelationWrite for Txn<'_> {
    fn put_relation(&mut self, room: &RoomId, parent: &str, pos: u64, relation: &Relation) {
        self.put(RELATIONS, &rel_key(room, parent, pos), relation);
    }

    fn delete_relation(&mut self, room: &RoomId, parent: &str, pos: u64) {
        self.delete(RELATIONS, &rel_key(room, parent, pos));
    }

    fn set_thread_activity(&mut self, room: &RoomId, root: &EventId, pos: u64) -> Result<()> {
        let latest_key = keys::strs(&[room.as_str(), root.as_str()]);
        if let Some(old) = self.get(THREAD_LATEST, &latest_key)? {
            self.delete(THREAD_ACTIVITY, &activity_key(room, old));
        }
        self.put(THREAD_LATEST, &latest_key, &pos);
        self.put(THREAD_ACTIVITY, &activity_key(room, pos), &root.to_owned());
        Ok(())
    }
}
