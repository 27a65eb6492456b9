//! Events that come from other servers: accepting them into a room, storing outliers, installing the state a remote join returns, and building events for remote servers to complete.

use std::collections::BTreeSet;

use bellwire_federation::{hash_sign_and_id, rules_for};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId,
    UserId, canonical_json::to_canonical_value, events::TimelineEventType,
};
use serde_json::{Value, json};

use super::{
    NewEvent, RoomRecord, Rooms, auth,
    pdu::{Pdu, StoredEvent},
    write::Prepared,
};
use crate::{
    accounts::now_ms,
    error::{Error, Result},
    outbox::Item,
    storage::{EventRead, EventWrite, MembershipRead, MembershipWrite, RoomStateWrite},
};

impl Rooms {
    /// Servers with joined members, other than this one.
    pub fn remote_servers(&self, room_id: &RoomId) -> Result<Vec<String>> {
        let mut out = BTreeSet::new();
        for u in self.members_with(room_id, &["join"])? {
            if u.server_name() != self.server_name {
                out.insert(u.server_name().to_string());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Where a local event goes: every server in the room, and the server
    /// of the user a membership event is about (a kicked or banned user;
    /// an invitee's server already got its invite through /invite).
    pub(crate) fn remote_servers_for(&self, room_id: &RoomId, pdu: &Pdu) -> Result<Vec<String>> {
        let mut servers = self.remote_servers(room_id)?;
        if pdu.kind == TimelineEventType::RoomMember
            && pdu.membership().as_deref() != Some("invite")
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && target.server_name() != self.server_name
            && !servers.iter().any(|s| s == target.server_name().as_str())
        {
            servers.push(target.server_name().to_string());
        }
        Ok(servers)
    }

    /// Queues an EDU for every other server in the room.
    pub fn send_edu_to_room(&self, room_id: &RoomId, edu: Value) -> Result<()> {
        let servers = self.remote_servers(room_id)?;
        if servers.is_empty() {
            return Ok(());
        }
        self.outbox.push_to_servers(&servers, Item::Edu(edu))
    }

    pub fn room_version(&self, room_id: &RoomId) -> Result<Option<RoomVersionId>> {
        Ok(self.room(room_id)?.map(|r| r.version))
    }

    /// An unsigned event on top of the current extremities, as make_join
    /// and make_leave hand out for the remote server to sign.
    pub fn event_template(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
    ) -> Result<(Value, RoomVersionId)> {
        let record = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let rules = rules_for(&record.version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let kind = TimelineEventType::from(event.kind.as_str());
        let content_raw = serde_json::value::to_raw_value(&event.content)
            .map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            sender,
            event.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(Error::BadJson)?;
        let mut auth_events = Vec::new();
        for (t, k) in &auth_types {
            if let Some(id) = self.state_event_id(room_id, &t.to_string(), k)? {
                auth_events.push(id);
            }
        }
        let mut pdu = json!({
            "type": event.kind,
            "content": event.content,
            "sender": sender.as_str(),
            "room_id": room_id.as_str(),
            "origin_server_ts": now_ms(),
            "depth": record.depth + 1,
            "prev_events": record.extremities,
            "auth_events": auth_events,
        });
        if let Some(k) = &event.state_key {
            pdu["state_key"] = Value::from(k.as_str());
        }
        if record.version.as_str().parse::<u32>().is_ok_and(|v| v < 11) {
            pdu["origin"] = Value::from(sender.server_name().as_str());
        }
        Ok((pdu, record.version))
    }

    /// Hashes and signs a template as this server (the joining or inviting
    /// side of a membership handshake).
    pub fn sign_template(
        &self,
        template: Value,
        version: &RoomVersionId,
    ) -> Result<(CanonicalJsonObject, OwnedEventId)> {
        let rules = rules_for(version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let mut object = to_object(template)?;
        object.remove("signatures");
        object.remove("hashes");
        object.remove("unsigned");
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or_default()),
        );
        let event_id = hash_sign_and_id(&mut object, self.server_name.as_str(), &self.key, &rules)
            .map_err(|e| Error::bad_json(e.to_string()))?;
        Ok((object, event_id))
    }

    /// Whether an event is here (in the timeline or as an outlier).
    pub fn has_event(&self, event_id: &str) -> Result<bool> {
        Ok(self.store.has_event(event_id)?)
    }

    /// Stores a checked event that is not (yet) part of the timeline:
    /// auth chain and state from a join, an invite to a remote room.
    pub(crate) fn store_outlier(
        &self,
        room_id: &RoomId,
        object: &CanonicalJsonObject,
        event_id: &OwnedEventId,
    ) -> Result<()> {
        if self.has_event(event_id.as_str())? {
            return Ok(());
        }
        let json = serde_json::to_string(object).map_err(Error::internal)?;
        let stored = StoredEvent {
            event_id: event_id.clone(),
            room_id: room_id.to_owned(),
            pos: 0,
            pdu: serde_json::value::RawValue::from_string(json).map_err(Error::internal)?,
            replaces_state: None,
            txn: None,
            rejected: false,
        };
        let mut txn = self.store.transaction();
        txn.put_event(&stored);
        Ok(txn.commit()?)
    }

    /// Joins a room through another server: makes `state` (checked
    /// events, stored as outliers) the room's current state, then accepts
    /// the join event on top of it.
    pub(crate) async fn join_remote_room(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        state: &[(OwnedEventId, CanonicalJsonObject)],
        join: &CanonicalJsonObject,
        join_id: &OwnedEventId,
    ) -> Result<()> {
        let _room = self.locks.lock(room_id).await;
        let record = match self.room(room_id)? {
            // The snapshot of the current state is rebuilt from the rows
            // below at the next event.
            Some(r) => RoomRecord {
                snapshot: None,
                ..r
            },
            None => RoomRecord {
                version: version.clone(),
                extremities: Vec::new(),
                depth: 0,
                snapshot: None,
            },
        };
        self.stream
            .write(|w| {
                for (id, object) in state {
                    let (
                        Some(CanonicalJsonValue::String(kind)),
                        Some(CanonicalJsonValue::String(key)),
                    ) = (object.get("type"), object.get("state_key"))
                    else {
                        continue;
                    };
                    w.set_state(room_id, kind, key, Some(id));
                    if kind == "m.room.member"
                        && let Some(CanonicalJsonValue::Object(content)) = object.get("content")
                        && let Some(CanonicalJsonValue::String(m)) = content.get("membership")
                        && let Ok(user) = UserId::parse(key.as_str())
                    {
                        w.set_member(room_id, &user, m);
                    }
                }
                w.put_room(room_id, &record);
                let (cache, room) = (self.members.clone(), room_id.to_owned());
                w.after_commit(move || cache.invalidate([&*room]));
                let (records, room) = (self.records.clone(), room_id.to_owned());
                w.after_commit(move || records.invalidate([&*room]));
                let keys: Vec<String> = state
                    .iter()
                    .filter_map(|(_, o)| match (o.get("type"), o.get("state_key")) {
                        (
                            Some(CanonicalJsonValue::String(t)),
                            Some(CanonicalJsonValue::String(k)),
                        ) => Some(super::cache::state_key(room_id, t, k)),
                        _ => None,
                    })
                    .collect();
                let ids = self.state_ids.clone();
                w.after_commit(move || ids.invalidate(keys.iter().map(String::as_str)));
                Ok(())
            })
            .await?;
        self.accept_remote_locked(room_id, join, join_id, Vec::new())
            .await
    }

    /// Accepts a checked (hashes, signatures) event from another server into
    /// the timeline, after the auth rules against its auth events and the
    /// current state. `forward`: servers this server must pass it on to
    /// (only when it is the resident server of a send_join).
    pub(crate) async fn accept_remote(
        &self,
        room_id: &RoomId,
        object: &CanonicalJsonObject,
        event_id: &OwnedEventId,
        forward: Vec<String>,
    ) -> Result<()> {
        let _room = self.locks.lock(room_id).await;
        self.accept_remote_locked(room_id, object, event_id, forward)
            .await
    }

    /// [`Rooms::accept_remote`] for a caller that holds the room lock.
    pub(crate) async fn accept_remote_locked(
        &self,
        room_id: &RoomId,
        object: &CanonicalJsonObject,
        event_id: &OwnedEventId,
        forward: Vec<String>,
    ) -> Result<()> {
        if let Some(existing) = self.event(event_id.as_str())?
            && existing.pos != 0
        {
            return Ok(());
        }
        let Some(prepared) = self.prepare_remote(room_id, object, event_id, forward)? else {
            return Ok(());
        };
        self.write_event::<()>(prepared, |_| Ok(None)).await?;
        Ok(())
    }

    /// Checks a remote event against the auth rules where it sits and
    /// against the current state, resolving state where branches meet.
    /// `None`: soft-failed (kept as an outlier, never shown).
    fn prepare_remote(
        &self,
        room_id: &RoomId,
        object: &CanonicalJsonObject,
        event_id: &OwnedEventId,
        forward: Vec<String>,
    ) -> Result<Option<Prepared>> {
        let record = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("this server is not in the room"))?;
        let rules = rules_for(&record.version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let pdu = serde_json::value::to_raw_value(object).map_err(Error::internal)?;
        let mut parsed: Pdu =
            serde_json::from_str(pdu.get()).map_err(|e| Error::bad_json(e.to_string()))?;
        parsed.event_id = event_id.clone();
        for a in &parsed.auth_events {
            if !self.has_event(a.as_str())? {
                return Err(Error::forbidden(format!("auth event {a} is unknown")));
            }
        }
        let prev_events = parsed.prev_events.clone();
        let (state_before, new_state) =
            match self.state_before_prevs(room_id, &rules, &prev_events)? {
                None => {
                    auth::authorize(self, &rules, room_id, &parsed)?;
                    (None, None)
                }
                Some(before) => {
                    // On another branch: the auth rules run against the state
                    // where the event sits...
                    auth::authorize_with_state(self, &rules, &parsed, &before)?;
                    // ...and against the current state; failing only there is a
                    // soft failure: kept, but never shown or built upon.
                    if let Err(e) = auth::authorize(self, &rules, room_id, &parsed) {
                        tracing::info!("soft-failed {event_id}: {e}");
                        self.store_outlier(room_id, object, event_id)?;
                        return Ok(None);
                    }
                    let mut after = before.clone();
                    if let Some(k) = &parsed.state_key {
                        after.insert((parsed.kind.to_string(), k.clone()), event_id.clone());
                    }
                    let mut maps = vec![after];
                    let current = self.current_state_ids(room_id)?;
                    for x in record
                        .extremities
                        .iter()
                        .filter(|x| !prev_events.contains(x))
                    {
                        maps.push(self.state_after(x)?.unwrap_or_else(|| current.clone()));
                    }
                    let resolved = self.resolve_states(&rules, &maps, Some(&parsed))?;
                    tracing::debug!(
                        "branches met at {event_id}: resolved {} of {} state sets",
                        resolved.len(),
                        maps.len()
                    );
                    (Some(before), Some(resolved))
                }
            };
        let redacted = self.redaction_of(&rules, room_id, &parsed, object, false)?;
        let decisions = self.push_decisions(room_id, &parsed, pdu.get(), &rules)?;
        let pushes = self.push.pushes_for(&decisions, event_id)?;
        Ok(Some(Prepared {
            room_id: room_id.to_owned(),
            version: record.version.clone(),
            record: Some(record),
            depth: parsed.depth,
            event_id: event_id.clone(),
            pdu,
            parsed,
            txn: None,
            prev_events,
            redacted,
            forward,
            state_before,
            new_state,
            decisions,
            pushes,
        }))
    }

    /// The first event of the room's timeline.
    pub fn earliest_timeline_event(&self, room_id: &RoomId) -> Result<Option<StoredEvent>> {
        let first = self.store.timeline(room_id, 0, u64::MAX, false, 1)?;
        match first.first() {
            Some((_, id)) => self.event(id.as_str()),
            None => Ok(None),
        }
    }

    /// Puts events fetched by backfill (newest first) below the room's
    /// earliest timeline event, each at the next lower position. Events
    /// that fail the auth rules against their auth events are skipped.
    pub(crate) async fn insert_backfilled(
        &self,
        room_id: &RoomId,
        events: &[(i64, OwnedEventId, CanonicalJsonObject)],
    ) -> Result<usize> {
        let _room = self.locks.lock(room_id).await;
        let Some(earliest) = self.earliest_timeline_event(room_id)? else {
            return Ok(0);
        };
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let rules = rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)?;
        let mut pos = earliest.pos;
        let mut rows = Vec::new();
        for (_, id, object) in events {
            if pos <= 1 {
                break;
            }
            let json = serde_json::to_string(object).map_err(Error::internal)?;
            let Ok(mut parsed) = serde_json::from_str::<Pdu>(&json) else {
                continue;
            };
            parsed.event_id = id.clone();
            if let Err(e) = auth::authorize_against_auth_events(self, &rules, &parsed) {
                tracing::info!("backfilled {id} fails the auth rules: {e}");
                continue;
            }
            pos -= 1;
            rows.push(StoredEvent {
                event_id: id.clone(),
                room_id: room_id.to_owned(),
                pos,
                pdu: serde_json::value::RawValue::from_string(json).map_err(Error::internal)?,
                replaces_state: None,
                txn: None,
                rejected: false,
            });
        }
        // Below every position handed out: nothing to allocate or publish.
        let mut txn = self.store.transaction();
        for stored in &rows {
            txn.put_event(stored);
            txn.put_timeline(room_id, stored.pos, &stored.event_id);
        }
        txn.commit()?;
        self.events.invalidate(rows.iter().map(|e| &*e.event_id));
        Ok(rows.len())
    }

    pub(crate) fn set_invite_state(
        &self,
        user: &UserId,
        room_id: &RoomId,
        state: &[Value],
    ) -> Result<()> {
        let mut txn = self.store.transaction();
        txn.put_invite_state(user, room_id, state);
        Ok(txn.commit()?)
    }

    pub(crate) fn invite_state(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<Vec<Value>>> {
        Ok(self.store.invite_state(user, room_id)?)
    }

    /// Records a local user's membership in a room this server is not in
    /// (a remote invite, or its rejection), for /sync.
    pub(crate) async fn set_outside_membership(
        &self,
        user: &UserId,
        room_id: &RoomId,
        membership: &str,
        event_id: &OwnedEventId,
        sender: &UserId,
        is_direct: bool,
    ) -> Result<()> {
        self.stream
            .write(|w| {
                let pos = w.next_pos();
                w.put_user_room(
                    user,
                    room_id,
                    &super::UserRoom {
                        membership: membership.into(),
                        pos,
                        event_id: event_id.clone(),
                        is_direct,
                        sender: sender.to_owned(),
                    },
                );
                w.wake([user]);
                Ok(())
            })
            .await
    }

    /// The auth chain of `ids`: every event reachable through auth_events.
    pub fn auth_chain(&self, ids: &[OwnedEventId]) -> Result<Vec<StoredEvent>> {
        let mut seen: BTreeSet<OwnedEventId> = BTreeSet::new();
        let mut todo: Vec<OwnedEventId> = ids.to_vec();
        let mut out = Vec::new();
        while let Some(id) = todo.pop() {
            let Some(ev) = self.event(id.as_str())? else {
                continue;
            };
            let Ok(p) = ev.parse() else { continue };
            for a in p.auth_events {
                if seen.insert(a.clone()) {
                    todo.push(a);
                }
            }
            if !ids.contains(&id) {
                out.push(ev);
            }
        }
        // Reachable auth events of the starting set are included too.
        for id in ids {
            if seen.contains(id)
                && !out.iter().any(|e| &e.event_id == id)
                && let Some(ev) = self.event(id.as_str())?
            {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Whether another server may see an event, by the room's history
    /// visibility where the event sits: `shared` and `world_readable` rooms
    /// show everything to a server in the room; `invited` and `joined`
    /// only what happened while one of its users was invited or joined.
    pub fn visible_to_server(&self, origin: &str, ev: &StoredEvent) -> Result<bool> {
        let visibility = |state_content: Option<Value>| {
            state_content
                .and_then(|c| c["history_visibility"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "shared".into())
        };
        // The common case needs no snapshot: the room is shared now.
        let now = visibility(self.state_content(&ev.room_id, "m.room.history_visibility", "")?);
        let Some(state) = self.state_after(&ev.event_id)? else {
            return Ok(matches!(now.as_str(), "shared" | "world_readable"));
        };
        let content_of = |t: &str, k: &str| -> Option<Value> {
            let id = state.get(&(t.to_owned(), k.to_owned()))?;
            Some(self.event(id.as_str()).ok()??.pdu_value()["content"].clone())
        };
        let at_event = visibility(content_of("m.room.history_visibility", ""));
        if matches!(at_event.as_str(), "shared" | "world_readable") {
            return Ok(true);
        }
        let allowed: &[&str] = if at_event == "invited" {
            &["join", "invite"]
        } else {
            &["join"]
        };
        Ok(state.iter().any(|((t, k), _)| {
            t == "m.room.member"
                && UserId::parse(k.as_str()).is_ok_and(|u| u.server_name().as_str() == origin)
                && content_of(t, k)
                    .and_then(|c| c["membership"].as_str().map(str::to_owned))
                    .is_some_and(|m| allowed.contains(&m.as_str()))
        }))
    }

    /// An event as another server may receive it: whole, or redacted when
    /// history visibility hides it from that server.
    pub fn event_for_server(&self, origin: &str, ev: &StoredEvent) -> Result<Value> {
        let pdu = self.federation_object(ev)?;
        if self.visible_to_server(origin, ev)? {
            return serde_json::to_value(pdu).map_err(Error::internal);
        }
        let rules = self.rules_of(&ev.room_id)?;
        let redacted =
            ruma::canonical_json::redact(pdu, &rules.redaction, None).map_err(Error::internal)?;
        serde_json::to_value(redacted).map_err(Error::internal)
    }

    /// A stored event as other servers get it: without local `unsigned`
    /// data, and signed by this server if it is ours (events of rooms no
    /// other server was in are signed only once one asks).
    pub fn federation_pdu(&self, ev: &StoredEvent) -> Result<Value> {
        serde_json::to_value(self.federation_object(ev)?).map_err(Error::internal)
    }

    fn federation_object(&self, ev: &StoredEvent) -> Result<CanonicalJsonObject> {
        let mut pdu: CanonicalJsonObject =
            serde_json::from_str(ev.pdu.get()).map_err(Error::internal)?;
        pdu.remove("unsigned");
        let ours = matches!(pdu.get("sender"), Some(CanonicalJsonValue::String(s))
            if UserId::parse(s.as_str()).is_ok_and(|u| u.server_name() == self.server_name));
        if ours && !bellwire_federation::signed_by(&pdu, self.server_name.as_str()) {
            let rules = self.rules_of(&ev.room_id)?;
            bellwire_federation::sign_pdu(&mut pdu, self.server_name.as_str(), &self.key, &rules)
                .map_err(Error::internal)?;
        }
        Ok(pdu)
    }

    fn rules_of(&self, room_id: &RoomId) -> Result<ruma::room_version_rules::RoomVersionRules> {
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        rules_for(&version).map_err(|_| Error::UnsupportedRoomVersion)
    }

    pub fn room_of_event(&self, event_id: &str) -> Result<Option<OwnedRoomId>> {
        Ok(self.event(event_id)?.map(|e| e.room_id))
    }
}

pub(crate) fn to_object(v: Value) -> Result<CanonicalJsonObject> {
    match to_canonical_value(v) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(Error::bad_json("event is not an object")),
        Err(e) => Err(Error::bad_json(format!("event is not canonical JSON: {e}"))),
    }
}
