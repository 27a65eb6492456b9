//! Per-user account data (global and per room), each write ordered on the sync stream.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{OwnedRoomId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::Result,
    storage::{Store, UserDataRead, UserDataWrite},
    stream::{Stream, Write},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub pos: u64,
    pub content: Value,
}

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

impl AccountData {
    pub fn new(store: Store, stream: Arc<Stream>) -> Self {
        AccountData { store, stream }
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn get(&self, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Option<Value>> {
        self.get_in(&self.store, user, room, kind)
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
        r: &impl UserDataRead,
        user: &UserId,
        room: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Value>> {
        Ok(r.account_data(user, room, kind)?.map(|e| e.content))
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
        for ((room, kind), entry) in self.store.all_account_data(user)? {
            if entry.pos <= since || entry.pos > upto {
                continue;
            }
            match room {
                None => out.global.push((kind, entry.content)),
                Some(room) => out
                    .rooms
                    .entry(room)
                    .or_default()
                    .push((kind, entry.content)),
            }
        }
        Ok(out)
    }
}

/// Sets account data as part of a larger write (a join's `m.direct`).
pub fn stage(w: &mut Write<'_>, user: &UserId, room: Option<&RoomId>, kind: &str, content: Value) {
    let pos = w.next_pos();
    w.put_account_data(user, room, kind, &Entry { pos, content });
    w.wake([user]);
}
