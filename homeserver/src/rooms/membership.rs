//! Membership changes (join, invite, leave, kick, ban, unban, forget) and the `m.direct` bookkeeping of DMs.

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use super::{NewEvent, Rooms};
use crate::{
    account_data,
    error::{Error, Result},
    storage::{AccountRead, MembershipRead, MembershipWrite},
    stream::Write,
};

impl Rooms {
    /// `(displayname, avatar_url)` of a local user's global profile.
    pub fn profile_of(&self, user: &UserId) -> Result<Option<(Value, Value)>> {
        Ok(self.store.user(user)?.map(|u| {
            (
                u.displayname.map(Value::from).unwrap_or(Value::Null),
                u.avatar_url.map(Value::from).unwrap_or(Value::Null),
            )
        }))
    }

    pub(crate) fn member_event(
        &self,
        user: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Value {
        let mut content = json!({"membership": membership});
        if (membership == "join" || membership == "invite")
            && let Ok(Some((name, avatar))) = self.profile_of(user)
        {
            if !name.is_null() {
                content["displayname"] = name;
            }
            if !avatar.is_null() {
                content["avatar_url"] = avatar;
            }
        }
        if let Some(r) = reason {
            content["reason"] = Value::from(r);
        }
        content
    }

    /// Joins `user` to the room; completing a DM invite records it in
    /// `m.direct`, in the same write as the join.
    pub async fn join(&self, user: &UserId, room_id: &RoomId) -> Result<OwnedEventId> {
        if self.room(room_id)?.is_none() {
            return Err(Error::not_found("no such room on this server"));
        }
        let _room = self.locks.lock(room_id).await;
        let invite = self
            .user_room(user, room_id)?
            .filter(|ur| ur.membership == "invite" && ur.is_direct);
        let content = self.member_event(user, "join", None);
        let event = NewEvent::state("m.room.member", user.as_str(), content);
        self.send_locked(user, room_id, event, None, |w| match &invite {
            Some(inv) => self.stage_direct(w, user, &inv.sender, room_id),
            None => Ok(()),
        })
        .await
    }

    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        if !self.user_exists(target)? {
            return Err(Error::not_found("no such user"));
        }
        match self.membership_of(room_id, target)?.as_deref() {
            Some("join") => return Err(Error::forbidden("user is already in the room")),
            Some("ban") => return Err(Error::forbidden("user is banned from the room")),
            _ => {}
        }
        let content = self.member_event(target, "invite", reason);
        self.send(
            sender,
            room_id,
            NewEvent::state("m.room.member", target.as_str(), content),
            None,
        )
        .await
    }

    /// Leaves (or rejects an invite).
    pub async fn leave(
        &self,
        user: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        match self.membership_of(room_id, user)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            _ => return Err(Error::forbidden("you are not in this room")),
        }
        let content = self.member_event(user, "leave", reason);
        self.send(
            user,
            room_id,
            NewEvent::state("m.room.member", user.as_str(), content),
            None,
        )
        .await
    }

    pub async fn kick(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        match self.membership_of(room_id, target)?.as_deref() {
            Some("join" | "invite" | "knock") => {}
            _ => return Err(Error::forbidden("the user is not in the room")),
        }
        let content = self.member_event(target, "leave", reason);
        self.send(
            sender,
            room_id,
            NewEvent::state("m.room.member", target.as_str(), content),
            None,
        )
        .await
    }

    pub async fn ban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        let content = self.member_event(target, "ban", reason);
        self.send(
            sender,
            room_id,
            NewEvent::state("m.room.member", target.as_str(), content),
            None,
        )
        .await
    }

    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<OwnedEventId> {
        if self.membership_of(room_id, target)?.as_deref() != Some("ban") {
            return Err(Error::forbidden("the user is not banned"));
        }
        let content = self.member_event(target, "leave", reason);
        self.send(
            sender,
            room_id,
            NewEvent::state("m.room.member", target.as_str(), content),
            None,
        )
        .await
    }

    /// Forgets a room the user has left: it disappears from their sync.
    pub async fn forget(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        self.stream
            .write(|w| match w.user_room(user, room_id)? {
                Some(ur) if ur.membership == "join" || ur.membership == "invite" => {
                    Err(Error::forbidden("leave the room before forgetting it"))
                }
                Some(_) => {
                    w.delete_user_room(user, room_id);
                    Ok(())
                }
                None => Err(Error::not_found("you were never in this room")),
            })
            .await
    }

    /// Local users who share a joined room with `user`.
    pub fn sharers(&self, user: &UserId) -> Result<std::collections::BTreeSet<ruma::OwnedUserId>> {
        let mut out = std::collections::BTreeSet::new();
        for room in self.joined_rooms(user)? {
            out.extend(self.members_with(&room, &["join"])?);
        }
        out.remove(user);
        Ok(out)
    }

    /// Whether `a` and `b` are both joined to some room (a user shares with themselves).
    pub fn shares_room(&self, a: &UserId, b: &UserId) -> Result<bool> {
        if a == b {
            return Ok(true);
        }
        for room in self.joined_rooms(a)? {
            if self.membership_of(&room, b)?.as_deref() == Some("join") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn joined_rooms(&self, user: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .user_rooms(user)?
            .into_iter()
            .filter(|(_, ur)| ur.membership == "join")
            .map(|(r, _)| r)
            .collect())
    }

    pub(crate) fn user_exists(&self, user: &UserId) -> Result<bool> {
        if user.server_name() != self.server_name {
            return Err(Error::forbidden("not a user of this server"));
        }
        Ok(self.store.user(user)?.is_some())
    }

    /// Adds `room_id` under `other` in `user`'s `m.direct`, keeping what
    /// is there, as part of a write.
    pub(crate) fn stage_direct(
        &self,
        w: &mut Write<'_>,
        user: &UserId,
        other: &UserId,
        room_id: &RoomId,
    ) -> Result<()> {
        let mut direct = self
            .account_data
            .get_in(&**w, user, None, "m.direct")?
            .unwrap_or_else(|| json!({}));
        let Some(map) = direct.as_object_mut() else {
            return Ok(());
        };
        let list = map.entry(other.to_string()).or_insert_with(|| json!([]));
        if let Some(arr) = list.as_array_mut()
            && !arr.iter().any(|r| r.as_str() == Some(room_id.as_str()))
        {
            arr.push(Value::from(room_id.as_str()));
        }
        account_data::stage(w, user, None, "m.direct", direct);
        Ok(())
    }
}
