//! What a room looks like from outside: the public-rooms chunk and room summary fields (name, topic, join rule, member count...).

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use super::Rooms;
use crate::error::{Error, Result};
use crate::storage::RoomStateRead;

impl Rooms {
    fn state_str(&self, room: &RoomId, kind: &str, field: &str) -> Result<Option<String>> {
        Ok(self
            .state_content(room, kind, "")?
            .and_then(|c| c.get(field).and_then(Value::as_str).map(str::to_owned)))
    }

    pub fn join_rule(&self, room: &RoomId) -> Result<String> {
        Ok(self
            .state_str(room, "m.room.join_rules", "join_rule")?
            .unwrap_or_else(|| "invite".into()))
    }

    pub fn history_visibility(&self, room: &RoomId) -> Result<String> {
        Ok(self
            .state_str(room, "m.room.history_visibility", "history_visibility")?
            .unwrap_or_else(|| "shared".into()))
    }

    /// The fields the public room directory and room summaries share.
    pub fn public_chunk(&self, room: &RoomId) -> Result<Value> {
        let mut out = json!({
            "room_id": room,
            "num_joined_members": self.members_with(room, &["join"])?.len(),
            "world_readable": self.history_visibility(room)? == "world_readable",
            "guest_can_join": self.state_str(room, "m.room.guest_access", "guest_access")?.as_deref() == Some("can_join"),
            "join_rule": self.join_rule(room)?,
        });
        let fields = [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
        ];
        for (name, kind, field) in fields {
            if let Some(v) = self.state_str(room, kind, field)?.filter(|v| !v.is_empty()) {
                out[name] = Value::from(v);
            }
        }
        if let Some(t) = self.room_create_event(room)?.pdu_value()["content"]
            .get("type")
            .and_then(Value::as_str)
        {
            out["room_type"] = Value::from(t);
        }
        Ok(out)
    }

    /// The room summary (MSC3266, spec v1.15) `viewer` may see: members and
    /// invitees see any room; others only rooms they could join or peek into.
    pub fn room_summary(&self, room: &RoomId, viewer: Option<&UserId>) -> Result<Value> {
        let not_found = || Error::not_found("room not found or not visible to you");
        let record = self.room(room)?.ok_or_else(not_found)?;
        let membership = match viewer {
            Some(v) => self.membership_of(room, v)?,
            None => None,
        };
        let join_rule = self.join_rule(room)?;
        let open = matches!(join_rule.as_str(), "public" | "knock" | "knock_restricted")
            || self.history_visibility(room)? == "world_readable";
        let involved = matches!(membership.as_deref(), Some("join" | "invite" | "knock"));
        if !open && !involved {
            return Err(not_found());
        }
        let mut out = self.public_chunk(room)?;
        out["room_version"] = Value::from(record.version.as_str());
        if let Some(alg) = self.state_str(room, "m.room.encryption", "algorithm")? {
            out["encryption"] = Value::from(alg);
        }
        if let Some(m) = membership {
            out["membership"] = Value::from(m);
        }
        Ok(out)
    }
}

impl Rooms {
    /// Every room whose current join rule is `rule` (a scan of all rooms:
    /// fine for the directory's scale, indexed if it ever is not).
    pub fn rooms_with_join_rule(&self, rule: &str) -> Result<Vec<ruma::OwnedRoomId>> {
        let mut out = Vec::new();
        for room in self.store.room_ids()? {
            if self.join_rule(&room)? == rule {
                out.push(room);
            }
        }
        Ok(out)
    }
}
