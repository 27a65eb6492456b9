//! What users keep and say beside the timeline: account data, receipts and read positions, presence, notifications and pushers.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::{Read, Result, Table, Txn, keys};
use crate::{
    account_data::Entry,
    ephemeral::{presence::PresenceRecord, receipts::Receipt},
    push::{notifications::Notification, pusher::Pusher},
};

/// `(user, room or "", type) -> content and position`.
const ACCOUNT_DATA: Table<Entry> = Table::new("account_data");
/// `(room, type, user, thread) -> latest receipt`.
const RECEIPTS: Table<Receipt> = Table::new("receipts");
/// `(room, pos) -> receipt`: what changed when, for incremental syncs.
const RECEIPT_LOG: Table<Receipt> = Table::new("receipt_log");
/// `(user, room, thread or "") -> position read up to`.
const READ_UPTO: Table<u64> = Table::new("read_upto");
/// `user -> presence`.
const PRESENCE: Table<PresenceRecord> = Table::new("presence");
/// `pos -> user`: one entry per user, at their latest change.
const PRESENCE_LOG: Table<OwnedUserId> = Table::new("presence_log");
/// `(user, room, pos) -> notification`.
const NOTIFICATIONS: Table<Notification> = Table::new("notifications");
/// `(user, pos) -> room`: a user's notifications across rooms.
const NOTIFICATION_LOG: Table<OwnedRoomId> = Table::new("notification_log");
/// `(user, app ID, pushkey) -> pusher`.
const PUSHERS: Table<Pusher> = Table::new("pushers");

fn room_pos(room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().str(room.as_str()).u64(pos).into_vec()
}

fn pos_key(pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().u64(pos).into_vec()
}

fn notification_key(user: &UserId, room: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new()
        .str(user.as_str())
        .str(room.as_str())
        .u64(pos)
        .into_vec()
}

fn user_pos(user: &UserId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new().str(user.as_str()).u64(pos).into_vec()
}

/// A user's account data entry: `None` for global data.
pub type AccountDataKey = (Option<OwnedRoomId>, String);

pub trait UserDataRead {
    fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Entry>>;
    /// Every account data entry of `user`.
    fn all_account_data(&self, user: &UserId) -> Result<Vec<(AccountDataKey, Entry)>>;
    fn receipt(
        &self,
        room: &RoomId,
        receipt_type: &str,
        user: &UserId,
        thread: &str,
    ) -> Result<Option<Receipt>>;
    /// Every current receipt in the room.
    fn receipts(&self, room: &RoomId) -> Result<Vec<Receipt>>;
    /// Receipts set with `after < pos <= upto`, oldest first.
    fn receipt_log(&self, room: &RoomId, after: u64, upto: u64) -> Result<Vec<Receipt>>;
    fn read_upto(&self, user: &UserId, room: &RoomId, thread: &str) -> Result<Option<u64>>;
    /// `(thread or "", position)` of every read position in the room.
    fn read_positions(&self, user: &UserId, room: &RoomId) -> Result<Vec<(String, u64)>>;
    fn presence(&self, user: &UserId) -> Result<Option<PresenceRecord>>;
    /// Users whose presence changed with `after < pos <= upto`.
    fn presence_log(&self, after: u64, upto: u64) -> Result<Vec<OwnedUserId>>;
    /// Notifications in a room from position `from` on, with positions.
    fn notifications_from(
        &self,
        user: &UserId,
        room: &RoomId,
        from: u64,
    ) -> Result<Vec<(u64, Notification)>>;
    fn notification(&self, user: &UserId, room: &RoomId, pos: u64) -> Result<Option<Notification>>;
    /// `(pos, room)` of a user's notifications at or below `from`, newest first.
    fn notification_log_before(
        &self,
        user: &UserId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedRoomId)>>;
    fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>>;
    fn pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<Option<Pusher>>;
    /// Every pusher of every user, with its owner.
    fn all_pushers(&self) -> Result<Vec<(OwnedUserId, Pusher)>>;
}

