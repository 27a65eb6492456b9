//! Runs every local recipient's push rules over a new event, deciding who is notified and who is highlighted.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use ruma::{
    Int, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    power_levels::NotificationPowerLevels,
    push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx},
    room_version_rules::{RoomPowerLevelsRules, RoomVersionRules},
    serde::Raw,
};
use serde_json::{Value, value::RawValue};

use super::Push;
use crate::{
    error::Result,
    rooms::{Rooms, pdu::Pdu},
};

/// What one recipient's rules decided for one event.
#[derive(Debug, Clone)]
pub struct Decision {
    pub user: OwnedUserId,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub highlight: bool,
    pub actions: Vec<Action>,
    /// The thread root, for events in a thread.
    pub thread: Option<String>,
}

/// The thread an event belongs to, from its `m.relates_to`.
pub fn thread_of(content: &Value) -> Option<String> {
    let rel = content.get("m.relates_to")?;
    (rel.get("rel_type")?.as_str()? == "m.thread")
        .then(|| rel.get("event_id")?.as_str().map(str::to_owned))
        .flatten()
}

/// Push rule conditions never wait on anything here (no thread-subscription
/// callback is installed), so their futures finish on the first poll.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn power_levels_ctx(
    rooms: &Rooms,
    room_id: &RoomId,
    rules: &RoomVersionRules,
) -> Result<PushConditionPowerLevelsCtx> {
    let content = rooms
        .state_content(room_id, "m.room.power_levels", "")?
        .unwrap_or(Value::Null);
    let int = |v: Option<&Value>, d: i64| {
        Int::new(v.and_then(Value::as_i64).unwrap_or(d)).unwrap_or_default()
    };
    let mut users = BTreeMap::new();
    if let Some(map) = content.get("users").and_then(Value::as_object) {
        for (u, l) in map {
            if let Ok(u) = OwnedUserId::try_from(u.as_str()) {
                users.insert(u, int(Some(l), 0));
            }
        }
    }
    let mut notifications = NotificationPowerLevels::new();
    notifications.room = int(content.get("notifications").and_then(|n| n.get("room")), 50);
    let creators = rooms
        .creators(room_id)?
        .into_iter()
        .filter_map(|c| OwnedUserId::try_from(c).ok());
    Ok(PushConditionPowerLevelsCtx::new(
        users,
        int(content.get("users_default"), 0),
        notifications,
        RoomPowerLevelsRules::new(&rules.authorization, creators),
    ))
}

/// Evaluates `pdu` for every local member who may be notified of it.
pub fn decide(
    push: &Push,
    rooms: &Rooms,
    room_id: &RoomId,
    pdu: &Pdu,
    pdu_json: &str,
    rules: &RoomVersionRules,
) -> Result<Vec<Decision>> {
    let mut recipients = rooms.members_with(room_id, &["join"])?;
    let member_count = UInt::try_from(recipients.len()).unwrap_or_default();
    // The target of an invite is not a member yet but is the one to notify.
    if pdu.kind.to_string() == "m.room.member"
        && pdu.membership().as_deref() == Some("invite")
        && let Some(target) = pdu
            .state_key
            .as_deref()
            .and_then(|k| OwnedUserId::try_from(k).ok())
        && target.server_name() == rooms.server_name
        && !recipients.contains(&target)
    {
        recipients.push(target);
    }
    // Remote members are notified by their own servers.
    recipients.retain(|u| *u != pdu.sender && u.server_name() == rooms.server_name);
    if recipients.is_empty() {
        return Ok(Vec::new());
    }
    let raw = RawValue::from_string(pdu_json.to_owned()).map_err(crate::error::Error::internal)?;
    let power_levels = power_levels_ctx(rooms, room_id, rules)?;
    let event: Raw<Value> = Raw::from_json(raw);
    let thread = thread_of(&pdu.content_value());
    let mut out = Vec::new();
    for user in recipients {
        if push
            .account_data
            .ignored_users(&user)?
            .contains(pdu.sender.as_str())
        {
            continue;
        }
        let ruleset = push.ruleset(&user)?;
        let display_name = rooms
            .state_content(room_id, "m.room.member", user.as_str())?
            .and_then(|c| {
                c.get("displayname")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| user.localpart().to_owned());
        let mut ctx =
            PushConditionRoomCtx::new(room_id.to_owned(), member_count, user.clone(), display_name);
        ctx.power_levels = Some(power_levels.clone());
        let Some(actions) = poll_once(ruleset.get_actions(&event, &ctx)) else {
            continue;
        };
        if !actions.iter().any(Action::should_notify) {
            continue;
        }
        out.push(Decision {
            highlight: actions.iter().any(Action::is_highlight),
            actions: actions.to_vec(),
            user,
            room_id: room_id.to_owned(),
            event_id: pdu.event_id.clone(),
            thread: thread.clone(),
        });
    }
    Ok(out)
}
