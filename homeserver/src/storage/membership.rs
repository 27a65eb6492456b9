//! Memberships: each user's rooms (with the event that put them there), each room's local members, the membership log by position, and the invite state remote servers send.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::{Read, Result, Table, Txn, keys};
use crate::rooms::UserRoom;

/// `(user, room) -> the user's relation to the room`.
const USER_ROOMS: Table<UserRoom> = Table::new("user_rooms");
/// `(room, user) -> membership`, so fan-out needs no event loads.
const ROOM_MEMBERS: Table<String> = Table::new("user_rooms_by_room");
/// `(room, pos) -> (user, membership)`: changes in stream order.
const MEMBERSHIP_LOG: Table<(OwnedUserId, String)> = Table::new("membership_log");
/// `(user, room) -> stripped state` sent with a remote invite.
const INVITE_STATE: Table<Vec<Value>> = Table::new("invite_state");

fn log_key(room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().str(room.as_str()).u64(pos).into_vec()
}

pub trait MembershipRead {
    /// Every user with a membership row in the room, and that membership.
    fn members(&self, room: &RoomId) -> Result<Vec<(OwnedUserId, String)>>;
    fn membership_of(&self, room: &RoomId, user: &UserId) -> Result<Option<String>>;
    fn user_rooms(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, UserRoom)>>;
    fn user_room(&self, user: &UserId, room: &RoomId) -> Result<Option<UserRoom>>;
    /// Membership changes with `after < pos <= upto`, oldest first.
    fn membership_log(
        &self,
        room: &RoomId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, OwnedUserId, String)>>;
    fn invite_state(&self, user: &UserId, room: &RoomId) -> Result<Option<Vec<Value>>>;
}

pub trait MembershipWrite {
    fn put_user_room(&mut self, user: &UserId, room: &RoomId, ur: &UserRoom);
    fn delete_user_room(&mut self, user: &UserId, room: &RoomId);
    fn set_member(&mut self, room: &RoomId, user: &UserId, membership: &str);
    fn log_membership(&mut self, room: &RoomId, pos: u64, user: &UserId, membership: &str);
    fn put_invite_state(&mut self, user: &UserId, room: &RoomId, state: &[Value]);
}

impl<R: Read + ?Sized> MembershipRead for R {
    fn members(&self, room: &RoomId) -> Result<Vec<(OwnedUserId, String)>> {
        Ok(self
            .scan_prefix(ROOM_MEMBERS, &keys::strs(&[room.as_str()]))?
            .into_iter()
            .filter_map(|(k, m)| {
                let user = keys::split_strs(&k)?
                    .get(1)
                    .and_then(|u| UserId::parse(*u).ok())?;
                Some((user, m))
            })
            .collect())
    }

    fn membership_of(&self, room: &RoomId, user: &UserId) -> Result<Option<String>> {
        self.get(ROOM_MEMBERS, &keys::strs(&[room.as_str(), user.as_str()]))
    }

    fn user_rooms(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, UserRoom)>> {
        Ok(self
            .scan_prefix(USER_ROOMS, &keys::strs(&[user.as_str()]))?
            .into_iter()
            .filter_map(|(k, v)| {
                let parts = keys::split_strs(&k)?;
                Some((OwnedRoomId::try_from(*parts.get(1)?).ok()?, v))
            })
            .collect())
    }

    fn user_room(&self, user: &UserId, room: &RoomId) -> Result<Option<UserRoom>> {
        self.get(USER_ROOMS, &keys::strs(&[user.as_str(), room.as_str()]))
    }

    fn membership_log(
        &self,
        room: &RoomId,
        after: u64,
        upto: u64,
    ) -> Result<Vec<(u64, OwnedUserId, String)>> {
        let prefix = keys::strs(&[room.as_str()]);
        let until = upto.checked_add(1).map(|u| log_key(room, u));
        Ok(self
            .scan(
                MEMBERSHIP_LOG,
                &prefix,
                &log_key(room, after.saturating_add(1)),
                until.as_deref(),
                false,
                usize::MAX,
            )?
            .into_iter()
            .map(|(k, (user, m))| (keys::trailing_u64(&k).unwrap_or(0), user, m))
            .collect())
    }

    fn invite_state(&self, user: &UserId, room: &RoomId) -> Result<Option<Vec<Value>>> {
        self.get(INVITE_STATE, &keys::strs(&[user.as_str(), room.as_str()]))
    }
}

impl MembershipWrite for Txn<'_> {
    fn put_user_room(&mut self, user: &UserId, room: &RoomId, ur: &UserRoom) {
        self.put(USER_ROOMS, &keys::strs(&[user.as_str(), room.as_str()]), ur);
    }

    fn delete_user_room(&mut self, user: &UserId, room: &RoomId) {
        self.delete(USER_ROOMS, &keys::strs(&[user.as_str(), room.as_str()]));
    }

    fn set_member(&mut self, room: &RoomId, user: &UserId, membership: &str) {
        self.put(
            ROOM_MEMBERS,
            &keys::strs(&[room.as_str(), user.as_str()]),
            &membership.to_owned(),
        );
    }

    fn log_membership(&mut self, room: &RoomId, pos: u64, user: &UserId, membership: &str) {
        self.put(
            MEMBERSHIP_LOG,
            &log_key(room, pos),
            &(user.to_owned(), membership.to_owned()),
        );
    }

    fn put_invite_state(&mut self, user: &UserId, room: &RoomId, state: &[Value]) {
        self.put(
            INVITE_STATE,
            &keys::strs(&[user.as_str(), room.as_str()]),
            &state.to_vec(),
        );
    }
}
