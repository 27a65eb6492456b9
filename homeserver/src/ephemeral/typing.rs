//! Typing notifications: who is typing in which room, with per-user expiry, kept in memory only.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::time::Instant;

use crate::{
    error::{Error, Result},
    rooms::Rooms,
    stream::Stream,
};

/// Longest a single typing notification may last; clients renew it while
/// the user keeps typing.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// Stream position of the last change to this room's typing set.
    pos: u64,
    users: BTreeMap<OwnedUserId, Instant>,
}

#[derive(Clone)]
pub struct Typing {
    stream: Arc<Stream>,
    rooms: Rooms,
    state: Arc<Mutex<HashMap<OwnedRoomId, RoomTyping>>>,
}

impl Typing {
    pub fn new(stream: Arc<Stream>, rooms: Rooms) -> Self {
        Typing {
            stream,
            rooms,
            state: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, RoomTyping>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (with a timeout) or stops `user` typing in `room`.
    pub async fn set(
        &self,
        user: &UserId,
        room: &RoomId,
        typing: bool,
        timeout: Option<Duration>,
    ) -> Result<()> {
        if self.rooms.membership_of(room, user)?.as_deref() != Some("join") {
            return Err(Error::forbidden("you are not in this room"));
        }
        let changed = {
            let mut state = self.lock();
            let entry = state.entry(room.to_owned()).or_default();
            if typing {
                let until =
                    Instant::now() + timeout.unwrap_or(Duration::from_secs(30)).min(MAX_TIMEOUT);
                entry.users.insert(user.to_owned(), until).is_none()
            } else {
                entry.users.remove(user).is_some()
            }
        };
        if typing {
            let this = self.clone();
            let (user, room) = (user.to_owned(), room.to_owned());
            let wait = timeout.unwrap_or(Duration::from_secs(30)).min(MAX_TIMEOUT);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Err(e) = this.expire(&user, &room).await {
                    tracing::warn!("typing expiry for {user} in {room}: {e}");
                }
            });
        }
        // Other servers hear every change and renewal of our users.
        if user.server_name() == self.rooms.server_name {
            let edu = serde_json::json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": user, "typing": typing}});
            self.rooms.send_edu_to_room(room, edu)?;
        }
        // Renewals of a running notification change nothing others see.
        if changed {
            self.publish(room).await?;
        }
        Ok(())
    }

    /// Drops `user` from `room` if their latest notification has run out.
    async fn expire(&self, user: &UserId, room: &RoomId) -> Result<()> {
        let expired = {
            let mut state = self.lock();
            match state.get_mut(room) {
                Some(entry)
                    if entry
                        .users
                        .get(user)
                        .is_some_and(|until| *until <= Instant::now()) =>
                {
                    entry.users.remove(user);
                    true
                }
                _ => false,
            }
        };
        if expired {
            self.publish(room).await?;
        }
        Ok(())
    }

    /// Gives the room's typing set a new stream position, so syncs see
    /// the change; nothing is written to the database for it.
    async fn publish(&self, room: &RoomId) -> Result<()> {
        let members = self.rooms.members_with(room, &["join"])?;
        self.stream
            .write(|w| {
                let pos = w.next_pos();
                let mut state = self.lock();
                let entry = state.entry(room.to_owned()).or_default();
                entry.pos = entry.pos.max(pos);
                w.wake(members.iter().map(|u| u.as_ref()));
                Ok(())
            })
            .await
    }

    /// The users typing in `room` now, if the set changed in `(since, upto]`
    /// (or, for an initial sync, if anyone is typing).
    pub fn changed(
        &self,
        room: &RoomId,
        since: Option<u64>,
        upto: u64,
    ) -> Option<Vec<OwnedUserId>> {
        let state = self.lock();
        let entry = state.get(room)?;
        let now = Instant::now();
        let users: Vec<OwnedUserId> = entry
            .users
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(u, _)| u.clone())
            .collect();
        match since {
            Some(s) if entry.pos > s && entry.pos <= upto => Some(users),
            None if !users.is_empty() => Some(users),
            _ => None,
        }
    }
}
