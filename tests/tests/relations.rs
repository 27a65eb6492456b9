//! What ends up in (and around) the timeline: reactions and edits with their
//! server-side aggregations and the /relations API, threads and the /threads
//! list, redactions as seen through sync, and ignored users.

use anyhow::{Context, Result, ensure};
use bellwire_tests::{RawSync, TestServer, enc};
use matrix_sdk::ruma::{
    OwnedEventId, RoomVersionId,
    api::client::room::create_room,
    events::{
        reaction::ReactionEventContent,
        relation::Annotation,
        room::message::{ReplacementMetadata, RoomMessageEventContent},
    },
};
use serde_json::{Value, json};

const V1: &str = "/_matrix/client/v1";
const V3: &str = "/_matrix/client/v3";

fn event_ids(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn relations_path(room: &str, event: &str, rest: &str) -> String {
    format!("{V1}/rooms/{}/relations/{}{rest}", enc(room), enc(event))
}

fn reaction(target: &str, key: &str) -> Value {
    json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}})
}

/// Alice's message gets a reaction from Bob and an edit from Alice. The
/// original event bundles the edit (and not the reaction) under
/// `unsigned.m.relations`, keeps its own content, and /relations lists both
/// children, or only the reaction when asked by type. A second identical
/// reaction is refused; five reactions page out two at a time, each once.
#[tokio::test(flavor = "multi_thread")]
async fn reactions_and_edits_are_related_to_the_original() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = alice.create_room_with("Reactions", &[&bob]).await?;
    let room = room_id.as_str();
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());

    let original = alice.send_text(&room_id, "Lunch at noon?").await?;
    let original_id = OwnedEventId::try_from(original.as_str())?;

    // Bob reacts with a thumbs-up through his client.
    let thumbs = bob
        .room(&room_id)?
        .send(ReactionEventContent::new(Annotation::new(
            original_id.clone(),
            "👍".to_owned(),
        )))
        .await
        .context("Bob's reaction")?
        .response
        .event_id
        .to_string();

    // Alice corrects her message through her client (m.replace + m.new_content).
    let edit_content = RoomMessageEventContent::text_plain("* Lunch at one?")
        .make_replacement(ReplacementMetadata::new(original_id.clone(), None));
    let edit = alice
        .room(&room_id)?
        .send(edit_content)
        .await
        .context("Alice's edit")?
        .response
        .event_id
        .to_string();

    // The original, fetched on its own, bundles the edit but not the reaction,
    // and keeps its original content (spec v1.7+: no server-side replacement).
    let r = http.event(&bob_token, room, &original).await?;
    r.expect_ok()?;
    let relations = &r.json["unsigned"]["m.relations"];
    ensure!(
        relations["m.replace"]["event_id"] == edit.as_str(),
        "unsigned.m.relations.m.replace is the edit {edit}: {}",
        r.text
    );
    ensure!(
        relations.get("m.annotation").is_none(),
        "reactions are not bundled in unsigned.m.relations: {}",
        r.text
    );
    ensure!(
        r.json["content"]["body"] == "Lunch at noon?",
        "GET /event returns the unedited content: {}",
        r.text
    );

    // All children of the original: the reaction and the edit, newest first.
    let r = http
        .get(&relations_path(room, &original, ""), Some(&alice_token))
        .await?;
    r.expect_ok().context("GET /relations")?;
    ensure!(
        event_ids(&r.json["chunk"]) == vec![edit.clone(), thumbs.clone()],
        "relations of the original, newest first: {}",
        r.text
    );
    // Only annotations of type m.reaction.
    let r = http
        .get(
            &relations_path(room, &original, "/m.annotation/m.reaction"),
            Some(&alice_token),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        event_ids(&r.json["chunk"]) == vec![thumbs.clone()],
        "annotations of the original: {}",
        r.text
    );
    // Only edits.
    let r = http
        .get(
            &relations_path(room, &original, "/m.replace"),
            Some(&alice_token),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        event_ids(&r.json["chunk"]) == vec![edit.clone()],
        "edits of the original: {}",
        r.text
    );

    // The same reaction twice from Bob is refused.
    let r = http
        .put(
            &format!("{V3}/rooms/{}/send/m.reaction/dup-thumbs", enc(room)),
            Some(&bob_token),
            reaction(&original, "👍"),
        )
        .await?;
    r.expect_error(400, "M_DUPLICATE_ANNOTATION")?;
    let r = http
        .get(
            &relations_path(room, &original, "/m.annotation"),
            Some(&alice_token),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        event_ids(&r.json["chunk"]) == vec![thumbs.clone()],
        "still only one reaction: {}",
        r.text
    );

    // Five different reactions to a second message, paged two at a time.
    let second = alice.send_text(&room_id, "Who is in?").await?;
    let mut reactions = Vec::new();
    for key in ["🍕", "🍣", "🥗", "🌮", "🍜"] {
        reactions.push(
            http.send_event(&bob_token, room, "m.reaction", reaction(&second, key))
                .await?,
        );
    }
    let mut collected = Vec::new();
    let mut from: Option<String> = None;
    for page in 0.. {
        ensure!(page < 10, "relations pagination did not end after 10 pages");
        let mut path = relations_path(room, &second, "/m.annotation?limit=2");
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let r = http.get(&path, Some(&alice_token)).await?;
        r.expect_ok()
            .with_context(|| format!("page {page}: GET {path}"))?;
        let ids = event_ids(&r.json["chunk"]);
        ensure!(ids.len() <= 2, "page {page} ignores limit=2: {}", r.text);
        collected.extend(ids);
        match r.json.get("next_batch").and_then(Value::as_str) {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = reactions.iter().rev().cloned().collect();
    ensure!(
        collected == newest_first,
        "all five reactions, each once, newest first: got {collected:?}, want {newest_first:?}"
    );
    Ok(())
}

/// Bob answers Alice in a thread. /threads lists the root with its thread
/// aggregation (count, latest event, whether the caller took part);
/// `include=participated` only lists threads the caller took part in.
#[tokio::test(flavor = "multi_thread")]
async fn thread_replies_make_a_thread_listed_with_its_summary() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let carol = server.new_user("carol").await?;
    let room_id = alice.create_room_with("Threads", &[&bob, &carol]).await?;
    let room = room_id.as_str();
    let (alice_token, bob_token, carol_token) = (
        alice.access_token(),
        bob.access_token(),
        carol.access_token(),
    );

    let root = alice.send_text(&room_id, "Ideas for the trip?").await?;
    alice.send_text(&room_id, "(not a thread)").await?;
    let reply = http
        .send_event(
            &bob_token,
            room,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": "The mountains!",
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": root,
                    "is_falling_back": true,
                    "m.in_reply_to": {"event_id": root},
                },
            }),
        )
        .await?;

    let threads = |include: &str| format!("{V1}/rooms/{}/threads?include={include}", enc(room));
    for (who, token, participated) in [
        ("Alice (sent the root)", &alice_token, true),
        ("Bob (replied)", &bob_token, true),
        ("Carol (only watched)", &carol_token, false),
    ] {
        let r = http.get(&threads("all"), Some(token)).await?;
        r.expect_ok()
            .with_context(|| format!("{who}: GET /threads"))?;
        ensure!(
            event_ids(&r.json["chunk"]) == vec![root.clone()],
            "{who}: exactly the one thread root: {}",
            r.text
        );
        let summary = &r.json["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
        ensure!(summary["count"] == 1, "{who}: thread count: {}", r.text);
        ensure!(
            summary["latest_event"]["event_id"] == reply.as_str(),
            "{who}: latest_event is Bob's reply: {}",
            r.text
        );
        ensure!(
            summary["latest_event"]["content"]["body"] == "The mountains!",
            "{who}: latest_event is a whole event: {}",
            r.text
        );
        ensure!(
            summary["current_user_participated"] == participated,
            "{who}: current_user_participated should be {participated}: {}",
            r.text
        );

        let r = http.get(&threads("participated"), Some(token)).await?;
        r.expect_ok()?;
        let want = if participated {
            vec![root.clone()]
        } else {
            vec![]
        };
        ensure!(
            event_ids(&r.json["chunk"]) == want,
            "{who}: include=participated: {}",
            r.text
        );
    }

    // The root fetched on its own carries the same summary.
    let r = http.event(&carol_token, room, &root).await?;
    r.expect_ok()?;
    ensure!(
        r.json["unsigned"]["m.relations"]["m.thread"]["count"] == 1,
        "GET /event of the root bundles the thread: {}",
        r.text
    );
    Ok(())
}

