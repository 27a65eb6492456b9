//! Handlers for sending events, reading and writing state, single events, members, /messages and /context.

use std::collections::BTreeSet;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    accounts::{Session, now_ms},
    api::{
        AppState,
        extract::{Auth, Body, P, Q, room_id},
    },
    error::{Error, Result},
    ratelimit::Action,
    rooms::{
        DeviceTxn, NewEvent,
        pdu::{StoredEvent, client_event, parse_event_id},
    },
    sync::parse_token,
};

pub async fn send(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, kind, txn_id)): P<(String, String, String)>,
    Body(content): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if kind.is_empty() || kind.len() > 255 {
        return Err(Error::invalid_param("event type must be 1-255 bytes"));
    }
    s.rate_limiter
        .check(Action::Message, session.user_id.as_str())?;
    let txn = DeviceTxn {
        device_id: session.device_id.as_str(),
        txn_id: &txn_id,
    };
    let id = s
        .rooms
        .send(
            &session.user_id,
            &room,
            NewEvent::message(&kind, Value::Object(content)),
            Some(txn),
        )
        .await?;
    Ok(Json(json!({"event_id": id})))
}

pub async fn put_state(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, kind, state_key)): P<(String, String, String)>,
    Body(content): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    put_state_inner(s, session, room, kind, state_key, content).await
}

pub async fn put_state_empty_key(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, kind)): P<(String, String)>,
    Body(content): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    put_state_inner(s, session, room, kind, String::new(), content).await
}

async fn put_state_inner(
    s: AppState,
    session: Session,
    room: String,
    kind: String,
    key: String,
    content: Map<String, Value>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if kind == "m.room.create" {
        return Err(Error::forbidden("the create event cannot be replaced"));
    }
    s.rate_limiter
        .check(Action::Message, session.user_id.as_str())?;
    let id = s
        .rooms
        .send(
            &session.user_id,
            &room,
            NewEvent::state(&kind, &key, Value::Object(content)),
            None,
        )
        .await?;
    Ok(Json(json!({"event_id": id})))
}

/// Current state for joined users; the state when they left otherwise.
fn state_for(s: &AppState, session: &Session, room: &ruma::RoomId) -> Result<Vec<StoredEvent>> {
    let until = s.rooms.visible_until(&session.user_id, room)?;
    if until == u64::MAX {
        return s.rooms.current_state(room);
    }
    let ids = s.rooms.state_at_pos(room, until)?;
    let mut out = Vec::new();
    for id in ids.values() {
        if let Some(e) = s.rooms.event(id.as_str())? {
            out.push(e);
        }
    }
    Ok(out)
}

pub async fn get_state(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let now = now_ms();
    let events: Vec<Value> = state_for(&s, &session, &room)?
        .iter()
        .map(|e| {
            client_event(
                e,
                Some(session.device_id.as_str()),
                s.rooms.prev_content(e),
                now,
            )
        })
        .collect();
    Ok(Json(Value::Array(events)))
}

pub async fn get_state_event(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, kind, key)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    get_state_event_inner(s, session, room, kind, key)
}

pub async fn get_state_event_empty_key(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, kind)): P<(String, String)>,
) -> Result<Json<Value>> {
    get_state_event_inner(s, session, room, kind, String::new())
}

fn get_state_event_inner(
    s: AppState,
    session: Session,
    room: String,
    kind: String,
    key: String,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let found = state_for(&s, &session, &room)?.into_iter().find(|e| {
        let v = e.pdu_value();
        v["type"].as_str() == Some(kind.as_str()) && v["state_key"].as_str() == Some(key.as_str())
    });
    let ev = found.ok_or_else(|| Error::not_found("no such state event"))?;
    Ok(Json(ev.pdu_value()["content"].clone()))
}

pub async fn get_event(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id)): P<(String, String)>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let until = s.rooms.visible_until(&session.user_id, &room)?;
    let from = s.rooms.visible_from(&session.user_id, &room)?;
    let ev = s
        .rooms
        .event(&event_id)?
        .filter(|e| e.room_id == room && e.pos <= until && e.pos >= from)
        .ok_or_else(|| Error::not_found("event not found"))?;
    Ok(Json(s.rooms.client_event_for(
        &ev,
        &session.user_id,
        Some(session.device_id.as_str()),
        until,
        now_ms(),
    )))
}

