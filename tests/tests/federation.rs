//! Federation user stories: two real Bellwire processes, each with its own
//! users, sharing rooms over the server-server API (TLS, server names with
//! ports, certificates from a throw-away CA). Alice lives on hs1, Bob on
//! hs2; each only ever talks to their own server.
//!
//! Also: a remote server that lies. Transactions signed by an unknown or
//! wrong key are refused, and events a server sends in someone else's name
//! are rejected and never shown to anyone.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use bellwire_tests::{
    Body, Http, MEDIA_V1, MEGOLM, Mxc, RawSync, Reply, SigningKey, TestServer, User,
    assert_encrypted_on_the_wire, assert_matrix_error, decode_image, enc, eventually,
    federation::{
        Federation, TEST_MAX_BACKOFF_SECS, alice_and_bob, hash_and_sign_pdu, message_pdu, now_ms,
        pdu_result, port_of, room_facts, share_room, share_room_with_preset, two_servers,
        unreachable_server_name,
    },
    password_for, test_image, verify_signature, wait_until_device_known,
};
use image::ImageFormat;
use matrix_sdk::{
    media::{MediaFormat, MediaRequestParameters},
    ruma::{
        OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId,
        api::client::{
            receipt::create_receipt::v3::ReceiptType,
            room::create_room::{self, v3::RoomPreset},
        },
        events::{
            receipt::ReceiptThread,
            room::{
                MediaSource,
                message::{ImageMessageEventContent, MessageType, RoomMessageEventContent},
            },
        },
    },
};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn ids(users: &[&User]) -> BTreeSet<String> {
    users.iter().map(|u| u.user_id.to_string()).collect()
}

