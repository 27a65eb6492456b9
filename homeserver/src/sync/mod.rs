//! /sync assembly: what changed for a user between two stream positions, and the long-poll that waits for it.

pub mod filter;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::{
    account_data::AccountData,
    accounts::{Session, now_ms},
    e2ee::E2ee,
    ephemeral::{presence::Presence, receipts::Receipts, typing::Typing},
    error::{Error, Result},
    push::{Push, notifications, rules as push_rules},
    rooms::{
        Rooms, UserRoom,
        pdu::{client_event, stripped_state},
    },
    storage::Store,
    stream::Stream,
};
use filter::Filter;

pub struct SyncRequest {
    pub since: Option<String>,
    pub timeout_ms: u64,
    pub full_state: bool,
    pub filter: Filter,
    /// `set_presence`: online (the default), unavailable or offline.
    pub set_presence: String,
}

/// Parses a `since`/`from` token: `s<pos>` (sync) or `t<pos>` (pagination).
/// A sync token may carry `_<pos>`, how far this device's to-device inbox
/// was handed out when that was less than everything.
pub fn parse_token(token: &str) -> Result<u64> {
    Ok(parse_sync_token(token)?.0)
}

/// `(stream position, to-device position)` of a sync token.
pub fn parse_sync_token(token: &str) -> Result<(u64, u64)> {
    let body = token
        .strip_prefix('s')
        .or_else(|| token.strip_prefix('t'))
        .unwrap_or(token);
    let bad = || Error::invalid_param("invalid stream token");
    match body.split_once('_') {
        None => {
            let pos = body.parse().map_err(|_| bad())?;
            Ok((pos, pos))
        }
        Some((pos, td)) => {
            let pos: u64 = pos.parse().map_err(|_| bad())?;
            let td: u64 = td.parse().map_err(|_| bad())?;
            Ok((pos, td.min(pos)))
        }
    }
}

#[derive(Clone)]
pub struct SyncService {
    pub(crate) rooms: Rooms,
    pub(crate) account_data: AccountData,
    pub(crate) typing: Typing,
    pub(crate) receipts: Receipts,
    pub(crate) presence: Presence,
    pub(crate) push: Arc<Push>,
    pub(crate) e2ee: E2ee,
    pub(crate) store: Store,
    pub(crate) stream: Arc<Stream>,
    pub(crate) default_limit: usize,
    pub(crate) max_timeout_ms: u64,
}

impl SyncService {
    /// Answers at once when there is news (or on an initial sync); otherwise
    /// sleeps until the user's notifier fires or the timeout passes.
    pub async fn sync(&self, session: &Session, req: SyncRequest) -> Result<Value> {
        let tokens = req.since.as_deref().map(parse_sync_token).transpose()?;
        let since = tokens.map(|t| t.0);
        let to_device_acked = tokens.map_or(0, |t| t.1);
        // Syncing with a token acknowledges the to-device messages it covered.
        if tokens.is_some() {
            self.e2ee.ack_to_device(
                &session.user_id,
                session.device_id.as_str(),
                to_device_acked,
            )?;
        }
        self.presence
            .sync_started(&session.user_id, &req.set_presence)
            .await?;
        let result = self.sync_inner(session, since, to_device_acked, &req).await;
        self.presence.sync_finished(&session.user_id);
        result
    }

