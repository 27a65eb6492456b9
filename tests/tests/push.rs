//! Push notifications: HTTP pushers posting to a push gateway the test runs
//! itself, /notifications, and the push rules API (defaults, user rules,
//! and the master rule switching everything off).

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, PushGateway, PushRequest, RawSync, TestServer, User, enc, eventually};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const APP_ID: &str = "org.bellwire.tests";

/// A `POST /pushers/set` body for an HTTP pusher; `format` goes into `data`
/// next to the url and a custom key the server must pass through.
fn http_pusher(pushkey: &str, url: &str, format: Option<&str>) -> Value {
    let mut data = json!({"url": url, "custom": "kept"});
    if let Some(f) = format {
        data["format"] = json!(f);
    }
    json!({
        "kind": "http",
        "app_id": APP_ID,
        "pushkey": pushkey,
        "app_display_name": "Bellwire tests",
        "device_display_name": "Bob's phone",
        "lang": "en",
        "data": data,
    })
}

async fn set_pusher(http: &Http, user: &User, body: Value) -> Result<()> {
    http.post(
        &format!("{V3}/pushers/set"),
        Some(&user.access_token()),
        body,
    )
    .await?
    .expect_ok()
    .with_context(|| format!("{}: POST /pushers/set", user.user_id))?;
    Ok(())
}

async fn pushers(http: &Http, user: &User) -> Result<Vec<Value>> {
    let r = http
        .get(&format!("{V3}/pushers"), Some(&user.access_token()))
        .await?;
    r.expect_ok()?;
    Ok(r.json["pushers"]
        .as_array()
        .with_context(|| format!("GET /pushers without a pushers array: {}", r.text))?
        .clone())
}

/// Alice opens a DM with Bob; returns its id once Bob has joined.
async fn dm(alice: &User, bob: &User) -> Result<String> {
    let room = alice.client.create_dm(&bob.user_id).await?;
    let room_id = room.room_id().to_owned();
    bob.wait_for_invite(&room_id).await?;
    bob.join(&room_id).await?;
    Ok(room_id.to_string())
}

fn is_push_for(req: &PushRequest, pushkey: &str, event_id: &str) -> bool {
    req.pushkey() == Some(pushkey) && req.event_id() == Some(event_id)
}

/// `(notification_count, highlight_count)` of `room` in a fresh initial sync.
async fn counts(http: &Http, user: &User, room: &str) -> Result<(u64, u64)> {
    let resp = RawSync::new(http, &user.access_token(), user.user_id.as_str())
        .with_filter(json!({"room": {"timeline": {"limit": 1}}}))
        .once(0)
        .await?;
    let n = RawSync::unread(&resp, room, "notification_count")
        .with_context(|| format!("{} is not joined to {room}: {resp}", user.user_id))?;
    Ok((
        n,
        RawSync::unread(&resp, room, "highlight_count").unwrap_or(0),
    ))
}

async fn read_up_to(http: &Http, user: &User, room: &str, event: &str) -> Result<()> {
    http.post(
        &format!("{V3}/rooms/{}/receipt/m.read/{}", enc(room), enc(event)),
        Some(&user.access_token()),
        json!({}),
    )
    .await?
    .expect_ok()
    .with_context(|| format!("{}: read receipt on {event}", user.user_id))?;
    Ok(())
}

fn rule_path(kind: &str, rule_id: &str, rest: &str) -> String {
    format!("{V3}/pushrules/global/{}/{}{rest}", enc(kind), enc(rule_id))
}