/// `(sender, body)` of every message in `room` per /messages, oldest first.
async fn history(user: &User, room: &RoomId) -> Result<Vec<(String, String)>> {
    let messages = user
        .http()
        .all_messages(&user.access_token(), room.as_str())
        .await
        .with_context(|| format!("{} paginating {room}", user.user_id))?;
    Ok(messages
        .iter()
        .map(|m| {
            (
                m["sender"].as_str().unwrap_or_default().to_owned(),
                m["content"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// The ed25519 keys `server` publishes (key id -> unpadded base64), after
/// checking that the answer is its own and signed by them.
async fn published_keys(
    federation: &Federation,
    server: &TestServer,
) -> Result<BTreeMap<String, String>> {
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
    let mut keys = BTreeMap::new();
    for (key_id, key) in r.json["verify_keys"]
        .as_object()
        .with_context(|| format!("{name}: no verify_keys: {}", r.text))?
    {
        let key = key["key"]
            .as_str()
            .with_context(|| format!("{name}: verify key {key_id} has no `key`: {}", r.text))?;
        if key_id.starts_with("ed25519:") {
            verify_signature(&r.json, name, key_id, key)
                .with_context(|| format!("{name}'s key response is signed by its key {key_id}"))?;
            keys.insert(key_id.clone(), key.to_owned());
        }
    }
    ensure!(
        !keys.is_empty(),
        "{name}: no ed25519 verify key: {}",
        r.text
    );
    ensure!(
        r.json["valid_until_ts"]
            .as_u64()
            .is_some_and(|ts| ts > now_ms()),
        "{name}'s keys are already expired: {}",
        r.text
    );
    Ok(keys)
}

// ---------------------------------------------------------------------------
// The server's public face
// ---------------------------------------------------------------------------

/// Each server publishes its own signing key under its own name, signed by
/// that key, on its TLS listener, where it also answers the federation
/// version query and the client API.
#[tokio::test(flavor = "multi_thread")]
async fn servers_publish_signed_keys_over_tls() -> Result<()> {
    let (federation, hs1, hs2) = two_servers().await?;
    for server in [&hs1, &hs2] {
        let name = server.server_name();
        published_keys(&federation, server).await?;
        let https = federation.https(server)?;
        let r = https.get("/_matrix/federation/v1/version", None).await?;
        r.expect_ok()
            .with_context(|| format!("GET /_matrix/federation/v1/version of {name}"))?;
        ensure!(
            r.json["server"].is_object(),
            "{name}: the version answer has no `server` object: {}",
            r.text
        );

        // The same listener serves clients.
        https
            .assert_alive()
            .await
            .with_context(|| format!("the client API on {name}'s TLS listener"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Chat across servers
// ---------------------------------------------------------------------------

/// Alice (hs1) invites Bob (hs2) into a room; Bob sees the invite, joins,
/// and they chat both ways. Each sees the other typing, and each sees the
/// other's read receipt.
#[tokio::test(flavor = "multi_thread")]
async fn alice_and_bob_chat_type_and_read_across_servers() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;

    // The invite, as Bob's client sees it.
    let mut request = create_room::v3::Request::new();
    request.name = Some("Across the bay".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    let room_id = alice
        .client
        .create_room(request)
        .await?
        .room_id()
        .to_owned();
    let room = room_id.as_str();
    alice
        .room(&room_id)?
        .invite_user_by_id(&bob.user_id)
        .await
        .context("Alice invites Bob, who lives on another server")?;
    let invite_state = bob.wait_for_invite(&room_id).await?;
    let own_invite = invite_state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .with_context(|| format!("Bob's invite has no member event for him: {invite_state:#?}"))?;
    ensure!(
        own_invite["content"]["membership"] == "invite"
            && own_invite["sender"] == alice.user_id.as_str(),
        "Bob's invite member event: {own_invite}"
    );
    ensure!(
        invite_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Across the bay"),
        "the invite shows the room's name: {invite_state:#?}"
    );

    // Bob accepts; both servers agree on who is in the room.
    bob.join(&room_id).await?;
    alice
        .sync_until("Bob's join", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;
    let both = ids(&[&alice, &bob]);
    ensure!(
        alice.joined_members(&room_id).await? == both,
        "hs1's member list: {:?}",
        alice.memberships(&room_id).await?
    );
    ensure!(
        bob.joined_members(&room_id).await? == both,
        "hs2's member list: {:?}",
        bob.memberships(&room_id).await?
    );

    // Messages both ways, in the same order on both sides.
    let hello = "Hello from the west shore! 🌊";
    let reply = "Greetings from the east shore";
    let hello_id = alice.send_text(&room_id, hello).await?;
    bob.wait_for_text(&room_id, &alice.user_id, hello).await?;
    let reply_id = bob.send_text(&room_id, reply).await?;
    alice.wait_for_text(&room_id, &bob.user_id, reply).await?;
    let expected = vec![
        (alice.user_id.to_string(), hello.to_owned()),
        (bob.user_id.to_string(), reply.to_owned()),
    ];
    ensure!(
        history(&alice, &room_id).await? == expected,
        "hs1's history: {:?}",
        history(&alice, &room_id).await?
    );
    ensure!(
        history(&bob, &room_id).await? == expected,
        "hs2's history: {:?}",
        history(&bob, &room_id).await?
    );
    ensure!(
        bob.seen().event(&hello_id).is_some(),
        "Alice's message reached Bob under the id hs1 gave it ({hello_id})"
    );
    ensure!(
        alice.seen().event(&reply_id).is_some(),
        "Bob's reply reached Alice under the id hs2 gave it ({reply_id})"
    );

    // Typing, both ways.
    let mut alice_sync = alice.raw_sync();
    alice_sync.catch_up().await?;
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;
    alice.room(&room_id)?.typing_notice(true).await?;
    bob_sync
        .until("m.typing naming Alice (from hs1)", |r| {
            RawSync::typing_users(r, room).filter(|u| u.contains(&alice.user_id.to_string()))
        })
        .await?;
    alice.room(&room_id)?.typing_notice(false).await?;
    bob_sync
        .until("Alice to stop typing", |r| {
            RawSync::typing_users(r, room).filter(|u| !u.contains(&alice.user_id.to_string()))
        })
        .await?;
    bob.room(&room_id)?.typing_notice(true).await?;
    alice_sync
        .until("m.typing naming Bob (from hs2)", |r| {
            RawSync::typing_users(r, room).filter(|u| u.contains(&bob.user_id.to_string()))
        })
        .await?;

    // Read receipts, both ways.
    bob.room(&room_id)?
        .send_single_receipt(
            ReceiptType::Read,
            ReceiptThread::Unthreaded,
            OwnedEventId::try_from(hello_id.as_str())?,
        )
        .await
        .context("Bob's read receipt on Alice's message")?;
    let receipt = alice_sync
        .until("Bob's m.read receipt on Alice's message (from hs2)", |r| {
            RawSync::read_receipt(r, room, &hello_id, bob.user_id.as_str())
        })
        .await?;
    ensure!(
        receipt["ts"].as_u64().is_some_and(|ts| ts > 0),
        "the receipt carries a timestamp: {receipt}"
    );
    alice
        .room(&room_id)?
        .send_single_receipt(
            ReceiptType::Read,
            ReceiptThread::Unthreaded,
            OwnedEventId::try_from(reply_id.as_str())?,
        )
        .await
        .context("Alice's read receipt on Bob's reply")?;
    bob_sync
        .until("Alice's m.read receipt on Bob's reply (from hs1)", |r| {
            RawSync::read_receipt(r, room, &reply_id, alice.user_id.as_str())
        })
        .await?;
    Ok(())
}

/// Alice opens an encrypted DM with Bob on another server. Device keys,
/// one-time keys and room keys all travel between the servers; each
/// message is megolm ciphertext on both servers, and each client decrypts
/// the other's message.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_dm_across_servers() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;

    let room_id = alice
        .client
        .create_dm(&bob.user_id)
        .await
        .context("Alice creating an encrypted DM with Bob")?
        .room_id()
        .to_owned();
    let encryption = alice
        .http()
        .state(
            &alice.access_token(),
            room_id.as_str(),
            "m.room.encryption",
            "",
        )
        .await?;
    ensure!(
        encryption.json["algorithm"] == MEGOLM,
        "the DM is not encrypted: {}",
        encryption.text
    );
    let invite = bob.wait_for_invite(&room_id).await?;
    ensure!(
        invite.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["is_direct"] == true),
        "Bob's invite is marked direct: {invite:#?}"
    );
    bob.join(&room_id).await?;
    alice
        .sync_until("Bob's join", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;

    // Each client learns the other's device from the other server.
    wait_until_device_known(&alice, &bob.user_id, &bob.device_id()).await?;
    wait_until_device_known(&bob, &alice.user_id, &alice.device_id()).await?;

    let question = "Is the ferry still running tonight?";
    let question_id = alice.send_text(&room_id, question).await?;
    bob.wait_for_decrypted_text(&room_id, &alice.user_id, question)
        .await
        .context("Bob decrypts Alice's message")?;
    assert_encrypted_on_the_wire(&alice, &room_id, &question_id, question).await?;
    assert_encrypted_on_the_wire(&bob, &room_id, &question_id, question).await?;

    let answer = "Last one leaves at 23:10.";
    let answer_id = bob.send_text(&room_id, answer).await?;
    alice
        .wait_for_decrypted_text(&room_id, &bob.user_id, answer)
        .await
        .context("Alice decrypts Bob's answer")?;
    assert_encrypted_on_the_wire(&bob, &room_id, &answer_id, answer).await?;
    assert_encrypted_on_the_wire(&alice, &room_id, &answer_id, answer).await?;

    ensure!(
        alice.seen().undecryptable(&room_id).is_empty()
            && bob.seen().undecryptable(&room_id).is_empty(),
        "undecryptable events: Alice {:#?}, Bob {:#?}",
        alice.seen().undecryptable(&room_id),
        bob.seen().undecryptable(&room_id)
    );
    Ok(())
}

/// Alice uploads a photo to hs1 and sends it in the room; Bob's client
/// downloads it from hs2, which fetches it from hs1 over federation; the
/// bytes are identical.
#[tokio::test(flavor = "multi_thread")]
async fn a_picture_sent_on_one_server_is_downloaded_through_the_other() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Photos").await?;

    let photo = test_image(640, 480, ImageFormat::Png)?;
    let uploaded = alice
        .client
        .media()
        .upload(&"image/png".parse()?, photo.clone(), None)
        .await
        .context("Alice uploads her photo to hs1")?;
    let mxc = Mxc::parse(uploaded.content_uri.as_str())?;
    ensure!(
        mxc.server_name == hs1.server_name(),
        "an upload to {} got a content URI of another server: {mxc}",
        hs1.server_name()
    );
    alice
        .room(&room_id)?
        .send(RoomMessageEventContent::new(MessageType::Image(
            ImageMessageEventContent::plain("sunset.png".to_owned(), uploaded.content_uri),
        )))
        .await
        .context("Alice sends the photo")?;

    // Bob's client gets the message and reads the URL from it.
    bob.sync_until("Alice's m.image message", |s| {
        s.events.iter().any(|e| {
            e.room_id == room_id && e.json.pointer("/content/msgtype") == Some(&json!("m.image"))
        })
    })
    .await?;
    let seen = bob.seen();
    let image = seen
        .events
        .iter()
        .find(|e| {
            e.room_id == room_id && e.json.pointer("/content/msgtype") == Some(&json!("m.image"))
        })
        .expect("just seen");
    let url = image
        .json
        .pointer("/content/url")
        .and_then(Value::as_str)
        .with_context(|| format!("the image message has no url: {}", image.json))?;
    ensure!(
        url == mxc.to_string(),
        "the image message points at {url}, not {mxc}"
    );

    // Bob downloads it from his own server.
    let path = mxc.download_path();
    ensure!(
        path.starts_with(&format!("{MEDIA_V1}/download/{}/", enc(hs1.server_name()))),
        "download path {path}"
    );
    let r = bob
        .http()
        .get_bytes(&path, Some(&bob.access_token()), &[])
        .await?;
    r.expect_ok()
        .with_context(|| format!("Bob downloading {mxc} through hs2 ({path})"))?;
    ensure!(
        r.body == photo,
        "Bob got {} bytes through hs2 for Alice's {}-byte photo, or different ones",
        r.body.len(),
        photo.len()
    );
    ensure!(
        r.header("content-type") == Some("image/png"),
        "remote media keeps its Content-Type: {:?}",
        r.header("content-type")
    );

    // Bob's client gets the same bytes.
    let got = bob
        .client
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: MediaSource::Plain(mxc.to_sdk()?),
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .context("Bob's client downloading the photo")?;
    ensure!(got == photo, "Bob's client got different bytes");

    // A thumbnail for Bob's timeline, made by hs1 and fetched through hs2.
    let query = "width=96&height=96&method=crop";
    let r = bob
        .http()
        .get_bytes(&mxc.thumbnail_path(query), Some(&bob.access_token()), &[])
        .await?;
    r.expect_ok()
        .with_context(|| format!("Bob's 96x96 thumbnail of {mxc} through hs2"))?;
    let thumb = decode_image(&r.body).context("the remote thumbnail is an image")?;
    ensure!(
        (thumb.width(), thumb.height()) == (96, 96),
        "a 96x96 crop of a remote picture came back {}x{}",
        thumb.width(),
        thumb.height()
    );

    // Media hs1 never had is "not found" through hs2 too.
    let missing = Mxc {
        server_name: hs1.server_name().to_owned(),
        media_id: "bellwireTestsNoSuchMedia0123456789".to_owned(),
    };
    let r = bob
        .http()
        .get_bytes(&missing.download_path(), Some(&bob.access_token()), &[])
        .await?;
    r.expect_error(404, "M_NOT_FOUND")
        .with_context(|| format!("downloading {missing}, which hs1 never had, through hs2"))?;
    Ok(())
}

/// hs2 goes down while Alice keeps talking. hs1 keeps the messages for it;
/// when hs2 comes back Bob sees every one of them, in order, and his reply
/// reaches Alice.
#[tokio::test(flavor = "multi_thread")]
async fn messages_sent_while_a_server_is_down_arrive_when_it_returns() -> Result<()> {
    let (federation, hs1, mut hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Lighthouse log").await?;
    alice.send_text(&room_id, "Before the storm").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "Before the storm")
        .await?;

    let keys_before = published_keys(&federation, &hs2).await?;
    hs2.stop().await.context("stopping hs2")?;
    drop(bob);

    // Alice is not held up by the other server being away.
    let during: Vec<String> = (1..=6).map(|i| format!("Storm log entry {i}")).collect();
    for text in &during {
        let started = Instant::now();
        alice.send_text(&room_id, text).await?;
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "sending {text:?} took {:?} while hs2 was down",
            started.elapsed()
        );
    }

    // hs2 stays away long enough for hs1's retries to back off to their cap
    // (TEST_MAX_BACKOFF_SECS) and fail there too.
    tokio::time::sleep(Duration::from_secs(2 * TEST_MAX_BACKOFF_SECS + 1)).await;

    hs2.start_again().await.context("restarting hs2")?;
    ensure!(
        hs2.federation_addr().map(|a| a.port()) == Some(port_of(hs2.server_name())?),
        "hs2 came back on another federation port: {:?}",
        hs2.federation_addr()
    );
    // Other servers cached its signing key: it must still be the same one.
    let keys_after = published_keys(&federation, &hs2).await?;
    ensure!(
        keys_after == keys_before,
        "hs2 publishes other signing keys after a restart: {keys_before:?} before, \
         {keys_after:?} after"
    );
    // The client port changed with the restart: Bob signs in again.
    let bob = hs2.login("bob", &password_for("bob")).await?;
    let last = during.last().expect("six entries");
    bob.wait_for_text(&room_id, &alice.user_id, last)
        .await
        .context("the entries sent during the outage reach hs2 once it is back")?;

    let mut expected = vec![(alice.user_id.to_string(), "Before the storm".to_owned())];
    expected.extend(
        during
            .iter()
            .map(|t| (alice.user_id.to_string(), t.clone())),
    );
    let last_seen = std::sync::Mutex::new(Vec::new());
    eventually("hs2's history to hold every entry, in order", || async {
        let got = history(&bob, &room_id).await?;
        let done = got == expected;
        *last_seen.lock().unwrap() = got;
        Ok(done)
    })
    .await
    .with_context(|| format!("hs2's history: {:#?}", last_seen.lock().unwrap()))?;

    let reply = "All entries received, the light is on again";
    bob.send_text(&room_id, reply).await?;
    alice
        .wait_for_text(&room_id, &bob.user_id, reply)
        .await
        .context("Bob's reply after the outage reaches Alice")?;
    Ok(())
}

/// Bob's server holds the room's create event only as part of the state
/// his join brought (it is not in hs2's timeline). When his client asks for
/// the context around it, hs2 says it has no such event in the timeline
/// rather than failing, and goes on serving; around his own join, the
/// context is there.
#[tokio::test(flavor = "multi_thread")]
async fn the_context_of_an_event_known_only_from_a_join_is_not_found() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Context").await?;
    let facts = room_facts(&bob, &room_id).await?;
    let http = bob.http();
    let context = |event: &str| {
        format!(
            "/_matrix/client/v3/rooms/{}/context/{}",
            enc(room_id.as_str()),
            enc(event)
        )
    };
    http.get(&context(&facts.create), Some(&bob.access_token()))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    let own_join = facts
        .members
        .get(bob.user_id.as_str())
        .context("Bob's join is in the room state")?;
    let r = http
        .get(&context(own_join), Some(&bob.access_token()))
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["event"]["event_id"] == own_join.as_str(),
        "{}",
        r.text
    );
    Ok(())
}

/// Bob leaves the room: Alice's client sees his membership turn to
/// `leave`, and both servers agree he is gone.
#[tokio::test(flavor = "multi_thread")]
async fn leaving_a_federated_room_is_seen_on_both_servers() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Short visit").await?;
    alice.send_text(&room_id, "Welcome!").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "Welcome!")
        .await?;

    bob.room(&room_id)?
        .leave()
        .await
        .context("Bob leaves through hs2")?;
    alice
        .sync_until("Bob's membership to become leave", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("leave")
        })
        .await?;
    let members = alice.memberships(&room_id).await?;
    ensure!(
        members.get(bob.user_id.as_str()).map(String::as_str) == Some("leave"),
        "hs1's member list after Bob left: {members:?}"
    );
    ensure!(
        alice.joined_members(&room_id).await? == ids(&[&alice]),
        "hs1 still counts Bob as joined: {members:?}"
    );
    bob.sync_until("the room in Bob's leave section", |s| {
        s.left.contains(&room_id)
    })
    .await?;
    let joined = bob.http().joined_rooms(&bob.access_token()).await?;
    ensure!(
        !joined.contains(&room_id.to_string()),
        "hs2 still lists the room among Bob's joined rooms: {joined:?}"
    );
    Ok(())
}

/// Three servers in one room: Carol (hs3) joins Alice's room on hs1, where
/// Bob (hs2) already is. Whoever writes, the message reaches both other
/// servers, and all three agree on who is in the room.
#[tokio::test(flavor = "multi_thread")]
async fn three_servers_share_one_room() -> Result<()> {
    let (federation, hs1, hs2) = two_servers().await?;
    let hs3 = federation.start_server("hs3").await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let carol = hs3.new_user("carol").await?;
    let room_id = share_room(&alice, &bob, "Three shores").await?;

    alice
        .room(&room_id)?
        .invite_user_by_id(&carol.user_id)
        .await
        .context("Alice invites Carol (hs3)")?;
    carol.wait_for_invite(&room_id).await?;
    carol.join(&room_id).await?;
    for user in [&alice, &bob] {
        user.sync_until("Carol's join", |s| {
            s.membership(&room_id, &carol.user_id).as_deref() == Some("join")
        })
        .await
        .with_context(|| format!("{} learns that Carol joined", user.user_id))?;
    }

    let users = [&alice, &bob, &carol];
    for (i, sender) in users.iter().enumerate() {
        let text = format!("{} says hello to both other shores", sender.localpart);
        sender.send_text(&room_id, &text).await?;
        for (j, reader) in users.iter().enumerate() {
            if i != j {
                reader
                    .wait_for_text(&room_id, &sender.user_id, &text)
                    .await
                    .with_context(|| {
                        format!("{}'s message reaches {}", sender.user_id, reader.user_id)
                    })?;
            }
        }
    }

    let everyone = ids(&users);
    for user in users {
        let joined = user.joined_members(&room_id).await?;
        ensure!(
            joined == everyone,
            "{}'s server thinks the room holds {joined:?}",
            user.user_id
        );
    }
    Ok(())
}

/// Alice and Bob write at the same time, so each server extends the room's
/// history without having seen the other's latest message. Afterwards both
/// servers hold every message, and each person's messages are in the order
/// they were sent.
#[tokio::test(flavor = "multi_thread")]
async fn both_sides_writing_at_once_lose_nothing() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Crosstalk").await?;

    let n = 10;
    let alice_texts: Vec<String> = (1..=n).map(|i| format!("Alice line {i}")).collect();
    let bob_texts: Vec<String> = (1..=n).map(|i| format!("Bob line {i}")).collect();
    let send_all = |user: &'static str, who: &User, texts: Vec<String>| {
        let room_id = room_id.clone();
        let http = who.http();
        let token = who.access_token();
        async move {
            for (i, text) in texts.iter().enumerate() {
                http.send_text(&token, room_id.as_str(), &format!("{user}-{i}"), text)
                    .await?
                    .expect_ok()
                    .with_context(|| format!("{user} sending {text:?}"))?;
            }
            anyhow::Ok(())
        }
    };
    let (a, b) = tokio::join!(
        send_all("alice", &alice, alice_texts.clone()),
        send_all("bob", &bob, bob_texts.clone())
    );
    a?;
    b?;

    let in_order = |got: &[(String, String)], sender: &User, texts: &[String]| -> bool {
        let mine: Vec<&String> = got
            .iter()
            .filter(|(s, _)| s == sender.user_id.as_str())
            .map(|(_, t)| t)
            .collect();
        mine.len() == texts.len() && mine.iter().zip(texts).all(|(a, b)| *a == b)
    };
    for user in [&alice, &bob] {
        let last_seen = std::sync::Mutex::new(Vec::new());
        eventually(
            &format!("{}'s server to hold all {} lines", user.user_id, 2 * n),
            || async {
                let got = history(user, &room_id).await?;
                let done = in_order(&got, &alice, &alice_texts) && in_order(&got, &bob, &bob_texts);
                *last_seen.lock().unwrap() = got;
                Ok(done)
            },
        )
        .await
        .with_context(|| {
            format!(
                "{}'s server's history: {:#?}",
                user.user_id,
                last_seen.lock().unwrap()
            )
        })?;
    }

    // Both keep talking normally afterwards.
    bob.send_text(&room_id, "That was a lot at once").await?;
    alice
        .wait_for_text(&room_id, &bob.user_id, "That was a lot at once")
        .await?;
    alice.send_text(&room_id, "Agreed").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "Agreed")
        .await?;
    Ok(())
}

