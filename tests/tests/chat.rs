//! Chat user stories: real Matrix clients (matrix-sdk) talking through a real
//! bellwire process.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, ServerOptions, TestServer, User, assert_matrix_error, mxid};
use matrix_sdk::{
    room::MessagesOptions,
    ruma::{
        RoomId, RoomVersionId, TransactionId, UInt,
        api::client::{
            message::send_message_event,
            room::create_room::{self, v3::RoomPreset},
            state::get_state_event_for_key,
        },
        events::{
            GlobalAccountDataEventType, StateEventType, direct::DirectEventContent,
            room::message::RoomMessageEventContent,
        },
    },
};
use serde_json::Value;

fn set(users: &[&User]) -> BTreeSet<String> {
    users.iter().map(|u| u.user_id.to_string()).collect()
}

/// The server's copy of `user`'s `m.direct` account data.
async fn m_direct_on_server(user: &User) -> Result<Value> {
    let raw = user
        .client
        .account()
        .fetch_account_data_static::<DirectEventContent>()
        .await
        .with_context(|| format!("{}: GET account_data/m.direct", user.user_id))?
        .with_context(|| {
            format!(
                "{} has no m.direct account data on the server",
                user.user_id
            )
        })?;
    Ok(serde_json::from_str(raw.json().get())?)
}

fn lists_room(direct: &Value, other: &User, room: &RoomId) -> bool {
    direct
        .get(other.user_id.as_str())
        .and_then(Value::as_array)
        .is_some_and(|rooms| rooms.iter().any(|r| r == room.as_str()))
}

/// Alice and Bob register, Alice opens a DM with Bob, Bob accepts through
/// sync, they exchange messages, and both accounts remember the room as a DM.
#[tokio::test(flavor = "multi_thread")]
async fn alice_and_bob_talk_in_a_direct_message() -> Result<()> {
    let server = TestServer::start().await?;

    // Alice and Bob sign up and log in with their passwords.
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    assert_eq!(alice.user_id, mxid("alice"));
    assert_eq!(bob.user_id, mxid("bob"));
    assert_eq!(
        alice.client.whoami().await?.user_id,
        alice.user_id,
        "whoami tells Alice who she is"
    );

    // Alice opens a direct chat with Bob (is_direct + trusted_private_chat + invite).
    let dm = alice.client.create_dm(&bob.user_id).await?;
    let room_id = dm.room_id().to_owned();

    // Bob's client learns about the invite through /sync, and sees that it is a
    // direct chat from Alice.
    let invite_state = bob.wait_for_invite(&room_id).await?;
    let own_invite = invite_state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .with_context(|| {
            format!("Bob's invite state has no member event for him: {invite_state:#?}")
        })?;
    assert_eq!(own_invite["content"]["membership"], "invite");
    assert_eq!(
        own_invite["content"]["is_direct"], true,
        "the invite is marked as direct"
    );
    assert_eq!(
        own_invite["sender"],
        alice.user_id.as_str(),
        "Alice sent the invite"
    );

    // Bob accepts.
    bob.join(&room_id).await?;
    assert_eq!(alice.joined_members(&room_id).await?, set(&[&alice, &bob]));

    // Text flows both ways through sync.
    let hello = "Hi Bob! Fancy a coffee? ☕";
    let reply = "Hi Alice, sure, in ten minutes";
    alice.send_text(&room_id, hello).await?;
    bob.wait_for_text(&room_id, &alice.user_id, hello).await?;
    bob.send_text(&room_id, reply).await?;
    alice.wait_for_text(&room_id, &bob.user_id, reply).await?;
    // Each also gets the other's view of the conversation: same two lines, same order.
    alice.wait_for_text(&room_id, &alice.user_id, hello).await?;
    bob.wait_for_text(&room_id, &bob.user_id, reply).await?;
    let expected = vec![
        (alice.user_id.to_string(), hello.to_owned()),
        (bob.user_id.to_string(), reply.to_owned()),
    ];
    assert_eq!(alice.seen().texts(&room_id), expected, "Alice's timeline");
    assert_eq!(bob.seen().texts(&room_id), expected, "Bob's timeline");

    // Both accounts list the room as a DM with the other, on the server...
    let alice_direct = m_direct_on_server(&alice).await?;
    assert!(
        lists_room(&alice_direct, &bob, &room_id),
        "Alice's m.direct: {alice_direct}"
    );
    let bob_direct = m_direct_on_server(&bob).await?;
    assert!(
        lists_room(&bob_direct, &alice, &room_id),
        "Bob's m.direct: {bob_direct}"
    );

    // ...and their clients receive that account data through sync.
    let direct = GlobalAccountDataEventType::Direct.to_string();
    alice
        .sync_until("m.direct through sync", |s| {
            s.account_data
                .get(&direct)
                .is_some_and(|d| lists_room(d, &bob, &room_id))
        })
        .await?;
    bob.sync_until("m.direct through sync", |s| {
        s.account_data
            .get(&direct)
            .is_some_and(|d| lists_room(d, &alice, &room_id))
    })
    .await?;

    // The SDK agrees it is a DM for both of them.
    assert!(
        alice.room(&room_id)?.is_direct().await?,
        "Alice's client sees a DM"
    );
    assert!(
        bob.room(&room_id)?.is_direct().await?,
        "Bob's client sees a DM"
    );
    Ok(())
}

