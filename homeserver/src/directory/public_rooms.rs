//! The public room directory: which rooms are listed, who may list them, and /publicRooms search and paging.

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::{
    config::PublishPolicy,
    error::{Error, Result},
    rooms::{Rooms, state::has_power_for},
    storage::{DirectoryRead, DirectoryWrite, Store},
};

/// `room -> ()` for every listed room.

#[derive(Clone)]
pub struct PublicRooms {
    store: Store,
    rooms: Rooms,
    policy: PublishPolicy,
}

/// A /publicRooms request, from the query (GET) or the body (POST).
#[derive(Debug, Default)]
pub struct Query {
    pub limit: Option<usize>,
    pub since: Option<String>,
    pub search: Option<String>,
    pub room_types: Option<Vec<Option<String>>>,
}

impl PublicRooms {
    pub fn new(store: Store, rooms: Rooms, policy: PublishPolicy) -> Self {
        PublicRooms {
            store,
            rooms,
            policy,
        }
    }

    pub fn is_listed(&self, room: &RoomId) -> Result<bool> {
        Ok(self.store.is_public(room)?)
    }

    /// Lists or unlists a room, if `user` may.
    pub fn set_visibility(&self, user: &UserId, room: &RoomId, public: bool) -> Result<()> {
        let record = self
            .rooms
            .room(room)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        if self.rooms.membership_of(room, user)?.as_deref() != Some("join") {
            return Err(Error::forbidden(
                "only members may change the room's directory listing",
            ));
        }
        if self.policy == PublishPolicy::Moderators {
            let rules = bellwire_federation::rules_for(&record.version)
                .map_err(|_| Error::UnsupportedRoomVersion)?;
            if !has_power_for(&self.rooms, room, user, "state_default", &rules)? {
                return Err(Error::forbidden(
                    "only moderators may change the room's directory listing",
                ));
            }
        }
        let mut txn = self.store.transaction();
        txn.set_public(room, public);
        Ok(txn.commit()?)
    }

    /// One page of listed rooms, biggest first. Tokens are offsets into
    /// that order ("n<offset>" forwards, "p<offset>" backwards).
    pub fn search(&self, q: &Query) -> Result<Value> {
        let limit = q.limit.unwrap_or(100).clamp(1, 500);
        let needle = q
            .search
            .as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
        let mut chunks = Vec::new();
        for room in self.store.public_rooms()? {
            if self.rooms.room(&room)?.is_none() {
                continue;
            }
            let chunk = self.rooms.public_chunk(&room)?;
            if let Some(n) = &needle {
                let hay = ["name", "topic", "canonical_alias"]
                    .iter()
                    .filter_map(|f| chunk[*f].as_str())
                    .chain(std::iter::once(room.as_str()))
                    .any(|s| s.to_lowercase().contains(n.as_str()));
                if !hay {
                    continue;
                }
            }
            if let Some(types) = &q.room_types {
                let t = chunk["room_type"].as_str().map(str::to_owned);
                if !types.contains(&t) {
                    continue;
                }
            }
            chunks.push(chunk);
        }
        chunks.sort_by(|a, b| {
            b["num_joined_members"]
                .as_u64()
                .cmp(&a["num_joined_members"].as_u64())
                .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        let total = chunks.len();
        let (start, end) = match q.since.as_deref() {
            None => (0, limit.min(total)),
            Some(t) => {
                let (dir, n) = t.split_at(1.min(t.len()));
                let n: usize = n
                    .parse()
                    .map_err(|_| Error::invalid_param("invalid since token"))?;
                match dir {
                    "n" => (n.min(total), (n + limit).min(total)),
                    "p" => (n.saturating_sub(limit), n.min(total)),
                    _ => return Err(Error::invalid_param("invalid since token")),
                }
            }
        };
        let mut body =
            json!({"chunk": chunks[start..end].to_vec(), "total_room_count_estimate": total});
        if end < total {
            body["next_batch"] = Value::from(format!("n{end}"));
        }
        if start > 0 {
            body["prev_batch"] = Value::from(format!("p{start}"));
        }
        Ok(body)
    }
}
