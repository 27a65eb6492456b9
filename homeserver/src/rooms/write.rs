//! The event write path: one room at a time, an event is prepared (built or checked, authorized, push rules run), then written in one atomic write with everything it implies.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, Weak},
};

use bellwire_federation::{hash_and_id, room_id_from_create_event, rules_for, sign_pdu};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UserId, canonical_json::to_canonical_value, events::TimelineEventType,
    room_version_rules::RoomVersionRules,
};
use serde_json::Value;

use super::{
    DeviceTxn, NewEvent, RoomRecord, Rooms, UserRoom, auth, cache, event_log,
    pdu::{Pdu, StoredEvent},
    snapshots::StateIds,
};
use crate::{
    accounts::now_ms,
    error::{Error, Result},
    outbox::{Destination, Item},
    push::{evaluate, evaluate::Decision, notifications},
    storage::{
        EventRead, EventWrite, MembershipWrite, RoomStateRead, RoomStateWrite, UserDataWrite,
    },
    stream::Write,
};

/// One async lock per room: events of a room are prepared and written one
/// at a time (their prev events, auth events and state depend on the one
/// before), while different rooms never wait on each other.
#[derive(Default)]
pub(crate) struct RoomLocks {
    locks: Mutex<HashMap<OwnedRoomId, Weak<tokio::sync::Mutex<()>>>>,
}

pub(crate) type RoomGuard = tokio::sync::OwnedMutexGuard<()>;