pub trait UserDataWrite {
    fn put_account_data(&mut self, user: &UserId, room: Option<&RoomId>, kind: &str, entry: &Entry);
    /// Replaces a receipt and logs it at its position.
    fn put_receipt(&mut self, room: &RoomId, receipt: &Receipt);
    fn put_read_upto(&mut self, user: &UserId, room: &RoomId, thread: &str, pos: u64);
    /// Replaces a user's presence, moving their log entry to its position.
    fn put_presence(
        &mut self,
        user: &UserId,
        old: Option<&PresenceRecord>,
        record: &PresenceRecord,
    );
    fn put_notification(&mut self, user: &UserId, room: &RoomId, pos: u64, n: &Notification);
    fn put_pusher(&mut self, user: &UserId, pusher: &Pusher);
    fn delete_pusher(&mut self, user: &UserId, app_id: &str, pushkey: &str);
}

impl<R: Read + ?Sized> UserDataRead for R {
    fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Entry>> {
        self.get(
            ACCOUNT_DATA,
            &keys::strs(&[user.as_str(), room.map_or("", |r| r.as_str()), kind]),
        )
    }

    fn all_account_data(&self, user: &UserId) -> Result<Vec<(AccountDataKey, Entry)>> {
        Ok(self
            .scan_prefix(ACCOUNT_DATA, &keys::strs(&[user.as_str()]))?
            .into_iter()
            .filter_map(|(k, entry)| {
                let parts = keys::split_strs(&k)?;
                let (room, kind) = (parts.get(1)?, parts.get(2)?);
                let room = match *room {
                    "" => None,
                    r => Some(OwnedRoomId::try_from(r).ok()?),
                };
                Some(((room, kind.to_string()), entry))
            })
            .collect())
    }

    fn receipt(
        &self,
        room: &RoomId,
        receipt_type: &str,
        user: &UserId,
        thread: &str,
    ) -> Result<Option<Receipt>> {
        self.get(
            RECEIPTS,
            &keys::strs(&[room.as_str(), receipt_type, user.as_str(), thread]),
        )
    }

