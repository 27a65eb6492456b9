//! Timeline reads: ranges by stream position, and which part of a room's history a user may see.

use ruma::{RoomId, UserId};

use super::{Rooms, pdu::StoredEvent};
use crate::{
    error::{Error, Result},
    storage::{EventRead, MembershipRead},
};

impl Rooms {
    /// Events with `lo < pos <= hi`: oldest first, or newest first when
    /// `backwards`; at most `limit`.
    pub fn timeline_range(
        &self,
        room_id: &RoomId,
        lo: u64,
        hi: u64,
        backwards: bool,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let ids = self.store.timeline(room_id, lo, hi, backwards, limit)?;
        let mut out = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            if let Some(e) = self.event(id.as_str())? {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Whether the room has any event after `pos`.
    pub fn has_events_after(&self, room_id: &RoomId, pos: u64) -> Result<bool> {
        Ok(!self
            .store
            .timeline(room_id, pos, u64::MAX, false, 1)?
            .is_empty())
    }

    /// The newest position `user` may read in this room: everything while
    /// joined, up to the end of their last membership after leaving. Users
    /// who never joined (e.g. rejected an invite) see nothing.
    pub fn visible_until(&self, user: &UserId, room_id: &RoomId) -> Result<u64> {
        let not_member = || Error::forbidden("you are not a member of this room");
        let ur = self.user_room(user, room_id)?.ok_or_else(not_member)?;
        if ur.membership == "join" {
            return Ok(u64::MAX);
        }
        if ur.membership != "leave" && ur.membership != "ban" {
            return Err(not_member());
        }
        // Walk back through the user's membership events to the last join;
        // the event that ended it is where their view of the room stops.
        let mut ended_at = ur.pos;
        let mut cursor = self.event(ur.event_id.as_str())?;
        for _ in 0..64 {
            let Some(ev) = cursor else { break };
            let Some(prev_id) = ev.replaces_state.clone() else {
                break;
            };
            let Some(prev) = self.event(prev_id.as_str())? else {
                break;
            };
            if prev.parse().ok().and_then(|p| p.membership()).as_deref() == Some("join") {
                return Ok(ended_at);
            }
            ended_at = prev.pos;
            cursor = Some(prev);
        }
        Err(not_member())
    }
}

impl Rooms {
    /// The oldest position `user` may read in this room, by its history
    /// visibility: everything in `shared` and `world_readable` rooms; from
    /// the user's first invite (`invited`) or join (`joined`) otherwise.
    /// The current setting applies to all of the room's history.
    pub fn visible_from(&self, user: &UserId, room_id: &RoomId) -> Result<u64> {
        let visibility = self
            .state_content(room_id, "m.room.history_visibility", "")?
            .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".into());
        let wanted: &[&str] = match visibility.as_str() {
            "invited" => &["invite", "join"],
            "joined" => &["join"],
            _ => return Ok(0),
        };
        for (pos, who, membership) in self.store.membership_log(room_id, 0, u64::MAX)? {
            if who == user && wanted.contains(&membership.as_str()) {
                return Ok(pos);
            }
        }
        // Rooms from before the membership log: the current membership.
        Ok(match self.user_room(user, room_id)? {
            Some(ur) if wanted.contains(&ur.membership.as_str()) => ur.pos,
            _ => u64::MAX,
        })
    }

    /// Membership changes in `room` with `since < pos <= upto`.
    pub fn membership_changes(
        &self,
        room_id: &RoomId,
        since: u64,
        upto: u64,
    ) -> Result<Vec<(ruma::OwnedUserId, String)>> {
        Ok(self
            .store
            .membership_log(room_id, since, upto)?
            .into_iter()
            .map(|(_, user, m)| (user, m))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{
        rooms::NewEvent,
        test_support::{text, world},
    };

    /// In a room whose history is visible to members only from their join,
    /// a newcomer cannot read what was said before; in a shared room they can.
    #[tokio::test]
    async fn history_visibility_sets_where_a_newcomer_starts_reading() {
        for (visibility, sees_the_past) in [
            ("joined", false),
            ("invited", false),
            ("shared", true),
            ("world_readable", true),
        ] {
            let w = world();
            let (alice, carol) = (w.user("alice").await, w.user("carol").await);
            let room = w.room(&alice, "12", "public_chat").await;
            let hv = NewEvent::state(
                "m.room.history_visibility",
                "",
                json!({"history_visibility": visibility}),
            );
            w.s.rooms.send(&alice, &room, hv, None).await.unwrap();
            let secret =
                w.s.rooms
                    .send(&alice, &room, text("SECRET before carol"), None)
                    .await
                    .unwrap();
            let secret_pos = w.s.rooms.event(secret.as_str()).unwrap().unwrap().pos;
            w.s.rooms.join(&carol, &room).await.unwrap();
            let from = w.s.rooms.visible_from(&carol, &room).unwrap();
            assert_eq!(
                from <= secret_pos,
                sees_the_past,
                "{visibility}: carol reads from {from}, the secret is at {secret_pos}"
            );
            // Alice, there all along, always reads everything she was there for.
            assert!(w.s.rooms.visible_from(&alice, &room).unwrap() <= secret_pos);
        }
    }
}
