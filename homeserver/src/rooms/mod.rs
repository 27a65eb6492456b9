//! Rooms: their events, state, members and timelines; the write path is in `write.rs`.

pub mod acl;
pub mod aliases;
pub mod auth;
pub mod cache;
pub mod create;
pub mod event_log;
pub mod membership;
pub mod pdu;
pub mod relations;
pub mod remote;
pub mod snapshots;
pub mod state;
pub mod summary;
pub mod timeline;
pub mod write;

use std::sync::Arc;

use bellwire_federation::ServerKey;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName,
    OwnedUserId, RoomId, RoomVersionId, UserId, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    account_data::AccountData,
    error::{Error, Result},
    push::Push,
    storage::{EventRead, MembershipRead, RoomStateRead, Store},
    stream::Stream,
};
use pdu::{Pdu, StoredEvent};

/// Per-room bookkeeping that is not room state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    pub version: RoomVersionId,
    /// Forward extremities: the events new local events point at.
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    /// Snapshot of the current state (see `snapshots`); `None` in rooms
    /// from before snapshots existed, until their next event.
    #[serde(default)]
    pub snapshot: Option<u64>,
}

/// A user's current relation to a room, for /sync and /joined_rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRoom {
    pub membership: String,
    pub pos: u64,
    pub event_id: OwnedEventId,
    #[serde(default)]
    pub is_direct: bool,
    pub sender: OwnedUserId,
}

/// What a caller asks to add to a room.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub content: Value,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    pub fn state(kind: &str, state_key: &str, content: Value) -> Self {
        NewEvent {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
        }
    }
    pub fn message(kind: &str, content: Value) -> Self {
        NewEvent {
            kind: kind.into(),
            content,
            state_key: None,
            redacts: None,
        }
    }
}

/// A device's transaction, for idempotent sends.
#[derive(Debug, Clone, Copy)]
pub struct DeviceTxn<'a> {
    pub device_id: &'a str,
    pub txn_id: &'a str,
}

#[derive(Clone)]
pub struct Rooms {
    pub(crate) store: Store,
    pub(crate) server_name: OwnedServerName,
    pub(crate) key: Arc<ServerKey>,
    pub(crate) stream: Arc<Stream>,
    pub(crate) locks: Arc<write::RoomLocks>,
    pub(crate) events: Arc<cache::EventCache>,
    pub(crate) members: Arc<cache::MemberCache>,
    pub(crate) state_ids: Arc<cache::StateIdCache>,
    pub(crate) records: Arc<cache::RoomCache>,
    pub(crate) account_data: AccountData,
    pub(crate) default_version: RoomVersionId,
    pub(crate) push: Arc<Push>,
    pub(crate) outbox: Arc<crate::outbox::Outbox>,
    pub(crate) snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Rooms {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        key: Arc<ServerKey>,
        stream: Arc<Stream>,
        account_data: AccountData,
        default_version: RoomVersionId,
        push: Arc<Push>,
        outbox: Arc<crate::outbox::Outbox>,
    ) -> Self {
        let last = Rooms::last_snapshot_id(&store).unwrap_or(0);
        let snapshot_seq = Arc::new(std::sync::atomic::AtomicU64::new(last));
        Rooms {
            store,
            server_name,
            key,
            stream,
            locks: Arc::default(),
            events: Arc::new(cache::EventCache::new(4096)),
            members: Arc::new(cache::MemberCache::new(1024)),
            state_ids: Arc::new(cache::StateIdCache::new(16384)),
            records: Arc::new(cache::RoomCache::new(1024)),
            account_data,
            default_version,
            push,
            outbox,
            snapshot_seq,
        }
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        if let Some(hit) = self.records.get(room_id) {
            return Ok(Some(hit));
        }
        let generation = self.records.generation();
        let record = self.store.room(room_id)?;
        if let Some(r) = &record {
            self.records
                .insert(generation, room_id.to_owned(), r.clone());
        }
        Ok(record)
    }