    fn receipts(&self, room: &RoomId) -> Result<Vec<Receipt>> {
        Ok(self
            .scan_prefix(RECEIPTS, &keys::strs(&[room.as_str()]))?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    fn receipt_log(&self, room: &RoomId, after: u64, upto: u64) -> Result<Vec<Receipt>> {
        let prefix = keys::strs(&[room.as_str()]);
        let until = upto.checked_add(1).map(|u| room_pos(room, u));
        Ok(self
            .scan(
                RECEIPT_LOG,
                &prefix,
                &room_pos(room, after.saturating_add(1)),
                until.as_deref(),
                false,
                usize::MAX,
            )?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    fn read_upto(&self, user: &UserId, room: &RoomId, thread: &str) -> Result<Option<u64>> {
        self.get(
            READ_UPTO,
            &keys::strs(&[user.as_str(), room.as_str(), thread]),
        )
    }

    fn read_positions(&self, user: &UserId, room: &RoomId) -> Result<Vec<(String, u64)>> {
        Ok(self
            .scan_prefix(READ_UPTO, &keys::strs(&[user.as_str(), room.as_str()]))?
            .into_iter()
            .filter_map(|(k, pos)| Some((keys::split_strs(&k)?.get(2)?.to_string(), pos)))
            .collect())
    }

    fn presence(&self, user: &UserId) -> Result<Option<PresenceRecord>> {
        self.get(PRESENCE, user.as_bytes())
    }

    fn presence_log(&self, after: u64, upto: u64) -> Result<Vec<OwnedUserId>> {
        let until = upto.checked_add(1).map(pos_key);
        Ok(self
            .scan(
                PRESENCE_LOG,
                &[],
                &pos_key(after.saturating_add(1)),
                until.as_deref(),
                false,
                usize::MAX,
            )?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    fn notifications_from(
        &self,
        user: &UserId,
        room: &RoomId,
        from: u64,
    ) -> Result<Vec<(u64, Notification)>> {
        let prefix = keys::strs(&[user.as_str(), room.as_str()]);
        Ok(self
            .scan(
                NOTIFICATIONS,
                &prefix,
                &notification_key(user, room, from),
                None,
                false,
                usize::MAX,
            )?
            .into_iter()
            .map(|(k, n)| (keys::trailing_u64(&k).unwrap_or(0), n))
            .collect())
    }

    fn notification(&self, user: &UserId, room: &RoomId, pos: u64) -> Result<Option<Notification>> {
        self.get(NOTIFICATIONS, &notification_key(user, room, pos))
    }

    fn notification_log_before(
        &self,
        user: &UserId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OwnedRoomId)>> {
        let prefix = keys::strs(&[user.as_str()]);
        Ok(self
            .scan(
                NOTIFICATION_LOG,
                &prefix,
                &user_pos(user, from),
                None,
                true,
                limit,
            )?
            .into_iter()
            .map(|(k, room)| (keys::trailing_u64(&k).unwrap_or(0), room))
            .collect())
    }

    fn pushers(&self, user: &UserId) -> Result<Vec<Pusher>> {
        Ok(self
            .scan_prefix(PUSHERS, &keys::strs(&[user.as_str()]))?
            .into_iter()
            .map(|(_, p)| p)
            .collect())
    }

    fn pusher(&self, user: &UserId, app_id: &str, pushkey: &str) -> Result<Option<Pusher>> {
        self.get(PUSHERS, &keys::strs(&[user.as_str(), app_id, pushkey]))
    }

    fn all_pushers(&self) -> Result<Vec<(OwnedUserId, Pusher)>> {
        Ok(self
            .scan_prefix(PUSHERS, &[])?
            .into_iter()
            .filter_map(|(k, p)| {
                let owner = keys::split_strs(&k)?
                    .first()
                    .and_then(|s| OwnedUserId::try_from(*s).ok())?;
                Some((owner, p))
            })
            .collect())
    }
}

impl UserDataWrite for Txn<'_> {
    fn put_account_data(
        &mut self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        entry: &Entry,
    ) {
        self.put(
            ACCOUNT_DATA,
            &keys::strs(&[user.as_str(), room.map_or("", |r| r.as_str()), kind]),
            entry,
        );
    }

    fn put_receipt(&mut self, room: &RoomId, receipt: &Receipt) {
        let key = keys::strs(&[
            room.as_str(),
            &receipt.receipt_type,
            receipt.user_id.as_str(),
            &receipt.thread,
        ]);
        self.put(RECEIPTS, &key, receipt);
        self.put(RECEIPT_LOG, &room_pos(room, receipt.pos), receipt);
    }

    fn put_read_upto(&mut self, user: &UserId, room: &RoomId, thread: &str, pos: u64) {
        self.put(
            READ_UPTO,
            &keys::strs(&[user.as_str(), room.as_str(), thread]),
            &pos,
        );
    }

    fn put_presence(
        &mut self,
        user: &UserId,
        old: Option<&PresenceRecord>,
        record: &PresenceRecord,
    ) {
        if let Some(o) = old {
            self.delete(PRESENCE_LOG, &pos_key(o.pos));
        }
        self.put(PRESENCE, user.as_bytes(), record);
        self.put(PRESENCE_LOG, &pos_key(record.pos), &user.to_owned());
    }

    fn put_notification(&mut self, user: &UserId, room: &RoomId, pos: u64, n: &Notification) {
        self.put(NOTIFICATIONS, &notification_key(user, room, pos), n);
        self.put(NOTIFICATION_LOG, &user_pos(user, pos), &room.to_owned());
    }

    fn put_pusher(&mut self, user: &UserId, pusher: &Pusher) {
        self.put(
            PUSHERS,
            &keys::strs(&[user.as_str(), &pusher.app_id, &pusher.pushkey]),
            pusher,
        );
    }

    fn delete_pusher(&mut self, user: &UserId, app_id: &str, pushkey: &str) {
        self.delete(PUSHERS, &keys::strs(&[user.as_str(), app_id, pushkey]));
    }
}
