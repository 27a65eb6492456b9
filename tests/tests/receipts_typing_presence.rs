//! Ephemeral chat signals through a real bellwire process: typing
//! notifications, read receipts (public, private, threaded) and read markers,
//! unread notification counts, and presence (including hidden presence and
//! `set_presence` on /sync).
//!
//! matrix-sdk sends the requests where it has a natural call (typing, public
//! receipts); everything that is checked is checked on the raw /sync JSON,
//! which the SDK would otherwise digest.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, RawSync, Reply, ServerOptions, TestServer, User, enc, eventually};
use matrix_sdk::ruma::{
    OwnedEventId, api::client::receipt::create_receipt::v3::ReceiptType,
    events::receipt::ReceiptThread,
};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

/// The receipt object (`{ts, thread_id?}`) of `user` for `event` of `rtype`
/// in the `m.receipt` ephemeral events of `room` in `resp`.
fn receipt_of(resp: &Value, room: &str, event: &str, rtype: &str, user: &str) -> Option<Value> {
    RawSync::ephemeral(resp, room, "m.receipt")
        .into_iter()
        .find_map(|ev| {
            ev.get("content")?
                .get(event)?
                .get(rtype)?
                .get(user)
                .cloned()
        })
}

/// Every receipt type key found in the `m.receipt` events of `resp`.
fn receipt_types(resp: &Value, room: &str) -> Vec<String> {
    let mut out = Vec::new();
    for ev in RawSync::ephemeral(resp, room, "m.receipt") {
        if let Some(content) = ev.get("content").and_then(Value::as_object) {
            for per_event in content.values() {
                if let Some(types) = per_event.as_object() {
                    out.extend(types.keys().cloned());
                }
            }
        }
    }
    out
}

async fn post_receipt(
    http: &Http,
    token: &str,
    room: &str,
    rtype: &str,
    event: &str,
    body: Value,
) -> Result<Reply> {
    http.post(
        &format!(
            "{V3}/rooms/{}/receipt/{}/{}",
            enc(room),
            enc(rtype),
            enc(event)
        ),
        Some(token),
        body,
    )
    .await
}

async fn put_typing(http: &Http, user: &User, room: &str, body: Value) -> Result<Reply> {
    http.put(
        &format!(
            "{V3}/rooms/{}/typing/{}",
            enc(room),
            enc(user.user_id.as_str())
        ),
        Some(&user.access_token()),
        body,
    )
    .await
}

async fn put_presence(http: &Http, user: &User, body: Value) -> Result<Reply> {
    http.put(
        &presence_path(user.user_id.as_str()),
        Some(&user.access_token()),
        body,
    )
    .await
}

fn presence_path(user: &str) -> String {
    format!("{V3}/presence/{}/status", enc(user))
}

/// Content of a thread reply to `root` (with the reply fallback the spec
/// asks thread-unaware clients to see).
fn thread_reply(root: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": true,
            "m.in_reply_to": {"event_id": root},
        },
    })
}

/// Alice types in a room she shares with Bob: Bob's /sync shows an `m.typing`
/// event naming her, then an empty list when she stops; a short typing
/// timeout expires on its own, not before it is due.
#[tokio::test(flavor = "multi_thread")]
async fn bob_sees_alice_typing_and_stopping() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = alice.create_room_with("Typing", &[&bob]).await?;
    let room = room_id.as_str();
    let only_alice = vec![alice.user_id.to_string()];

    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    // Alice's client says she is typing (PUT typing {typing: true, timeout: 4000}).
    alice.room(&room_id)?.typing_notice(true).await?;
    bob_sync
        .until("m.typing naming Alice", |r| {
            RawSync::typing_users(r, room).filter(|u| *u == only_alice)
        })
        .await?;

    // She stops: Bob sees nobody typing.
    alice.room(&room_id)?.typing_notice(false).await?;
    bob_sync
        .until("m.typing with an empty user list", |r| {
            RawSync::typing_users(r, room).filter(Vec::is_empty)
        })
        .await?;

    // A short timeout runs out without Alice saying anything else.
    let started = Instant::now();
    put_typing(
        &http,
        &alice,
        room,
        json!({"typing": true, "timeout": 1500}),
    )
    .await?
    .expect_ok()
    .context("typing with a 1500 ms timeout")?;
    bob_sync
        .until("m.typing naming Alice again", |r| {
            RawSync::typing_users(r, room).filter(|u| *u == only_alice)
        })
        .await?;
    bob_sync
        .until("Alice's 1500 ms typing timeout to expire", |r| {
            RawSync::typing_users(r, room).filter(Vec::is_empty)
        })
        .await?;
    let elapsed = started.elapsed();
    ensure!(
        elapsed >= Duration::from_millis(1000),
        "typing with a 1500 ms timeout stopped after only {elapsed:?}"
    );
    Ok(())
}

