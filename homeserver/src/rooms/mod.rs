//! Rooms: the event write path (build, authorize, persist atomically, wake), and queries over room state and timelines.

pub mod acl;
pub mod aliases;
pub mod auth;
pub mod create;
pub mod membership;
pub mod pdu;
pub mod relations;
pub mod remote;
pub mod snapshots;
pub mod state;
pub mod summary;
pub mod timeline;

use std::{collections::BTreeSet, sync::Arc};

use bellwire_federation::{ServerKey, hash_sign_and_id, room_id_from_create_event, rules_for};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedServerName,
    OwnedUserId, RoomId, RoomVersionId, UserId, canonical_json::to_canonical_value,
    events::TimelineEventType, room_version_rules::RoomVersionRules,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    account_data::AccountData,
    accounts::now_ms,
    ephemeral::receipts,
    error::{Error, Result},
    push::{Push, evaluate, notifications, pusher::PushJob},
    storage::{Store, Table, keys},
    sync::stream::{Notifier, StreamPositions},
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

pub(crate) const EVENTS: Table<StoredEvent> = Table::new("events");
pub(crate) const TIMELINE: Table<OwnedEventId> = Table::new("timeline");
pub(crate) const ROOM_STATE: Table<OwnedEventId> = Table::new("room_state");
pub(crate) const ROOMS: Table<RoomRecord> = Table::new("rooms");
pub(crate) const USER_ROOMS: Table<UserRoom> = Table::new("user_rooms");
/// `(room, user) -> membership`, so membership fan-out needs no event loads.
pub(crate) const ROOM_MEMBERS: Table<String> = Table::new("user_rooms_by_room");
const TXNS: Table<OwnedEventId> = Table::new("txns");
/// `(room, pos) -> (user, membership)`: membership changes in stream order,
/// so device-list tracking can see who started or stopped sharing a room.
pub(crate) const MEMBERSHIP_LOG: Table<(OwnedUserId, String)> = Table::new("membership_log");

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

/// Everything `commit_locked` writes for one event.
pub(crate) struct Commit<'a> {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub rules: &'a RoomVersionRules,
    pub event_id: OwnedEventId,
    pub object: &'a CanonicalJsonObject,
    pub pdu_json: String,
    pub parsed: Pdu,
    pub txn: Option<Txn<'a>>,
    pub depth: u64,
    pub prev_events: &'a [OwnedEventId],
    pub redaction_target: Option<StoredEvent>,
    /// Servers the event goes to (none for events that came from elsewhere).
    pub forward: Vec<String>,
    /// False for outliers: stored for auth and lookups, never shown.
    pub in_timeline: bool,
    /// The state before the event when it is not the room's current state
    /// (an event on another branch); `None`: the current state.
    pub state_before: Option<snapshots::StateIds>,
    /// The room's state after the event when branches were resolved;
    /// `None`: the current state plus the event.
    pub new_state: Option<snapshots::StateIds>,
}

/// A device's transaction, for idempotent sends.
#[derive(Debug, Clone, Copy)]
pub struct Txn<'a> {
    pub device_id: &'a str,
    pub txn_id: &'a str,
}