/// Alice kicks Bob from her public room: his client sees who removed him
/// and why, and his server no longer lets him write there. He may come
/// back (the room is public); once Alice bans him, he cannot.
#[tokio::test(flavor = "multi_thread")]
async fn a_kicked_remote_user_may_return_a_banned_one_may_not() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id =
        share_room_with_preset(&alice, &bob, "Town square", RoomPreset::PublicChat).await?;
    let via = vec![OwnedServerName::try_from(hs1.server_name())?];
    let last_member_event = |user: &User| {
        user.seen()
            .events
            .iter()
            .rev()
            .find(|e| {
                e.room_id == room_id
                    && e.event_type == "m.room.member"
                    && e.state_key.as_deref() == Some(bob.user_id.as_str())
            })
            .map(|e| e.json.clone())
    };

    alice
        .room(&room_id)?
        .kick_user(&bob.user_id, Some("Closing time"))
        .await
        .context("Alice kicks Bob")?;
    bob.sync_until("Bob's own membership to become leave", |s| {
        s.membership(&room_id, &bob.user_id).as_deref() == Some("leave")
    })
    .await?;
    let kick = last_member_event(&bob).expect("just seen");
    ensure!(
        kick["sender"] == alice.user_id.as_str() && kick["content"]["reason"] == "Closing time",
        "Bob's client sees who kicked him and why: {kick}"
    );
    let r = bob
        .http()
        .send_text(&bob.access_token(), room_id.as_str(), "after-kick", "Hey!")
        .await?;
    r.expect_error(403, "M_FORBIDDEN")
        .context("Bob writing in the room he was kicked from")?;

    // A kick is not a ban: Bob comes back through Alice's server.
    bob.client
        .join_room_by_id_or_alias(<&RoomOrAliasId>::from(room_id.as_ref() as &RoomId), &via)
        .await
        .context("Bob rejoins the public room after the kick")?;
    alice
        .sync_until("Bob's join after the kick", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;

    alice
        .room(&room_id)?
        .ban_user(&bob.user_id, Some("For good"))
        .await
        .context("Alice bans Bob")?;
    bob.sync_until("Bob's own membership to become ban", |s| {
        s.membership(&room_id, &bob.user_id).as_deref() == Some("ban")
    })
    .await?;
    let ban = last_member_event(&bob).expect("just seen");
    ensure!(
        ban["sender"] == alice.user_id.as_str() && ban["content"]["reason"] == "For good",
        "Bob's client sees who banned him and why: {ban}"
    );
    let again = bob
        .client
        .join_room_by_id_or_alias(<&RoomOrAliasId>::from(room_id.as_ref() as &RoomId), &via)
        .await;
    assert_matrix_error(&again, 403, "M_FORBIDDEN");
    let members = alice.memberships(&room_id).await?;
    ensure!(
        members.get(bob.user_id.as_str()).map(String::as_str) == Some("ban"),
        "hs1's member list after the ban: {members:?}"
    );
    Ok(())
}