/// Bob's public read receipt reaches Alice; his private receipt reaches only
/// himself; threaded receipts carry their `thread_id`; the fully-read marker
/// is room account data, never a receipt.
#[tokio::test(flavor = "multi_thread")]
async fn read_receipts_public_private_threaded_and_fully_read() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = alice.create_room_with("Receipts", &[&bob]).await?;
    let room = room_id.as_str();
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());
    let bob_id = bob.user_id.as_str();

    let first = alice.send_text(&room_id, "first").await?;
    let second = alice.send_text(&room_id, "second").await?;
    let mut alice_sync = alice.raw_sync();
    alice_sync.catch_up().await?;
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    // Bob's client marks the first message read (public, unthreaded).
    bob.room(&room_id)?
        .send_single_receipt(
            ReceiptType::Read,
            ReceiptThread::Unthreaded,
            OwnedEventId::try_from(first.as_str())?,
        )
        .await
        .context("Bob's m.read receipt")?;
    let receipt = alice_sync
        .until("Bob's m.read receipt on the first message", |r| {
            receipt_of(r, room, &first, "m.read", bob_id)
        })
        .await?;
    ensure!(
        receipt["ts"].as_u64().is_some_and(|ts| ts > 0),
        "the server sets ts on the receipt: {receipt}"
    );
    ensure!(
        receipt.get("thread_id").is_none(),
        "an unthreaded receipt has no thread_id: {receipt}"
    );

    // Bob reads the second message privately: he sees his own receipt...
    post_receipt(
        &http,
        &bob_token,
        room,
        "m.read.private",
        &second,
        json!({}),
    )
    .await?
    .expect_ok()
    .context("Bob's m.read.private receipt")?;
    bob_sync
        .until("Bob's own m.read.private receipt", |r| {
            receipt_of(r, room, &second, "m.read.private", bob_id)
        })
        .await?;
    // ...then a later public receipt tells us Alice's sync has moved past it.
    post_receipt(&http, &bob_token, room, "m.read", &second, json!({}))
        .await?
        .expect_ok()?;
    alice_sync
        .until("Bob's public receipt on the second message", |r| {
            receipt_of(r, room, &second, "m.read", bob_id)
        })
        .await?;
    for _ in 0..3 {
        alice_sync.once(200).await?;
    }
    let alice_initial = RawSync::new(&http, &alice_token, "alice (initial sync)")
        .once(0)
        .await?;
    for resp in alice_sync.responses.iter().chain([&alice_initial]) {
        ensure!(
            !resp.to_string().contains("m.read.private"),
            "Alice's /sync leaks a private receipt: {resp}"
        );
    }

    // Threaded receipts: one in a thread, one on the main timeline.
    let root = http
        .send_event(
            &alice_token,
            room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "thread root"}),
        )
        .await?;
    let in_thread = http
        .send_event(
            &alice_token,
            room,
            "m.room.message",
            thread_reply(&root, "in the thread"),
        )
        .await?;
    post_receipt(
        &http,
        &bob_token,
        room,
        "m.read",
        &in_thread,
        json!({"thread_id": root}),
    )
    .await?
    .expect_ok()
    .context("a receipt in a thread")?;
    let receipt = alice_sync
        .until("Bob's receipt in the thread", |r| {
            receipt_of(r, room, &in_thread, "m.read", bob_id)
        })
        .await?;
    ensure!(
        receipt["thread_id"] == root.as_str(),
        "threaded receipt: {receipt}"
    );
    post_receipt(
        &http,
        &bob_token,
        room,
        "m.read",
        &root,
        json!({"thread_id": "main"}),
    )
    .await?
    .expect_ok()
    .context("a receipt on the main timeline")?;
    let receipt = alice_sync
        .until("Bob's main-timeline receipt", |r| {
            receipt_of(r, room, &root, "m.read", bob_id)
        })
        .await?;
    ensure!(receipt["thread_id"] == "main", "main receipt: {receipt}");

    // The fully-read marker, through /read_markers: room account data.
    http.post(
        &format!("{V3}/rooms/{}/read_markers", enc(room)),
        Some(&bob_token),
        json!({"m.fully_read": second}),
    )
    .await?
    .expect_ok()
    .context("POST /read_markers")?;
    let fully_read_path = format!(
        "{V3}/user/{}/rooms/{}/account_data/m.fully_read",
        enc(bob_id),
        enc(room)
    );
    let r = http.get(&fully_read_path, Some(&bob_token)).await?;
    r.expect_ok()?;
    ensure!(
        r.json["event_id"] == second.as_str(),
        "m.fully_read: {}",
        r.text
    );
    bob_sync
        .until("m.fully_read in the room's account data", |r| {
            RawSync::room_account_data(r, room, "m.fully_read")
                .into_iter()
                .find(|e| e["content"]["event_id"] == second.as_str())
                .cloned()
        })
        .await?;
    // The receipt endpoint accepts m.fully_read as an alias of /read_markers.
    post_receipt(&http, &bob_token, room, "m.fully_read", &root, json!({}))
        .await?
        .expect_ok()
        .context("POST /receipt/m.fully_read")?;
    let r = http.get(&fully_read_path, Some(&bob_token)).await?;
    r.expect_ok()?;
    ensure!(
        r.json["event_id"] == root.as_str(),
        "m.fully_read: {}",
        r.text
    );

    // A final public receipt as a marker: everything before it has reached
    // Alice, and none of it was a fully-read marker or private receipt.
    let last = alice.send_text(&room_id, "last").await?;
    post_receipt(&http, &bob_token, room, "m.read", &last, json!({}))
        .await?
        .expect_ok()?;
    alice_sync
        .until("Bob's receipt on the last message", |r| {
            receipt_of(r, room, &last, "m.read", bob_id)
        })
        .await?;
    for resp in &alice_sync.responses {
        let types = receipt_types(resp, room);
        ensure!(
            types.iter().all(|t| t == "m.read"),
            "Alice only ever gets public m.read receipts, got {types:?} in {resp}"
        );
    }
    Ok(())
}

