//! Bad input on the chat-feature endpoints (typing, receipts, presence, push
//! rules, pushers, reports, directories): each rejection has the right status
//! and errcode, changes nothing, and leaves the server up.

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, RawSync, Reply, TestServer, User, enc};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

/// The server still answers, and still does real work for `user`.
async fn assert_still_serving(http: &Http, user: &User) -> Result<()> {
    http.assert_alive().await?;
    let room = http
        .create_room(&user.access_token(), json!({"name": "still here"}))
        .await?;
    http.send_text(&user.access_token(), &room, "alive-check", "ping")
        .await?
        .expect_ok()?;
    Ok(())
}

fn typing_path(room: &str, user: &str) -> String {
    format!("{V3}/rooms/{}/typing/{}", enc(room), enc(user))
}

fn receipt_path(room: &str, rtype: &str, event: &str) -> String {
    format!(
        "{V3}/rooms/{}/receipt/{}/{}",
        enc(room),
        enc(rtype),
        enc(event)
    )
}

/// Bad typing and receipt requests are refused, and Bob's sync never shows
/// anything they tried to set.
#[tokio::test(flavor = "multi_thread")]
async fn bad_typing_and_receipts_are_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let carol = server.new_user("carol").await?;
    let room_id = alice.create_room_with("Strict", &[&bob]).await?;
    let room = room_id.as_str();
    let alice_id = alice.user_id.as_str();
    let token = alice.access_token();
    let event = alice.send_text(&room_id, "read me").await?;
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    // `typing` must be a boolean, and is required.
    http.put(
        &typing_path(room, alice_id),
        Some(&token),
        json!({"typing": "yes", "timeout": 30000}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("typing: \"yes\"")?;
    http.put(
        &typing_path(room, alice_id),
        Some(&token),
        json!({"timeout": 30000}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("typing without `typing`")?;
    // Only for yourself, only where you are a member.
    http.put(
        &typing_path(room, bob.user_id.as_str()),
        Some(&token),
        json!({"typing": true, "timeout": 30000}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")
    .context("typing as somebody else")?;
    http.put(
        &typing_path(room, carol.user_id.as_str()),
        Some(&carol.access_token()),
        json!({"typing": true, "timeout": 30000}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")
    .context("typing in a room Carol is not in")?;

    // Receipts: unknown type, bad thread ids.
    http.post(
        &receipt_path(room, "m.read.public", &event),
        Some(&token),
        json!({}),
    )
    .await?
    .expect_error_in(400, &["M_INVALID_PARAM", "M_BAD_JSON"])
    .context("a receipt of unknown type")?;
    http.post(
        &receipt_path(room, "m.read", &event),
        Some(&token),
        json!({"thread_id": ""}),
    )
    .await?
    .expect_error(400, "M_INVALID_PARAM")
    .context("an empty thread_id")?;
    http.post(
        &receipt_path(room, "m.read", &event),
        Some(&token),
        json!({"thread_id": 7}),
    )
    .await?
    .expect_error_in(400, &["M_INVALID_PARAM", "M_BAD_JSON"])
    .context("a numeric thread_id")?;
    http.post(
        &receipt_path(room, "m.read", &event),
        Some(&carol.access_token()),
        json!({}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")
    .context("a receipt in a room Carol is not in")?;

    // Nothing of that reached Bob: by the time he has Alice's next message,
    // he has seen no one typing and no receipt on her first message.
    alice.send_text(&room_id, "marker").await?;
    bob_sync
        .until("Alice's marker", |r| {
            RawSync::timeline(r, room)
                .into_iter()
                .find(|e| e["content"]["body"] == "marker")
                .cloned()
        })
        .await?;
    for resp in &bob_sync.responses {
        for ev in RawSync::ephemeral(resp, room, "m.typing") {
            ensure!(
                ev["content"]["user_ids"] == json!([]),
                "a refused typing notice reached Bob: {ev}"
            );
        }
        let receipts = RawSync::ephemeral(resp, room, "m.receipt");
        ensure!(
            receipts
                .iter()
                .all(|ev| ev["content"].get(event.as_str()).is_none()),
            "a refused receipt reached Bob: {receipts:?}"
        );
    }
    assert_still_serving(&http, &alice).await
}

async fn own_presence(http: &Http, user: &User) -> Result<Value> {
    let r = http
        .get(
            &format!("{V3}/presence/{}/status", enc(user.user_id.as_str())),
            Some(&user.access_token()),
        )
        .await?;
    r.expect_ok()?;
    Ok(r.json)
}

/// Invalid presence states and setting someone else's presence are refused
/// and leave the presence as it was.
#[tokio::test(flavor = "multi_thread")]
async fn bad_presence_is_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let path = format!("{V3}/presence/{}/status", enc(alice.user_id.as_str()));
    let token = alice.access_token();
    http.put(
        &path,
        Some(&token),
        json!({"presence": "online", "status_msg": "here"}),
    )
    .await?
    .expect_ok()?;

    http.put(&path, Some(&token), json!({"presence": "busy"}))
        .await?
        .expect_error_in(400, &["M_INVALID_PARAM", "M_BAD_JSON"])
        .context("presence: busy")?;
    http.put(&path, Some(&token), json!({"status_msg": "no state"}))
        .await?
        .expect_error_in(400, &["M_BAD_JSON", "M_MISSING_PARAM"])
        .context("presence without `presence`")?;
    http.put(
        &path,
        Some(&token),
        json!({"presence": "online", "status_msg": 5}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("a numeric status_msg")?;
    http.put(
        &path,
        Some(&bob.access_token()),
        json!({"presence": "offline"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")
    .context("Bob setting Alice's presence")?;

    let now = own_presence(&http, &alice).await?;
    ensure!(
        now["presence"] == "online" && now["status_msg"] == "here",
        "presence unchanged: {now}"
    );
    assert_still_serving(&http, &alice).await
}

fn is_error(r: &Reply, statuses: &[u16]) -> bool {
    statuses.contains(&r.status) && r.errcode().is_some()
}

/// Bad push rules and pushers are refused; the ruleset and the pusher list
/// stay as they were.
#[tokio::test(flavor = "multi_thread")]
async fn bad_push_rules_and_pushers_are_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let rules_before = http.get(&format!("{V3}/pushrules/"), Some(&token)).await?;
    rules_before.expect_ok()?;

    // An unknown rule kind.
    let r = http
        .put(
            &format!("{V3}/pushrules/global/nonsense/myrule"),
            Some(&token),
            json!({"actions": ["notify"]}),
        )
        .await?;
    ensure!(
        is_error(&r, &[400, 404]),
        "an unknown rule kind: {} {}",
        r.status,
        r.text
    );
    // Actions that are not a list; a content rule without a pattern.
    http.put(
        &format!("{V3}/pushrules/global/content/myrule"),
        Some(&token),
        json!({"pattern": "cake", "actions": "notify"}),
    )
    .await?
    .expect_error_in(400, &["M_BAD_JSON", "M_INVALID_PARAM"])
    .context("actions as a string")?;
    let r = http
        .put(
            &format!("{V3}/pushrules/global/content/myrule"),
            Some(&token),
            json!({"actions": ["notify"]}),
        )
        .await?;
    ensure!(
        r.status == 400 && r.errcode().is_some(),
        "a content rule without pattern: {} {}",
        r.status,
        r.text
    );
    // Enabling a rule that does not exist.
    http.put(
        &format!("{V3}/pushrules/global/override/nosuchrule/enabled"),
        Some(&token),
        json!({"enabled": true}),
    )
    .await?
    .expect_error(404, "M_NOT_FOUND")?;
    let rules_after = http.get(&format!("{V3}/pushrules/"), Some(&token)).await?;
    ensure!(
        rules_after.json == rules_before.json,
        "the ruleset changed: before {}, after {}",
        rules_before.text,
        rules_after.text
    );

    // A pusher of kind http needs data.url.
    let pusher = |data: Value| {
        json!({
            "kind": "http",
            "app_id": "org.bellwire.tests",
            "pushkey": "k1",
            "app_display_name": "tests",
            "device_display_name": "phone",
            "lang": "en",
            "data": data,
        })
    };
    http.post(
        &format!("{V3}/pushers/set"),
        Some(&token),
        pusher(json!({})),
    )
    .await?
    .expect_error(400, "M_MISSING_PARAM")
    .context("an http pusher without data.url")?;
    let mut no_app_id = pusher(json!({"url": "http://127.0.0.1:9/_matrix/push/v1/notify"}));
    no_app_id
        .as_object_mut()
        .context("object")?
        .remove("app_id");
    http.post(&format!("{V3}/pushers/set"), Some(&token), no_app_id)
        .await?
        .expect_error_in(400, &["M_MISSING_PARAM", "M_BAD_JSON"])
        .context("a pusher without app_id")?;
    let r = http.get(&format!("{V3}/pushers"), Some(&token)).await?;
    r.expect_ok()?;
    ensure!(
        r.json["pushers"] == json!([]),
        "no pusher was created: {}",
        r.text
    );

    assert_still_serving(&http, &alice).await
}

/// Wrongly typed fields on reports and directory searches are 400
/// M_BAD_JSON.
#[tokio::test(flavor = "multi_thread")]
async fn bad_reports_and_searches_are_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let room = http.create_room(&token, json!({"name": "Reports"})).await?;
    let event = http.send_text(&token, &room, "r1", "report me").await?.json["event_id"]
        .as_str()
        .context("no event_id")?
        .to_owned();

    http.post(
        &format!("{V3}/rooms/{}/report/{}", enc(&room), enc(&event)),
        Some(&token),
        json!({"reason": 42}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("a numeric report reason")?;
    http.post(
        &format!("{V3}/rooms/{}/report", enc(&room)),
        Some(&token),
        json!({"reason": ["not", "a", "string"]}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("a room report with a list as reason")?;
    http.post(
        &format!("{V3}/user_directory/search"),
        Some(&token),
        json!({"search_term": 5}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("a numeric search_term")?;
    http.post(
        &format!("{V3}/user_directory/search"),
        Some(&token),
        json!({"limit": 5}),
    )
    .await?
    .expect_error_in(400, &["M_BAD_JSON", "M_MISSING_PARAM"])
    .context("a search without search_term")?;
    http.post(
        &format!("{V3}/publicRooms"),
        Some(&token),
        json!({"limit": "ten"}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("a string limit on POST /publicRooms")?;
    http.put(
        &format!("{V3}/directory/list/room/{}", enc(&room)),
        Some(&token),
        json!({"visibility": "everyone"}),
    )
    .await?
    .expect_error_in(400, &["M_BAD_JSON", "M_INVALID_PARAM"])
    .context("an unknown directory visibility")?;
    let r = http
        .get(&format!("{V3}/directory/list/room/{}", enc(&room)), None)
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["visibility"] == "private",
        "still unpublished: {}",
        r.text
    );

    assert_still_serving(&http, &alice).await
}
