//! Event authorization: the spec's auth rules (via ruma's state-res) applied to every event before it is accepted.

use std::sync::Arc;

use ruma::{EventId, RoomId, events::StateEventType, room_version_rules::RoomVersionRules};

use super::{Rooms, pdu::Pdu};
use crate::error::{Error, Result};

/// A stored event as auth reads it.
fn stored_pdu(rooms: &Rooms, id: &EventId) -> Option<Arc<Pdu>> {
    rooms.event_pdu(id).ok().flatten()
}

/// The auth rules: those that need only the event's auth events, then
/// those that need the room state, which `state` looks up.
fn check(
    rooms: &Rooms,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: impl Fn(&StateEventType, &str) -> Option<Arc<Pdu>>,
) -> Result<()> {
    ruma::state_res::check_state_independent_auth_rules(
        &rules.authorization,
        pdu,
        |id: &EventId| stored_pdu(rooms, id),
    )
    .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))?;
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, state)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))
}

/// Checks `pdu` against its auth events and against the room's current
/// state. A failure is the client's fault: M_FORBIDDEN, nothing written.
pub fn authorize(
    rooms: &Rooms,
    rules: &RoomVersionRules,
    room_id: &RoomId,
    pdu: &Pdu,
) -> Result<()> {
    check(rooms, rules, pdu, |kind, key| {
        let id = rooms
            .state_event_id(room_id, &kind.to_string(), key)
            .ok()
            .flatten()?;
        stored_pdu(rooms, &id)
    })
}

/// Checks `pdu` against its auth events and a given room state (the state
/// at its place in the graph, for an event on another branch).
pub fn authorize_with_state(
    rooms: &Rooms,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &super::snapshots::StateIds,
) -> Result<()> {
    check(rooms, rules, pdu, |kind, key| {
        stored_pdu(rooms, state.get(&(kind.to_string(), key.to_owned()))?)
    })
}