/// Bob's fresh-initial-sync view of `(notification_count, highlight_count)`
/// in `room`.
async fn counts(http: &Http, user: &User, room: &str) -> Result<(u64, u64)> {
    let resp = RawSync::new(http, &user.access_token(), user.user_id.as_str())
        .with_filter(json!({"room": {"timeline": {"limit": 1}}}))
        .once(0)
        .await?;
    let n = RawSync::unread(&resp, room, "notification_count")
        .with_context(|| format!("{} is not joined to {room}: {resp}", user.user_id))?;
    let h = RawSync::unread(&resp, room, "highlight_count").unwrap_or(0);
    Ok((n, h))
}

async fn wait_counts(
    http: &Http,
    user: &User,
    room: &str,
    want: (u64, u64),
    what: &str,
) -> Result<()> {
    let last = Mutex::new(None);
    let result = eventually(what, || async {
        let got = counts(http, user, room).await?;
        *last.lock().unwrap() = Some(got);
        Ok(got == want)
    })
    .await;
    result.with_context(|| {
        format!(
            "{}: wanted (notification_count, highlight_count) = {want:?}, last saw {:?}",
            user.user_id,
            last.lock().unwrap()
        )
    })
}

/// In a DM, every message from Alice counts as an unread notification for
/// Bob, a mention of Bob also as a highlight, and Bob's read receipt on the
/// latest message clears both.
#[tokio::test(flavor = "multi_thread")]
async fn unread_counts_rise_with_messages_and_mentions_and_clear_on_read() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let dm = alice.client.create_dm(&bob.user_id).await?;
    let room_id = dm.room_id().to_owned();
    bob.wait_for_invite(&room_id).await?;
    bob.join(&room_id).await?;
    let room = room_id.as_str();
    let alice_token = alice.access_token();

    // Bob has read everything so far.
    let hello = alice.send_text(&room_id, "hello").await?;
    post_receipt(
        &http,
        &bob.access_token(),
        room,
        "m.read",
        &hello,
        json!({}),
    )
    .await?
    .expect_ok()?;
    wait_counts(&http, &bob, room, (0, 0), "Bob's counts after reading").await?;

    // Two plain messages: two notifications, no highlight.
    alice.send_text(&room_id, "are you there?").await?;
    alice.send_text(&room_id, "it's about lunch").await?;
    wait_counts(&http, &bob, room, (2, 0), "two unread notifications").await?;

    // A message mentioning Bob: a notification and a highlight.
    let mention = http
        .send_event(
            &alice_token,
            room,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": "bob: pizza or sushi?",
                "m.mentions": {"user_ids": [bob.user_id.as_str()]},
            }),
        )
        .await?;
    wait_counts(&http, &bob, room, (3, 1), "a highlighted mention").await?;

    // Alice is never notified about her own messages.
    ensure!(
        counts(&http, &alice, room).await? == (0, 0),
        "Alice's own messages do not count for her"
    );

    // Bob reads up to the mention: both counts drop to zero.
    post_receipt(
        &http,
        &bob.access_token(),
        room,
        "m.read",
        &mention,
        json!({}),
    )
    .await?
    .expect_ok()?;
    wait_counts(&http, &bob, room, (0, 0), "counts cleared by the receipt").await?;
    Ok(())
}