/// Alice opens a public room on hs1 with an alias and lists it in hs1's
/// directory. Bob, on hs2, browses hs1's directory through his own server,
/// finds the room, joins it by its alias, and sees Alice under the display
/// name she chose (also in her profile, fetched through hs2).
#[tokio::test(flavor = "multi_thread")]
async fn bob_finds_alices_public_room_and_joins_by_alias() -> Result<()> {
    let (_federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    alice
        .client
        .account()
        .set_display_name(Some("Alice of the West Shore"))
        .await
        .context("Alice sets her display name")?;
    let room = alice
        .http()
        .create_room(
            &alice.access_token(),
            json!({
                "preset": "public_chat",
                "visibility": "public",
                "name": "West shore market",
                "room_alias_name": "market",
            }),
        )
        .await
        .context("Alice creates a public, listed room with an alias")?;
    let alias = format!("#market:{}", hs1.server_name());

    // hs1's directory, as Bob's server relays it.
    let r = bob
        .http()
        .get(
            &format!("{V3}/publicRooms?server={}", enc(hs1.server_name())),
            Some(&bob.access_token()),
        )
        .await?;
    r.expect_ok()
        .context("Bob lists hs1's public rooms through hs2")?;
    let listed = r.json["chunk"]
        .as_array()
        .with_context(|| format!("/publicRooms answer without chunk: {}", r.text))?
        .iter()
        .find(|c| c["room_id"] == room.as_str())
        .with_context(|| {
            format!(
                "Alice's room is not in hs1's directory as hs2 shows it: {}",
                r.text
            )
        })?
        .clone();
    ensure!(
        listed["name"] == "West shore market" && listed["canonical_alias"] == alias.as_str(),
        "the directory entry shows the room's name and alias: {listed}"
    );

    // The alias resolves through hs2, and Bob joins by it.
    let r = bob
        .http()
        .get(
            &format!("{V3}/directory/room/{}", enc(&alias)),
            Some(&bob.access_token()),
        )
        .await?;
    r.expect_ok()
        .with_context(|| format!("Bob resolves {alias} through hs2"))?;
    ensure!(
        r.json["room_id"] == room.as_str()
            && r.json["servers"]
                .as_array()
                .is_some_and(|s| s.iter().any(|n| n == hs1.server_name())),
        "{alias} resolves to the room, with hs1 among its servers: {}",
        r.text
    );
    bob.client
        .join_room_by_id_or_alias(<&RoomOrAliasId>::try_from(alias.as_str())?, &[])
        .await
        .with_context(|| format!("Bob joins {alias}"))?;
    let room_id = OwnedRoomId::try_from(room.as_str())?;
    alice
        .sync_until("Bob's join", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;
    alice.send_text(&room_id, "Fresh fish today").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "Fresh fish today")
        .await?;

    // Bob sees Alice's display name: in the room and in her profile.
    let name = bob
        .room(&room_id)?
        .get_member_no_sync(&alice.user_id)
        .await?
        .and_then(|m| m.display_name().map(str::to_owned));
    ensure!(
        name.as_deref() == Some("Alice of the West Shore"),
        "Bob's client shows Alice as {name:?}"
    );
    let r = bob
        .http()
        .get(
            &format!("{V3}/profile/{}", enc(alice.user_id.as_str())),
            Some(&bob.access_token()),
        )
        .await?;
    r.expect_ok()
        .context("Bob fetches Alice's profile through hs2")?;
    ensure!(
        r.json["displayname"] == "Alice of the West Shore",
        "Alice's profile as hs2 relays it: {}",
        r.text
    );
    Ok(())
}

/// hs2 is down while Alice writes, and then hs1 itself restarts before hs2
/// comes back. What hs1 acknowledged to Alice still reaches Bob, without
/// anyone writing anything more.
#[tokio::test(flavor = "multi_thread")]
async fn messages_waiting_for_a_server_survive_a_restart_of_the_sender() -> Result<()> {
    let (federation, mut hs1, mut hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id = share_room(&alice, &bob, "Night shift").await?;
    alice.send_text(&room_id, "Shift starts").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "Shift starts")
        .await?;

    hs2.stop().await.context("stopping hs2")?;
    drop(bob);
    let during: Vec<String> = (1..=3).map(|i| format!("Night note {i}")).collect();
    for text in &during {
        alice.send_text(&room_id, text).await?;
    }
    tokio::time::sleep(Duration::from_secs(TEST_MAX_BACKOFF_SECS)).await;

    let keys_before = published_keys(&federation, &hs1).await?;
    let status = hs1.restart().await.context("restarting hs1")?;
    ensure!(status.success(), "hs1 exited with {status} on SIGTERM");
    drop(alice);
    hs2.start_again().await.context("restarting hs2")?;
    ensure!(
        published_keys(&federation, &hs1).await? == keys_before,
        "hs1 publishes other signing keys after its restart"
    );

    let bob = hs2.login("bob", &password_for("bob")).await?;
    let alice_id = hs1.user_id("alice");
    for text in &during {
        bob.wait_for_text(&room_id, &alice_id, text)
            .await
            .with_context(|| {
                format!("{text:?}, sent while hs2 was down, reaches it after hs1 restarted")
            })?;
    }
    let mut expected = vec![(alice_id.to_string(), "Shift starts".to_owned())];
    expected.extend(during.iter().map(|t| (alice_id.to_string(), t.clone())));
    let got = history(&bob, &room_id).await?;
    ensure!(got == expected, "hs2's history: {got:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Lies from other servers
// ---------------------------------------------------------------------------

/// Fails if anything `user` can see of `room` (what their client synced,
/// the /messages history, the events by id) contains `marker`.
async fn assert_never_shown(user: &User, room: &RoomId, marker: &str, ids: &[&str]) -> Result<()> {
    user.sync_once().await?;
    let seen = user.seen();
    let shown: Vec<_> = seen
        .events
        .iter()
        .filter(|e| e.json.to_string().contains(marker))
        .collect();
    ensure!(
        shown.is_empty(),
        "{}'s client received forged events: {shown:#?}",
        user.user_id
    );
    let messages = user
        .http()
        .all_messages(&user.access_token(), room.as_str())
        .await?;
    let shown: Vec<_> = messages
        .iter()
        .filter(|m| m.to_string().contains(marker))
        .collect();
    ensure!(
        shown.is_empty(),
        "{}'s server shows forged events in /messages: {shown:#?}",
        user.user_id
    );
    for id in ids {
        let r = user
            .http()
            .event(&user.access_token(), room.as_str(), id)
            .await?;
        ensure!(
            r.status == 404,
            "{}'s server serves the forged event {id}: {} {}",
            user.user_id,
            r.status,
            r.text
        );
    }
    Ok(())
}

/// A remote server (run by the test) joins Alice's public room with its
/// user Mallory, then sends hs1 things it must not believe:
/// - a transaction signed by a server whose keys cannot be fetched, and one
///   signed with a key the remote never published: both refused with 401;
/// - in a correctly signed transaction, next to an honest message by
///   Mallory (which hs1 takes and Alice sees, so these hand-made events are
///   sound): a message in Bob's name (Bob is on hs2, which never signed
///   it), a message by Mallory signed with a key the remote never
///   published, and one by a remote user who never joined. Each of those
///   is refused with an error.
///
/// None of the forgeries ever shows up for Alice (hs1) or Bob (hs2), while
/// a real message sent afterwards does.
#[tokio::test(flavor = "multi_thread")]
async fn forged_events_are_rejected_and_never_shown() -> Result<()> {
    let (federation, hs1, hs2) = two_servers().await?;
    let (alice, bob) = alice_and_bob(&hs1, &hs2).await?;
    let room_id =
        share_room_with_preset(&alice, &bob, "Harbour office", RoomPreset::PublicChat).await?;
    let room = room_id.as_str();
    let hs1_https = federation.https(&hs1)?;
    let destination = hs1.server_name();

    // The remote server joins its user Mallory, the way servers do.
    let remote = federation.fake_remote("remote").await?;
    let mallory = remote.user_id("mallory");
    remote
        .join(&hs1_https, destination, room, "mallory")
        .await
        .context("the remote server joins Mallory to Alice's public room")?;
    alice
        .sync_until("Mallory's join", |s| {
            s.membership(
                &room_id,
                <&UserId>::try_from(mallory.as_str()).expect("user id"),
            )
            .as_deref()
                == Some("join")
        })
        .await?;
    alice.send_text(&room_id, "Harbour office is open").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "Harbour office is open")
        .await?;

    let facts = room_facts(&alice, &room_id).await?;
    let prev = std::slice::from_ref(&facts.latest);
    const MARK: &str = "FORGED-7f3a";
    let version = facts.version.as_str();

    // 1. An origin nobody can reach: its key cannot be fetched.
    let ghost = unreachable_server_name();
    let ghost_key = SigningKey::named("ed25519:ghost");
    let ghost_user = format!("@mallory:{ghost}");
    let mut pdu = message_pdu(
        room,
        &ghost_user,
        &format!("{MARK} from a server nobody can reach"),
        prev,
        &facts.auth_events_for(&ghost_user)?,
        100,
    );
    let ghost_id = hash_and_sign_pdu(&mut pdu, version, &ghost, &ghost_key)?;
    let r = hs1_https
        .send_transaction(&ghost, &ghost_key, destination, "ghost-1", vec![pdu])
        .await?;
    r.expect_error(401, "M_UNAUTHORIZED")
        .context("a transaction signed by an origin whose key cannot be fetched")?;

    // 2. The remote's name, but the request is signed with a key it never
    //    published (under the same key id).
    let impostor_key = SigningKey::named(remote.key().key_id());
    let mut pdu = message_pdu(
        room,
        &mallory,
        &format!("{MARK} in a transaction signed with a key never published"),
        prev,
        &facts.auth_events_for(&mallory)?,
        100,
    );
    let impostor_tx_id = hash_and_sign_pdu(&mut pdu, version, remote.name(), &impostor_key)?;
    let r = hs1_https
        .send_transaction(
            remote.name(),
            &impostor_key,
            destination,
            "impostor-1",
            vec![pdu],
        )
        .await?;
    r.expect_error(401, "M_UNAUTHORIZED")
        .context("a transaction signed with a key the origin never published")?;

    // 3. A correctly signed transaction: one honest event and three lies.
    let honest_text = "Mallory here, from the remote server: hello";
    let mut honest = message_pdu(
        room,
        &mallory,
        honest_text,
        prev,
        &facts.auth_events_for(&mallory)?,
        100,
    );
    let honest_id = hash_and_sign_pdu(&mut honest, version, remote.name(), remote.key())?;
    let bob_id = bob.user_id.as_str();
    let mut in_bobs_name = message_pdu(
        room,
        bob_id,
        &format!("{MARK} pretending to be Bob"),
        prev,
        &facts.auth_events_for(bob_id)?,
        100,
    );
    let in_bobs_name_id =
        hash_and_sign_pdu(&mut in_bobs_name, version, remote.name(), remote.key())?;
    let mut badly_signed = message_pdu(
        room,
        &mallory,
        &format!("{MARK} signed with a key the remote never published"),
        prev,
        &facts.auth_events_for(&mallory)?,
        100,
    );
    let badly_signed_id =
        hash_and_sign_pdu(&mut badly_signed, version, remote.name(), &impostor_key)?;
    let eve = remote.user_id("eve");
    ensure!(
        !facts.members.contains_key(&eve),
        "Eve must not be in the room"
    );
    let mut outsider = message_pdu(
        room,
        &eve,
        &format!("{MARK} from someone who never joined"),
        prev,
        &facts.auth_events_for(&eve)?,
        100,
    );
    let outsider_id = hash_and_sign_pdu(&mut outsider, version, remote.name(), remote.key())?;
    let r = hs1_https
        .send_transaction(
            remote.name(),
            remote.key(),
            destination,
            "lies-1",
            vec![honest, in_bobs_name, badly_signed, outsider],
        )
        .await?;
    r.expect_ok()
        .context("a correctly signed transaction is taken (its events are judged one by one)")?;
    ensure!(
        matches!(pdu_result(&r.json, &honest_id), Some(None)),
        "hs1 did not take Mallory's honest message ({honest_id}); the hand-made events \
         must be sound for the refusals below to mean anything: {}",
        r.text
    );
    for (what, id) in [
        ("the message in Bob's name", &in_bobs_name_id),
        (
            "Mallory's message signed with an unpublished key",
            &badly_signed_id,
        ),
        (
            "the message by a remote user who never joined",
            &outsider_id,
        ),
    ] {
        ensure!(
            matches!(pdu_result(&r.json, id), Some(Some(_))),
            "hs1 did not report {what} ({id}) as refused: {}",
            r.text
        );
    }
    alice
        .wait_for_text(
            &room_id,
            <&UserId>::try_from(mallory.as_str())?,
            honest_text,
        )
        .await
        .context("Alice sees Mallory's honest message")?;

    // A real message afterwards gets through to both sides...
    let after = "Harbour office closes at five";
    alice.send_text(&room_id, after).await?;
    bob.wait_for_text(&room_id, &alice.user_id, after).await?;
    alice.wait_for_text(&room_id, &alice.user_id, after).await?;

    // ...and none of the forgeries ever shows, anywhere.
    let forged = [
        ghost_id.as_str(),
        impostor_tx_id.as_str(),
        in_bobs_name_id.as_str(),
        badly_signed_id.as_str(),
        outsider_id.as_str(),
    ];
    assert_never_shown(&alice, &room_id, MARK, &forged).await?;
    assert_never_shown(&bob, &room_id, MARK, &forged).await?;
    let expected = vec![
        (
            alice.user_id.to_string(),
            "Harbour office is open".to_owned(),
        ),
        (mallory.clone(), honest_text.to_owned()),
        (alice.user_id.to_string(), after.to_owned()),
    ];
    let got = history(&alice, &room_id).await?;
    ensure!(got == expected, "hs1's history: {got:#?}");
    Ok(())
}

/// Requests to the federation API without any signature are refused.
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_federation_requests_are_refused() -> Result<()> {
    let federation = Federation::new()?;
    let hs1 = federation.start_server("hs1").await?;
    let https = federation.https(&hs1)?;
    let body =
        json!({"origin": "localhost:1", "origin_server_ts": now_ms(), "pdus": [], "edus": []});
    let r = https
        .put("/_matrix/federation/v1/send/unsigned-1", None, body)
        .await?;
    r.expect_error(401, "M_UNAUTHORIZED")
        .context("PUT /send without an Authorization header")?;
    let r: Reply = https
        .call_with_headers(
            "GET",
            "/_matrix/federation/v1/query/profile?user_id=%40alice%3Alocalhost",
            None,
            &[(
                "authorization",
                "X-Matrix origin=\"localhost:1\",key=\"ed25519:x\",sig=\"AAAA\"",
            )],
            Body::None,
        )
        .await?;
    r.expect_error(401, "M_UNAUTHORIZED")
        .context("a malformed X-Matrix header")?;
    Ok(())
}

/// Alice's public room lets a remote server's user in; then Alice bans that
/// server with an `m.room.server_acl`. Its next message is refused and never
/// shown, it cannot read the room's events or join another user, while the
/// room goes on for everyone else.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_acl_shuts_a_server_out_of_a_room() -> Result<()> {
    let federation = Federation::new()?;
    let hs1 = federation.start_server("hs1").await?;
    let alice = hs1.new_user("alice").await?;
    let token = alice.access_token();
    let room = alice
        .http()
        .create_room(&token, json!({"preset": "public_chat", "name": "Quay"}))
        .await?;
    let room_id = OwnedRoomId::try_from(room.as_str())?;
    let hs1_https = federation.https(&hs1)?;
    let destination = hs1.server_name();
    let remote = federation.fake_remote("acl-remote").await?;
    let mallory = remote.user_id("mallory");
    remote
        .join(&hs1_https, destination, &room, "mallory")
        .await
        .context("Mallory joins before the ACL")?;

    // Before the ACL, Mallory's message is taken.
    let facts = room_facts(&alice, &room_id).await?;
    let mut before = message_pdu(
        &room,
        &mallory,
        "ACL-TEST before",
        std::slice::from_ref(&facts.latest),
        &facts.auth_events_for(&mallory)?,
        100,
    );
    let before_id = hash_and_sign_pdu(&mut before, &facts.version, remote.name(), remote.key())?;
    let r = hs1_https
        .send_transaction(
            remote.name(),
            remote.key(),
            destination,
            "acl-1",
            vec![before],
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        pdu_result(&r.json, &before_id) == Some(None),
        "Mallory's message before the ACL was refused: {}",
        r.text
    );

    // Alice shuts out every server on "localhost" but her own (an ACL never
    // applies to the server that holds the room for its own users).
    let acl = json!({"allow": ["*"], "deny": ["localhost"], "allow_ip_literals": false});
    alice
        .http()
        .put(
            &Http::state_path(&room, "m.room.server_acl", ""),
            Some(&token),
            acl,
        )
        .await?
        .expect_ok()
        .context("Alice sets the server ACL")?;

    let facts = room_facts(&alice, &room_id).await?;
    let mut after = message_pdu(
        &room,
        &mallory,
        "ACL-TEST after",
        std::slice::from_ref(&facts.latest),
        &facts.auth_events_for(&mallory)?,
        100,
    );
    let after_id = hash_and_sign_pdu(&mut after, &facts.version, remote.name(), remote.key())?;
    let r = hs1_https
        .send_transaction(
            remote.name(),
            remote.key(),
            destination,
            "acl-2",
            vec![after],
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        matches!(pdu_result(&r.json, &after_id), Some(Some(_))),
        "Mallory's message after the ACL was not refused: {}",
        r.text
    );

    // The denied server can neither read the room nor bring anyone else in.
    let path = format!("/_matrix/federation/v1/event/{}", enc(&before_id));
    hs1_https
        .federation_call(remote.name(), remote.key(), destination, "GET", &path, None)
        .await?
        .expect_error(403, "M_FORBIDDEN")
        .context("a denied server fetching an event of the room")?;
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        enc(&room),
        enc(&remote.user_id("trudy"))
    );
    hs1_https
        .federation_call(remote.name(), remote.key(), destination, "GET", &path, None)
        .await?
        .expect_error(403, "M_FORBIDDEN")
        .context("a denied server asking to join another user")?;

    // Alice's room goes on; the refused message never shows.
    alice
        .http()
        .send_text(&token, &room, "acl-after", "ACL-TEST still open for us")
        .await?
        .expect_ok()?;
    let history = alice.http().all_messages(&token, &room).await?;
    let bodies: Vec<&str> = history
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    ensure!(
        bodies.contains(&"ACL-TEST before") && bodies.contains(&"ACL-TEST still open for us"),
        "history: {bodies:?}"
    );
    ensure!(
        !bodies.contains(&"ACL-TEST after"),
        "the refused message shows: {bodies:?}"
    );
    Ok(())
}
