//! Handlers for /pushrules, /pushers and /notifications.

use axum::{Json, extract::State};
use ruma::push::{Action, RuleKind};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{
    accounts::now_ms,
    api::{
        AppState,
        extract::{Auth, Body, P, Q},
    },
    error::{Error, Result},
    push::{notifications, pusher, rules},
};

pub async fn get_all(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    Ok(Json(
        json!({"global": rules::to_json(&*s.push.ruleset(&session.user_id)?)?}),
    ))
}

fn check_scope(scope: &str) -> Result<()> {
    if scope != "global" {
        return Err(Error::invalid_param("the only push rule scope is global"));
    }
    Ok(())
}

pub async fn get_scope(
    State(s): State<AppState>,
    Auth(session): Auth,
    P(scope): P<String>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    Ok(Json(rules::to_json(&*s.push.ruleset(&session.user_id)?)?))
}

pub async fn get_rule(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    Ok(Json(rules::find(
        &*s.push.ruleset(&session.user_id)?,
        &kind,
        &id,
    )?))
}

#[derive(Deserialize)]
pub struct Placement {
    before: Option<String>,
    after: Option<String>,
}

pub async fn put_rule(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
    Q(place): Q<Placement>,
    Body(body): Body<rules::NewRuleBody>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    let rule = rules::new_rule(&kind, &id, body)?;
    s.push
        .edit(&session.user_id, |set| {
            set.insert(rule, place.after.as_deref(), place.before.as_deref())
                .map_err(rules::insert_error)
        })
        .await?;
    Ok(Json(json!({})))
}

pub async fn delete_rule(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    let kind = rules::parse_kind(&kind)?;
    s.push
        .edit(&session.user_id, |set| {
            set.remove(kind, &id).map_err(rules::remove_error)
        })
        .await?;
    Ok(Json(json!({})))
}

fn kind_and_check(
    s: &AppState,
    session: &crate::accounts::Session,
    kind: &str,
    id: &str,
) -> Result<RuleKind> {
    rules::find(&*s.push.ruleset(&session.user_id)?, kind, id)?;
    rules::parse_kind(kind)
}

pub async fn get_enabled(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    let rule = rules::find(&*s.push.ruleset(&session.user_id)?, &kind, &id)?;
    Ok(Json(json!({"enabled": rule["enabled"]})))
}

#[derive(Deserialize)]
pub struct EnabledBody {
    enabled: bool,
}

pub async fn put_enabled(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
    Body(body): Body<EnabledBody>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    let kind = kind_and_check(&s, &session, &kind, &id)?;
    s.push
        .edit(&session.user_id, |set| {
            set.set_enabled(kind, &id, body.enabled)
                .map_err(|_| Error::not_found("no such push rule"))
        })
        .await?;
    Ok(Json(json!({})))
}

pub async fn get_actions(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    let rule = rules::find(&*s.push.ruleset(&session.user_id)?, &kind, &id)?;
    Ok(Json(json!({"actions": rule["actions"]})))
}

#[derive(Deserialize)]
pub struct ActionsBody {
    actions: Vec<Action>,
}

pub async fn put_actions(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((scope, kind, id)): P<(String, String, String)>,
    Body(body): Body<ActionsBody>,
) -> Result<Json<Value>> {
    check_scope(&scope)?;
    let kind = kind_and_check(&s, &session, &kind, &id)?;
    s.push
        .edit(&session.user_id, |set| {
            set.set_actions(kind, &id, body.actions)
                .map_err(|_| Error::not_found("no such push rule"))
        })
        .await?;
    Ok(Json(json!({})))
}

pub async fn get_pushers(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    Ok(Json(
        json!({"pushers": pusher::list(&s.store, &session.user_id)?}),
    ))
}

#[derive(Deserialize)]
pub struct SetPusherBody {
    pushkey: String,
    /// `null` deletes the pusher.
    kind: Option<String>,
    app_id: String,
    app_display_name: Option<String>,
    device_display_name: Option<String>,
    profile_tag: Option<String>,
    lang: Option<String>,
    data: Option<Map<String, Value>>,
    #[serde(default)]
    append: bool,
}

pub async fn set_pusher(
    State(s): State<AppState>,
    Auth(session): Auth,
    Body(body): Body<SetPusherBody>,
) -> Result<Json<Value>> {
    let Some(kind) = body.kind else {
        pusher::delete(&s.store, &session.user_id, &body.app_id, &body.pushkey)?;
        return Ok(Json(json!({})));
    };
    let missing = |f: &str| Error::MissingParam(format!("{f} is required"));
    let p = pusher::Pusher {
        pushkey: body.pushkey,
        kind,
        app_id: body.app_id,
        app_display_name: body
            .app_display_name
            .ok_or_else(|| missing("app_display_name"))?,
        device_display_name: body
            .device_display_name
            .ok_or_else(|| missing("device_display_name"))?,
        profile_tag: body.profile_tag,
        lang: body.lang.ok_or_else(|| missing("lang"))?,
        data: body.data.ok_or_else(|| missing("data"))?,
        pushkey_ts: now_ms(),
    };
    pusher::set(&s.store, &session.user_id, p, body.append)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct NotificationsQuery {
    from: Option<String>,
    limit: Option<usize>,
    only: Option<String>,
}

pub async fn get_notifications(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<NotificationsQuery>,
) -> Result<Json<Value>> {
    let from = q
        .from
        .as_deref()
        .map(|f| {
            f.parse::<u64>()
                .map_err(|_| Error::invalid_param("invalid from token"))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let only_highlight = q.only.as_deref() == Some("highlight");
    let (list, next) =
        notifications::list(&s.store, &session.user_id, from, limit, only_highlight)?;
    let now = now_ms();
    let mut out = Vec::new();
    for (n, read) in list {
        let Some(ev) = s.rooms.event(n.event_id.as_str())? else {
            continue;
        };
        out.push(json!({
            "actions": n.actions,
            "event": s.rooms.client_event_for(&ev, &session.user_id, None, u64::MAX, now),
            "read": read,
            "room_id": n.room_id,
            "ts": n.ts,
        }));
    }
    let mut body = json!({"notifications": out});
    if let Some(n) = next {
        body["next_token"] = Value::from(n.to_string());
    }
    Ok(Json(body))
}
