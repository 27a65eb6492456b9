//! Handlers for registration, login/logout, whoami, password change and devices.

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    accounts::uia::AuthData,
    api::{
        AppState,
        extract::{Auth, Body, ClientAddr, P, Q},
    },
    config::RegistrationMode,
    error::{Error, Result},
    ratelimit::Action,
};

#[derive(Deserialize)]
pub struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    auth: Option<AuthData>,
}

#[derive(Deserialize)]
pub struct KindQuery {
    kind: Option<String>,
}

pub async fn register(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Q(q): Q<KindQuery>,
    Body(body): Body<RegisterBody>,
) -> Result<Json<Value>> {
    if q.kind.as_deref() == Some("guest") {
        return Err(Error::GuestAccessForbidden);
    }
    let stage = match s.config.registration_mode {
        RegistrationMode::Closed => {
            return Err(Error::forbidden("registration is disabled on this server"));
        }
        RegistrationMode::Open => "m.login.dummy",
        RegistrationMode::Token => "m.login.registration_token",
    };
    let user_id = match &body.username {
        Some(name) => s.accounts.user_id_for_localpart(name)?,
        None => s
            .accounts
            .user_id_for_localpart(&crate::accounts::random_string(12))?,
    };
    if s.accounts.exists(&user_id)? {
        return Err(Error::UserInUse);
    }
    let Some(auth) = &body.auth else {
        return Err(s.uia.challenge(stage, None));
    };
    // Only attempts that carry auth count: the first, empty request of the
    // flow just asks which stages exist.
    s.rate_limiter.check(Action::Registration, &addr)?;
    s.uia.check_session(auth.session.as_deref())?;
    let passed = match (auth.kind.as_deref(), stage) {
        (Some("m.login.dummy"), "m.login.dummy") => true,
        (Some("m.login.registration_token"), "m.login.registration_token") => {
            match (&auth.token, &s.registration_token) {
                (Some(given), Some(expected)) => {
                    constant_time_eq(given.as_bytes(), expected.as_bytes())
                }
                _ => false,
            }
        }
        _ => false,
    };
    if !passed {
        return Err(s
            .uia
            .challenge(stage, Some("authentication stage not completed")));
    }
    s.uia.finish(auth.session.as_deref());
    s.accounts.create(&user_id, body.password.clone()).await?;
    if body.inhibit_login {
        return Ok(Json(json!({"user_id": user_id})));
    }
    let session = s
        .accounts
        .open_session(
            &user_id,
            body.device_id.as_deref(),
            body.initial_device_display_name,
        )
        .await?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": s.config.server_name,
    })))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
pub struct AvailableQuery {
    username: String,
}

pub async fn register_available(
    State(s): State<AppState>,
    Q(q): Q<AvailableQuery>,
) -> Result<Json<Value>> {
    let user_id = s.accounts.user_id_for_localpart(&q.username)?;
    if s.accounts.exists(&user_id)? {
        return Err(Error::UserInUse);
    }
    Ok(Json(json!({"available": true})))
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: String,
}

pub async fn registration_token_validity(
    State(s): State<AppState>,
    Q(q): Q<TokenQuery>,
) -> Result<Json<Value>> {
    if s.config.registration_mode != RegistrationMode::Token {
        return Err(Error::forbidden("registration tokens are not in use"));
    }
    let valid = s
        .registration_token
        .as_deref()
        .is_some_and(|t| constant_time_eq(t.as_bytes(), q.token.as_bytes()));
    Ok(Json(json!({"valid": valid})))
}

pub async fn login_flows() -> Json<Value> {
    Json(json!({"flows": [{"type": "m.login.password"}]}))
}

#[derive(Deserialize)]
pub struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    auth: AuthData,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
}

pub async fn login(
    State(s): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Body(body): Body<LoginBody>,
) -> Result<Json<Value>> {
    if body.kind != "m.login.password" {
        return Err(Error::Unknown(format!(
            "unsupported login type {}",
            body.kind
        )));
    }
    let user = body
        .auth
        .user()
        .ok_or_else(|| Error::MissingParam("identifier.user is required".into()))?;
    let password = body
        .auth
        .password
        .clone()
        .ok_or_else(|| Error::MissingParam("password is required".into()))?;
    s.rate_limiter.check(Action::Login, &addr)?;
    let user_id = s.accounts.resolve_login_user(user)?;
    // Per account too, so guessing one password from many addresses is slow.
    s.rate_limiter.check(Action::Login, user_id.as_str())?;
    check_password(&s, &user_id, password).await?;
    let session = s
        .accounts
        .open_session(
            &user_id,
            body.device_id.as_deref(),
            body.initial_device_display_name,
        )
        .await?;
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": s.config.server_name,
    })))
}

async fn check_password(s: &AppState, user_id: &ruma::UserId, password: String) -> Result<()> {
    let accounts = s.accounts.clone();
    let uid = user_id.to_owned();
    let ok =
        crate::accounts::with_password_hasher(move || accounts.check_password(&uid, &password))
            .await?;
    if ok {
        Ok(())
    } else {
        Err(Error::forbidden("invalid username or password"))
    }
}

