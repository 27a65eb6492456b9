//! Handlers for /profile: the whole profile, and one field at a time.

use axum::{Json, extract::State};
use serde_json::{Map, Value, json};

use crate::{
    api::{
        AppState,
        extract::{Auth, Body, P, user_id},
    },
    error::{Error, Result},
};

pub async fn get_profile(State(s): State<AppState>, P(user): P<String>) -> Result<Json<Value>> {
    let user = user_id(&user)?;
    if user.server_name() != s.config.server_name {
        return Ok(Json(s.federation.remote_profile(&user, None).await?));
    }
    let profile = s
        .profiles
        .get(&user)?
        .ok_or_else(|| Error::not_found("no such user"))?;
    Ok(Json(Value::Object(profile)))
}

pub async fn get_field(
    State(s): State<AppState>,
    P((user, key)): P<(String, String)>,
) -> Result<Json<Value>> {
    let user = user_id(&user)?;
    if user.server_name() != s.config.server_name {
        return Ok(Json(s.federation.remote_profile(&user, Some(&key)).await?));
    }
    let profile = s
        .profiles
        .get(&user)?
        .ok_or_else(|| Error::not_found("no such user"))?;
    let value = profile
        .get(&key)
        .ok_or_else(|| Error::not_found("the user has no such profile field"))?;
    Ok(Json(json!({ key: value })))
}

pub async fn put_field(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, key)): P<(String, String)>,
    Body(body): Body<Map<String, Value>>,
) -> Result<Json<Value>> {
    if user_id(&user)? != session.user_id {
        return Err(Error::forbidden("you can only change your own profile"));
    }
    // The body holds exactly the field being set, under its own name.
    let value = body
        .get(&key)
        .cloned()
        .ok_or_else(|| Error::bad_json(format!("body must contain {key}")))?;
    if body.len() != 1 {
        return Err(Error::bad_json(
            "body must contain only the field being set",
        ));
    }
    s.profiles.set(&session.user_id, &key, Some(value)).await?;
    Ok(Json(json!({})))
}

pub async fn delete_field(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((user, key)): P<(String, String)>,
) -> Result<Json<Value>> {
    if user_id(&user)? != session.user_id {
        return Err(Error::forbidden("you can only change your own profile"));
    }
    s.profiles.set(&session.user_id, &key, None).await?;
    Ok(Json(json!({})))
}