/// Checks an event against its own auth events only (state received from
/// another server, whose place in our timeline is not known).
pub fn authorize_against_auth_events(
    rooms: &Rooms,
    rules: &RoomVersionRules,
    pdu: &Pdu,
) -> Result<()> {
    let mut auth: Vec<Arc<Pdu>> = pdu
        .auth_events
        .iter()
        .filter_map(|id| stored_pdu(rooms, id))
        .collect();
    // Room v12+ events do not list the create event: the room ID names it.
    if !auth.iter().any(|e| e.kind.to_string() == "m.room.create")
        && let Some(room_id) = &pdu.room_id
        && let Ok(create_id) =
            ruma::OwnedEventId::try_from(format!("${}", room_id.as_str().trim_start_matches('!')))
        && let Some(create) = stored_pdu(rooms, &create_id)
    {
        auth.push(create);
    }
    check(rooms, rules, pdu, |kind, key| {
        auth.iter()
            .find(|e| e.kind.to_string() == kind.to_string() && e.state_key.as_deref() == Some(key))
            .cloned()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{
        error::Error,
        rooms::NewEvent,
        test_support::{text, world},
    };

    fn forbidden<T: std::fmt::Debug>(r: Result<T, Error>) {
        assert!(
            matches!(r, Err(Error::Forbidden(_))),
            "expected M_FORBIDDEN, got {r:?}"
        );
    }

    #[tokio::test]
    async fn outsiders_cannot_send_or_join_invite_only_rooms() {
        for version in ["10", "11", "12"] {
            let w = world();
            let (alice, eve) = (w.user("alice").await, w.user("eve").await);
            let room = w.room(&alice, version, "private_chat").await;
            forbidden(w.s.rooms.send(&eve, &room, text("hi"), None).await);
            forbidden(w.s.rooms.join(&eve, &room).await);
            w.s.rooms
                .send(&alice, &room, text("mine"), None)
                .await
                .unwrap();
            // Rejecting an invite does not open the history.
            w.s.rooms.invite(&alice, &room, &eve, None).await.unwrap();
            w.s.rooms.leave(&eve, &room, None).await.unwrap();
            forbidden(w.s.rooms.visible_until(&eve, &room));
        }
    }

    #[tokio::test]
    async fn public_rooms_are_joinable_and_bans_stick() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let room = w.room(&alice, "11", "public_chat").await;
        w.s.rooms.join(&bob, &room).await.unwrap();
        w.s.rooms
            .send(&bob, &room, text("hello"), None)
            .await
            .unwrap();
        w.s.rooms
            .ban(&alice, &room, &bob, Some("spam"))
            .await
            .unwrap();
        forbidden(w.s.rooms.join(&bob, &room).await);
        forbidden(w.s.rooms.send(&bob, &room, text("again"), None).await);
    }

    #[tokio::test]
    async fn power_levels_gate_state_kicks_and_self_promotion() {
        for version in ["10", "12"] {
            let w = world();
            let (alice, bob) = (w.user("alice").await, w.user("bob").await);
            let room = w.room(&alice, version, "private_chat").await;
            w.s.rooms.invite(&alice, &room, &bob, None).await.unwrap();
            w.s.rooms.join(&bob, &room).await.unwrap();
            // A member at level 0 may not rename (state_default 50), promote
            // himself, or kick the admin.
            forbidden(
                w.s.rooms
                    .send(
                        &bob,
                        &room,
                        NewEvent::state("m.room.name", "", json!({"name": "x"})),
                        None,
                    )
                    .await,
            );
            let promote = json!({"users": {bob.as_str(): 100}});
            forbidden(
                w.s.rooms
                    .send(
                        &bob,
                        &room,
                        NewEvent::state("m.room.power_levels", "", promote),
                        None,
                    )
                    .await,
            );
            forbidden(w.s.rooms.kick(&bob, &room, &alice, None).await);
            // The creator (level 100, or unlimited as a v12 creator) may.
            w.s.rooms
                .send(
                    &alice,
                    &room,
                    NewEvent::state("m.room.name", "", json!({"name": "ok"})),
                    None,
                )
                .await
                .unwrap();
            w.s.rooms.kick(&alice, &room, &bob, None).await.unwrap();
            forbidden(w.s.rooms.send(&bob, &room, text("after kick"), None).await);
            assert_eq!(
                w.s.rooms.membership_of(&room, &bob).unwrap().as_deref(),
                Some("leave")
            );
        }
    }

    #[tokio::test]
    async fn redactions_need_power_unless_own_event() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let room = w.room(&alice, "11", "public_chat").await;
        w.s.rooms.join(&bob, &room).await.unwrap();
        let alices =
            w.s.rooms
                .send(&alice, &room, text("secret"), None)
                .await
                .unwrap();
        let redact = |target: &ruma::OwnedEventId| NewEvent {
            kind: "m.room.redaction".into(),
            content: json!({}),
            state_key: None,
            redacts: Some(target.clone()),
        };
        forbidden(w.s.rooms.send(&bob, &room, redact(&alices), None).await);
        let bobs =
            w.s.rooms
                .send(&bob, &room, text("oops"), None)
                .await
                .unwrap();
        w.s.rooms
            .send(&bob, &room, redact(&bobs), None)
            .await
            .unwrap();
        let redacted = w.s.rooms.event(bobs.as_str()).unwrap().unwrap().pdu_value();
        assert_eq!(
            redacted["content"],
            json!({}),
            "content is stripped by the redaction algorithm"
        );
        let kept =
            w.s.rooms
                .event(alices.as_str())
                .unwrap()
                .unwrap()
                .pdu_value();
        assert_eq!(kept["content"]["body"], "secret");
    }

    #[tokio::test]
    async fn v12_room_ids_derive_from_the_create_event_and_creators_are_unlimited() {
        let w = world();
        let alice = w.user("alice").await;
        let room = w.room(&alice, "12", "private_chat").await;
        let create = w.s.rooms.room_create_event(&room).unwrap();
        assert_eq!(
            room.as_str().trim_start_matches('!'),
            create.event_id.as_str().trim_start_matches('$')
        );
        assert!(
            create.pdu_value().get("room_id").is_none(),
            "v12 create events carry no room_id"
        );
        let rules = ruma::RoomVersionId::V12.rules().unwrap();
        assert_eq!(
            w.s.rooms.user_power(&room, &alice, &rules).unwrap(),
            i64::MAX
        );
        // Listing a creator in power levels is rejected in v12.
        let pl = json!({"users": {alice.as_str(): 100}});
        assert!(
            w.s.rooms
                .send(
                    &alice,
                    &room,
                    NewEvent::state("m.room.power_levels", "", pl),
                    None
                )
                .await
                .is_err()
        );
    }
}
