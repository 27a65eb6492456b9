//! User directory search: users who share a room with the searcher or sit in a public room (or every local user, if configured).

use std::collections::BTreeSet;

use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};

use crate::{
    error::Result,
    rooms::Rooms,
    storage::{AccountRead, Store},
};

#[derive(Clone)]
pub struct UserDirectory {
    store: Store,
    rooms: Rooms,
    search_all: bool,
}

impl UserDirectory {
    pub fn new(store: Store, rooms: Rooms, search_all: bool) -> Self {
        UserDirectory {
            store,
            rooms,
            search_all,
        }
    }

    /// Users `searcher` is allowed to find.
    fn candidates(&self, searcher: &UserId) -> Result<BTreeSet<OwnedUserId>> {
        if self.search_all {
            return Ok(self
                .store
                .users()?
                .into_iter()
                .filter(|(_, u)| !u.deactivated)
                .map(|(id, _)| id)
                .collect());
        }
        let mut out = BTreeSet::new();
        let mut rooms_seen = BTreeSet::new();
        for room in self.rooms.joined_rooms(searcher)? {
            out.extend(self.rooms.members_with(&room, &["join"])?);
            rooms_seen.insert(room);
        }
        for room in self.rooms.rooms_with_join_rule("public")? {
            if !rooms_seen.contains(&room) {
                out.extend(self.rooms.members_with(&room, &["join"])?);
            }
        }
        Ok(out)
    }

    /// Case-insensitive match on the user ID and display name; results with
    /// a display name that starts with the term come first.
    pub fn search(&self, searcher: &UserId, term: &str, limit: usize) -> Result<Value> {
        let needle = term.trim().to_lowercase();
        let mut hits: Vec<(u8, String, Value)> = Vec::new();
        for user in self.candidates(searcher)? {
            let (name, avatar) = self
                .rooms
                .profile_of(&user)?
                .unwrap_or((Value::Null, Value::Null));
            let name_lc = name.as_str().map(str::to_lowercase).unwrap_or_default();
            let id_lc = user.as_str().to_lowercase();
            let rank = if name_lc.starts_with(&needle)
                || user.localpart().to_lowercase().starts_with(&needle)
            {
                0
            } else if name_lc.contains(&needle) || id_lc.contains(&needle) {
                1
            } else {
                continue;
            };
            let mut r = json!({"user_id": user});
            if !name.is_null() {
                r["display_name"] = name;
            }
            if !avatar.is_null() {
                r["avatar_url"] = avatar;
            }
            hits.push((rank, user.to_string(), r));
        }
        hits.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let limited = hits.len() > limit;
        let results: Vec<Value> = hits.into_iter().take(limit).map(|(_, _, r)| r).collect();
        Ok(json!({"limited": limited, "results": results}))
    }
}
