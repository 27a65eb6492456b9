//! Read receipts (public, private, threaded) and the per-user read positions that clear unread counts.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    accounts::now_ms,
    error::{Error, Result},
    outbox::Item,
    rooms::Rooms,
    storage::{Store, Txn, UserDataRead, UserDataWrite},
    stream::Stream,
};

pub const PUBLIC: &str = "m.read";
pub const PRIVATE: &str = "m.read.private";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt_type: String,
    pub user_id: OwnedUserId,
    /// "" for an unthreaded receipt, "main" or a thread root's event ID otherwise.
    pub thread: String,
    pub event_id: OwnedEventId,
    /// Stream position of the event the receipt points at.
    pub event_pos: u64,
    pub ts: u64,
    /// Stream position of the receipt itself.
    pub pos: u64,
}

#[derive(Clone)]
pub struct Receipts {
    store: Store,
    stream: Arc<Stream>,
    rooms: Rooms,
}

/// Records in `txn` that `user` has read `room` (or one thread of it) up to `pos`.
pub(crate) fn mark_read(
    txn: &mut Txn<'_>,
    user: &UserId,
    room: &RoomId,
    thread: &str,
    pos: u64,
) -> Result<()> {
    if txn.read_upto(user, room, thread)?.unwrap_or(0) < pos {
        txn.put_read_upto(user, room, thread, pos);
    }
    Ok(())
}

/// Where `user` has read up to in `room`: the unthreaded position and per-thread ones.
pub fn read_positions(
    store: &Store,
    user: &UserId,
    room: &RoomId,
) -> Result<(u64, BTreeMap<String, u64>)> {
    let mut unthreaded = 0;
    let mut threads = BTreeMap::new();
    for (thread, pos) in store.read_positions(user, room)? {
        if thread.is_empty() {
            unthreaded = pos;
        } else {
            threads.insert(thread, pos);
        }
    }
    Ok((unthreaded, threads))
}

impl Receipts {
    pub fn new(store: Store, stream: Arc<Stream>, rooms: Rooms) -> Self {
        Receipts {
            store,
            stream,
            rooms,
        }
    }

    /// Stores a receipt. A receipt older than the one it would replace is
    /// accepted and ignored, so "read" never moves backwards.
    pub async fn set(
        &self,
        user: &UserId,
        room: &RoomId,
        receipt_type: &str,
        event_id: &str,
        thread: Option<&str>,
    ) -> Result<()> {
        if receipt_type != PUBLIC && receipt_type != PRIVATE {
            return Err(Error::invalid_param(format!(
                "unknown receipt type {receipt_type}"
            )));
        }
        if thread == Some("") {
            return Err(Error::invalid_param(
                "thread_id must be \"main\" or an event ID",
            ));
        }
        let thread = thread.unwrap_or("");
        if !thread.is_empty() && thread != "main" && !thread.starts_with('$') {
            return Err(Error::invalid_param(
                "thread_id must be \"main\" or an event ID",
            ));
        }
        if self.rooms.membership_of(room, user)?.as_deref() != Some("join") {
            return Err(Error::forbidden("you are not in this room"));
        }
        let event = self
            .rooms
            .event(event_id)?
            .filter(|e| e.room_id == room)
            .ok_or_else(|| Error::not_found("no such event in this room"))?;
        // Other servers hear of our users' public receipts, in the same write.
        let servers = if receipt_type == PUBLIC && user.server_name() == self.rooms.server_name {
            self.rooms.remote_servers(room)?
        } else {
            Vec::new()
        };
        let wake = if receipt_type == PRIVATE {
            vec![user.to_owned()]
        } else {
            self.rooms.members_with(room, &["join"])?
        };
        self.stream
            .write(|w| {
                if w.receipt(room, receipt_type, user, thread)?
                    .is_some_and(|old| old.event_pos >= event.pos)
                {
                    return Ok(());
                }
                let pos = w.next_pos();
                let receipt = Receipt {
                    receipt_type: receipt_type.to_owned(),
                    user_id: user.to_owned(),
                    thread: thread.to_owned(),
                    event_id: event.event_id.clone(),
                    event_pos: event.pos,
                    ts: now_ms(),
                    pos,
                };
                w.put_receipt(room, &receipt);
                mark_read(w, user, room, thread, event.pos)?;
                if !servers.is_empty() {
                    let mut data = serde_json::json!({"ts": receipt.ts});
                    if !thread.is_empty() {
                        data["thread_id"] = serde_json::Value::from(thread);
                    }
                    let edu = serde_json::json!({"edu_type": "m.receipt", "content": {
                        room.as_str(): {"m.read": {user.as_str(): {"event_ids": [event_id], "data": data}}}
                    }});
                    self.rooms.outbox.stage_for_servers(w, &servers, &Item::Edu(edu));
                }
                w.wake(wake.iter().map(|u| u.as_ref()));
                Ok(())
            })
            .await
    }

    /// Whether anything `viewer` may see changed in `(since, upto]`.
    pub fn changed(&self, room: &RoomId, viewer: &UserId, since: u64, upto: u64) -> Result<bool> {
        Ok(self
            .log(room, since, upto)?
            .iter()
            .any(|r| visible(r, viewer)))
    }

    fn log(&self, room: &RoomId, since: u64, upto: u64) -> Result<Vec<Receipt>> {
        Ok(self.store.receipt_log(room, since, upto)?)
    }

    /// The `m.receipt` event for /sync: every receipt for an initial sync,
    /// the changed ones otherwise; private receipts only for their owner.
    pub fn sync_event(
        &self,
        room: &RoomId,
        viewer: &UserId,
        since: Option<u64>,
        upto: u64,
        ignored: &dyn Fn(&UserId) -> bool,
    ) -> Result<Option<Value>> {
        let receipts: Vec<Receipt> = match since {
            Some(s) => self.log(room, s, upto)?,
            None => self
                .store
                .receipts(room)?
                .into_iter()
                .filter(|r| r.pos <= upto)
                .collect(),
        };
        let mut content: Map<String, Value> = Map::new();
        for r in receipts
            .iter()
            .filter(|r| visible(r, viewer) && !ignored(&r.user_id))
        {
            let mut entry = json!({"ts": r.ts});
            if !r.thread.is_empty() {
                entry["thread_id"] = Value::from(r.thread.as_str());
            }
            let by_type = content
                .entry(r.event_id.to_string())
                .or_insert_with(|| json!({}));
            by_type[r.receipt_type.as_str()][r.user_id.as_str()] = entry;
        }
        if content.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({"type": "m.receipt", "content": content})))
    }
}

fn visible(r: &Receipt, viewer: &UserId) -> bool {
    r.receipt_type != PRIVATE || r.user_id == viewer
}