/// Completes `m.login.password` UIA for an action on the caller's own account.
pub(crate) async fn require_password_uia(
    s: &AppState,
    session: &crate::accounts::Session,
    auth: Option<&AuthData>,
) -> Result<()> {
    let Some(auth) = auth else {
        return Err(s.uia.challenge("m.login.password", None));
    };
    s.uia.check_session(auth.session.as_deref())?;
    if auth.kind.as_deref() != Some("m.login.password") {
        return Err(s.uia.challenge(
            "m.login.password",
            Some("authentication stage not completed"),
        ));
    }
    if let Some(u) = auth.user()
        && s.accounts.resolve_login_user(u).ok().as_deref() != Some(&*session.user_id)
    {
        return Err(Error::forbidden("you can only authenticate as yourself"));
    }
    let password = auth.password.clone().unwrap_or_default();
    if check_password(s, &session.user_id, password).await.is_err() {
        return Err(s
            .uia
            .challenge("m.login.password", Some("invalid password")));
    }
    s.uia.finish(auth.session.as_deref());
    Ok(())
}

pub async fn logout(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    s.remove_devices(&session.user_id, &[session.device_id.as_str()])
        .await?;
    Ok(Json(json!({})))
}

pub async fn logout_all(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    let devices = s.accounts.devices(&session.user_id)?;
    let ids: Vec<&str> = devices.iter().map(|(d, _)| d.as_str()).collect();
    s.remove_devices(&session.user_id, &ids).await?;
    Ok(Json(json!({})))
}

pub async fn whoami(Auth(session): Auth) -> Json<Value> {
    Json(json!({"user_id": session.user_id, "device_id": session.device_id, "is_guest": false}))
}

#[derive(Deserialize)]
pub struct PasswordBody {
    new_password: String,
    logout_devices: Option<bool>,
    auth: Option<AuthData>,
}

pub async fn change_password(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<PasswordBody>,
) -> Result<Json<Value>> {
    require_password_uia(&s, &session, body.auth.as_ref()).await?;
    s.accounts
        .set_password(&session.user_id, body.new_password)
        .await?;
    if body.logout_devices.unwrap_or(true) {
        let devices = s.accounts.devices(&session.user_id)?;
        let others: Vec<&str> = devices
            .iter()
            .map(|(d, _)| d.as_str())
            .filter(|d| *d != session.device_id.as_str())
            .collect();
        s.remove_devices(&session.user_id, &others).await?;
    }
    Ok(Json(json!({})))
}

fn device_json(id: &str, d: &crate::accounts::DeviceRecord) -> Value {
    json!({"device_id": id, "display_name": d.display_name, "last_seen_ts": d.last_seen_ts, "last_seen_ip": d.last_seen_ip})
}

pub async fn devices(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    let list: Vec<Value> = s
        .accounts
        .devices(&session.user_id)?
        .iter()
        .map(|(id, d)| device_json(id.as_str(), d))
        .collect();
    Ok(Json(json!({"devices": list})))
}

pub async fn device(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(device_id): P<String>,
) -> Result<Json<Value>> {
    let d = s
        .accounts
        .device(&session.user_id, &device_id)?
        .ok_or_else(|| Error::not_found("unknown device"))?;
    Ok(Json(device_json(&device_id, &d)))
}

#[derive(Deserialize)]
pub struct DeviceUpdate {
    display_name: Option<String>,
}

pub async fn update_device(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(device_id): P<String>,
    Body(body): Body<DeviceUpdate>,
) -> Result<Json<Value>> {
    s.accounts
        .rename_device(&session.user_id, &device_id, body.display_name)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteDevice {
    auth: Option<AuthData>,
}

pub async fn delete_device(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(device_id): P<String>,
    Body(body): Body<DeleteDevice>,
) -> Result<Json<Value>> {
    if s.accounts.device(&session.user_id, &device_id)?.is_none() {
        return Err(Error::not_found("unknown device"));
    }
    require_password_uia(&s, &session, body.auth.as_ref()).await?;
    s.remove_devices(&session.user_id, &[device_id.as_str()])
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteDevices {
    devices: Vec<String>,
    auth: Option<AuthData>,
}

pub async fn delete_devices(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<DeleteDevices>,
) -> Result<Json<Value>> {
    require_password_uia(&s, &session, body.auth.as_ref()).await?;
    let ids: Vec<&str> = body.devices.iter().map(String::as_str).collect();
    s.remove_devices(&session.user_id, &ids).await?;
    Ok(Json(json!({})))
}

/// POST /user/{userId}/openid/request_token: a token a third party can
/// check with this server's /openid/userinfo.
pub async fn openid_request_token(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(user): P<String>,
    Body(_body): Body<serde_json::Value>,
) -> Result<Json<Value>> {
    if crate::api::extract::user_id(&user)? != session.user_id {
        return Err(Error::forbidden("you can only request tokens for yourself"));
    }
    let (token, expires_in) = s.accounts.issue_openid_token(&session.user_id)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": s.config.server_name,
        "expires_in": expires_in,
    })))
}
