//! Per-user account data (global and per room), each write ordered on the sync stream.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Result,
    storage::{Read, Store, Table, keys},
    stream::{Stream, Write},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub pos: u64,
    pub content: Value,
}

const ACCOUNT_DATA: Table<Entry> = Table::new("account_data");

/// Account data changed after a stream position, split as /sync shows it.
#[derive(Debug, Default)]
pub struct Changes {
    pub global: Vec<(String, Value)>,
    pub rooms: BTreeMap<OwnedRoomId, Vec<(String, Value)>>,
}

#[derive(Clone)]
pub struct AccountData {
    store: Store,
    stream: Arc<Stream>,
}

fn key(user: &UserId, room: Option<&RoomId>, kind: &str) -> Vec<u8> {
    keys::strs(&[user.as_str(), room.map(|r| r.as_str()).unwrap_or(""), kind])
}

impl AccountData {
    pub fn new(store: Store, stream: Arc<Stream>) -> Self {
        AccountData { store, stream }
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn get(&self, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        Ok(self
            .store
            .get(ACCOUNT_DATA, &key(user, room, kind))?
            .map(|e| e.content))
    }

    pub async fn set(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
        content: Value,
    ) -> Result<()> {
        self.stream
            .write(|w| {
                stage(w, user, room, kind, content);
                Ok(())
            })
            .await
    }

    /// Reads `kind` as a write in progress sees it.
    pub fn get_in(
        &self,
        r: &impl Read,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Value>> {
        Ok(r.get(ACCOUNT_DATA, &key(user, room, kind))?
            .map(|e| e.content))
    }

    /// Senders on the user's ignore list (`m.ignored_user_list`).
    pub fn ignored_users(&self, user: &UserId) -> Result<std::collections::BTreeSet<String>> {
        let list = self.get(user, None, "m.ignored_user_list")?;
        Ok(list
            .and_then(|l| {
                l.get("ignored_users")
                    .and_then(Value::as_object)
                    .map(|m| m.keys().cloned().collect())
            })
            .unwrap_or_default())
    }

    /// Everything of `user`'s that changed in `(since, upto]` (all of it for 0).
    pub fn changed_since(&self, user: &UserId, since: u64, upto: u64) -> Result<Changes> {
        let mut out = Changes::default();
        for (k, entry) in self
            .store
            .scan_prefix(ACCOUNT_DATA, &keys::strs(&[user.as_str()]))?
        {
            if entry.pos <= since || entry.pos > upto {
                continue;
            }
            let Some(parts) = keys::split_strs(&k) else {
                continue;
            };
            let (Some(room), Some(kind)) = (parts.get(1), parts.get(2)) else {
                continue;
            };
            if room.is_empty() {
                out.global.push((kind.to_string(), entry.content));
            } else if let Ok(room) = OwnedRoomId::try_from(*room) {
                out.rooms
                    .entry(room)
                    .or_default()
                    .push((kind.to_string(), entry.content));
            }
        }
        Ok(out)
    }
}

/// Sets account data as part of a larger write (a join's `m.direct`).
pub fn stage(w: &mut Write<'_>, user: &UserId, room: Option<&RoomId>, kind: &str, content: Value) {
    let pos = w.next_pos();
    w.put(
        ACCOUNT_DATA,
        &key(user, room, kind),
        &Entry { pos, content },
    );
    w.wake([user]);
}
