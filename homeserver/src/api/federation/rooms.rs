//! Room traffic between servers: transactions, membership handshakes, and event, state and history lookups.

use std::collections::{BTreeSet, VecDeque};

use axum::{
    Json,
    extract::{RawQuery, State},
};
use ruma::{OwnedEventId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Fed;
use crate::{
    accounts::now_ms,
    api::{
        AppState,
        extract::{P, Q, room_id, user_id},
    },
    error::{Error, Result},
};

pub async fn send_transaction(
    State(s): State<AppState>,
    P(txn_id): P<String>,
    fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(
        s.federation
            .receive_transaction(&fed.origin, &txn_id, fed.body)
            .await?,
    ))
}

pub async fn make_join(
    State(s): State<AppState>,
    P((room, user)): P<(String, String)>,
    RawQuery(q): RawQuery,
    fed: Fed,
) -> Result<Json<Value>> {
    let versions: Vec<String> =
        serde_urlencoded::from_str::<Vec<(String, String)>>(q.as_deref().unwrap_or(""))
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k == "ver")
            .map(|(_, v)| v)
            .collect();
    // No `ver` at all means the sender only knows room version 1.
    let versions = if versions.is_empty() {
        vec!["1".to_owned()]
    } else {
        versions
    };
    Ok(Json(s.federation.make_join(
        &fed.origin,
        &room_id(&room)?,
        &user_id(&user)?,
        &versions,
    )?))
}

pub async fn send_join(
    State(s): State<AppState>,
    P((room, event)): P<(String, String)>,
    fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(
        s.federation
            .send_join(&fed.origin, &room_id(&room)?, &event, fed.body)
            .await?,
    ))
}

pub async fn make_leave(
    State(s): State<AppState>,
    P((room, user)): P<(String, String)>,
    fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(s.federation.make_leave(
        &fed.origin,
        &room_id(&room)?,
        &user_id(&user)?,
    )?))
}

pub async fn send_leave(
    State(s): State<AppState>,
    P((room, event)): P<(String, String)>,
    fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(
        s.federation
            .send_leave(&fed.origin, &room_id(&room)?, &event, fed.body)
            .await?,
    ))
}

pub async fn invite(
    State(s): State<AppState>,
    P((room, event)): P<(String, String)>,
    fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(
        s.federation
            .receive_invite(&fed.origin, &room_id(&room)?, &event, fed.body)
            .await?,
    ))
}

/// Another server may read a room's events only while one of its users is
/// in the room (or invited to it).
fn check_origin_in_room(s: &AppState, origin: &str, room: &RoomId) -> Result<()> {
    if !s.rooms.server_allowed(room, origin)? {
        return Err(Error::forbidden("the room's server ACL denies your server"));
    }
    let members = s.rooms.members_with(room, &["join", "invite"])?;
    if members.iter().any(|u| u.server_name().as_str() == origin) {
        Ok(())
    } else {
        Err(Error::forbidden("your server is not in this room"))
    }
}

pub async fn event(
    State(s): State<AppState>,
    P(event): P<String>,
    fed: Fed,
) -> Result<Json<Value>> {
    let ev = s
        .rooms
        .event(&event)?
        .ok_or_else(|| Error::not_found("unknown event"))?;
    check_origin_in_room(&s, &fed.origin, &ev.room_id)?;
    let pdu = s.rooms.event_for_server(&fed.origin, &ev)?;
    Ok(Json(
        json!({"origin": s.config.server_name, "origin_server_ts": now_ms(), "pdus": [pdu]}),
    ))
}

#[derive(Deserialize)]
pub struct AtEvent {
    event_id: String,
}

/// The room state before `event_id`, as recorded for it.
fn state_at(s: &AppState, room: &RoomId, event_id: &str) -> Result<Vec<OwnedEventId>> {
    let ev = s
        .rooms
        .event(event_id)?
        .filter(|e| e.room_id == room)
        .ok_or_else(|| Error::not_found("unknown event"))?;
    Ok(s.rooms.state_before_stored(&ev)?.into_values().collect())
}

pub async fn state_ids(
    State(s): State<AppState>,
    P(room): P<String>,
    Q(q): Q<AtEvent>,
    fed: Fed,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    check_origin_in_room(&s, &fed.origin, &room)?;
    let ids = state_at(&s, &room, &q.event_id)?;
    let chain: Vec<String> = s
        .rooms
        .auth_chain(&ids)?
        .into_iter()
        .map(|e| e.event_id.to_string())
        .collect();
    Ok(Json(json!({"pdu_ids": ids, "auth_chain_ids": chain})))
}