/// Bob's phone has two pushers: one asks for `event_id_only`, one for full
/// notifications. When Alice writes to him, the gateway gets a POST to
/// /_matrix/push/v1/notify for each: the first without any content, the
/// second with it. GET /pushers and GET /notifications show the pushers and
/// the notified event; a deleted pusher gets nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn the_push_gateway_is_notified_of_alices_message() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let gateway = PushGateway::start().await?;
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;

    set_pusher(
        &http,
        &bob,
        http_pusher("bob-id-only", &gateway.notify_url(), Some("event_id_only")),
    )
    .await?;
    set_pusher(
        &http,
        &bob,
        http_pusher("bob-full", &gateway.notify_url(), None),
    )
    .await?;

    // GET /pushers lists both as they were set.
    let list = pushers(&http, &bob).await?;
    ensure!(list.len() == 2, "Bob has two pushers: {list:#?}");
    let id_only = list
        .iter()
        .find(|p| p["pushkey"] == "bob-id-only")
        .with_context(|| format!("no bob-id-only pusher in {list:#?}"))?;
    for (key, want) in [
        ("kind", json!("http")),
        ("app_id", json!(APP_ID)),
        ("app_display_name", json!("Bellwire tests")),
        ("device_display_name", json!("Bob's phone")),
        ("lang", json!("en")),
    ] {
        ensure!(id_only[key] == want, "pusher {key}: {id_only}");
    }
    ensure!(
        id_only["data"]["url"] == gateway.notify_url().as_str()
            && id_only["data"]["format"] == "event_id_only",
        "pusher data: {id_only}"
    );

    let room = dm(&alice, &bob).await?;
    let message = http
        .send_text(
            &alice.access_token(),
            &room,
            "push-1",
            "Are you coming tonight?",
        )
        .await?;
    message.expect_ok()?;
    let event_id = message.json["event_id"]
        .as_str()
        .context("no event_id")?
        .to_owned();

    // The event_id_only pusher: ids and counts, nothing from the event itself.
    let push = gateway
        .wait_for("the event_id_only push for Alice's message", |r| {
            is_push_for(r, "bob-id-only", &event_id)
        })
        .await?;
    ensure!(
        push.method == "POST" && push.path == "/_matrix/push/v1/notify",
        "push request line: {} {}",
        push.method,
        push.path
    );
    let n = &push.body["notification"];
    ensure!(n["room_id"] == room.as_str(), "notification: {n}");
    ensure!(
        n["counts"]["unread"].as_u64().is_some_and(|c| c >= 1),
        "counts.unread is at least 1: {n}"
    );
    for hidden in ["content", "sender_display_name", "room_name", "type"] {
        ensure!(
            n.get(hidden).is_none(),
            "event_id_only must not send `{hidden}`: {n}"
        );
    }
    ensure!(
        !push.body.to_string().contains("Are you coming tonight?"),
        "event_id_only leaks the message text: {}",
        push.body
    );
    let device = &n["devices"][0];
    ensure!(
        device["app_id"] == APP_ID && device["pushkey"] == "bob-id-only",
        "devices[0]: {n}"
    );
    ensure!(
        device["data"]["format"] == "event_id_only" && device["data"]["custom"] == "kept",
        "devices[0].data carries the pusher data: {n}"
    );
    ensure!(
        device["data"].get("url").is_none(),
        "devices[0].data excludes the url: {n}"
    );

    // The full pusher: the event's type, sender and content.
    let push = gateway
        .wait_for("the full push for Alice's message", |r| {
            is_push_for(r, "bob-full", &event_id)
        })
        .await?;
    let n = &push.body["notification"];
    ensure!(n["room_id"] == room.as_str(), "notification: {n}");
    ensure!(n["type"] == "m.room.message", "notification type: {n}");
    ensure!(
        n["sender"] == alice.user_id.as_str(),
        "notification sender: {n}"
    );
    ensure!(
        n["content"]["body"] == "Are you coming tonight?",
        "notification content: {n}"
    );
    ensure!(
        n["counts"]["unread"].as_u64().is_some_and(|c| c >= 1),
        "counts.unread is at least 1: {n}"
    );

    // GET /notifications lists the event for Bob, unread.
    let r = http
        .get(&format!("{V3}/notifications"), Some(&bob.access_token()))
        .await?;
    r.expect_ok()?;
    let notes = r.json["notifications"]
        .as_array()
        .with_context(|| format!("no notifications array: {}", r.text))?;
    let note = notes
        .iter()
        .find(|n| n["event"]["event_id"] == event_id.as_str())
        .with_context(|| format!("GET /notifications does not list {event_id}: {}", r.text))?;
    ensure!(note["room_id"] == room.as_str(), "notification: {note}");
    ensure!(note["read"] == false, "not read yet: {note}");
    ensure!(note["ts"].is_u64(), "ts: {note}");
    ensure!(
        note["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "notify")),
        "actions include notify: {note}"
    );
    ensure!(
        note["event"]["content"]["body"] == "Are you coming tonight?",
        "the whole event: {note}"
    );

    // Bob deletes the event_id_only pusher (kind: null).
    http.post(
        &format!("{V3}/pushers/set"),
        Some(&bob.access_token()),
        json!({"kind": null, "app_id": APP_ID, "pushkey": "bob-id-only"}),
    )
    .await?
    .expect_ok()
    .context("deleting a pusher")?;
    let list = pushers(&http, &bob).await?;
    ensure!(
        list.len() == 1 && list[0]["pushkey"] == "bob-full",
        "one pusher left: {list:#?}"
    );
    let second = http
        .send_text(&alice.access_token(), &room, "push-2", "Seven o'clock")
        .await?;
    second.expect_ok()?;
    let second_id = second.json["event_id"]
        .as_str()
        .context("no event_id")?
        .to_owned();
    gateway
        .wait_for("the full push for the second message", |r| {
            is_push_for(r, "bob-full", &second_id)
        })
        .await?;
    ensure!(
        !gateway
            .requests()
            .iter()
            .any(|r| is_push_for(r, "bob-id-only", &second_id)),
        "the deleted pusher was still notified"
    );
    Ok(())
}

