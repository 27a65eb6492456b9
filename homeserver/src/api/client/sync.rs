//! Handlers for /sync, stored filters and account data.

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    accounts::Session,
    api::{
        AppState,
        extract::{Auth, Body, P, Q, room_id, user_id},
    },
    error::{Error, Result},
    sync::{SyncRequest, filter::Filter},
};

#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    full_state: bool,
    filter: Option<String>,
    set_presence: Option<String>,
}

pub async fn sync(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<SyncQuery>,
) -> Result<Json<Value>> {
    let filter = s.filters.resolve(&session.user_id, q.filter.as_deref())?;
    let set_presence = q.set_presence.unwrap_or_else(|| "online".into());
    if !crate::ephemeral::presence::valid_state(&set_presence) {
        return Err(Error::invalid_param(
            "set_presence must be online, unavailable or offline",
        ));
    }
    let req = SyncRequest {
        since: q.since,
        timeout_ms: q.timeout.unwrap_or(0),
        full_state: q.full_state,
        filter,
        set_presence,
    };
    Ok(Json(s.sync.sync(&session, req).await?))
}

fn own(session: &Session, user: &str) -> Result<()> {
    let user = user_id(user)?;
    if user != session.user_id {
        return Err(Error::forbidden("you can only manage your own data"));
    }
    Ok(())
}

pub async fn create_filter(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(user): P<String>,
    Body(filter): Body<Filter>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    Ok(Json(
        json!({"filter_id": s.filters.create(&session.user_id, filter)?}),
    ))
}

pub async fn get_filter(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, id)): P<(String, String)>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    let f = s
        .filters
        .get(&session.user_id, &id)?
        .ok_or_else(|| Error::not_found("unknown filter"))?;
    Ok(Json(serde_json::to_value(f).map_err(Error::internal)?))
}

/// Types the server manages through dedicated endpoints.
fn check_type(kind: &str) -> Result<()> {
    if kind == "m.fully_read" || kind == "m.push_rules" {
        return Err(Error::bad_json(format!("{kind} is managed by the server")));
    }
    Ok(())
}

pub async fn put_account_data(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, kind)): P<(String, String)>,
    Body(content): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    check_type(&kind)?;
    s.account_data
        .set(&session.user_id, None, &kind, Value::Object(content))
        .await?;
    Ok(Json(json!({})))
}

pub async fn get_account_data(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, kind)): P<(String, String)>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    s.account_data
        .get(&session.user_id, None, &kind)?
        .map(Json)
        .ok_or_else(|| Error::not_found("no account data of that type"))
}

pub async fn put_room_account_data(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, room, kind)): P<(String, String, String)>,
    Body(content): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    check_type(&kind)?;
    let room = room_id(&room)?;
    s.account_data
        .set(&session.user_id, Some(&room), &kind, Value::Object(content))
        .await?;
    Ok(Json(json!({})))
}

pub async fn get_room_account_data(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, room, kind)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    let room = room_id(&room)?;
    s.account_data
        .get(&session.user_id, Some(&room), &kind)?
        .map(Json)
        .ok_or_else(|| Error::not_found("no account data of that type"))
}

/// Room tags live in the room's `m.tag` account data, as clients see them in /sync.
fn tags_of(s: &AppState, session: &Session, room: &ruma::RoomId) -> Result<Map<String, Value>> {
    Ok(s.account_data
        .get(&session.user_id, Some(room), "m.tag")?
        .and_then(|c| c.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default())
}

pub async fn get_tags(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, room)): P<(String, String)>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    let room = room_id(&room)?;
    Ok(Json(json!({"tags": tags_of(&s, &session, &room)?})))
}

#[derive(Deserialize)]
pub struct TagBody {
    order: Option<f64>,
}

pub async fn put_tag(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, room, tag)): P<(String, String, String)>,
    Body(body): Body<TagBody>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    let room = room_id(&room)?;
    if tag.is_empty() || tag.len() > 255 {
        return Err(Error::invalid_param("tag names are 1-255 bytes"));
    }
    if body.order.is_some_and(|o| !(0.0..=1.0).contains(&o)) {
        return Err(Error::invalid_param("order must be between 0 and 1"));
    }
    let mut tags = tags_of(&s, &session, &room)?;
    tags.insert(
        tag,
        body.order
            .map_or_else(|| json!({}), |o| json!({"order": o})),
    );
    s.account_data
        .set(
            &session.user_id,
            Some(&room),
            "m.tag",
            json!({"tags": tags}),
        )
        .await?;
    Ok(Json(json!({})))
}

pub async fn delete_tag(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, room, tag)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    own(&session, &user)?;
    let room = room_id(&room)?;
    let mut tags = tags_of(&s, &session, &room)?;
    if tags.remove(&tag).is_some() {
        s.account_data
            .set(
                &session.user_id,
                Some(&room),
                "m.tag",
                json!({"tags": tags}),
            )
            .await?;
    }
    Ok(Json(json!({})))
}