pub async fn state(
    State(s): State<AppState>,
    P(room): P<String>,
    Q(q): Q<AtEvent>,
    fed: Fed,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    check_origin_in_room(&s, &fed.origin, &room)?;
    let ids = state_at(&s, &room, &q.event_id)?;
    let mut pdus = Vec::new();
    for id in &ids {
        if let Some(e) = s.rooms.event(id.as_str())? {
            pdus.push(s.rooms.federation_pdu(&e)?);
        }
    }
    let chain = s
        .rooms
        .auth_chain(&ids)?
        .iter()
        .map(|e| s.rooms.federation_pdu(e))
        .collect::<Result<Vec<Value>>>()?;
    Ok(Json(json!({"pdus": pdus, "auth_chain": chain})))
}

pub async fn event_auth(
    State(s): State<AppState>,
    P((room, event)): P<(String, String)>,
    fed: Fed,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    check_origin_in_room(&s, &fed.origin, &room)?;
    let ev = s
        .rooms
        .event(&event)?
        .filter(|e| e.room_id == room)
        .ok_or_else(|| Error::not_found("unknown event"))?;
    let auth: Vec<OwnedEventId> = ev.parse().map(|p| p.auth_events).unwrap_or_default();
    let mut chain = s.rooms.auth_chain(&auth)?;
    for id in &auth {
        if !chain.iter().any(|e| &e.event_id == id)
            && let Some(e) = s.rooms.event(id.as_str())?
        {
            chain.push(e);
        }
    }
    let chain = chain
        .iter()
        .map(|e| s.rooms.federation_pdu(e))
        .collect::<Result<Vec<Value>>>()?;
    Ok(Json(json!({"auth_chain": chain})))
}

/// Walks prev_events back from `latest_events` until `earliest_events`.
pub async fn get_missing_events(
    State(s): State<AppState>,
    P(room): P<String>,
    fed: Fed,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    check_origin_in_room(&s, &fed.origin, &room)?;
    let list = |k: &str| -> BTreeSet<String> {
        fed.body[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let earliest = list("earliest_events");
    let latest = list("latest_events");
    let limit = fed.body["limit"].as_u64().unwrap_or(10).min(100) as usize;
    let mut seen: BTreeSet<String> = latest.clone();
    let mut queue: VecDeque<String> = VecDeque::new();
    for id in &latest {
        if let Some(e) = s.rooms.event(id)?.filter(|e| e.room_id == room)
            && let Ok(p) = e.parse()
        {
            queue.extend(p.prev_events.iter().map(|p| p.to_string()));
        }
    }
    let mut out = Vec::new();
    while let Some(id) = queue.pop_front() {
        if out.len() >= limit {
            break;
        }
        if earliest.contains(&id) || !seen.insert(id.clone()) {
            continue;
        }
        let Some(e) = s
            .rooms
            .event(&id)?
            .filter(|e| e.room_id == room && e.pos != 0)
        else {
            continue;
        };
        if let Ok(p) = e.parse() {
            queue.extend(p.prev_events.iter().map(|p| p.to_string()));
        }
        out.push(e);
    }
    out.sort_by_key(|e| e.pos);
    let events = out
        .iter()
        .map(|e| s.rooms.event_for_server(&fed.origin, e))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(json!({"events": events})))
}

#[derive(Deserialize)]
pub struct BackfillQuery {
    v: String,
    limit: Option<usize>,
}

pub async fn backfill(
    State(s): State<AppState>,
    P(room): P<String>,
    Q(q): Q<BackfillQuery>,
    fed: Fed,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    check_origin_in_room(&s, &fed.origin, &room)?;
    let from = s
        .rooms
        .event(&q.v)?
        .filter(|e| e.room_id == room)
        .ok_or_else(|| Error::not_found("unknown event"))?;
    let limit = q.limit.unwrap_or(10).clamp(1, 100);
    let mut events = vec![from.clone()];
    if from.pos != 0 {
        events.extend(
            s.rooms
                .timeline_range(&room, 0, from.pos, true, limit.saturating_sub(1))?,
        );
    }
    let pdus = events
        .iter()
        .map(|e| s.rooms.event_for_server(&fed.origin, e))
        .collect::<Result<Vec<_>>>()?;
    Ok(Json(
        json!({"origin": s.config.server_name, "origin_server_ts": now_ms(), "pdus": pdus}),
    ))
}