/// The default ruleset has the spec's rules; a user rule can be created,
/// read, disabled, given new actions and deleted; server-default rules
/// cannot be deleted, and rule ids starting with a dot are reserved.
#[tokio::test(flavor = "multi_thread")]
async fn push_rules_can_be_read_created_changed_and_deleted() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room = alice.create_room_with("Bakery", &[&bob]).await?;
    let token = bob.access_token();
    let mut bob_sync = bob.raw_sync();
    bob_sync.catch_up().await?;

    // The default ruleset.
    for path in [
        format!("{V3}/pushrules/"),
        format!("{V3}/pushrules/global/"),
    ] {
        let r = http.get(&path, Some(&token)).await?;
        r.expect_ok().with_context(|| format!("GET {path}"))?;
        let global = if path.ends_with("/pushrules/") {
            &r.json["global"]
        } else {
            &r.json
        };
        for (kind, rule_id) in [
            ("override", ".m.rule.master"),
            ("override", ".m.rule.is_user_mention"),
            ("underride", ".m.rule.call"),
            ("underride", ".m.rule.room_one_to_one"),
            ("underride", ".m.rule.encrypted_room_one_to_one"),
            ("underride", ".m.rule.message"),
        ] {
            let rule = global[kind]
                .as_array()
                .and_then(|rules| rules.iter().find(|x| x["rule_id"] == rule_id))
                .with_context(|| format!("GET {path}: no {kind} rule {rule_id}: {}", r.text))?;
            ensure!(
                rule["default"] == true,
                "{rule_id} is a default rule: {rule}"
            );
            let enabled = rule_id != ".m.rule.master";
            ensure!(
                rule["enabled"] == enabled,
                "{rule_id} enabled should be {enabled}: {rule}"
            );
        }
    }

    // A content rule: create, read back.
    let cake = rule_path("content", "cake", "");
    http.put(
        &cake,
        Some(&token),
        json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]}),
    )
    .await?
    .expect_ok()
    .context("PUT a content rule")?;
    let r = http.get(&cake, Some(&token)).await?;
    r.expect_ok()?;
    ensure!(r.json["rule_id"] == "cake", "rule: {}", r.text);
    ensure!(r.json["pattern"] == "cake", "rule: {}", r.text);
    ensure!(
        r.json["enabled"] == true,
        "new rules are enabled: {}",
        r.text
    );
    ensure!(r.json["default"] == false, "a user rule: {}", r.text);
    ensure!(
        r.json["actions"] == json!(["notify", {"set_tweak": "highlight"}]),
        "rule: {}",
        r.text
    );
    let r = http.get(&format!("{V3}/pushrules/"), Some(&token)).await?;
    ensure!(
        r.json["global"]["content"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["rule_id"] == "cake")),
        "the ruleset includes the new rule: {}",
        r.text
    );
    // The ruleset is also m.push_rules account data, delivered through sync.
    bob_sync
        .until("m.push_rules with the cake rule", |resp| {
            resp.pointer("/account_data/events")
                .and_then(Value::as_array)?
                .iter()
                .find(|e| {
                    e["type"] == "m.push_rules"
                        && e["content"]["global"]["content"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x["rule_id"] == "cake"))
                })
                .cloned()
        })
        .await?;

    // Disable it.
    http.put(
        &rule_path("content", "cake", "/enabled"),
        Some(&token),
        json!({"enabled": false}),
    )
    .await?
    .expect_ok()?;
    let r = http
        .get(&rule_path("content", "cake", "/enabled"), Some(&token))
        .await?;
    r.expect_ok()?;
    ensure!(r.json == json!({"enabled": false}), "enabled: {}", r.text);

    // New actions.
    http.put(
        &rule_path("content", "cake", "/actions"),
        Some(&token),
        json!({"actions": []}),
    )
    .await?
    .expect_ok()?;
    let r = http
        .get(&rule_path("content", "cake", "/actions"), Some(&token))
        .await?;
    r.expect_ok()?;
    ensure!(r.json == json!({"actions": []}), "actions: {}", r.text);

    // Delete it: gone, and deleting again is M_NOT_FOUND.
    http.delete(&cake, Some(&token)).await?.expect_ok()?;
    http.get(&cake, Some(&token))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    http.delete(&cake, Some(&token))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    http.get(&rule_path("content", "cake", "/enabled"), Some(&token))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // A room rule muting the bakery room: rule_id is the room id.
    let room_rule = rule_path("room", room.as_str(), "");
    http.put(&room_rule, Some(&token), json!({"actions": []}))
        .await?
        .expect_ok()
        .context("PUT a room rule")?;
    let r = http.get(&room_rule, Some(&token)).await?;
    r.expect_ok()?;
    ensure!(r.json["rule_id"] == room.as_str(), "room rule: {}", r.text);
    ensure!(r.json["actions"] == json!([]), "room rule: {}", r.text);
    http.delete(&room_rule, Some(&token)).await?.expect_ok()?;
    http.get(&room_rule, Some(&token))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;

    // Server-default rules can be switched, but not deleted.
    let message_rule = rule_path("underride", ".m.rule.message", "/enabled");
    http.put(&message_rule, Some(&token), json!({"enabled": false}))
        .await?
        .expect_ok()?;
    let r = http.get(&message_rule, Some(&token)).await?;
    ensure!(
        r.json["enabled"] == false,
        "default rule disabled: {}",
        r.text
    );
    http.put(&message_rule, Some(&token), json!({"enabled": true}))
        .await?
        .expect_ok()?;
    let r = http
        .delete(&rule_path("override", ".m.rule.master", ""), Some(&token))
        .await?;
    ensure!(
        matches!(r.status, 400 | 403 | 404) && r.errcode().is_some(),
        "deleting a server-default rule is refused: {} {}",
        r.status,
        r.text
    );
    let r = http
        .get(&rule_path("override", ".m.rule.master", ""), Some(&token))
        .await?;
    r.expect_ok().context("the master rule is still there")?;
    ensure!(r.json["default"] == true, "master rule: {}", r.text);

    // Rule ids starting with a dot are reserved for the server.
    let r = http
        .put(
            &rule_path("content", ".my.rule", ""),
            Some(&token),
            json!({"pattern": "x", "actions": ["notify"]}),
        )
        .await?;
    ensure!(
        r.status == 400 && r.errcode().is_some(),
        "a dotted rule id is rejected with 400: {} {}",
        r.status,
        r.text
    );
    http.get(&rule_path("content", ".my.rule", ""), Some(&token))
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

