//! Room state queries: current state, state at a point of the timeline, power levels.

use std::collections::BTreeMap;

use ruma::{OwnedEventId, RoomId, UserId, room_version_rules::RoomVersionRules};
use serde_json::Value;

use super::{Rooms, pdu::StoredEvent};
use crate::{
    error::{Error, Result},
    storage::RoomStateRead,
};

/// `(type, state_key)` of a state entry.
pub type StateKey = (String, String);

impl Rooms {
    /// The room's current state, keyed by (type, state_key).
    pub fn current_state_ids(&self, room_id: &RoomId) -> Result<BTreeMap<StateKey, OwnedEventId>> {
        Ok(self.store.current_state(room_id)?)
    }

    pub fn current_state(&self, room_id: &RoomId) -> Result<Vec<StoredEvent>> {
        let ids = self.current_state_ids(room_id)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.values() {
            if let Some(e) = self.event(id.as_str())? {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn state_event(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<StoredEvent>> {
        match self.state_event_id(room_id, kind, state_key)? {
            Some(id) => self.event(id.as_str()),
            None => Ok(None),
        }
    }

    pub fn state_content(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<Value>> {
        let Some(id) = self.state_event_id(room_id, kind, state_key)? else {
            return Ok(None);
        };
        Ok(self.event_pdu(&id)?.map(|p| p.content_value()))
    }

    /// State as it was just before the event at `pos`: the current state
    /// with every later state change rolled back to what it replaced. Only
    /// for events without a state snapshot (from before snapshots existed,
    /// or backfilled): it is approximate where branches merged.
    pub(crate) fn state_before(
        &self,
        room_id: &RoomId,
        pos: u64,
    ) -> Result<BTreeMap<StateKey, OwnedEventId>> {
        let mut state = self.current_state_ids(room_id)?;
        let later =
            self.timeline_range(room_id, pos.saturating_sub(1), u64::MAX, false, usize::MAX)?;
        for ev in later.iter().rev() {
            let v = ev.pdu_value();
            let (Some(kind), Some(key)) = (v["type"].as_str(), v["state_key"].as_str()) else {
                continue;
            };
            let slot = (kind.to_owned(), key.to_owned());
            match &ev.replaces_state {
                Some(prev) => {
                    state.insert(slot, prev.clone());
                }
                None => {
                    state.remove(&slot);
                }
            }
        }
        Ok(state)
    }

    /// The content of the `unsigned.prev_content` for a state event.
    pub fn prev_content(&self, ev: &StoredEvent) -> Option<Value> {
        let prev = ev.replaces_state.as_ref()?;
        let stored = self.event(prev.as_str()).ok().flatten()?;
        Some(stored.pdu_value()["content"].clone())
    }

    /// Creators of a v12+ room (sender plus `additional_creators`).
    pub fn creators(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let create = self.room_create_event(room_id)?;
        let v = create.pdu_value();
        let mut out = vec![v["sender"].as_str().unwrap_or_default().to_owned()];
        if let Some(extra) = v["content"]["additional_creators"].as_array() {
            out.extend(extra.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        Ok(out)
    }

    pub fn room_create_event(&self, room_id: &RoomId) -> Result<StoredEvent> {
        self.state_event(room_id, "m.room.create", "")?
            .ok_or_else(|| Error::not_found("room has no create event"))
    }

    /// A user's power level; `i64::MAX` for creators of v12+ rooms.
    pub fn user_power(
        &self,
        room_id: &RoomId,
        user: &UserId,
        rules: &RoomVersionRules,
    ) -> Result<i64> {
        if rules.authorization.explicitly_privilege_room_creators
            && self.creators(room_id)?.iter().any(|c| c == user.as_str())
        {
            return Ok(i64::MAX);
        }
        match self.state_content(room_id, "m.room.power_levels", "")? {
            Some(pl) => Ok(pl["users"]
                .get(user.as_str())
                .and_then(as_int)
                .or_else(|| pl.get("users_default").and_then(as_int))
                .unwrap_or(0)),
            None => {
                let creator = self.room_create_event(room_id)?.pdu_value()["sender"].as_str()
                    == Some(user.as_str());
                Ok(if creator { 100 } else { 0 })
            }
        }
    }

    /// The power level an action (`kick`, `ban`, `redact`, `invite`) needs.
    pub fn action_level(&self, room_id: &RoomId, action: &str) -> Result<i64> {
        let default = if action == "invite" { 0 } else { 50 };
        Ok(self
            .state_content(room_id, "m.room.power_levels", "")?
            .and_then(|pl| pl.get(action).and_then(as_int))
            .unwrap_or(default))
    }
}

pub fn has_power_for(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    action: &str,
    rules: &RoomVersionRules,
) -> Result<bool> {
    Ok(rooms.user_power(room_id, user, rules)? >= rooms.action_level(room_id, action)?)
}

/// Power levels may be integers or (in old rooms) numeric strings.
fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}