impl RoomLocks {
    pub(crate) async fn lock(&self, room: &RoomId) -> RoomGuard {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 4096 {
                map.retain(|_, l| l.strong_count() > 0);
            }
            match map.get(room).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(room.to_owned(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// An event ready to be written: everything its write needs, computed
/// beforehand so the write itself only stages rows.
pub(crate) struct Prepared {
    pub room_id: OwnedRoomId,
    /// The room's record when the event was prepared (the room lock keeps
    /// it current until the write); `None` for a new room.
    pub record: Option<RoomRecord>,
    pub version: RoomVersionId,
    pub event_id: OwnedEventId,
    /// The PDU as stored (signed when it is to go to other servers now).
    pub pdu: Box<serde_json::value::RawValue>,
    pub parsed: Pdu,
    pub txn: Option<(String, String)>,
    pub depth: u64,
    pub prev_events: Vec<OwnedEventId>,
    /// The event a redaction removes, already redacted.
    pub redacted: Option<(StoredEvent, StoredEvent)>,
    /// Servers the event goes to (none for events that came from elsewhere).
    pub forward: Vec<String>,
    /// The state before the event when it is not the room's current state
    /// (an event on another branch); `None`: the current state.
    pub state_before: Option<StateIds>,
    /// The room's state after the event when branches were resolved;
    /// `None`: the current state plus the event.
    pub new_state: Option<StateIds>,
    /// Whose push rules want to hear of it.
    pub decisions: Vec<Decision>,
    /// What goes to those users' push gateways.
    pub pushes: Vec<(Vec<Destination>, Item)>,
}

/// Strictly increasing timestamps for create events: two rooms created by
/// one user in the same millisecond with the same content would otherwise
/// have the same create event, hence (room v12) the same room ID.
static LAST_CREATE_TS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn create_event_ts() -> u64 {
    use std::sync::atomic::Ordering;
    let now = now_ms();
    let mut last = LAST_CREATE_TS.load(Ordering::Relaxed);
    loop {
        let ts = now.max(last + 1);
        match LAST_CREATE_TS.compare_exchange_weak(last, ts, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return ts,
            Err(seen) => last = seen,
        }
    }
}

impl Rooms {
    /// Sends an event into a room, idempotently per device transaction.
    pub async fn send(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<DeviceTxn<'_>>,
    ) -> Result<OwnedEventId> {
        let _room = self.locks.lock(room_id).await;
        self.send_locked(sender, room_id, event, txn, |_| Ok(()))
            .await
    }

    /// Sends with the room lock held; `also` stages more in the same write
    /// (a join's `m.direct` update, say).
    pub(crate) async fn send_locked(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
        txn: Option<DeviceTxn<'_>>,
        also: impl FnOnce(&mut Write<'_>) -> Result<()>,
    ) -> Result<OwnedEventId> {
        if let Some(t) = txn
            && let Some(id) = self.store.sent_by_txn(sender, t.device_id, t.txn_id)?
        {
            return Ok(id);
        }
        let prepared = self.prepare_local(sender, Some(room_id), None, event, txn)?;
        let event_id = prepared.event_id.clone();
        let earlier = self
            .write_event(prepared, |w| {
                // The same transaction may have landed in another room meanwhile.
                if let Some(t) = txn
                    && let Some(id) = w.sent_by_txn(sender, t.device_id, t.txn_id)?
                {
                    return Ok(Some(id));
                }
                also(w)?;
                Ok(None)
            })
            .await?;
        Ok(earlier.unwrap_or(event_id))
    }

    /// Creates a room's first event (its create event) and whatever `also`
    /// stages with it. A room that already exists is never returned.
    pub(crate) async fn create_first_event(
        &self,
        creator: &UserId,
        version: &RoomVersionId,
        content: Value,
        also: impl FnOnce(&mut Write<'_>, &RoomId) -> Result<()>,
    ) -> Result<(OwnedRoomId, RoomGuard)> {
        let v12 = version
            .rules()
            .is_some_and(|r| r.authorization.room_create_event_id_as_room_id);
        let provisional = if v12 { None } else { Some(self.new_room_id()?) };
        let create = NewEvent::state("m.room.create", "", content);
        let prepared =
            self.prepare_local(creator, provisional.as_deref(), Some(version), create, None)?;
        let room_id = prepared.room_id.clone();
        let guard = self.locks.lock(&room_id).await;
        let room = room_id.clone();
        self.write_event::<()>(prepared, |w| {
            if w.room(&room)?.is_some() {
                return Err(Error::Internal(format!(
                    "room {room} already exists; refusing to create it again"
                )));
            }
            also(w, &room)?;
            Ok(None)
        })
        .await?;
        Ok((room_id, guard))
    }

    /// Builds, signs and authorizes a local event against the room's
    /// current state. `room_id` is `None` only for the create event of a
    /// v12 room, whose ID derives from the event. Caller holds the room lock.
    pub(crate) fn prepare_local(
        &self,
        sender: &UserId,
        room_id: Option<&RoomId>,
        new_room_version: Option<&RoomVersionId>,
        event: NewEvent,
        txn: Option<DeviceTxn<'_>>,
    ) -> Result<Prepared> {
        let (record, room_id) = match (room_id, new_room_version) {
            (Some(r), None) => {
                let rec = self
                    .room(r)?
                    .ok_or_else(|| Error::forbidden("you are not in this room"))?;
                (Some(rec), Some(r.to_owned()))
            }
            (r, Some(_)) => (None, r.map(ToOwned::to_owned)),
            (None, None) => return Err(Error::Internal("event without room".into())),
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

        let ts = if kind == TimelineEventType::RoomCreate {
            create_event_ts()
        } else {
            now_ms()
        };
        // The PDU is built as canonical JSON directly: only the content
        // needs converting, and the parsed form is assembled from the parts.
        let canonical_content = to_canonical_value(content)
            .map_err(|e| Error::bad_json(format!("content is not canonical JSON: {e}")))?;
        let str_value = |s: &str| CanonicalJsonValue::String(s.to_owned());
        let ids_value = |ids: &[OwnedEventId]| {
            CanonicalJsonValue::Array(ids.iter().map(|i| str_value(i.as_str())).collect())
        };
        let int = |n: u64| {
            ruma::Int::try_from(n)
                .map(CanonicalJsonValue::Integer)
                .map_err(|_| Error::bad_json("number out of range"))
        };
        let mut object = CanonicalJsonObject::new();
        object.insert("type".into(), str_value(&kind.to_string()));
        object.insert("content".into(), canonical_content);
        object.insert("sender".into(), str_value(sender.as_str()));
        object.insert("origin_server_ts".into(), int(ts)?);
        object.insert("depth".into(), int(depth)?);
        object.insert("prev_events".into(), ids_value(&prev_events));
        object.insert("auth_events".into(), ids_value(&auth_events));
        if let Some(r) = &room_id {
            object.insert("room_id".into(), str_value(r.as_str()));
        }
        if let Some(k) = &event.state_key {
            object.insert("state_key".into(), str_value(k));
        }
        let top_level_redacts = event
            .redacts
            .clone()
            .filter(|_| !rules.redaction.content_field_redacts);
        if let Some(target) = &top_level_redacts {
            object.insert("redacts".into(), str_value(target.as_str()));
        }
        let event_id =
            hash_and_id(&mut object, &rules).map_err(|e| Error::bad_json(e.to_string()))?;
        let parsed = Pdu {
            event_id: event_id.clone(),
            room_id: room_id.clone(),
            sender: sender.to_owned(),
            origin_server_ts: ruma::MilliSecondsSinceUnixEpoch(
                ruma::UInt::try_from(ts).map_err(|_| Error::bad_json("timestamp out of range"))?,
            ),
            kind: kind.clone(),
            content: content_raw,
            state_key: event.state_key.clone(),
            prev_events: prev_events.clone(),
            auth_events,
            redacts: top_level_redacts,
            depth,
            unsigned: None,
            rejected: false,
        };
        let room_id = match room_id {
            Some(r) => r,
            None => room_id_from_create_event(&event_id).map_err(Error::internal)?,
        };
        let mut pdu = serde_json::value::to_raw_value(&object).map_err(Error::internal)?;
        // Room for the signature still to come.
        if pdu.get().len() > 65_536 - 200 {
            return Err(Error::TooLarge { limit: 65_536 });
        }

        auth::authorize(self, &rules, &room_id, &parsed)?;
        let redacted = self.redaction_of(&rules, &room_id, &parsed, &object, true)?;
        let forward = self.remote_servers_for(&room_id, &parsed)?;
        // The signature is only for other servers, and leaves the event ID
        // alone: sign now when the event goes out, else when a server
        // first asks for it (`federation_pdu`).
        if !forward.is_empty() {
            sign_pdu(&mut object, self.server_name.as_str(), &self.key, &rules)
                .map_err(Error::internal)?;
            pdu = serde_json::value::to_raw_value(&object).map_err(Error::internal)?;
        }
        let decisions = self.push_decisions(&room_id, &parsed, pdu.get(), &rules)?;
        let pushes = self.push.pushes_for(&decisions, &event_id)?;
        Ok(Prepared {
            room_id,
            record,
            version,
            event_id,
            pdu,
            parsed,
            txn: txn.map(|t| (t.device_id.to_owned(), t.txn_id.to_owned())),
            depth,
            prev_events,
            redacted,
            forward,
            state_before: None,
            new_state: None,
            decisions,
            pushes,
        })
    }

    /// Who is notified of an event, by each local member's push rules.
    pub(crate) fn push_decisions(
        &self,
        room_id: &RoomId,
        parsed: &Pdu,
        pdu_json: &str,
        rules: &RoomVersionRules,
    ) -> Result<Vec<Decision>> {
        evaluate::decide(&self.push, self, room_id, parsed, pdu_json, rules)
    }

    /// The target of a redaction and its redacted form, if the redaction
    /// applies to it now. `local`: refuse (rather than ignore) a
    /// redaction the sender has no power for.
    pub(crate) fn redaction_of(
        &self,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        pdu: &Pdu,
        object: &CanonicalJsonObject,
        local: bool,
    ) -> Result<Option<(StoredEvent, StoredEvent)>> {
        let target = match self.redaction_target(rules, room_id, pdu) {
            Ok(t) => t,
            Err(e) if local => return Err(e),
            Err(_) => None,
        };
        let Some(target) = target else {
            return Ok(None);
        };
        let redacted = self.redacted_copy(rules, &target, object, &pdu.event_id, room_id)?;
        Ok(Some((target, redacted)))
    }

    /// Writes a prepared event in one atomic write: the event, its timeline
    /// slot and event-log entry, state, membership bookkeeping, relations,
    /// notifications, extremities, the room's activity and the outbox;
    /// then wakes whoever waits. `also` stages more in the same write and
    /// may return a value that cancels the event (nothing of it is
    /// written). Caller holds the room lock.
    pub(crate) async fn write_event<T>(
        &self,
        p: Prepared,
        also: impl FnOnce(&mut Write<'_>) -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let room_id = p.room_id.clone();
        let record = p.record.clone();
        let kind = p.parsed.kind.to_string();
        let replaces_state = match &p.parsed.state_key {
            Some(k) => self.state_event_id(&room_id, &kind, k)?,
            None => None,
        };
        let mut wake: BTreeSet<OwnedUserId> = self
            .members_with(&room_id, &["join", "invite"])?
            .into_iter()
            .collect();
        // Membership rows that change: the event itself, or every member
        // whose state resolution picked another event.
        let mut memberships: Vec<(OwnedUserId, OwnedEventId, Pdu)> = Vec::new();
        let mut state_rows: Vec<((String, String), Option<OwnedEventId>)> = Vec::new();
        match &p.new_state {
            Some(resolved) => {
                for ((t, k), winner) in self.state_diff(&room_id, resolved)? {
                    if t == "m.room.member"
                        && let (Ok(target), Some(id)) = (UserId::parse(k.as_str()), &winner)
                    {
                        let ev = if *id == p.event_id {
                            Some(p.parsed.clone())
                        } else {
                            self.event(id.as_str())?.and_then(|e| e.parse().ok())
                        };
                        if let Some(ev) = ev {
                            memberships.push((target, id.clone(), ev));
                        }
                    }
                    state_rows.push(((t, k), winner));
                }
            }
            None => {
                if let Some(k) = &p.parsed.state_key {
                    state_rows.push(((kind.clone(), k.clone()), Some(p.event_id.clone())));
                    if p.parsed.kind == TimelineEventType::RoomMember
                        && let Ok(target) = UserId::parse(k.as_str())
                    {
                        memberships.push((target, p.event_id.clone(), p.parsed.clone()));
                    }
                }
            }
        }
        wake.extend(memberships.iter().map(|(u, _, _)| u.clone()));
        // Only events that relate to another are indexed as relations.
        let relation = (p.parsed.state_key.is_none()
            && p.parsed.content.get().contains("m.relates_to"))
        .then(|| p.parsed.content_value());
        let pdu = p.pdu.clone();
        let local_sender = p.parsed.sender.server_name() == self.server_name;
        let ts = u64::from(p.parsed.origin_server_ts.get());

        self.stream
            .write(|w| {
                let extra = also(w)?;
                if extra.is_some() {
                    return Ok(extra);
                }
                let pos = w.next_pos();
                let stored = StoredEvent {
                    event_id: p.event_id.clone(),
                    room_id: room_id.clone(),
                    pos,
                    pdu,
                    replaces_state,
                    txn: p.txn.clone(),
                    rejected: false,
                };
                w.put_event(&stored);
                w.put_timeline(&room_id, pos, &p.event_id);
                event_log::stage(w, pos, &room_id, &p.event_id, &kind);
                if let Some(content) = &relation {
                    self.stage_relation(w, &room_id, &stored, &p.parsed.sender, &kind, content)?;
                }
                notifications::stage(w, &p.decisions, pos, ts);
                // Sending in a room means having read it; `pos` was just
                // handed out, so it can only move the read position forward.
                if local_sender {
                    w.put_read_upto(&p.parsed.sender, &room_id, "", pos);
                }
                let snapshot = self.stage_state_snapshots(
                    w,
                    &room_id,
                    record.as_ref(),
                    &p.event_id,
                    &p.parsed,
                    p.state_before.as_ref(),
                    p.new_state.as_ref(),
                )?;
                for ((t, k), winner) in &state_rows {
                    w.set_state(&room_id, t, k, winner.as_deref());
                }
                for (target, id, ev) in &memberships {
                    let membership = ev.membership().unwrap_or_default();
                    let is_direct = ev
                        .content_value()
                        .get("is_direct")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    w.put_user_room(
                        target,
                        &room_id,
                        &UserRoom {
                            membership: membership.clone(),
                            pos,
                            event_id: id.clone(),
                            is_direct,
                            sender: ev.sender.clone(),
                        },
                    );
                    w.set_member(&room_id, target, &membership);
                    w.log_membership(&room_id, pos, target, &membership);
                }
                // Forward extremities: the new event replaces those it points
                // at; other branches (a remote event built on an older one) stay.
                let mut extremities: Vec<OwnedEventId> = record
                    .as_ref()
                    .map(|r| r.extremities.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| !p.prev_events.contains(e) && *e != p.event_id)
                    .collect();
                extremities.push(p.event_id.clone());
                let old_depth = record.as_ref().map_or(0, |r| r.depth);
                let new_record = RoomRecord {
                    version: p.version.clone(),
                    extremities,
                    depth: p.depth.max(old_depth),
                    snapshot: Some(snapshot),
                };
                w.put_room(&room_id, &new_record);
                let (records, room) = (self.records.clone(), room_id.clone());
                w.after_commit(move || records.set(room, new_record));
                if !state_rows.is_empty() {
                    let keys: Vec<String> = state_rows
                        .iter()
                        .map(|((t, k), _)| cache::state_key(&room_id, t, k))
                        .collect();
                    let ids = self.state_ids.clone();
                    w.after_commit(move || ids.invalidate(keys.iter().map(String::as_str)));
                }
                if let Some((device, txn)) = &p.txn {
                    w.put_sent_by_txn(&p.parsed.sender, device, txn, &p.event_id);
                }
                if let Some((target, redacted)) = &p.redacted {
                    self.unstage_relation(w, target);
                    w.put_event(redacted);
                }
                // A redacted event, or an outlier now in the timeline, must
                // not be served from the cache as it was.
                let rewritten: Vec<OwnedEventId> = std::iter::once(p.event_id.clone())
                    .chain(p.redacted.as_ref().map(|(t, _)| t.event_id.clone()))
                    .collect();
                let cache = self.events.clone();
                w.after_commit(move || cache.invalidate(rewritten.iter().map(|e| &**e)));
                if !memberships.is_empty() {
                    let (cache, room) = (self.members.clone(), room_id.clone());
                    w.after_commit(move || cache.invalidate([&*room]));
                }
                self.outbox
                    .stage_for_servers(w, &p.forward, &Item::Pdu(p.event_id.clone()));
                self.push.stage_pushes(w, &p.pushes);
                w.wake(wake.iter().map(|u| u.as_ref()));
                Ok(None)
            })
            .await
    }
}
