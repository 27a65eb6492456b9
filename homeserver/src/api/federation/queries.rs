//! Server-server queries: version, profiles, aliases, the public room list, E2EE keys and devices, and media downloads.

use axum::{
    Json,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Fed;
use crate::{
    api::{
        AppState,
        extract::{P, Q, user_id},
    },
    directory::public_rooms::Query as PublicQuery,
    error::{Error, Result},
    federation::media::{BOUNDARY, multipart_body},
};

/// The delegation other servers look for when the server name has no port.
pub async fn well_known_server(State(s): State<AppState>) -> Result<Json<Value>> {
    match s
        .config
        .federation
        .as_ref()
        .and_then(|f| f.well_known_server.as_ref())
    {
        Some(target) => Ok(Json(json!({"m.server": target}))),
        None => Err(Error::not_found("this server does not delegate federation")),
    }
}

pub async fn version() -> Json<Value> {
    Json(json!({"server": {"name": "Bellwire", "version": env!("CARGO_PKG_VERSION")}}))
}

#[derive(Deserialize)]
pub struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

pub async fn profile(
    State(s): State<AppState>,
    Q(q): Q<ProfileQuery>,
    _fed: Fed,
) -> Result<Json<Value>> {
    let user = user_id(&q.user_id)?;
    if user.server_name() != s.config.server_name {
        return Err(Error::not_found("not a user of this server"));
    }
    let profile = s
        .profiles
        .get(&user)?
        .ok_or_else(|| Error::not_found("no such user"))?;
    Ok(Json(match q.field {
        Some(f) => match profile.get(&f) {
            Some(v) => json!({ f: v }),
            None => return Err(Error::not_found("no such profile field")),
        },
        None => Value::Object(profile),
    }))
}

#[derive(Deserialize)]
pub struct DirectoryQuery {
    room_alias: String,
}

pub async fn directory(
    State(s): State<AppState>,
    Q(q): Q<DirectoryQuery>,
    _fed: Fed,
) -> Result<Json<Value>> {
    let alias = <&ruma::RoomAliasId>::try_from(q.room_alias.as_str())
        .map_err(|e| Error::invalid_param(format!("invalid alias: {e}")))?;
    let room = s
        .rooms
        .resolve_alias(alias)?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    let mut servers = vec![s.config.server_name.to_string()];
    servers.extend(s.rooms.remote_servers(&room)?);
    Ok(Json(json!({"room_id": room, "servers": servers})))
}

pub async fn keys_query(State(s): State<AppState>, fed: Fed) -> Result<Json<Value>> {
    Ok(Json(s.federation.answer_key_query(&fed.origin, &fed.body)?))
}

pub async fn keys_claim(State(s): State<AppState>, fed: Fed) -> Result<Json<Value>> {
    Ok(Json(s.federation.answer_key_claim(&fed.body).await?))
}

pub async fn user_devices(
    State(s): State<AppState>,
    P(user): P<String>,
    _fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(s.federation.answer_user_devices(&user_id(&user)?)?))
}

#[derive(Deserialize)]
pub struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
}

pub async fn public_rooms(
    State(s): State<AppState>,
    Q(q): Q<PublicRoomsQuery>,
    _fed: Fed,
) -> Result<Json<Value>> {
    Ok(Json(s.public_rooms.search(&PublicQuery {
        limit: q.limit,
        since: q.since,
        search: None,
        room_types: None,
    })?))
}

pub async fn public_rooms_post(State(s): State<AppState>, fed: Fed) -> Result<Json<Value>> {
    let b = &fed.body;
    let q = PublicQuery {
        limit: b["limit"].as_u64().map(|n| n as usize),
        since: b["since"].as_str().map(str::to_owned),
        search: b["filter"]["generic_search_term"]
            .as_str()
            .map(str::to_owned),
        room_types: None,
    };
    Ok(Json(s.public_rooms.search(&q)?))
}

async fn serve_media(s: &AppState, id: &str) -> Result<Response> {
    let server = s.config.server_name.as_str();
    let rec = s
        .media
        .record(server, id)?
        .filter(|r| !r.pending)
        .ok_or_else(|| Error::not_found("no such media"))?;
    let bytes = tokio::fs::read(s.media.file_path(server, id))
        .await
        .map_err(|_| Error::not_found("no such media"))?;
    let ctype = rec
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let body = multipart_body(&ctype, &bytes);
    Ok((
        [(
            header::CONTENT_TYPE,
            format!("multipart/mixed; boundary={BOUNDARY}"),
        )],
        body,
    )
        .into_response())
}

pub async fn media_download(
    State(s): State<AppState>,
    P(id): P<String>,
    _fed: Fed,
) -> Result<Response> {
    serve_media(&s, &id).await
}

/// Thumbnails are made by the asking server from the original.
pub async fn media_thumbnail(
    State(s): State<AppState>,
    P(id): P<String>,
    _fed: Fed,
) -> Result<Response> {
    serve_media(&s, &id).await
}

#[derive(Deserialize)]
pub struct OpenIdQuery {
    access_token: String,
}

/// Not X-Matrix authenticated: the token itself is the credential.
pub async fn openid_userinfo(
    State(s): State<AppState>,
    Q(q): Q<OpenIdQuery>,
) -> Result<Json<Value>> {
    s.federation.require_enabled()?;
    let user = s.accounts.openid_user(&q.access_token)?;
    Ok(Json(json!({"sub": user})))
}