/// A private group of three: everybody hears everybody; the admin can kick,
/// others cannot; a kicked member can no longer speak; a member who leaves is
/// gone from the member list.
#[tokio::test(flavor = "multi_thread")]
async fn three_friends_in_a_private_group() -> Result<()> {
    let server = TestServer::start().await?;
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let carol = server.new_user("carol").await?;

    // Alice creates a private room and invites Bob and Carol.
    let mut request = create_room::v3::Request::new();
    request.name = Some("Weekend plans".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id.clone(), carol.user_id.clone()];
    let room = alice.client.create_room(request).await?;
    let room_id = room.room_id().to_owned();

    for friend in [&bob, &carol] {
        friend.wait_for_invite(&room_id).await?;
        friend.join(&room_id).await?;
    }
    assert_eq!(
        alice.joined_members(&room_id).await?,
        set(&[&alice, &bob, &carol])
    );

    // Everyone says something; each line reaches the two others.
    let lines = [
        (&alice, "Who brings the snacks?"),
        (&bob, "I can bring chips"),
        (&carol, "Lemonade is on me"),
    ];
    for (speaker, text) in lines {
        speaker.send_text(&room_id, text).await?;
    }
    for (speaker, text) in lines {
        for listener in [&alice, &bob, &carol] {
            if listener.user_id != speaker.user_id {
                listener
                    .wait_for_text(&room_id, &speaker.user_id, text)
                    .await?;
            }
        }
    }

    // Bob is not an admin: he cannot kick Alice.
    let bob_kicks_alice = bob
        .room(&room_id)?
        .kick_user(&alice.user_id, Some("my room now"))
        .await;
    assert_matrix_error(&bob_kicks_alice, 403, "M_FORBIDDEN");
    assert_eq!(
        alice.joined_members(&room_id).await?,
        set(&[&alice, &bob, &carol]),
        "nobody was removed by Bob's failed kick"
    );

    // Alice (creator / power level 100) kicks Carol.
    room.kick_user(&carol.user_id, Some("too much lemonade"))
        .await?;
    let members = alice.memberships(&room_id).await?;
    assert_eq!(
        members.get(carol.user_id.as_str()).map(String::as_str),
        Some("leave")
    );

    // Carol learns about it through sync.
    carol
        .sync_until("the room moving to her `leave` section", |s| {
            s.left.contains(&room_id)
        })
        .await?;

    // Carol can no longer send (raw request: the SDK would refuse locally).
    let request = send_message_event::v3::Request::new(
        room_id.clone(),
        TransactionId::new(),
        &RoomMessageEventContent::text_plain("am I still here?"),
    )?;
    let carol_sends = carol
        .client
        .send(request)
        .await
        .map_err(matrix_sdk::Error::from);
    assert_matrix_error(&carol_sends, 403, "M_FORBIDDEN");
    let history = server
        .http()
        .all_messages(&alice.access_token(), room_id.as_str())
        .await?;
    assert!(
        history
            .iter()
            .all(|e| e["content"]["body"] != "am I still here?"),
        "the rejected message is not in the room: {history:#?}"
    );

    // Bob leaves on his own.
    bob.room(&room_id)?.leave().await?;
    let members = alice.memberships(&room_id).await?;
    assert_eq!(
        members.get(bob.user_id.as_str()).map(String::as_str),
        Some("leave")
    );
    assert_eq!(
        alice.joined_members(&room_id).await?,
        set(&[&alice]),
        "only Alice is left"
    );

    // Alice's client sees both departures through sync.
    alice
        .sync_until("Carol's and Bob's membership becoming leave", |s| {
            s.membership(&room_id, &carol.user_id).as_deref() == Some("leave")
                && s.membership(&room_id, &bob.user_id).as_deref() == Some("leave")
        })
        .await?;
    Ok(())
}