/// With `unread_thread_notifications` in the sync filter, thread replies are
/// counted per thread root and not in the main counts; a receipt in the
/// thread clears that thread.
#[tokio::test(flavor = "multi_thread")]
async fn unread_counts_per_thread_when_the_filter_asks() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let dm = alice.client.create_dm(&bob.user_id).await?;
    let room_id = dm.room_id().to_owned();
    bob.wait_for_invite(&room_id).await?;
    bob.join(&room_id).await?;
    let room = room_id.as_str();
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());

    let root = alice.send_text(&room_id, "what should we cook?").await?;
    post_receipt(&http, &bob_token, room, "m.read", &root, json!({}))
        .await?
        .expect_ok()?;
    wait_counts(&http, &bob, room, (0, 0), "Bob has read the root").await?;
    http.send_event(
        &alice_token,
        room,
        "m.room.message",
        thread_reply(&root, "pasta?"),
    )
    .await?;
    let last_reply = http
        .send_event(
            &alice_token,
            room,
            "m.room.message",
            thread_reply(&root, "or risotto"),
        )
        .await?;

    // Without the filter flag, the two replies count in the room's totals.
    wait_counts(
        &http,
        &bob,
        room,
        (2, 0),
        "thread replies in the room total",
    )
    .await?;

    // With it, they count under the thread root and not in the main timeline.
    let threaded = json!({"room": {"timeline": {"limit": 1, "unread_thread_notifications": true}}});
    let thread_count = |resp: &Value| {
        RawSync::joined_room(resp, room)
            .and_then(|r| r.get("unread_thread_notifications"))
            .and_then(|t| t.get(root.as_str()))
            .and_then(|t| t.get("notification_count"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let resp = RawSync::new(&http, &bob_token, "bob (threaded counts)")
        .with_filter(threaded.clone())
        .once(0)
        .await?;
    ensure!(
        thread_count(&resp) == 2,
        "two unread in the thread: {}",
        RawSync::joined_room(&resp, room)
            .cloned()
            .unwrap_or_default()
    );
    ensure!(
        RawSync::unread(&resp, room, "notification_count") == Some(0),
        "the main-timeline count excludes thread replies: {}",
        RawSync::joined_room(&resp, room)
            .cloned()
            .unwrap_or_default()
    );

    // Bob reads the thread (a threaded receipt): the thread count clears.
    post_receipt(
        &http,
        &bob_token,
        room,
        "m.read",
        &last_reply,
        json!({"thread_id": root}),
    )
    .await?
    .expect_ok()?;
    let last = Mutex::new(Value::Null);
    eventually("the thread count to clear", || async {
        let resp = RawSync::new(&http, &bob_token, "bob (threaded counts)")
            .with_filter(threaded.clone())
            .once(0)
            .await?;
        let cleared = thread_count(&resp) == 0;
        *last.lock().unwrap() = resp;
        Ok(cleared)
    })
    .await
    .with_context(|| format!("last sync: {}", last.lock().unwrap()))?;
    Ok(())
}

/// Alice's presence reaches Bob, who shares a room with her, through /sync
/// and GET /presence; Carol, who shares nothing with her, is refused. Dave
/// hides his presence: nobody else ever sees it, though he can read his own.
/// `set_presence` on /sync moves Erin between unavailable and online.
#[tokio::test(flavor = "multi_thread")]
async fn presence_is_shared_with_room_mates_only() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let carol = server.new_user("carol").await?;
    let dave = server.new_user("dave").await?;
    let erin = server.new_user("erin").await?;
    let (alice_id, dave_id, erin_id) = (
        alice.user_id.as_str(),
        dave.user_id.as_str(),
        erin.user_id.as_str(),
    );

    // Dave hides his presence before he does anything else.
    http.put_account_data(
        &dave.access_token(),
        dave_id,
        "io.bellwire.presence",
        json!({"hidden": true}),
    )
    .await?;

    // Alice, Bob and Dave share a room (Dave's client syncs as "online").
    let room_id = alice
        .create_room_with("Status board", &[&bob, &dave])
        .await?;
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    // Alice says she is online with a status message.
    put_presence(
        &http,
        &alice,
        json!({"presence": "online", "status_msg": "hi"}),
    )
    .await?
    .expect_ok()
    .context("Alice sets her presence")?;
    let ev = bob_sync
        .until("Alice's presence with status 'hi'", |r| {
            RawSync::presence_of(r, alice_id)
                .into_iter()
                .find(|e| e["content"]["status_msg"] == "hi")
                .cloned()
        })
        .await?;
    let content = &ev["content"];
    ensure!(content["presence"] == "online", "presence event: {ev}");
    ensure!(
        content["last_active_ago"].is_u64(),
        "last_active_ago is a number: {ev}"
    );
    ensure!(
        content["currently_active"].is_boolean(),
        "currently_active is a boolean: {ev}"
    );
    let r = http
        .get(&presence_path(alice_id), Some(&bob.access_token()))
        .await?;
    r.expect_ok().context("Bob GETs Alice's presence")?;
    ensure!(r.json["presence"] == "online", "GET presence: {}", r.text);
    ensure!(r.json["status_msg"] == "hi", "GET presence: {}", r.text);
    ensure!(
        r.json["last_active_ago"].is_u64(),
        "GET presence: {}",
        r.text
    );

    // Carol shares no room with Alice: refused, and nothing in her sync.
    http.get(&presence_path(alice_id), Some(&carol.access_token()))
        .await?
        .expect_error(403, "M_FORBIDDEN")
        .context("Carol GETs the presence of a stranger")?;
    let carol_view = carol.raw_sync().once(0).await?;
    ensure!(
        RawSync::presence_of(&carol_view, alice_id).is_empty(),
        "Carol's sync shows a stranger's presence: {carol_view}"
    );

    // Dave, hidden, says he is online; he can read his own presence back.
    put_presence(
        &http,
        &dave,
        json!({"presence": "online", "status_msg": "secret"}),
    )
    .await?
    .expect_ok()
    .context("hidden Dave sets his presence")?;
    let r = http
        .get(&presence_path(dave_id), Some(&dave.access_token()))
        .await?;
    r.expect_ok().context("Dave GETs his own presence")?;
    ensure!(
        r.json["presence"] == "online",
        "Dave's own view: {}",
        r.text
    );
    ensure!(
        r.json["status_msg"] == "secret",
        "Dave's own view: {}",
        r.text
    );
    // Alice's next update is a marker: once Bob has it, Dave's would have come too.
    put_presence(
        &http,
        &alice,
        json!({"presence": "online", "status_msg": "marker"}),
    )
    .await?
    .expect_ok()?;
    bob_sync
        .until("Alice's 'marker' status", |r| {
            RawSync::presence_of(r, alice_id)
                .into_iter()
                .find(|e| e["content"]["status_msg"] == "marker")
                .cloned()
        })
        .await?;
    for resp in &bob_sync.responses {
        let seen = RawSync::presence_of(resp, dave_id);
        ensure!(seen.is_empty(), "Bob's sync shows hidden Dave: {seen:?}");
    }
    let r = http
        .get(&presence_path(dave_id), Some(&bob.access_token()))
        .await?;
    r.expect_ok().context("Bob GETs hidden Dave's presence")?;
    ensure!(r.json["presence"] == "offline", "hidden Dave: {}", r.text);
    ensure!(
        r.json.get("last_active_ago").is_none(),
        "hidden Dave has no last_active_ago: {}",
        r.text
    );
    ensure!(
        r.json["status_msg"] != "secret",
        "hidden Dave's status message leaks: {}",
        r.text
    );

    // Erin joins (without syncing), then syncs with set_presence=unavailable.
    http.post(
        &format!("{V3}/rooms/{}/invite", enc(room_id.as_str())),
        Some(&alice.access_token()),
        json!({"user_id": erin_id}),
    )
    .await?
    .expect_ok()?;
    http.join(&erin.access_token(), room_id.as_str()).await?;
    let mut erin_idle = erin.raw_sync().with_set_presence("unavailable");
    erin_idle.once(0).await?;
    bob_sync
        .until("Erin unavailable", |r| {
            RawSync::presence_of(r, erin_id)
                .into_iter()
                .find(|e| e["content"]["presence"] == "unavailable")
                .cloned()
        })
        .await?;
    // A plain sync (no set_presence) marks her online.
    erin.raw_sync().once(0).await?;
    bob_sync
        .until("Erin online after a plain sync", |r| {
            RawSync::presence_of(r, erin_id)
                .into_iter()
                .find(|e| e["content"]["presence"] == "online")
                .cloned()
        })
        .await?;
    Ok(())
}

/// With `[presence] enabled = false` nobody's presence is shared: Bob gets
/// Alice's messages but never her presence, and GET /presence does not
/// reveal what she set.
#[tokio::test(flavor = "multi_thread")]
async fn disabled_presence_is_never_shared() -> Result<()> {
    let options = ServerOptions {
        extra_config: "[presence]\nenabled = false\n".to_owned(),
        ..Default::default()
    };
    let server = TestServer::start_with(options).await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = alice.create_room_with("Quiet", &[&bob]).await?;
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    let r = put_presence(
        &http,
        &alice,
        json!({"presence": "online", "status_msg": "hi"}),
    )
    .await?;
    ensure!(
        r.status == 200,
        "setting presence is still accepted (and ignored): {} {}",
        r.status,
        r.text
    );
    alice
        .send_text(&room_id, "after my presence update")
        .await?;
    let room = room_id.as_str();
    bob_sync
        .until("Alice's message", |r| {
            RawSync::timeline(r, room)
                .into_iter()
                .find(|e| e["content"]["body"] == "after my presence update")
                .cloned()
        })
        .await?;
    for _ in 0..2 {
        bob_sync.once(200).await?;
    }
    for resp in &bob_sync.responses {
        let seen = RawSync::presence_of(resp, alice.user_id.as_str());
        ensure!(
            seen.is_empty(),
            "presence is disabled, yet Bob sees {seen:?}"
        );
    }
    let r = http
        .get(
            &presence_path(alice.user_id.as_str()),
            Some(&bob.access_token()),
        )
        .await?;
    if r.status == 200 {
        ensure!(
            r.json["presence"] == "offline",
            "disabled presence: {}",
            r.text
        );
        ensure!(
            r.json["status_msg"] != "hi",
            "disabled presence: {}",
            r.text
        );
    } else {
        ensure!(
            matches!(r.status, 403 | 404) && r.errcode().is_some(),
            "disabled presence: {} {}",
            r.status,
            r.text
        );
    }
    Ok(())
}