#[derive(Deserialize)]
pub struct RedactBody {
    reason: Option<String>,
}

pub async fn redact(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id, txn_id)): P<(String, String, String)>,
    Body(body): Body<RedactBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let target =
        parse_event_id(&event_id).ok_or_else(|| Error::invalid_param("invalid event ID"))?;
    s.rate_limiter
        .check(Action::Message, session.user_id.as_str())?;
    let mut content = json!({});
    if let Some(r) = body.reason {
        content["reason"] = Value::from(r);
    }
    let event = NewEvent {
        kind: "m.room.redaction".into(),
        content,
        state_key: None,
        redacts: Some(target),
    };
    let txn = DeviceTxn {
        device_id: session.device_id.as_str(),
        txn_id: &txn_id,
    };
    let id = s
        .rooms
        .send(&session.user_id, &room, event, Some(txn))
        .await?;
    Ok(Json(json!({"event_id": id})))
}

#[derive(Deserialize)]
pub struct MembersQuery {
    membership: Option<String>,
    not_membership: Option<String>,
}

pub async fn members(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Q(q): Q<MembersQuery>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let now = now_ms();
    let chunk: Vec<Value> = state_for(&s, &session, &room)?
        .iter()
        .filter(|e| e.pdu_value()["type"] == "m.room.member")
        .filter(|e| {
            let m = e.pdu_value()["content"]["membership"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            q.membership.as_deref().is_none_or(|w| w == m)
                && q.not_membership.as_deref() != Some(m.as_str())
        })
        .map(|e| client_event(e, None, s.rooms.prev_content(e), now))
        .collect();
    Ok(Json(json!({"chunk": chunk})))
}

pub async fn joined_members(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if s.rooms.membership_of(&room, &session.user_id)?.as_deref() != Some("join") {
        return Err(Error::forbidden("you are not in this room"));
    }
    let mut joined = Map::new();
    for user in s.rooms.members_with(&room, &["join"])? {
        let content = s
            .rooms
            .state_content(&room, "m.room.member", user.as_str())?
            .unwrap_or_default();
        joined.insert(
            user.to_string(),
            json!({"display_name": content.get("displayname"), "avatar_url": content.get("avatar_url")}),
        );
    }
    Ok(Json(json!({"joined": joined})))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: String,
    limit: Option<usize>,
    filter: Option<String>,
}

pub async fn messages(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Q(q): Q<MessagesQuery>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let visible = s
        .rooms
        .visible_until(&session.user_id, &room)?
        .min(s.rooms.stream.current());
    let filter = s
        .filters
        .resolve(&session.user_id, q.filter.as_deref())?
        .room
        .timeline;
    let limit = q
        .limit
        .or(filter.limit.map(|l| l as usize))
        .unwrap_or(10)
        .clamp(1, 1000);
    let from = q.from.as_deref().map(parse_token).transpose()?;
    let to = q.to.as_deref().map(parse_token).transpose()?;
    // History visibility: nothing before this position (timeline ranges
    // are exclusive below).
    let earliest = s
        .rooms
        .visible_from(&session.user_id, &room)?
        .saturating_sub(1);
    let (events, start, end) = match q.dir.as_str() {
        "b" => {
            let hi = from.unwrap_or(visible).min(visible);
            let lo = to.unwrap_or(0).max(earliest);
            let mut evs = s.rooms.timeline_range(&room, lo, hi, true, limit)?;
            // Past the start of what this server has: ask the room's other
            // servers for the history before it.
            if evs.len() < limit
                && earliest == 0
                && s.federation
                    .backfill(&room, limit - evs.len())
                    .await
                    .unwrap_or(0)
                    > 0
            {
                evs = s.rooms.timeline_range(&room, lo, hi, true, limit)?;
            }
            let end = (evs.len() == limit)
                .then(|| evs.last().map(|e| format!("t{}", e.pos.saturating_sub(1))))
                .flatten();
            (evs, format!("t{hi}"), end)
        }
        "f" => {
            let lo = from.unwrap_or(0).max(earliest);
            let hi = to.unwrap_or(u64::MAX).min(visible);
            let evs = s.rooms.timeline_range(&room, lo, hi, false, limit)?;
            let end = (evs.len() == limit)
                .then(|| evs.last().map(|e| format!("t{}", e.pos)))
                .flatten();
            (evs, format!("t{lo}"), end)
        }
        _ => return Err(Error::invalid_param("dir must be b or f")),
    };
    let now = now_ms();
    let device = Some(session.device_id.as_str());
    let ignored = s.account_data.ignored_users(&session.user_id)?;
    let chunk: Vec<Value> = events
        .iter()
        .map(|e| {
            s.rooms
                .client_event_for(e, &session.user_id, device, visible, now)
        })
        .filter(|e| filter.allows_event(e))
        .filter(|e| {
            e.get("state_key").is_some()
                || !ignored.contains(e["sender"].as_str().unwrap_or_default())
        })
        .collect();
    let mut body = json!({"chunk": chunk, "start": start});
    if let Some(e) = end {
        body["end"] = Value::from(e);
    }
    if filter.lazy_load_members {
        body["state"] = Value::Array(member_events_for(&s, &room, &chunk, now)?);
    }
    Ok(Json(body))
}

/// Member events of the senders in `chunk`, for lazy-loading clients.
fn member_events_for(
    s: &AppState,
    room: &ruma::RoomId,
    chunk: &[Value],
    now: u64,
) -> Result<Vec<Value>> {
    let senders: BTreeSet<&str> = chunk.iter().filter_map(|e| e["sender"].as_str()).collect();
    let mut out = Vec::new();
    for sender in senders {
        if let Some(ev) = s.rooms.state_event(room, "m.room.member", sender)? {
            out.push(client_event(&ev, None, None, now));
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
pub struct ContextQuery {
    limit: Option<usize>,
    filter: Option<String>,
}

pub async fn context(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id)): P<(String, String)>,
    Q(q): Q<ContextQuery>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let visible = s
        .rooms
        .visible_until(&session.user_id, &room)?
        .min(s.rooms.stream.current());
    let earliest = s.rooms.visible_from(&session.user_id, &room)?;
    let ev = s
        .rooms
        .event(&event_id)?
        // Outliers (position 0: auth chain and state fetched with a remote
        // join) are not part of the timeline a member reads.
        .filter(|e| e.room_id == room && e.pos != 0 && e.pos <= visible && e.pos >= earliest)
        .ok_or_else(|| Error::not_found("event not found"))?;
    let filter = s
        .filters
        .resolve(&session.user_id, q.filter.as_deref())?
        .room
        .timeline;
    let limit = q.limit.unwrap_or(10).min(100);
    let before = s.rooms.timeline_range(
        &room,
        earliest.saturating_sub(1),
        ev.pos.saturating_sub(1),
        true,
        limit / 2,
    )?;
    let after = s
        .rooms
        .timeline_range(&room, ev.pos, visible, false, limit - limit / 2)?;
    let now = now_ms();
    let device = Some(session.device_id.as_str());
    let ignored = s.account_data.ignored_users(&session.user_id)?;
    let fmt = |list: &[StoredEvent]| -> Vec<Value> {
        list.iter()
            .map(|e| {
                s.rooms
                    .client_event_for(e, &session.user_id, device, visible, now)
            })
            .filter(|e| filter.allows_event(e))
            .filter(|e| {
                e.get("state_key").is_some()
                    || !ignored.contains(e["sender"].as_str().unwrap_or_default())
            })
            .collect()
    };
    let start = before
        .last()
        .map(|e| e.pos)
        .unwrap_or(ev.pos)
        .saturating_sub(1);
    let end = after.last().map(|e| e.pos).unwrap_or(ev.pos);
    let mut state = Vec::new();
    // The state at the last event returned.
    for id in s.rooms.state_at_pos(&room, end)?.values() {
        if let Some(e) = s.rooms.event(id.as_str())? {
            state.push(client_event(&e, device, None, now));
        }
    }
    if filter.lazy_load_members {
        let mut all = fmt(&before);
        all.extend(fmt(&after));
        all.push(client_event(&ev, device, None, now));
        let senders: BTreeSet<String> = all
            .iter()
            .filter_map(|e| e["sender"].as_str().map(str::to_owned))
            .collect();
        state.retain(|e| {
            e["type"] != "m.room.member"
                || e["state_key"].as_str().is_some_and(|k| senders.contains(k))
        });
    }
    Ok(Json(json!({
        "event": s.rooms.client_event_for(&ev, &session.user_id, device, visible, now),
        "events_before": fmt(&before),
        "events_after": fmt(&after),
        "start": format!("t{start}"),
        "end": format!("t{end}"),
        "state": state,
    })))
}