/// Alice redacts a message: Bob's sync delivers the redaction event (with
/// `redacts` where the room version puts it), and the original comes back
/// stripped, with `unsigned.redacted_because`.
#[tokio::test(flavor = "multi_thread")]
async fn redactions_reach_sync_and_strip_the_original() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;

    for (version, version_id) in [("10", RoomVersionId::V10), ("12", RoomVersionId::V12)] {
        let mut request = create_room::v3::Request::new();
        request.room_version = Some(version_id);
        request.name = Some(format!("Oops v{version}"));
        request.invite = vec![bob.user_id.clone()];
        let alice_room = alice.client.create_room(request).await?;
        let room = alice_room.room_id().to_string();
        http.join(&bob.access_token(), &room).await?;
        let mut bob_sync = bob.raw_sync();
        bob_sync.catch_up().await?;

        let oops = http
            .send_event(
                &alice.access_token(),
                &room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": "my password is hunter2"}),
            )
            .await?;
        bob_sync
            .until(&format!("v{version}: Alice's message"), |r| {
                RawSync::timeline(r, &room)
                    .into_iter()
                    .find(|e| e["event_id"] == oops.as_str())
                    .cloned()
            })
            .await?;

        // Alice redacts it through her client.
        let redaction = alice_room
            .redact(&OwnedEventId::try_from(oops.as_str())?, Some("oops"), None)
            .await
            .with_context(|| format!("v{version}: redacting"))?
            .event_id
            .to_string();

        let ev = bob_sync
            .until(&format!("v{version}: the redaction event"), |r| {
                RawSync::timeline(r, &room)
                    .into_iter()
                    .find(|e| e["event_id"] == redaction.as_str())
                    .cloned()
            })
            .await?;
        ensure!(ev["type"] == "m.room.redaction", "v{version}: {ev}");
        ensure!(ev["sender"] == alice.user_id.as_str(), "v{version}: {ev}");
        ensure!(ev["content"]["reason"] == "oops", "v{version}: {ev}");
        if version == "10" {
            ensure!(
                ev["redacts"] == oops.as_str(),
                "v10: `redacts` is a top-level key: {ev}"
            );
        } else {
            ensure!(
                ev["content"]["redacts"] == oops.as_str(),
                "v{version}: `redacts` is in content: {ev}"
            );
        }

        let r = http.event(&bob.access_token(), &room, &oops).await?;
        r.expect_ok()?;
        ensure!(
            r.json["content"] == json!({}),
            "v{version}: the redacted message has empty content: {}",
            r.text
        );
        let because = &r.json["unsigned"]["redacted_because"];
        ensure!(
            because["event_id"] == redaction.as_str()
                && because["type"] == "m.room.redaction"
                && because["sender"] == alice.user_id.as_str(),
            "v{version}: unsigned.redacted_because is the redaction {redaction}: {}",
            r.text
        );
        ensure!(
            !r.text.contains("hunter2"),
            "v{version}: the redacted text is gone: {}",
            r.text
        );
        let history = http.all_messages(&bob.access_token(), &room).await?;
        ensure!(
            history.iter().all(|e| !e.to_string().contains("hunter2")),
            "v{version}: /messages no longer has the text: {history:#?}"
        );
    }
    Ok(())
}