    pub fn event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
        if let Ok(id) = <&ruma::EventId>::try_from(event_id)
            && let Some(hit) = self.events.get(id)
        {
            return Ok(Some(hit.stored.clone()));
        }
        Ok(self.store.event(event_id)?)
    }

    /// An event parsed for auth and state reads; state events stay cached.
    pub fn event_pdu(&self, event_id: &ruma::EventId) -> Result<Option<Arc<Pdu>>> {
        Ok(self.loaded(event_id)?.map(|l| l.pdu.clone()))
    }

    /// An event with its parsed form, from the cache or the store (state
    /// events are cached on the way).
    pub(crate) fn loaded(&self, event_id: &ruma::EventId) -> Result<Option<Arc<cache::Loaded>>> {
        if let Some(hit) = self.events.get(event_id) {
            return Ok(Some(hit));
        }
        let generation = self.events.generation();
        let Some(stored) = self.store.event(event_id.as_str())? else {
            return Ok(None);
        };
        let pdu = Arc::new(stored.parse().map_err(Error::internal)?);
        let state = pdu.state_key.is_some();
        let loaded = Arc::new(cache::Loaded { stored, pdu });
        if state {
            self.events
                .insert(generation, event_id.to_owned(), loaded.clone());
        }
        Ok(Some(loaded))
    }

    /// The event a redaction removes, if the redaction may apply to it now.
    pub(crate) fn redaction_target(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        pdu: &Pdu,
    ) -> Result<Option<StoredEvent>> {
        if pdu.kind != TimelineEventType::RoomRedaction {
            return Ok(None);
        }
        let Some(target_id) = pdu.redacts_target() else {
            return Err(Error::bad_json("redaction without `redacts`"));
        };
        let Some(target) = self.event(target_id.as_str())? else {
            return Ok(None);
        };
        if target.room_id != room_id {
            return Ok(None);
        }
        let target_pdu = target.parse().map_err(Error::internal)?;
        let own_event = target_pdu.sender == pdu.sender;
        if !own_event && !state::has_power_for(self, room_id, &pdu.sender, "redact", rules)? {
            return Err(Error::forbidden("you may only redact your own events"));
        }
        Ok(Some(target))
    }

    /// The target with the room version's redaction algorithm applied and
    /// the redaction, in client format, as its `unsigned.redacted_because`.
    pub(crate) fn redacted_copy(
        &self,
        rules: &RoomVersionRules,
        target: &StoredEvent,
        redaction: &CanonicalJsonObject,
        redaction_id: &ruma::EventId,
        room_id: &RoomId,
    ) -> Result<StoredEvent> {
        let object: CanonicalJsonObject =
            serde_json::from_str(target.pdu.get()).map_err(Error::internal)?;
        let mut because = CanonicalJsonObject::new();
        for key in ["type", "content", "sender", "origin_server_ts", "redacts"] {
            if let Some(v) = redaction.get(key) {
                because.insert(key.into(), v.clone());
            }
        }
        because.insert(
            "event_id".into(),
            CanonicalJsonValue::String(redaction_id.to_string()),
        );
        because.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
        if !because.contains_key("redacts") {
            because.insert(
                "redacts".into(),
                CanonicalJsonValue::String(target.event_id.to_string()),
            );
        }
        let redacted = ruma::canonical_json::redact(
            object,
            &rules.redaction,
            Some(ruma::canonical_json::RedactedBecause::from_json(because)),
        )
        .map_err(Error::internal)?;
        let json = serde_json::to_string(&redacted).map_err(Error::internal)?;
        let mut out = target.clone();
        out.pdu = serde_json::value::RawValue::from_string(json).map_err(Error::internal)?;
        Ok(out)
    }

    pub(crate) fn state_event_id(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        let key = cache::state_key(room_id, kind, state_key);
        if let Some(hit) = self.state_ids.get(&key) {
            return Ok(hit);
        }
        let generation = self.state_ids.generation();
        let id = self.store.state_event_id(room_id, kind, state_key)?;
        self.state_ids.insert(generation, key, id.clone());
        Ok(id)
    }

    /// Users whose current membership is one of `memberships`.
    pub fn members_with(&self, room_id: &RoomId, memberships: &[&str]) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .members(room_id)?
            .iter()
            .filter(|(_, m)| memberships.contains(&m.as_str()))
            .map(|(u, _)| u.clone())
            .collect())
    }

    /// Every member row of the room, cached until a membership changes.
    pub(crate) fn members(&self, room_id: &RoomId) -> Result<Arc<Vec<(OwnedUserId, String)>>> {
        if let Some(hit) = self.members.get(room_id) {
            return Ok(hit);
        }
        let generation = self.members.generation();
        let rows = Arc::new(self.store.members(room_id)?);
        self.members
            .insert(generation, room_id.to_owned(), rows.clone());
        Ok(rows)
    }

    pub fn membership_of(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        Ok(self.store.membership_of(room_id, user)?)
    }

    pub fn user_rooms(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, UserRoom)>> {
        Ok(self.store.user_rooms(user)?)
    }

    pub fn user_room(&self, user: &UserId, room_id: &RoomId) -> Result<Option<UserRoom>> {
        Ok(self.store.user_room(user, room_id)?)
    }

    pub(crate) fn new_room_id(&self) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(format!(
            "!{}:{}",
            crate::accounts::random_string(18),
            self.server_name
        ))
        .map_err(Error::internal)
    }
}