    async fn sync_inner(
        &self,
        session: &Session,
        since: Option<u64>,
        to_device_acked: u64,
        req: &SyncRequest,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.timeout_ms.min(self.max_timeout_ms));
        let notify = self.stream.notifier().handle(&session.user_id);
        loop {
            // Register interest before looking, so a write between the look
            // and the wait still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let upto = self.stream.current();
            let (body, has_news) = self.build(session, since, to_device_acked, upto, req)?;
            if has_news
                || since.is_none()
                || req.full_state
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(body);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let upto = self.stream.current();
                    return Ok(self.build(session, since, to_device_acked, upto, req)?.0);
                }
            }
        }
    }

    fn build(
        &self,
        session: &Session,
        since: Option<u64>,
        to_device_acked: u64,
        upto: u64,
        req: &SyncRequest,
    ) -> Result<(Value, bool)> {
        let user = &session.user_id;
        let since_pos = since.unwrap_or(0);
        let filter = &req.filter;
        let changes = self.account_data.changed_since(user, since_pos, upto)?;
        let ignored = self.account_data.ignored_users(user)?;
        let mut join = Map::new();
        let mut invite = Map::new();
        let mut leave = Map::new();
        for (room_id, ur) in self.rooms.user_rooms(user)? {
            if !filter.room.allows_room(room_id.as_str()) {
                continue;
            }
            let room_data = changes.rooms.get(&room_id);
            match ur.membership.as_str() {
                "join" => {
                    let full = since.is_none() || req.full_state || ur.pos > since_pos;
                    let news = full
                        || self.rooms.has_events_after(&room_id, since_pos)?
                        || room_data.is_some()
                        || self.typing.changed(&room_id, since, upto).is_some()
                        || self.receipts.changed(&room_id, user, since_pos, upto)?;
                    if news {
                        let mut entry = self.room_entry(
                            session, &room_id, since_pos, upto, full, filter, room_data, &ignored,
                        )?;
                        self.add_ephemeral(
                            &mut entry, session, &room_id, since, upto, filter, &ignored,
                        )?;
                        self.add_unread_counts(&mut entry, user, &room_id, filter)?;
                        join.insert(room_id.to_string(), entry);
                    }
                }
                "invite"
                    if (since.is_none() || ur.pos > since_pos)
                        && !ignored.contains(ur.sender.as_str()) =>
                {
                    invite.insert(room_id.to_string(), self.invite_entry(user, &room_id, &ur)?);
                }
                "leave" | "ban" => {
                    let fresh = since.is_some() && ur.pos > since_pos && ur.pos <= upto;
                    if fresh || (filter.room.include_leave && (since.is_none() || req.full_state)) {
                        let entry = self.room_entry(
                            session,
                            &room_id,
                            since_pos,
                            ur.pos,
                            since.is_none() || req.full_state,
                            filter,
                            room_data,
                            &ignored,
                        )?;
                        leave.insert(room_id.to_string(), entry);
                    }
                }
                _ => {}
            }
        }
        let mut global_changes = changes.global;
        // Clients expect push rules from the first sync, stored or not.
        if since.is_none()
            && !global_changes
                .iter()
                .any(|(k, _)| k == push_rules::EVENT_TYPE)
        {
            let rules = self.push.ruleset(user)?;
            global_changes.push((
                push_rules::EVENT_TYPE.into(),
                json!({"global": push_rules::to_json(&rules)?}),
            ));
        }
        let global: Vec<Value> = global_changes
            .into_iter()
            .filter(|(k, _)| filter.account_data.allows(k, user.as_str(), None))
            .map(|(k, c)| json!({"type": k, "content": c}))
            .collect();
        let presence: Vec<Value> = self
            .presence
            .sync_events(user, since, upto)?
            .into_iter()
            .filter(|e| !ignored.contains(e["sender"].as_str().unwrap_or_default()))
            .filter(|e| {
                filter.presence.allows(
                    e["type"].as_str().unwrap_or_default(),
                    e["sender"].as_str().unwrap_or_default(),
                    None,
                )
            })
            .collect();
        let device = session.device_id.as_str();
        let (to_device, handed_out) =
            self.e2ee
                .pending_to_device(user, device, to_device_acked, upto)?;
        let lists = match since {
            Some(s) => self.e2ee.device_list_changes(user, s, upto)?,
            None => Default::default(),
        };
        let has_news = !join.is_empty()
            || !invite.is_empty()
            || !leave.is_empty()
            || !global.is_empty()
            || !presence.is_empty()
            || !to_device.is_empty()
            || !lists.changed.is_empty()
            || !lists.left.is_empty();
        let next_batch = if handed_out < upto {
            format!("s{upto}_{handed_out}")
        } else {
            format!("s{upto}")
        };
        let body = json!({
            "next_batch": next_batch,
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": {}},
            "account_data": {"events": global},
            "presence": {"events": presence},
            "to_device": {"events": to_device},
            "device_lists": {"changed": lists.changed, "left": lists.left},
            "device_one_time_keys_count": self.e2ee.one_time_key_counts(user, device)?,
            "device_unused_fallback_key_types": self.e2ee.unused_fallback_key_types(user, device)?,
        });
        Ok((body, has_news))
    }

    #[allow(clippy::too_many_arguments)]
    fn room_entry(
        &self,
        session: &Session,
        room_id: &RoomId,
        since_pos: u64,
        upto: u64,
        full: bool,
        filter: &Filter,
        room_data: Option<&Vec<(String, Value)>>,
        ignored: &BTreeSet<String>,
    ) -> Result<Value> {
        let now = now_ms();
        let device = Some(session.device_id.as_str());
        let limit = filter
            .room
            .timeline
            .limit
            .map(|l| l.clamp(1, 1000) as usize)
            .unwrap_or(self.default_limit);
        // History visibility: a "joined" room shows nothing from before the join.
        let earliest = self
            .rooms
            .visible_from(&session.user_id, room_id)?
            .saturating_sub(1);
        let lo = if full { 0 } else { since_pos }.max(earliest);
        let mut newest = self
            .rooms
            .timeline_range(room_id, lo, upto, true, limit + 1)?;
        let limited = newest.len() > limit;
        newest.truncate(limit);
        newest.reverse();
        let start_pos = newest
            .first()
            .map(|e| e.pos)
            .unwrap_or(upto.saturating_add(1));

        let timeline: Vec<Value> = newest
            .iter()
            .map(|e| {
                self.rooms
                    .client_event_for(e, &session.user_id, device, upto, now)
            })
            .filter(|e| filter.room.timeline.allows_event(e))
            // Ignored users' messages vanish; their state changes still apply.
            .filter(|e| {
                e.get("state_key").is_some()
                    || !ignored.contains(e["sender"].as_str().unwrap_or_default())
            })
            .collect();

        // State at the start of the timeline: all of it when the client has
        // none, otherwise only the entries that changed in the gap.
        let at_start = self.rooms.state_before(room_id, start_pos)?;
        let wanted: Box<dyn Fn(&(String, String)) -> bool> = if full {
            Box::new(|_| true)
        } else if limited {
            let gap = self.rooms.timeline_range(
                room_id,
                since_pos,
                start_pos.saturating_sub(1),
                false,
                usize::MAX,
            )?;
            let changed: BTreeSet<(String, String)> = gap
                .iter()
                .filter_map(|e| {
                    let v = e.pdu_value();
                    Some((
                        v["type"].as_str()?.to_owned(),
                        v["state_key"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            Box::new(move |k| changed.contains(k))
        } else {
            Box::new(|_| false)
        };
        let lazy = filter.room.state.lazy_load_members;
        let senders: BTreeSet<String> = newest
            .iter()
            .filter_map(|e| e.pdu_value()["sender"].as_str().map(str::to_owned))
            .chain(std::iter::once(session.user_id.to_string()))
            .collect();
        let mut state = Vec::new();
        for (key, id) in &at_start {
            // Lazy-loading clients get exactly the members they will display.
            let include = if lazy && key.0 == "m.room.member" {
                senders.contains(&key.1)
            } else {
                wanted(key)
            };
            if !include {
                continue;
            }
            if let Some(ev) = self.rooms.event(id.as_str())? {
                let ce = client_event(&ev, device, self.rooms.prev_content(&ev), now);
                if filter.room.state.allows_event(&ce) {
                    state.push(ce);
                }
            }
        }

        let prev_batch = format!("t{}", start_pos.saturating_sub(1));
        let account_data: Vec<Value> = room_data
            .map(|d| {
                d.iter()
                    .map(|(k, c)| json!({"type": k, "content": c}))
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({
            "timeline": {"events": timeline, "limited": limited, "prev_batch": prev_batch},
            "state": {"events": state},
            "account_data": {"events": account_data},
            "ephemeral": {"events": []},
            "summary": self.summary(room_id, &session.user_id)?,
        }))
    }

    /// Typing and receipts for a joined room.
    #[allow(clippy::too_many_arguments)]
    fn add_ephemeral(
        &self,
        entry: &mut Value,
        session: &Session,
        room_id: &RoomId,
        since: Option<u64>,
        upto: u64,
        filter: &Filter,
        ignored: &BTreeSet<String>,
    ) -> Result<()> {
        let mut events = Vec::new();
        if let Some(users) = self.typing.changed(room_id, since, upto) {
            let users: Vec<String> = users
                .into_iter()
                .map(|u| u.to_string())
                .filter(|u| !ignored.contains(u))
                .collect();
            events.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
        }
        let is_ignored = |u: &UserId| ignored.contains(u.as_str());
        if let Some(r) =
            self.receipts
                .sync_event(room_id, &session.user_id, since, upto, &is_ignored)?
        {
            events.push(r);
        }
        events.retain(|e| {
            filter.room.ephemeral.allows(
                e["type"].as_str().unwrap_or_default(),
                "",
                Some(room_id.as_str()),
            )
        });
        entry["ephemeral"] = json!({"events": events});
        Ok(())
    }

    /// `unread_notifications` (and per-thread counts when the filter asks).
    fn add_unread_counts(
        &self,
        entry: &mut Value,
        user: &UserId,
        room_id: &RoomId,
        filter: &Filter,
    ) -> Result<()> {
        let by_thread = filter.room.timeline.unread_thread_notifications;
        let (main, threads) = notifications::counts(&self.store, user, room_id, by_thread)?;
        entry["unread_notifications"] = main.to_json();
        if by_thread {
            let per: Map<String, Value> =
                threads.into_iter().map(|(t, c)| (t, c.to_json())).collect();
            entry["unread_thread_notifications"] = Value::Object(per);
        }
        Ok(())
    }

    /// Heroes and member counts, which clients use to name unnamed rooms.
    fn summary(&self, room_id: &RoomId, user: &UserId) -> Result<Value> {
        let joined = self.rooms.members_with(room_id, &["join"])?;
        let invited = self.rooms.members_with(room_id, &["invite"])?;
        let heroes: Vec<String> = joined
            .iter()
            .chain(invited.iter())
            .filter(|u| u.as_str() != user.as_str())
            .take(5)
            .map(|u| u.to_string())
            .collect();
        Ok(json!({
            "m.heroes": heroes,
            "m.joined_member_count": joined.len(),
            "m.invited_member_count": invited.len(),
        }))
    }

    fn invite_entry(&self, user: &UserId, room_id: &RoomId, ur: &UserRoom) -> Result<Value> {
        let mut events: BTreeMap<(String, String), Value> = BTreeMap::new();
        if let Some(stripped) = self.rooms.invite_state(user, room_id)? {
            for (i, ev) in stripped.into_iter().enumerate() {
                let kind = ev["type"].as_str().unwrap_or_default().to_owned();
                events.insert((kind, format!("~{i}")), ev);
            }
        }
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ] {
            if let Some(ev) = self.rooms.state_event(room_id, kind, "")? {
                events.insert((kind.into(), String::new()), stripped_state(&ev));
            }
        }
        let inviter = ur.sender.to_string();
        if let Some(ev) = self.rooms.state_event(room_id, "m.room.member", &inviter)? {
            events.insert(("m.room.member".into(), inviter), stripped_state(&ev));
        }
        if let Some(ev) = self.rooms.event(ur.event_id.as_str())? {
            events.insert(("m.room.member".into(), "self".into()), stripped_state(&ev));
        }
        Ok(json!({"invite_state": {"events": events.into_values().collect::<Vec<_>>()}}))
    }
}