/// Bob ignores Carol: her later messages and invites never reach Bob's
/// /sync or /messages, while Alice still sees them. Once Bob stops ignoring
/// her, her new messages reach him again.
#[tokio::test(flavor = "multi_thread")]
async fn bob_ignores_carol() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let carol = server.new_user("carol").await?;
    let room_id = alice.create_room_with("Book club", &[&bob, &carol]).await?;
    let room = room_id.as_str();
    let bob_token = bob.access_token();

    // Bob's client adds Carol to m.ignored_user_list.
    bob.client
        .account()
        .ignore_user(&carol.user_id)
        .await
        .context("Bob ignores Carol")?;
    let r = http
        .get(
            &format!(
                "{V3}/user/{}/account_data/m.ignored_user_list",
                enc(bob.user_id.as_str())
            ),
            Some(&bob_token),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["ignored_users"]
            .get(carol.user_id.as_str())
            .is_some(),
        "m.ignored_user_list: {}",
        r.text
    );
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    // Carol talks, and invites Bob to a room of hers; then Alice talks.
    carol
        .send_text(&room_id, "spoilers: the butler did it")
        .await?;
    let carols_room = http
        .create_room(
            &carol.access_token(),
            json!({"name": "Carol's corner", "invite": [bob.user_id.as_str()]}),
        )
        .await?;
    alice.send_text(&room_id, "no spoilers please").await?;

    // Alice sees both messages.
    alice
        .wait_for_text(&room_id, &carol.user_id, "spoilers: the butler did it")
        .await?;
    alice
        .wait_for_text(&room_id, &alice.user_id, "no spoilers please")
        .await?;
    // Bob gets Alice's message, and by then nothing from Carol.
    bob_sync
        .until("Alice's message", |r| {
            RawSync::timeline(r, room)
                .into_iter()
                .find(|e| e["content"]["body"] == "no spoilers please")
                .cloned()
        })
        .await?;
    // (State events such as Carol's membership still count as room state.)
    for resp in &bob_sync.responses {
        let from_carol: Vec<&Value> = RawSync::timeline(resp, room)
            .into_iter()
            .filter(|e| e["sender"] == carol.user_id.as_str() && e.get("state_key").is_none())
            .collect();
        ensure!(
            from_carol.is_empty(),
            "Bob's sync has events from ignored Carol: {from_carol:#?}"
        );
        ensure!(
            resp["rooms"]["invite"].get(&carols_room).is_none(),
            "Bob's sync has an invite from ignored Carol: {resp}"
        );
    }
    let bob_history = http.all_messages(&bob_token, room).await?;
    let bodies: Vec<&str> = bob_history
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    ensure!(
        bodies.contains(&"no spoilers please") && !bodies.contains(&"spoilers: the butler did it"),
        "Bob's /messages: {bodies:?}"
    );
    let alice_history = http.all_messages(&alice.access_token(), room).await?;
    ensure!(
        alice_history
            .iter()
            .any(|e| e["content"]["body"] == "spoilers: the butler did it"),
        "Alice's /messages still has Carol's message"
    );

    // Bob's client learns its ignore list through sync, then un-ignores Carol.
    let ignored = "m.ignored_user_list".to_owned();
    bob.sync_until("m.ignored_user_list through sync", |s| {
        s.account_data.contains_key(&ignored)
    })
    .await?;
    bob.client
        .account()
        .unignore_user(&carol.user_id)
        .await
        .context("Bob un-ignores Carol")?;
    let r = http
        .get(
            &format!(
                "{V3}/user/{}/account_data/m.ignored_user_list",
                enc(bob.user_id.as_str())
            ),
            Some(&bob_token),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["ignored_users"]
            .get(carol.user_id.as_str())
            .is_none(),
        "Carol is off the list: {}",
        r.text
    );
    carol.send_text(&room_id, "sorry, friends again?").await?;
    bob_sync
        .until("Carol's message after the un-ignore", |r| {
            RawSync::timeline(r, room)
                .into_iter()
                .find(|e| e["content"]["body"] == "sorry, friends again?")
                .cloned()
        })
        .await?;
    Ok(())
}
