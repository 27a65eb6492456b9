//! The global event log (every timeline event by stream position, across rooms) and each room's latest-activity position.

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};

use super::Rooms;
use crate::{
    error::Result,
    storage::{EventRead, EventWrite, Txn},
};

/// Event types that move a room up a chat list (those Synapse's sliding
/// sync bumps on). Membership changes of the viewer count too, per viewer:
/// see [`Rooms::activity_for`].
const BUMP_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// Records a timeline event at `pos` in the log and, for the types a chat
/// list sorts on, as its room's latest activity.
pub(crate) fn stage(txn: &mut Txn<'_>, pos: u64, room: &RoomId, event: &OwnedEventId, kind: &str) {
    txn.log_event(pos, room, event);
    if BUMP_TYPES.contains(&kind) {
        txn.set_room_activity(room, pos);
    }
}

impl Rooms {
    /// Timeline events of every room with `after < pos <= upto`, oldest
    /// first, at most `limit`.
    pub fn events_after(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedRoomId, OwnedEventId)>> {
        Ok(self.store.event_log(after, upto, limit)?)
    }

    /// The position of the room's latest chat-list activity, if any.
    pub fn room_activity(&self, room: &RoomId) -> Result<Option<u64>> {
        Ok(self.store.room_activity(room)?)
    }

    /// Where the room sorts in `user`'s chat list: its latest activity, or
    /// the user's own latest membership change in it if that is newer (an
    /// invite or a join brings a room to the top).
    pub fn activity_for(&self, user: &UserId, room: &RoomId) -> Result<u64> {
        let membership = self.user_room(user, room)?.map_or(0, |ur| ur.pos);
        Ok(self.room_activity(room)?.unwrap_or(0).max(membership))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{
        rooms::NewEvent,
        test_support::{text, world},
    };

    /// The log lists every room's events in stream order; messages move a
    /// room's activity, a topic change does not.
    #[tokio::test]
    async fn the_log_spans_rooms_and_activity_follows_messages() {
        let w = world();
        let alice = w.user("alice").await;
        let start = w.s.rooms.stream.current();
        let one = w.room(&alice, "12", "private_chat").await;
        let two = w.room(&alice, "12", "private_chat").await;
        let hi =
            w.s.rooms
                .send(&alice, &one, text("hi"), None)
                .await
                .unwrap();
        let yo =
            w.s.rooms
                .send(&alice, &two, text("yo"), None)
                .await
                .unwrap();
        let topic = NewEvent::state("m.room.topic", "", json!({"topic": "later"}));
        w.s.rooms.send(&alice, &one, topic, None).await.unwrap();

        let log = w.s.rooms.events_after(start, u64::MAX, 1000).unwrap();
        let ids: Vec<_> = log.iter().map(|(_, _, e)| e.clone()).collect();
        let (i_hi, i_yo) = (
            ids.iter().position(|e| *e == hi).unwrap(),
            ids.iter().position(|e| *e == yo).unwrap(),
        );
        assert!(i_hi < i_yo, "stream order");
        assert!(log.windows(2).all(|p| p[0].0 < p[1].0));
        assert!(log.iter().any(|(_, r, _)| *r == one) && log.iter().any(|(_, r, _)| *r == two));

        let pos_of = |id| w.s.rooms.event(id).unwrap().unwrap().pos;
        assert_eq!(
            w.s.rooms.room_activity(&one).unwrap(),
            Some(pos_of(hi.as_str()))
        );
        assert_eq!(
            w.s.rooms.room_activity(&two).unwrap(),
            Some(pos_of(yo.as_str()))
        );
        assert!(
            w.s.rooms.activity_for(&alice, &two).unwrap()
                > w.s.rooms.activity_for(&alice, &one).unwrap()
        );
    }
}