/// Enabling `.m.rule.master` silences everything: no push, no unread count.
/// Disabling it again brings both back.
#[tokio::test(flavor = "multi_thread")]
async fn the_master_rule_silences_pushes_and_counts() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let gateway = PushGateway::start().await?;
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    set_pusher(
        &http,
        &bob,
        http_pusher("bob-phone", &gateway.notify_url(), None),
    )
    .await?;
    let room = dm(&alice, &bob).await?;
    let room_id = matrix_sdk::ruma::OwnedRoomId::try_from(room.as_str())?;
    let master = rule_path("override", ".m.rule.master", "/enabled");

    // Normal service: a push, then Bob reads it.
    let one = alice.send_text(&room_id, "one").await?;
    gateway
        .wait_for("a push for 'one'", |r| is_push_for(r, "bob-phone", &one))
        .await?;
    read_up_to(&http, &bob, &room, &one).await?;
    eventually("Bob's counts to clear", || async {
        Ok(counts(&http, &bob, &room).await? == (0, 0))
    })
    .await?;

    // Master rule on: Bob still gets the message, but no push and no count.
    http.put(&master, Some(&bob.access_token()), json!({"enabled": true}))
        .await?
        .expect_ok()
        .context("enabling .m.rule.master")?;
    let two = alice.send_text(&room_id, "two").await?;
    bob.wait_for_text(&room_id, &alice.user_id, "two").await?;
    let silenced = counts(&http, &bob, &room).await?;
    ensure!(
        silenced == (0, 0),
        "with the master rule on, 'two' does not count: {silenced:?}"
    );

    // Master rule off again: 'three' pushes and counts, 'two' never did.
    http.put(
        &master,
        Some(&bob.access_token()),
        json!({"enabled": false}),
    )
    .await?
    .expect_ok()?;
    let three = alice.send_text(&room_id, "three").await?;
    gateway
        .wait_for("a push for 'three'", |r| {
            is_push_for(r, "bob-phone", &three)
        })
        .await?;
    ensure!(
        !gateway
            .requests()
            .iter()
            .any(|r| r.event_id() == Some(two.as_str())),
        "'two' was pushed although the master rule was on: {:#?}",
        gateway.requests()
    );
    eventually("exactly one unread ('three')", || async {
        Ok(counts(&http, &bob, &room).await? == (1, 0))
    })
    .await?;
    Ok(())
}

