//! Federation user stories about what outlives a moment: a server's signing
//! key (rotated while the server is down, the retired key still published so
//! old signatures can be checked) and a room's history (what someone who
//! joins later, from another server, gets to read of it).
//!
//! Alice lives on hs1, Bob on hs2; each only ever talks to their own server.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use bellwire_tests::{
    TestServer, User, enc,
    federation::{Federation, alice_and_bob, now_ms, port_of, share_room, two_servers},
    password_for, verify_signature,
};
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `server`'s key document (GET /_matrix/key/v2/server on its TLS
/// listener), after checking that it is issued under its own name, still
/// valid, and signed by every ed25519 key in its `verify_keys`.
async fn key_document(federation: &Federation, server: &TestServer) -> Result<Value> {
    let name = server.server_name();
    let r = federation
        .https(server)?
        .get("/_matrix/key/v2/server", None)
        .await?;
    r.expect_ok()
        .with_context(|| format!("GET /_matrix/key/v2/server of {name}"))?;
    ensure!(
        r.json["server_name"] == name,
        "{name} publishes keys under another name: {}",
        r.text
    );
    let keys = verify_keys(&r.json);
    ensure!(
        !keys.is_empty(),
        "{name}: no ed25519 key in verify_keys: {}",
        r.text
    );
    for (key_id, key) in &keys {
        verify_signature(&r.json, name, key_id, key)
            .with_context(|| format!("{name}'s key document is signed by its key {key_id}"))?;
    }
    ensure!(
        r.json["valid_until_ts"]
            .as_u64()
            .is_some_and(|ts| ts > now_ms()),
        "{name}'s keys are already expired: {}",
        r.text
    );
    Ok(r.json)
}

/// The ed25519 keys of a key document's `verify_keys`: key id -> public key.
fn verify_keys(document: &Value) -> BTreeMap<String, String> {
    document["verify_keys"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(id, _)| id.starts_with("ed25519:"))
        .filter_map(|(id, k)| Some((id.clone(), k["key"].as_str()?.to_owned())))
        .collect()
}

/// Every event `user` can see in `room` by paginating /messages backwards
/// from the present (a large `limit`, following `end` until the server says
/// there is nothing more), oldest first.
async fn scroll_to_the_beginning(user: &User, room: &RoomId) -> Result<Vec<Value>> {
    let http = user.http();
    let token = user.access_token();
    let mut from: Option<String> = None;
    let mut events = Vec::new();
    for _ in 0..50 {
        let mut path = format!("{V3}/rooms/{}/messages?dir=b&limit=500", enc(room.as_str()));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let r = http.get(&path, Some(&token)).await?;
        r.expect_ok()
            .with_context(|| format!("{} paginating {room}: GET {path}", user.user_id))?;
        let chunk = r.json["chunk"]
            .as_array()
            .with_context(|| format!("/messages answer without chunk: {}", r.text))?;
        events.extend(chunk.iter().cloned());
        match r.json.get("end").and_then(Value::as_str) {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => {
                events.reverse();
                return Ok(events);
            }
        }
    }
    bail!(
        "{} paginating {room}: /messages still had more after 50 pages",
        user.user_id
    )
}