/// Collects `(event_id, body)` of the `m.room.message` events in a page.
fn page_texts(
    chunk: &[matrix_sdk::deserialized_responses::TimelineEvent],
) -> Vec<(String, String)> {
    chunk
        .iter()
        .filter_map(|ev| {
            let v: Value = serde_json::from_str(ev.raw().json().get()).ok()?;
            (v["type"] == "m.room.message").then(|| {
                (
                    v["event_id"].as_str().unwrap_or_default().to_owned(),
                    v["content"]["body"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
        .collect()
}

fn has_create_event(chunk: &[matrix_sdk::deserialized_responses::TimelineEvent]) -> bool {
    chunk.iter().any(|ev| {
        ev.raw()
            .get_field::<String>("type")
            .ok()
            .flatten()
            .as_deref()
            == Some("m.room.create")
    })
}

/// 120 messages, read back page by page: backwards newest-first, forwards
/// oldest-first, every message exactly once and in exact order.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_conversation_paginates_in_exact_order() -> Result<()> {
    let server = TestServer::start().await?;
    let alice = server.new_user("alice").await?;
    let mut request = create_room::v3::Request::new();
    request.name = Some("Diary".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    let room = alice.client.create_room(request).await?;
    let room_id = room.room_id().to_owned();

    let mut sent = Vec::new();
    for i in 0..120 {
        let body = format!("entry {i:03}");
        let event_id = alice.send_text(&room_id, &body).await?;
        sent.push((event_id, body));
    }
    let distinct: BTreeSet<_> = sent.iter().map(|(id, _)| id).collect();
    assert_eq!(distinct.len(), 120, "every message got its own event id");

    let page_size = UInt::from(25u32);

    // Backwards, newest first, in pages of 25.
    let mut backwards = Vec::new();
    let mut from: Option<String> = None;
    let mut first_page_end: Option<String> = None;
    let mut reached_creation = false;
    for page_no in 0.. {
        ensure!(
            page_no < 40,
            "backward pagination did not end after 40 pages"
        );
        let mut options = MessagesOptions::backward().from(from.as_deref());
        options.limit = page_size;
        let page = room.messages(options).await?;
        ensure!(
            page.chunk.len() <= 25,
            "page {page_no} has {} events, limit was 25",
            page.chunk.len()
        );
        backwards.extend(page_texts(&page.chunk));
        reached_creation |= has_create_event(&page.chunk);
        if page_no == 0 {
            first_page_end = page.end.clone();
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    let newest_first: Vec<_> = sent.iter().rev().cloned().collect();
    assert_eq!(
        backwards, newest_first,
        "backward pagination returns all 120 newest-first"
    );
    assert!(
        reached_creation,
        "backward pagination reaches the m.room.create event"
    );

    // Forwards from the start of the room, oldest first, in pages of 25.
    let mut forwards = Vec::new();
    let mut from: Option<String> = None;
    for page_no in 0.. {
        ensure!(
            page_no < 40,
            "forward pagination did not end after 40 pages"
        );
        let mut options = MessagesOptions::forward().from(from.as_deref());
        options.limit = page_size;
        let page = room.messages(options).await?;
        ensure!(
            page.chunk.len() <= 25,
            "page {page_no} has {} events, limit was 25",
            page.chunk.len()
        );
        if page_no == 0 {
            assert!(
                has_create_event(&page.chunk),
                "forward pagination without `from` starts at creation"
            );
        }
        forwards.extend(page_texts(&page.chunk));
        match page.end {
            Some(end) if !page.chunk.is_empty() => from = Some(end),
            _ => break,
        }
    }
    assert_eq!(
        forwards, sent,
        "forward pagination returns all 120 oldest-first"
    );

    // A token from backward pagination works for going forward again: from
    // where the first backward page stopped, forward gives that page back in
    // chronological order.
    let token = first_page_end.context("the first backward page has an `end` token")?;
    let mut options = MessagesOptions::forward().from(token.as_str());
    options.limit = UInt::from(100u32);
    let page = room.messages(options).await?;
    let first_page_count = 25.min(sent.len());
    assert_eq!(
        page_texts(&page.chunk),
        sent[sent.len() - first_page_count..].to_vec(),
        "forward from the first backward page's end token returns that page, oldest first"
    );
    Ok(())
}

/// A small conversation in a room of each version Bellwire supports.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_work_in_versions_10_11_and_12() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;

    for (version, id) in [
        ("10", RoomVersionId::V10),
        ("11", RoomVersionId::V11),
        ("12", RoomVersionId::V12),
    ] {
        let mut request = create_room::v3::Request::new();
        request.room_version = Some(id);
        request.name = Some(format!("Version {version} room"));
        request.preset = Some(RoomPreset::PrivateChat);
        request.invite = vec![bob.user_id.clone()];
        let room = alice
            .client
            .create_room(request)
            .await
            .with_context(|| format!("v{version}"))?;
        let room_id = room.room_id().to_owned();

        // The room really is of that version.
        let create = http
            .state(&alice.access_token(), room_id.as_str(), "m.room.create", "")
            .await?;
        create.expect_ok()?;
        assert_eq!(
            create.json["room_version"], version,
            "v{version}: m.room.create content {}",
            create.text
        );
        if version == "12" {
            // v12 room ids are the create event's reference hash, no server name.
            assert!(
                room_id.server_name().is_none(),
                "v12 room id has no server name: {room_id}"
            );
            assert_eq!(
                room_id.as_str().len(),
                44,
                "v12 room id is ! + 43 chars: {room_id}"
            );
        } else {
            assert_eq!(
                room_id.server_name().map(|s| s.as_str()),
                Some("localhost"),
                "v{version} room id names the server: {room_id}"
            );
        }

        // Bob joins, and they exchange a line each.
        bob.wait_for_invite(&room_id).await?;
        bob.join(&room_id).await?;
        let question = format!("Does v{version} work?");
        let answer = format!("v{version} works");
        let qid = alice.send_text(&room_id, &question).await?;
        bob.wait_for_text(&room_id, &alice.user_id, &question)
            .await?;
        bob.send_text(&room_id, &answer).await?;
        alice.wait_for_text(&room_id, &bob.user_id, &answer).await?;

        // Event ids use the v4+ format: $ + 43 url-safe base64 chars.
        assert_eq!(qid.len(), 44, "v{version} event id {qid}");
        assert!(qid.starts_with('$'), "v{version} event id {qid}");
        assert!(
            qid[1..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "v{version} event id is url-safe base64: {qid}"
        );
        let fetched = http
            .event(&alice.access_token(), room_id.as_str(), &qid)
            .await?;
        fetched.expect_ok()?;
        assert_eq!(fetched.json["content"]["body"], question.as_str());
    }
    Ok(())
}

/// `default_room_version` from the config applies to rooms created without an
/// explicit version.
#[tokio::test(flavor = "multi_thread")]
async fn the_configured_default_room_version_is_used() -> Result<()> {
    let options = ServerOptions {
        default_room_version: Some("10".to_owned()),
        ..Default::default()
    };
    let server = TestServer::start_with(options).await?;
    let alice = server.new_user("alice").await?;
    let room = alice
        .client
        .create_room(create_room::v3::Request::new())
        .await?;
    let create = server
        .http()
        .state(
            &alice.access_token(),
            room.room_id().as_str(),
            "m.room.create",
            "",
        )
        .await?;
    create.expect_ok()?;
    assert_eq!(
        create.json["room_version"], "10",
        "m.room.create content: {}",
        create.text
    );
    let event_id = alice.send_text(room.room_id(), "still works").await?;
    assert!(event_id.starts_with('$'));
    Ok(())
}

/// Alice renames the room from her client and Bob sees the new name. Room
/// state with an empty state key is addressed both ways real clients do it:
/// ruma / matrix-sdk send `/state/m.room.name/` (trailing slash), others
/// `/state/m.room.name`; the spec says the trailing slash is optional.
#[tokio::test(flavor = "multi_thread")]
async fn alice_renames_the_room_and_bob_sees_the_new_name() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let mut request = create_room::v3::Request::new();
    request.name = Some("Old name".to_owned());
    request.invite = vec![bob.user_id.clone()];
    let room = alice.client.create_room(request).await?;
    let room_id = room.room_id().to_owned();
    bob.wait_for_invite(&room_id).await?;
    bob.join(&room_id).await?;

    // matrix-sdk: PUT /rooms/{id}/state/m.room.name/ (with the trailing slash).
    room.set_name("New name".to_owned())
        .await
        .context("renaming through matrix-sdk")?;

    // Bob's client hears about it through sync.
    bob.sync_until("the rename event", |s| {
        s.events.iter().any(|e| {
            e.room_id == room_id
                && e.event_type == "m.room.name"
                && e.json["content"]["name"] == "New name"
        })
    })
    .await?;
    assert_eq!(
        bob.room(&room_id)?.name().as_deref(),
        Some("New name"),
        "Bob's client shows the new name"
    );

    // Reading it back works with and without the trailing slash...
    for path in [
        Http::state_path(room_id.as_str(), "m.room.name", ""),
        Http::state_path_with_slash(room_id.as_str(), "m.room.name", ""),
    ] {
        let r = http.get(&path, Some(&bob.access_token())).await?;
        r.expect_ok().with_context(|| format!("GET {path}"))?;
        assert_eq!(r.json["name"], "New name", "GET {path}");
    }
    // ...and through matrix-sdk's own request.
    let response = bob
        .client
        .send(get_state_event_for_key::v3::Request::new(
            room_id.clone(),
            StateEventType::RoomName,
            String::new(),
        ))
        .await
        .context("GET state through matrix-sdk")?;
    let content: Value = serde_json::from_str(response.event_or_content.get())?;
    assert_eq!(content["name"], "New name");

    // Writing without the trailing slash works too.
    let r = http
        .put(
            &Http::state_path(room_id.as_str(), "m.room.name", ""),
            Some(&alice.access_token()),
            serde_json::json!({"name": "Newest name"}),
        )
        .await?;
    r.expect_ok()?;
    bob.sync_until("the second rename", |s| {
        s.events
            .iter()
            .any(|e| e.event_type == "m.room.name" && e.json["content"]["name"] == "Newest name")
    })
    .await?;
    Ok(())
}
