//! Handlers for the public room directory, room summaries, user search and content reports.

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        extract::{Auth, Body, MaybeAuth, P, Q, room_id, user_id},
    },
    directory::public_rooms::Query,
    error::{Error, Result},
    reports::{self, Report},
};

#[derive(Deserialize)]
pub struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
    server: Option<String>,
}

/// The other server whose list is asked for, if any.
fn remote<'a>(s: &AppState, server: Option<&'a str>) -> Option<&'a str> {
    server.filter(|name| *name != s.config.server_name.as_str())
}

pub async fn public_rooms(
    State(s): State<AppState>,
    Q(q): Q<PublicRoomsQuery>,
) -> Result<Json<Value>> {
    if let Some(server) = remote(&s, q.server.as_deref()) {
        return Ok(Json(
            s.federation
                .remote_public_rooms(server, q.limit, q.since.as_deref(), None)
                .await?,
        ));
    }
    Ok(Json(s.public_rooms.search(&Query {
        limit: q.limit,
        since: q.since,
        search: None,
        room_types: None,
    })?))
}

#[derive(Deserialize, Default)]
pub struct PublicRoomsFilter {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

#[derive(Deserialize)]
pub struct PublicRoomsBody {
    limit: Option<usize>,
    since: Option<String>,
    #[serde(default)]
    filter: Option<PublicRoomsFilter>,
    #[allow(dead_code)]
    #[serde(default)]
    include_all_networks: bool,
    #[allow(dead_code)]
    third_party_instance_id: Option<String>,
}

pub async fn search_public_rooms(
    State(s): State<AppState>,
    Auth(_session): Auth,
    Q(q): Q<PublicRoomsQuery>,
    Body(body): Body<PublicRoomsBody>,
) -> Result<Json<Value>> {
    let filter = body.filter.unwrap_or_default();
    if let Some(server) = remote(&s, q.server.as_deref()) {
        let search = filter.generic_search_term.as_deref();
        return Ok(Json(
            s.federation
                .remote_public_rooms(server, body.limit, body.since.as_deref(), search)
                .await?,
        ));
    }
    Ok(Json(s.public_rooms.search(&Query {
        limit: body.limit,
        since: body.since,
        search: filter.generic_search_term,
        room_types: filter.room_types,
    })?))
}

pub async fn get_visibility(State(s): State<AppState>, P(room): P<String>) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if s.rooms.room(&room)?.is_none() {
        return Err(Error::not_found("unknown room"));
    }
    let v = if s.public_rooms.is_listed(&room)? {
        "public"
    } else {
        "private"
    };
    Ok(Json(json!({"visibility": v})))
}

#[derive(Deserialize)]
pub struct VisibilityBody {
    visibility: Option<String>,
}

pub async fn put_visibility(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<VisibilityBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let public = match body.visibility.as_deref() {
        Some("public") => true,
        Some("private") | None => false,
        Some(other) => return Err(Error::invalid_param(format!("unknown visibility {other}"))),
    };
    s.public_rooms
        .set_visibility(&session.user_id, &room, public)?;
    Ok(Json(json!({})))
}

pub async fn room_summary(
    State(s): State<AppState>,
    MaybeAuth(session): MaybeAuth,
    P(room): P<String>,
) -> Result<Json<Value>> {
    let room = if room.starts_with('#') {
        let alias = ruma::RoomAliasId::parse(&room)
            .map_err(|e| Error::invalid_param(format!("invalid room alias: {e}")))?;
        s.rooms
            .resolve_alias(&alias)?
            .ok_or_else(|| Error::not_found("unknown room alias"))?
    } else {
        room_id(&room)?
    };
    Ok(Json(s.rooms.room_summary(
        &room,
        session.as_ref().map(|s| s.user_id.as_ref()),
    )?))
}

#[derive(Deserialize)]
pub struct UserSearchBody {
    search_term: String,
    limit: Option<usize>,
}

pub async fn search_users(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<UserSearchBody>,
) -> Result<Json<Value>> {
    let limit = body.limit.unwrap_or(10).clamp(1, 100);
    Ok(Json(s.user_directory.search(
        &session.user_id,
        &body.search_term,
        limit,
    )?))
}

#[derive(Deserialize)]
pub struct ReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

pub async fn report_event(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((room, event_id)): P<(String, String)>,
    Body(body): Body<ReportBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    // Reporters must be able to see the event; anything else looks "not found",
    // so a report cannot probe for events.
    let visible = s
        .rooms
        .visible_until(&session.user_id, &room)
        .map_err(|_| Error::not_found("event not found"))?;
    s.rooms
        .event(&event_id)?
        .filter(|e| e.room_id == room && e.pos <= visible)
        .ok_or_else(|| Error::not_found("event not found"))?;
    if body.score.is_some_and(|v| !(-100..=0).contains(&v)) {
        return Err(Error::invalid_param("score must be between -100 and 0"));
    }
    file(
        &s,
        &session,
        Some(room.to_string()),
        Some(event_id),
        None,
        body,
    )
}

pub async fn report_room(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(room): P<String>,
    Body(body): Body<ReportBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    if s.rooms.room(&room)?.is_none() {
        return Err(Error::not_found("unknown room"));
    }
    file(&s, &session, Some(room.to_string()), None, None, body)
}

pub async fn report_user(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(user): P<String>,
    Body(body): Body<ReportBody>,
) -> Result<Json<Value>> {
    let user = user_id(&user)?;
    if s.profiles.get(&user)?.is_none() {
        return Err(Error::not_found("unknown user"));
    }
    file(&s, &session, None, None, Some(user.to_string()), body)
}

fn file(
    s: &AppState,
    session: &crate::accounts::Session,
    room_id: Option<String>,
    event_id: Option<String>,
    user_id: Option<String>,
    body: ReportBody,
) -> Result<Json<Value>> {
    if body.reason.as_ref().is_some_and(|r| r.len() > 4096) {
        return Err(Error::invalid_param("reason is limited to 4096 bytes"));
    }
    reports::file(
        &s.store,
        Report {
            reporter: session.user_id.to_string(),
            room_id,
            event_id,
            user_id,
            reason: body.reason,
            score: body.score,
            ts: 0,
        },
    )?;
    Ok(Json(json!({})))
}
