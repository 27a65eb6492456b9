//! Event filters (the spec's Filter / RoomEventFilter), stored per user and applied by /sync and /messages.

use ruma::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    error::{Error, Result},
    storage::{AccountRead, AccountWrite, Store},
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub account_data: EventFilter,
    #[serde(default)]
    pub presence: EventFilter,
    #[serde(default)]
    pub room: RoomFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_fields: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoomFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_rooms: Vec<String>,
    #[serde(default)]
    pub include_leave: bool,
    #[serde(default)]
    pub timeline: EventFilter,
    #[serde(default)]
    pub state: EventFilter,
    #[serde(default)]
    pub ephemeral: EventFilter,
    #[serde(default)]
    pub account_data: EventFilter,
}

/// Serves as both EventFilter and RoomEventFilter: the extra room fields
/// are simply unused where the spec has none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senders: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_senders: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_rooms: Vec<String>,
    #[serde(default)]
    pub lazy_load_members: bool,
    #[serde(default)]
    pub include_redundant_members: bool,
    #[serde(default)]
    pub unread_thread_notifications: bool,
}

/// `*` matches any run of characters, as the spec allows in type filters.
fn glob(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            value.len() >= head.len() + tail.len()
                && value.starts_with(head)
                && glob_rest(tail, &value[head.len()..])
        }
    }
}

fn glob_rest(pattern: &str, value: &str) -> bool {
    if !pattern.contains('*') {
        return value.ends_with(pattern);
    }
    (0..=value.len())
        .filter(|i| value.is_char_boundary(*i))
        .any(|i| glob(pattern, &value[i..]))
}

impl EventFilter {
    pub fn allows(&self, kind: &str, sender: &str, room: Option<&str>) -> bool {
        if self.not_types.iter().any(|p| glob(p, kind)) {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|p| glob(p, kind))
        {
            return false;
        }
        if self.not_senders.iter().any(|s| s == sender) {
            return false;
        }
        if let Some(senders) = &self.senders
            && !senders.iter().any(|s| s == sender)
        {
            return false;
        }
        if let Some(room) = room {
            if self.not_rooms.iter().any(|r| r == room) {
                return false;
            }
            if let Some(rooms) = &self.rooms
                && !rooms.iter().any(|r| r == room)
            {
                return false;
            }
        }
        true
    }

    /// Applies the filter to a client-format event.
    pub fn allows_event(&self, ev: &Value) -> bool {
        self.allows(
            ev["type"].as_str().unwrap_or_default(),
            ev["sender"].as_str().unwrap_or_default(),
            ev["room_id"].as_str(),
        )
    }
}

impl RoomFilter {
    pub fn allows_room(&self, room: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r == room))
    }
}

#[derive(Clone)]
pub struct Filters {
    store: Store,
}

impl Filters {
    pub fn new(store: Store) -> Self {
        Filters { store }
    }

    pub fn create(&self, user: &UserId, filter: Filter) -> Result<String> {
        let id = crate::accounts::random_string(12);
        let mut txn = self.store.transaction();
        txn.put_filter(user, &id, &filter);
        txn.commit()?;
        Ok(id)
    }

    pub fn get(&self, user: &UserId, id: &str) -> Result<Option<Filter>> {
        Ok(self.store.filter(user, id)?)
    }

    /// A `filter` query parameter: inline JSON or a stored filter's ID.
    pub fn resolve(&self, user: &UserId, param: Option<&str>) -> Result<Filter> {
        match param {
            None => Ok(Filter::default()),
            Some(p) if p.trim_start().starts_with('{') => {
                serde_json::from_str(p).map_err(|e| Error::bad_json(format!("invalid filter: {e}")))
            }
            Some(id) => self
                .get(user, id)?
                .ok_or_else(|| Error::not_found("unknown filter")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_globs_and_negations() {
        let f = EventFilter {
            types: Some(vec!["m.room.*".into()]),
            not_types: vec!["m.room.member".into()],
            ..Default::default()
        };
        assert!(f.allows("m.room.message", "@a:x", None));
        assert!(!f.allows("m.room.member", "@a:x", None));
        assert!(!f.allows("m.reaction", "@a:x", None));
        assert!(glob("*", "anything") && glob("a*c", "abbc") && !glob("a*c", "abd"));
    }
}
