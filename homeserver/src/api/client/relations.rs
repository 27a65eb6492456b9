//! Handlers for /relations and /threads (Client-Server v1 paths).

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    accounts::now_ms,
    api::{
        AppState,
        extract::{Auth, P, Q, room_id},
    },
    error::{Error, Result},
};

#[derive(Deserialize)]
pub struct RelationsQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    dir: Option<String>,
}

fn token(t: Option<&str>) -> Result<Option<u64>> {
    t.map(|t| {
        t.strip_prefix('r')
            .unwrap_or(t)
            .parse::<u64>()
            .map_err(|_| Error::invalid_param("invalid pagination token"))
    })
    .transpose()
}

async fn relations_inner(
    s: AppState,
    session: crate::accounts::Session,
    room: String,
    event_id: String,
    rel_type: Option<String>,
    event_type: Option<String>,
    q: RelationsQuery,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let visible = s
        .rooms
        .visible_until(&session.user_id, &room)?
        .min(s.rooms.stream.current());
    s.rooms
        .event(&event_id)?
        .filter(|e| e.room_id == room && e.pos <= visible)
        .ok_or_else(|| Error::not_found("event not found"))?;
    let forwards = match q.dir.as_deref() {
        None | Some("b") => false,
        Some("f") => true,
        Some(_) => return Err(Error::invalid_param("dir must be b or f")),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (events, next) = s.rooms.relations_page(
        &room,
        &event_id,
        rel_type.as_deref(),
        event_type.as_deref(),
        token(q.from.as_deref())?,
        token(q.to.as_deref())?,
        forwards,
        limit,
        visible,
    )?;
    let ignored = s.account_data.ignored_users(&session.user_id)?;
    let now = now_ms();
    let device = Some(session.device_id.as_str());
    let chunk: Vec<Value> = events
        .iter()
        .map(|e| {
            s.rooms
                .client_event_for(e, &session.user_id, device, visible, now)
        })
        .filter(|e| !ignored.contains(e["sender"].as_str().unwrap_or_default()))
        .collect();
    let mut body = json!({"chunk": chunk});
    if let Some(n) = next {
        body["next_batch"] = Value::from(format!("r{n}"));
    }
    if let Some(f) = q.from {
        body["prev_batch"] = Value::from(f);
    }
    Ok(Json(body))
}

pub async fn relations(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id)): P<(String, String)>,
    Q(q): Q<RelationsQuery>,
) -> Result<Json<Value>> {
    relations_inner(s, session, room, event_id, None, None, q).await
}

pub async fn relations_by_type(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id, rel_type)): P<(String, String, String)>,
    Q(q): Q<RelationsQuery>,
) -> Result<Json<Value>> {
    relations_inner(s, session, room, event_id, Some(rel_type), None, q).await
}

pub async fn relations_by_type_and_event_type(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id, rel_type, event_type)): P<(String, String, String, String)>,
    Q(q): Q<RelationsQuery>,
) -> Result<Json<Value>> {
    relations_inner(
        s,
        session,
        room,
        event_id,
        Some(rel_type),
        Some(event_type),
        q,
    )
    .await
}

#[derive(Deserialize)]
pub struct ThreadsQuery {
    from: Option<String>,
    limit: Option<usize>,
    include: Option<String>,
}

pub async fn threads(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Q(q): Q<ThreadsQuery>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let visible = s
        .rooms
        .visible_until(&session.user_id, &room)?
        .min(s.rooms.stream.current());
    let participated = match q.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(_) => return Err(Error::invalid_param("include must be all or participated")),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let (roots, next) = s.rooms.threads_page(
        &room,
        &session.user_id,
        participated,
        token(q.from.as_deref())?,
        limit,
        visible,
    )?;
    let now = now_ms();
    let device = Some(session.device_id.as_str());
    let chunk: Vec<Value> = roots
        .iter()
        .map(|e| {
            s.rooms
                .client_event_for(e, &session.user_id, device, visible, now)
        })
        .collect();
    let mut body = json!({"chunk": chunk});
    if let Some(n) = next {
        body["next_batch"] = Value::from(format!("r{n}"));
    }
    Ok(Json(body))
}