#[derive(Clone)]
pub struct Rooms {
    pub(crate) store: Store,
    pub(crate) server_name: OwnedServerName,
    key: Arc<ServerKey>,
    pub(crate) stream: Arc<StreamPositions>,
    notifier: Arc<Notifier>,
    pub(crate) account_data: AccountData,
    pub(crate) default_version: RoomVersionId,
    pub(crate) push: Arc<Push>,
    pub(crate) outbound: Arc<crate::federation::queue::OutboundQueue>,
    pub(crate) snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl Rooms {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        server_name: OwnedServerName,
        key: Arc<ServerKey>,
        stream: Arc<StreamPositions>,
        notifier: Arc<Notifier>,
        account_data: AccountData,
        default_version: RoomVersionId,
        push: Arc<Push>,
        outbound: Arc<crate::federation::queue::OutboundQueue>,
    ) -> Self {
        let last = Rooms::last_snapshot_id(&store).unwrap_or(0);
        let snapshot_seq = Arc::new(std::sync::atomic::AtomicU64::new(last));
        Rooms {
            store,
            server_name,
            key,
            stream,
            notifier,
            account_data,
            default_version,
            push,
            outbound,
            snapshot_seq,
        }
    }

    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        Ok(self.store.get(ROOMS, room_id.as_bytes())?)
    }

    pub fn event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
        Ok(self.store.get(EVENTS, event_id.as_bytes())?)
    }

    /// Sends an event into a room, idempotently per device transaction.
    pub async fn send(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<OwnedEventId> {
        let _writer = self.stream.writer.lock().await;
        if let Some(t) = txn
            && let Some(id) = self.store.get(TXNS, &txn_key(sender, t))?
        {
            return Ok(id);
        }
        self.append_locked(sender, Some(room_id), None, event, txn)
    }

    /// Builds, authorizes and persists one event. `room_id` is `None` only for
    /// the create event of a v12 room, whose ID derives from the event.
    /// Caller holds the stream writer lock.
    pub(crate) fn append_locked(
        &self,
        sender: &UserId,
        room_id: Option<&RoomId>,
        new_room_version: Option<&RoomVersionId>,
        event: NewEvent,
        txn: Option<Txn<'_>>,
    ) -> Result<OwnedEventId> {
        let (record, room_id) = match (room_id, new_room_version) {
            (Some(r), None) => {
                let rec = self
                    .room(r)?
                    .ok_or_else(|| Error::forbidden("you are not in this room"))?;
                (Some(rec), Some(r.to_owned()))
            }
            (r, Some(_)) => (None, r.map(ToOwned::to_owned)),
            (None, None) => return Err(Error::Unknown("event without room".into())),
        };
        let version = record
            .as_ref()
            .map(|r| r.version.clone())
            .or(new_room_version.cloned())
            .ok_or(Error::UnsupportedRoomVersion)?;
        let rules = rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let kind = TimelineEventType::from(event.kind.as_str());

        let mut content = event.content;
        if let Some(r) = &room_id
            && event.state_key.is_none()
        {
            self.check_annotation(r, sender, &event.kind, &content)?;
        }
        if kind == TimelineEventType::RoomRedaction
            && rules.redaction.content_field_redacts
            && let (Some(target), Some(obj)) = (&event.redacts, content.as_object_mut())
        {
            obj.insert("redacts".into(), Value::from(target.as_str()));
        }
        let content_raw = serde_json::value::to_raw_value(&content)
            .map_err(|e| Error::bad_json(e.to_string()))?;

        // Auth events: the current state entries the auth rules name.
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events = Vec::new();
        if let Some(room_id) = &room_id {
            for (t, k) in &auth_types {
                if let Some(id) = self.state_event_id(room_id, &t.to_string(), k)? {
                    auth_events.push(id);
                }
            }
        }
        let (prev_events, depth) = match &record {
            Some(r) => (r.extremities.clone(), r.depth + 1),
            None => (Vec::new(), 1),
        };

        let ts = now_ms();
        let mut pdu = json!({
            "type": kind.to_string(),
            "content": content.clone(),
            "sender": sender.as_str(),
            "origin_server_ts": ts,
            "depth": depth,
            "prev_events": prev_events,
            "auth_events": auth_events,
        });
        if let Some(obj) = pdu.as_object_mut() {
            if let Some(r) = &room_id {
                obj.insert("room_id".into(), Value::from(r.as_str()));
            }
            if let Some(k) = &event.state_key {
                obj.insert("state_key".into(), Value::from(k.as_str()));
            }
            if let (Some(target), false) = (&event.redacts, rules.redaction.content_field_redacts) {
                obj.insert("redacts".into(), Value::from(target.as_str()));
            }
        }
        let mut object = match to_canonical_value(pdu) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            Ok(_) => return Err(Error::bad_json("event is not an object")),
            Err(e) => {
                return Err(Error::bad_json(format!(
                    "content is not canonical JSON: {e}"
                )));
            }
        };
        let event_id = hash_sign_and_id(&mut object, self.server_name.as_str(), &self.key, &rules)
            .map_err(|e| Error::bad_json(e.to_string()))?;
        let room_id = match room_id {
            Some(r) => r,
            None => {
                room_id_from_create_event(&event_id).map_err(|e| Error::Unknown(e.to_string()))?
            }
        };

        let pdu_json = serde_json::to_string(&object).map_err(|e| Error::Unknown(e.to_string()))?;
        if pdu_json.len() > 65_536 {
            return Err(Error::TooLarge { limit: 65_536 });
        }
        let mut parsed: Pdu =
            serde_json::from_str(&pdu_json).map_err(|e| Error::bad_json(e.to_string()))?;
        parsed.event_id = event_id.clone();

        auth::authorize(self, &rules, &room_id, &parsed)?;
        let redaction_target = self.redaction_target(&rules, &room_id, &parsed)?;
        let forward = self.remote_servers_for(&room_id, &parsed)?;
        self.commit_locked(Commit {
            room_id,
            version,
            rules: &rules,
            event_id: event_id.clone(),
            object: &object,
            pdu_json,
            parsed,
            txn,
            depth,
            prev_events: &prev_events,
            redaction_target,
            forward,
            in_timeline: true,
            state_before: None,
            new_state: None,
        })?;
        Ok(event_id)
    }

    /// Persists an authorized event in one batch: the event, its timeline
    /// slot, state, membership bookkeeping, relations, notifications,
    /// extremities and the federation queue; then wakes whoever waits.
    /// Caller holds the stream writer lock.
    pub(crate) fn commit_locked(&self, c: Commit<'_>) -> Result<()> {
        let Commit {
            room_id,
            version,
            rules,
            event_id,
            object,
            pdu_json,
            parsed,
            txn,
            depth,
            prev_events,
            redaction_target,
            forward,
            in_timeline,
            state_before,
            new_state,
        } = c;
        let kind = parsed.kind.clone();
        let sender = parsed.sender.clone();
        let content = parsed.content_value();
        let ts = u64::from(parsed.origin_server_ts.get());
        let pos = self.stream.next();
        let mut batch = self.store.batch();
        let replaces_state = match &parsed.state_key {
            Some(k) if in_timeline => self.state_event_id(&room_id, &kind.to_string(), k)?,
            _ => None,
        };
        let stored = StoredEvent {
            event_id: event_id.clone(),
            room_id: room_id.clone(),
            pos: if in_timeline { pos } else { 0 },
            pdu: serde_json::value::RawValue::from_string(pdu_json)
                .map_err(|e| Error::Unknown(e.to_string()))?,
            replaces_state,
            txn: txn.map(|t| (t.device_id.to_owned(), t.txn_id.to_owned())),
            rejected: false,
        };
        batch.put(EVENTS, event_id.as_bytes(), &stored);
        if !in_timeline {
            self.stream.record(&mut batch, pos);
            batch.commit()?;
            self.stream.publish(pos);
            return Ok(());
        }
        batch.put(TIMELINE, &timeline_key(&room_id, pos), &event_id);
        if parsed.state_key.is_none() {
            self.stage_relation(
                &mut batch,
                &room_id,
                &stored,
                &sender,
                &kind.to_string(),
                &content,
            )?;
        }
        let decisions = evaluate::decide(&self.push, self, &room_id, &parsed, &stored.pdu, rules)?;
        notifications::stage(&mut batch, &decisions, pos, ts);
        // Sending in a room means having read it.
        if sender.server_name() == self.server_name {
            receipts::mark_read(&self.store, &mut batch, &sender, &room_id, "", pos)?;
        }
        let mut wake: BTreeSet<OwnedUserId> = self
            .members_with(&room_id, &["join", "invite"])?
            .into_iter()
            .collect();
        let record = self.room(&room_id)?;
        let snapshot = self.stage_state_snapshots(
            &mut batch,
            &room_id,
            record.as_ref(),
            &event_id,
            &parsed,
            state_before.as_ref(),
            new_state.as_ref(),
        )?;
        if let Some(resolved) = &new_state {
            // Branches met: the room's state is whatever resolution chose,
            // which may or may not include this event.
            for ((t, k), winner) in self.state_diff(&room_id, resolved)? {
                match &winner {
                    Some(id) => batch.put(ROOM_STATE, &keys::strs(&[room_id.as_str(), &t, &k]), id),
                    None => batch.delete(ROOM_STATE, &keys::strs(&[room_id.as_str(), &t, &k])),
                }
                if t == "m.room.member"
                    && let (Ok(target), Some(id)) = (UserId::parse(k.as_str()), winner)
                    && let Some(ev) = if id == event_id {
                        Some(stored.clone())
                    } else {
                        self.event(id.as_str())?
                    }
                    && let Ok(p) = ev.parse()
                {
                    let membership = p.membership().unwrap_or_default();
                    let is_direct = p
                        .content_value()
                        .get("is_direct")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    batch.put(
                        USER_ROOMS,
                        &keys::strs(&[target.as_str(), room_id.as_str()]),
                        &UserRoom {
                            membership: membership.clone(),
                            pos,
                            event_id: id.clone(),
                            is_direct,
                            sender: p.sender.clone(),
                        },
                    );
                    batch.put(
                        ROOM_MEMBERS,
                        &keys::strs(&[room_id.as_str(), target.as_str()]),
                        &membership,
                    );
                    batch.put(
                        MEMBERSHIP_LOG,
                        &timeline_key(&room_id, pos),
                        &(target.clone(), membership),
                    );
                    wake.insert(target);
                }
            }
        } else if let Some(k) = &parsed.state_key {
            batch.put(
                ROOM_STATE,
                &keys::strs(&[room_id.as_str(), &kind.to_string(), k]),
                &event_id,
            );
        }
        if kind == TimelineEventType::RoomMember && new_state.is_none() {
            let target = parsed
                .state_key
                .as_deref()
                .and_then(|k| UserId::parse(k).ok());
            let membership = parsed.membership().unwrap_or_default();
            if let Some(target) = target {
                let is_direct = content
                    .get("is_direct")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                batch.put(
                    USER_ROOMS,
                    &keys::strs(&[target.as_str(), room_id.as_str()]),
                    &UserRoom {
                        membership: membership.clone(),
                        pos,
                        event_id: event_id.clone(),
                        is_direct,
                        sender: sender.clone(),
                    },
                );
                batch.put(
                    ROOM_MEMBERS,
                    &keys::strs(&[room_id.as_str(), target.as_str()]),
                    &membership,
                );
                batch.put(
                    MEMBERSHIP_LOG,
                    &timeline_key(&room_id, pos),
                    &(target.clone(), membership.clone()),
                );
                wake.insert(target);
            }
        }
        // Forward extremities: the new event replaces those it points at;
        // other branches (a remote event built on an older event) stay.
        let mut extremities: Vec<OwnedEventId> = record
            .as_ref()
            .map(|r| r.extremities.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !prev_events.contains(e) && *e != event_id)
            .collect();
        extremities.push(event_id.clone());
        let old_depth = record.as_ref().map_or(0, |r| r.depth);
        batch.put(
            ROOMS,
            room_id.as_bytes(),
            &RoomRecord {
                version,
                extremities,
                depth: depth.max(old_depth),
                snapshot: Some(snapshot),
            },
        );
        if let Some(t) = txn {
            batch.put(TXNS, &txn_key(&sender, t), &event_id);
        }
        if let Some(target) = redaction_target {
            self.unstage_relation(&mut batch, &target);
            let redacted = self.redacted_copy(rules, &target, object, &event_id, &room_id)?;
            batch.put(EVENTS, target.event_id.as_bytes(), &redacted);
        }
        self.outbound.stage(
            &mut batch,
            &forward,
            &crate::federation::queue::Outgoing::Pdu(event_id.clone()),
        );
        self.stream.record(&mut batch, pos);
        batch.commit()?;
        self.stream.publish(pos);
        self.outbound.wake(&forward);
        self.notifier.wake(wake.iter().map(|u| u.as_ref()));
        for d in decisions {
            self.push.enqueue(PushJob {
                user: d.user,
                room_id: d.room_id,
                event_id: event_id.to_string(),
                actions: d.actions,
            });
        }
        Ok(())
    }

    /// The event a redaction removes, if the redaction may apply to it now.
    fn redaction_target(
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
        let target_pdu = target.parse().map_err(|e| Error::Unknown(e.to_string()))?;
        let own_event = target_pdu.sender == pdu.sender;
        if !own_event && !state::has_power_for(self, room_id, &pdu.sender, "redact", rules)? {
            return Err(Error::forbidden("you may only redact your own events"));
        }
        Ok(Some(target))
    }

    /// The target with the room version's redaction algorithm applied and
    /// the redaction, in client format, as its `unsigned.redacted_because`.
    fn redacted_copy(
        &self,
        rules: &RoomVersionRules,
        target: &StoredEvent,
        redaction: &CanonicalJsonObject,
        redaction_id: &ruma::EventId,
        room_id: &RoomId,
    ) -> Result<StoredEvent> {
        let object: CanonicalJsonObject =
            serde_json::from_str(target.pdu.get()).map_err(|e| Error::Unknown(e.to_string()))?;
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
        .map_err(|e| Error::Unknown(e.to_string()))?;
        let json = serde_json::to_string(&redacted).map_err(|e| Error::Unknown(e.to_string()))?;
        let mut out = target.clone();
        out.pdu = serde_json::value::RawValue::from_string(json)
            .map_err(|e| Error::Unknown(e.to_string()))?;
        Ok(out)
    }

    pub(crate) fn state_event_id(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        Ok(self.store.get(
            ROOM_STATE,
            &keys::strs(&[room_id.as_str(), kind, state_key]),
        )?)
    }

    /// Local users whose current membership is one of `memberships`.
    pub fn members_with(&self, room_id: &RoomId, memberships: &[&str]) -> Result<Vec<OwnedUserId>> {
        let rows = self
            .store
            .scan_prefix(ROOM_MEMBERS, &keys::strs(&[room_id.as_str()]))?;
        Ok(rows
            .into_iter()
            .filter(|(_, m)| memberships.contains(&m.as_str()))
            .filter_map(|(k, _)| {
                keys::split_strs(&k).and_then(|p| p.get(1).and_then(|u| UserId::parse(*u).ok()))
            })
            .collect())
    }

    pub fn membership_of(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        Ok(self.store.get(
            ROOM_MEMBERS,
            &keys::strs(&[room_id.as_str(), user.as_str()]),
        )?)
    }

    pub fn user_rooms(&self, user: &UserId) -> Result<Vec<(OwnedRoomId, UserRoom)>> {
        let rows = self
            .store
            .scan_prefix(USER_ROOMS, &keys::strs(&[user.as_str()]))?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, v)| {
                let parts = keys::split_strs(&k)?;
                Some((OwnedRoomId::try_from(*parts.get(1)?).ok()?, v))
            })
            .collect())
    }

    pub fn user_room(&self, user: &UserId, room_id: &RoomId) -> Result<Option<UserRoom>> {
        Ok(self
            .store
            .get(USER_ROOMS, &keys::strs(&[user.as_str(), room_id.as_str()]))?)
    }

    pub(crate) fn forget_user_room(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        let mut b = self.store.batch();
        b.delete(USER_ROOMS, &keys::strs(&[user.as_str(), room_id.as_str()]));
        b.commit()?;
        Ok(())
    }

    pub(crate) fn new_room_id(&self) -> Result<OwnedRoomId> {
        OwnedRoomId::try_from(format!(
            "!{}:{}",
            crate::accounts::random_string(18),
            self.server_name
        ))
        .map_err(|e| Error::Unknown(e.to_string()))
    }
}

fn txn_key(sender: &UserId, t: Txn<'_>) -> Vec<u8> {
    keys::strs(&[sender.as_str(), t.device_id, t.txn_id])
}

pub(crate) fn timeline_key(room_id: &RoomId, pos: u64) -> Vec<u8> {
    keys::KeyBuf::new()
        .str(room_id.as_str())
        .u64(pos)
        .into_vec()
}