/// Bob's push gateway is down for maintenance when Alice writes to him; the
/// server keeps the push and retries. The server is then killed (SIGKILL)
/// before the gateway comes back: after the restart, the push still arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_queued_push_survives_kill_9() -> Result<()> {
    let mut server = TestServer::start().await?;
    let http = server.http();
    let gateway = PushGateway::start().await?;
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    set_pusher(
        &http,
        &bob,
        http_pusher("bob-phone", &gateway.notify_url(), None),
    )
    .await?;
    let room = dm(&alice, &bob).await?;

    gateway.set_out_of_order(true);
    let message = http
        .send_text(&alice.access_token(), &room, "late-1", "Call me back")
        .await?;
    message.expect_ok()?;
    let event_id = message.json["event_id"]
        .as_str()
        .context("no event_id")?
        .to_owned();
    gateway
        .wait_for("a refused attempt to push Alice's message", |r| {
            is_push_for(r, "bob-phone", &event_id) && r.answered == 503
        })
        .await?;

    server.kill9().await?;
    gateway.set_out_of_order(false);
    server.start_again().await?;
    gateway
        .wait_for("the push, delivered after the restart", |r| {
            is_push_for(r, "bob-phone", &event_id) && r.answered == 200
        })
        .await?;
    Ok(())
}