/// `(sender, body)` of the `m.room.message` events among `events` that have
/// a body (a message redacted for the reader has none).
fn texts(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message" && e["content"]["body"].is_string())
        .map(|e| {
            (
                e["sender"].as_str().unwrap_or_default().to_owned(),
                e["content"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Where in `events` the join of `user` is.
fn join_position(events: &[Value], user: &User) -> Option<usize> {
    events.iter().position(|e| {
        e["type"] == "m.room.member"
            && e["state_key"] == user.user_id.as_str()
            && e["content"]["membership"] == "join"
    })
}

/// A public room on hs1 where Alice talked before Bob (hs2) came in.
struct LateJoin {
    room_id: OwnedRoomId,
    /// Alice's messages from before Bob joined: (event id, body).
    before: Vec<(String, String)>,
    /// Alice's message after Bob joined.
    after: String,
}

/// Alice creates a public room on hs1 with `history_visibility` set to
/// `visibility` and sends three messages; Bob then joins it from hs2
/// through hs1 (by room id, `via` hs1); Alice sees him join and sends one
/// more message, which reaches Bob.
async fn alice_talks_then_bob_joins(
    hs1: &TestServer,
    alice: &User,
    bob: &User,
    visibility: &str,
) -> Result<LateJoin> {
    let http = alice.http();
    let token = alice.access_token();
    let room = http
        .create_room(
            &token,
            json!({"preset": "public_chat", "name": format!("Harbour log ({visibility})")}),
        )
        .await
        .context("Alice creates a public room")?;
    let room_id = OwnedRoomId::try_from(room.as_str())?;
    let path = format!("{V3}/rooms/{}/state/m.room.history_visibility/", enc(&room));
    http.put(
        &path,
        Some(&token),
        json!({"history_visibility": visibility}),
    )
    .await?
    .expect_ok()
    .with_context(|| format!("Alice sets history_visibility to {visibility:?}: PUT {path}"))?;
    let r = http
        .state(&token, &room, "m.room.history_visibility", "")
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["history_visibility"] == visibility,
        "hs1's history_visibility after Alice set it to {visibility:?}: {}",
        r.text
    );

    // Alice's client learns of the room it did not create itself.
    alice
        .sync_until("the new room in Alice's client", |s| {
            s.membership(&room_id, &alice.user_id).as_deref() == Some("join")
        })
        .await?;
    let mut before = Vec::new();
    for i in 1..=3 {
        let body = format!("[{visibility}] before Bob came, note {i}: the gate code is 44{i}7");
        let id = alice.send_text(&room_id, &body).await?;
        before.push((id, body));
    }

    let join = format!("{V3}/join/{}?via={}", enc(&room), enc(hs1.server_name()));
    let r = bob
        .http()
        .post(&join, Some(&bob.access_token()), json!({}))
        .await?;
    r.expect_ok()
        .with_context(|| format!("Bob joins through hs1: POST {join}"))?;
    ensure!(
        r.json["room_id"] == room.as_str(),
        "POST {join} answered another room: {}",
        r.text
    );
    alice
        .sync_until("Bob's join", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;

    let after = format!("[{visibility}] welcome aboard, Bob");
    alice.send_text(&room_id, &after).await?;
    bob.wait_for_text(&room_id, &alice.user_id, &after)
        .await
        .context("Alice's message after the join reaches Bob")?;
    Ok(LateJoin {
        room_id,
        before,
        after,
    })
}

// ---------------------------------------------------------------------------
// Key rotation
// ---------------------------------------------------------------------------

/// Alice and Bob have been talking when hs1's operator rotates its signing
/// key (with the server stopped). hs1 comes back under the same name and
/// publishes the new key, with the retired one under `old_verify_keys`.
/// hs2, which had cached the old key, learns the new one: Alice's next
/// message reaches Bob and his reply reaches her. What Alice said before the
/// rotation is still there for Bob.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_signing_key_does_not_interrupt_the_conversation() -> Result<()> {
    let (federation, mut hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Key ceremony").await?;
    let earlier = "Before the new key: meet at the lighthouse";
    let earlier_id = alice.send_text(&room_id, earlier).await?;
    bob.wait_for_text(&room_id, &alice.user_id, earlier)
        .await
        .context("hs2 checked an event signed with hs1's first key")?;

    let before = key_document(&federation, &hs1).await?;
    let first_keys = verify_keys(&before);
    ensure!(
        first_keys.len() == 1,
        "hs1 should have one signing key before any rotation: {before}"
    );
    let (old_id, old_public) = first_keys.into_iter().next().expect("one key");

    // The operator stops hs1 and rotates its key.
    let status = hs1.stop().await.context("stopping hs1")?;
    ensure!(status.success(), "hs1 exited with {status} on SIGTERM");
    drop(alice);
    let rotated_at = now_ms();
    let new_id = hs1
        .rotate_signing_key()
        .await
        .context("rotating hs1's signing key while it is stopped")?;
    ensure!(
        new_id != old_id,
        "the rotation announced the key hs1 already had ({old_id})"
    );
    hs1.start_again()
        .await
        .context("starting hs1 again after the rotation")?;
    ensure!(
        hs1.federation_addr().map(|a| a.port()) == Some(port_of(hs1.server_name())?),
        "hs1 came back on another federation port: {:?}",
        hs1.federation_addr()
    );

    // hs1 publishes the new key, signed by it, and keeps the old one as
    // retired.
    let after = key_document(&federation, &hs1).await?;
    let current = verify_keys(&after);
    ensure!(
        current.contains_key(&new_id),
        "hs1 does not publish its new key {new_id} in verify_keys: {after}"
    );
    ensure!(
        !current.contains_key(&old_id),
        "hs1 still publishes its retired key {old_id} as a current verify key: {after}"
    );
    let retired = &after["old_verify_keys"][&old_id];
    ensure!(
        retired["key"] == old_public.as_str(),
        "hs1's old_verify_keys does not hold its retired key {old_id} ({old_public}): {after}"
    );
    ensure!(
        retired["expired_ts"]
            .as_u64()
            .is_some_and(|ts| (rotated_at..=now_ms()).contains(&ts)),
        "the retired key {old_id} should have expired_ts at the rotation \
         (between {rotated_at} and now): {after}"
    );

    // The conversation goes on, both ways.
    let alice = hs1.login("alice", &password_for("alice")).await?;
    let news = "New key, same Alice";
    let news_id = alice.send_text(&room_id, news).await?;
    bob.wait_for_text(&room_id, &alice.user_id, news)
        .await
        .with_context(|| {
            format!("Alice's message signed with hs1's new key {new_id} reaches Bob on hs2")
        })?;
    let reply = "Got it, still talking";
    bob.send_text(&room_id, reply).await?;
    alice
        .wait_for_text(&room_id, &bob.user_id, reply)
        .await
        .context("Bob's reply after the rotation reaches Alice")?;

    // What was said before the rotation is still there on hs2.
    for (id, body) in [(&earlier_id, earlier), (&news_id, news)] {
        let r = bob
            .http()
            .event(&bob.access_token(), room_id.as_str(), id)
            .await?;
        r.expect_ok()
            .with_context(|| format!("Bob fetches {id} ({body:?}) through hs2"))?;
        ensure!(
            r.json["sender"] == alice.user_id.as_str() && r.json["content"]["body"] == body,
            "hs2 serves {id} as something other than Alice's {body:?}: {}",
            r.text
        );
    }
    let got = texts(&scroll_to_the_beginning(&bob, &room_id).await?);
    let expected = vec![
        (alice.user_id.to_string(), earlier.to_owned()),
        (alice.user_id.to_string(), news.to_owned()),
        (bob.user_id.to_string(), reply.to_owned()),
    ];
    ensure!(
        got == expected,
        "hs2's history after the rotation: {got:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// History for someone who joins later
// ---------------------------------------------------------------------------

/// Alice talks in two public rooms on hs1 before Bob (hs2) joins them.
///
/// In the room whose history is visible to members only from when they
/// joined (`joined`), Bob scrolling back through hs2 finds Alice's welcome
/// and his own join, but not a word of what she said before: not in the
/// history, not in his sync, not when he asks for those events by id.
///
/// In the room whose history is `shared`, Bob scrolling back finds all of
/// it, in order, before his join: hs2 fetches it from hs1 by backfill.
#[tokio::test(flavor = "multi_thread")]
async fn a_late_joiner_over_federation_reads_only_the_history_the_room_shares() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let alice_id = alice.user_id.to_string();

    // --- history_visibility "joined" ---
    let joined = alice_talks_then_bob_joins(&hs1, &alice, &bob, "joined").await?;
    let room = &joined.room_id;
    let events = scroll_to_the_beginning(&bob, room).await?;
    let got = texts(&events);
    ensure!(
        got == vec![(alice_id.clone(), joined.after.clone())],
        "in the \"joined\" room, Bob scrolling back through hs2 should read only Alice's \
         message from after his join; he reads: {got:#?}"
    );
    ensure!(
        join_position(&events, &bob).is_some(),
        "Bob's scroll back through the \"joined\" room did not reach his own join: {events:#?}"
    );
    bob.sync_once().await?;
    let seen = bob.seen();
    for (id, body) in &joined.before {
        let in_history: Vec<&Value> = events
            .iter()
            .filter(|e| e["event_id"] == id.as_str() || e.to_string().contains(body.as_str()))
            .collect();
        ensure!(
            in_history.is_empty(),
            "hs2 shows Bob {id} ({body:?}), said before he joined the \"joined\" room, even \
             as a stub: {in_history:#?}"
        );
        let in_sync: Vec<&Value> = seen
            .events
            .iter()
            .filter(|e| e.json.to_string().contains(body.as_str()))
            .map(|e| &e.json)
            .collect();
        ensure!(
            in_sync.is_empty(),
            "Bob's sync delivered {body:?}, said before he joined the \"joined\" room: \
             {in_sync:#?}"
        );
        let r = bob
            .http()
            .event(&bob.access_token(), room.as_str(), id)
            .await?;
        ensure!(
            !r.text.contains(body.as_str()),
            "hs2 serves Bob {id} ({body:?}), from before he joined the \"joined\" room: {} {}",
            r.status,
            r.text
        );
        r.expect_error(404, "M_NOT_FOUND").with_context(|| {
            format!("Bob fetching {id}, from before he joined the \"joined\" room")
        })?;
    }

    // --- history_visibility "shared" ---
    let shared = alice_talks_then_bob_joins(&hs1, &alice, &bob, "shared").await?;
    let room = &shared.room_id;
    let events = scroll_to_the_beginning(&bob, room).await?;
    let got = texts(&events);
    let mut expected: Vec<(String, String)> = shared
        .before
        .iter()
        .map(|(_, body)| (alice_id.clone(), body.clone()))
        .collect();
    expected.push((alice_id.clone(), shared.after.clone()));
    ensure!(
        got == expected,
        "in the \"shared\" room, Bob scrolling back through hs2 should read all of Alice's \
         messages, in order (hs2 backfills them from hs1); he reads: {got:#?}"
    );
    let join_at = join_position(&events, &bob).with_context(|| {
        format!("Bob's scroll back through the \"shared\" room has no join of his: {events:#?}")
    })?;
    let position_of = |body: &str| {
        events
            .iter()
            .position(|e| e["type"] == "m.room.message" && e["content"]["body"] == body)
    };
    for (_, body) in &shared.before {
        ensure!(
            position_of(body).is_some_and(|p| p < join_at),
            "{body:?} should come before Bob's join in hs2's history of the \"shared\" room: \
             {events:#?}"
        );
    }
    ensure!(
        position_of(&shared.after).is_some_and(|p| p > join_at),
        "{:?} should come after Bob's join in hs2's history of the \"shared\" room: {events:#?}",
        shared.after
    );
    for (id, body) in &shared.before {
        let r = bob
            .http()
            .event(&bob.access_token(), room.as_str(), id)
            .await?;
        r.expect_ok().with_context(|| {
            format!("Bob fetches {id} ({body:?}) of the \"shared\" room through hs2")
        })?;
        ensure!(
            r.json["sender"] == alice_id.as_str() && r.json["content"]["body"] == body.as_str(),
            "hs2 serves {id} as something other than Alice's {body:?}: {}",
            r.text
        );
    }
    Ok(())
}
