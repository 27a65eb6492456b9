//! Finding people and rooms, and the per-user odds and ends around them:
//! profiles, the user directory, the published room directory, room
//! summaries, room tags and other room account data, and reporting content.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, RawSync, ServerOptions, TestServer, User, enc, eventually};
use matrix_sdk::ruma::events::tag::{TagInfo, TagName};
use serde_json::{Value, json};

const V1: &str = "/_matrix/client/v1";
const V3: &str = "/_matrix/client/v3";

/// Alice sets her display name (through her client) and avatar (raw PUT):
/// her profile shows both, and Bob's view of her membership in their shared
/// room picks up the new name.
#[tokio::test(flavor = "multi_thread")]
async fn profile_changes_show_in_the_profile_and_in_rooms() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = alice.create_room_with("Profiles", &[&bob]).await?;
    let alice_id = alice.user_id.as_str();

    alice
        .client
        .account()
        .set_display_name(Some("Alice Liddell"))
        .await
        .context("setting the display name")?;
    http.put(
        &format!("{V3}/profile/{}/avatar_url", enc(alice_id)),
        Some(&alice.access_token()),
        json!({"avatar_url": "mxc://localhost/abc"}),
    )
    .await?
    .expect_ok()
    .context("setting the avatar")?;

    let r = http
        .get(
            &format!("{V3}/profile/{}", enc(alice_id)),
            Some(&bob.access_token()),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["displayname"] == "Alice Liddell",
        "profile: {}",
        r.text
    );
    ensure!(
        r.json["avatar_url"] == "mxc://localhost/abc",
        "profile: {}",
        r.text
    );
    let r = http
        .get(
            &format!("{V3}/profile/{}/displayname", enc(alice_id)),
            Some(&bob.access_token()),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json == json!({"displayname": "Alice Liddell"}),
        "{}",
        r.text
    );

    // The change reaches her membership in the room, as Bob sees it.
    eventually("Alice's member event with her new profile", || async {
        let r = http
            .state(
                &bob.access_token(),
                room_id.as_str(),
                "m.room.member",
                alice_id,
            )
            .await?;
        r.expect_ok()?;
        Ok(r.json["displayname"] == "Alice Liddell"
            && r.json["avatar_url"] == "mxc://localhost/abc")
    })
    .await?;
    bob.sync_until("Alice's new name in the room timeline", |s| {
        s.events.iter().any(|e| {
            e.room_id == room_id
                && e.event_type == "m.room.member"
                && e.state_key.as_deref() == Some(alice_id)
                && e.json["content"]["displayname"] == "Alice Liddell"
                && e.json["content"]["membership"] == "join"
        })
    })
    .await?;
    Ok(())
}

/// User ids found by POST /user_directory/search as `user`.
async fn search(http: &Http, user: &User, term: &str, limit: u64) -> Result<(Vec<String>, Value)> {
    let r = http
        .post(
            &format!("{V3}/user_directory/search"),
            Some(&user.access_token()),
            json!({"search_term": term, "limit": limit}),
        )
        .await?;
    r.expect_ok()
        .with_context(|| format!("{} searching {term:?}", user.user_id))?;
    ensure!(
        r.json["limited"].is_boolean(),
        "`limited` is required: {}",
        r.text
    );
    let ids = r.json["results"]
        .as_array()
        .with_context(|| format!("no results array: {}", r.text))?
        .iter()
        .filter_map(|u| u["user_id"].as_str().map(str::to_owned))
        .collect();
    Ok((ids, r.json))
}

/// Alice finds Bob, with whom she shares a room, but not Erin, who shares
/// nothing with her, until Erin joins a public room. `limit` truncates the
/// results and says so.
#[tokio::test(flavor = "multi_thread")]
async fn the_user_directory_shows_people_you_share_rooms_with() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let bobby = server.new_user("bobby").await?;
    let bobcat = server.new_user("bobcat").await?;
    let erin = server.new_user("erin").await?;
    bob.client
        .account()
        .set_display_name(Some("Bob Builder"))
        .await?;
    alice
        .create_room_with("Neighbours", &[&bob, &bobby, &bobcat])
        .await?;

    // Through her client: Bob is found by a prefix of his id, with his name.
    eventually("Alice finding Bob", || async {
        let found = alice.client.search_users("bo", 10).await?;
        Ok(found
            .results
            .iter()
            .any(|u| u.user_id == bob.user_id && u.display_name.as_deref() == Some("Bob Builder")))
    })
    .await?;
    // By display name too, case-insensitively.
    let (ids, _) = search(&http, &alice, "builder", 10).await?;
    ensure!(
        ids == vec![bob.user_id.to_string()],
        "search 'builder': {ids:?}"
    );

    // Erin shares no room with Alice and is in no public room.
    let (ids, body) = search(&http, &alice, "erin", 10).await?;
    ensure!(ids.is_empty(), "Erin is not visible to Alice yet: {body}");

    // `limited` with a limit smaller than the matches.
    let (ids, body) = search(&http, &alice, "bob", 2).await?;
    ensure!(ids.len() == 2, "limit 2 gives 2 results: {body}");
    ensure!(body["limited"] == true, "limit 2 of 3 is limited: {body}");
    let (ids, body) = search(&http, &alice, "bob", 10).await?;
    let all: BTreeSet<String> = ids.into_iter().collect();
    let want: BTreeSet<String> = [&bob, &bobby, &bobcat]
        .iter()
        .map(|u| u.user_id.to_string())
        .collect();
    ensure!(all == want, "all three bobs: {body}");
    ensure!(body["limited"] == false, "3 of 3 is not limited: {body}");

    // Erin joins a public room: now anyone can find her.
    http.create_room(
        &erin.access_token(),
        json!({"visibility": "public", "preset": "public_chat", "name": "Erin's open house"}),
    )
    .await?;
    eventually(
        "Alice finding Erin after she joins a public room",
        || async {
            let (ids, _) = search(&http, &alice, "erin", 10).await?;
            Ok(ids == vec![erin.user_id.to_string()])
        },
    )
    .await?;
    Ok(())
}

/// With `[user_directory] search_all_users = true`, every local user is
/// found, even one who shares nothing with the searcher.
#[tokio::test(flavor = "multi_thread")]
async fn search_all_users_finds_strangers() -> Result<()> {
    let options = ServerOptions {
        extra_config: "[user_directory]\nsearch_all_users = true\n".to_owned(),
        ..Default::default()
    };
    let server = TestServer::start_with(options).await?;
    let http = server.http();
    let frank = server.new_user("frank").await?;
    let gina = server.new_user("gina").await?;
    eventually("Gina finding Frank", || async {
        let (ids, _) = search(&http, &gina, "frank", 10).await?;
        Ok(ids == vec![frank.user_id.to_string()])
    })
    .await?;
    Ok(())
}

/// GET /publicRooms (no token needed) as a list of chunk objects.
async fn public_rooms(http: &Http, query: &str) -> Result<Value> {
    let r = http.get(&format!("{V3}/publicRooms{query}"), None).await?;
    r.expect_ok()
        .with_context(|| format!("GET /publicRooms{query}"))?;
    ensure!(r.json["chunk"].is_array(), "no chunk: {}", r.text);
    Ok(r.json)
}

fn room_ids(resp: &Value) -> Vec<String> {
    resp["chunk"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn visibility_path(room: &str) -> String {
    format!("{V3}/directory/list/room/{}", enc(room))
}

/// Alice publishes rooms in the directory: GET /publicRooms describes them,
/// POST /publicRooms filters by a search term, both paginate with each room
/// exactly once, and taking a room out of the directory removes it.
#[tokio::test(flavor = "multi_thread")]
async fn public_rooms_are_listed_searched_and_paged() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let token = alice.access_token();

    let lobby = http
        .create_room(
            &token,
            json!({
                "visibility": "public",
                "preset": "public_chat",
                "name": "Rust Lobby",
                "topic": "All things Rust",
                "room_alias_name": "lobby",
            }),
        )
        .await?;
    http.join(&bob.access_token(), "#lobby:localhost").await?;
    let garden = http
        .create_room(
            &token,
            json!({"visibility": "public", "preset": "public_chat", "name": "Gardening Club"}),
        )
        .await?;
    let chess = http
        .create_room(
            &token,
            json!({"visibility": "public", "preset": "public_chat", "name": "Chess Corner"}),
        )
        .await?;
    // A private room is never listed.
    let secret = http
        .create_room(
            &token,
            json!({"preset": "private_chat", "name": "Rust secrets"}),
        )
        .await?;

    let all = public_rooms(&http, "").await?;
    let listed: BTreeSet<String> = room_ids(&all).into_iter().collect();
    let want: BTreeSet<String> = [&lobby, &garden, &chess].into_iter().cloned().collect();
    ensure!(listed == want, "the three public rooms: {all}");
    let entry = all["chunk"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["room_id"] == lobby.as_str()))
        .context("lobby entry")?;
    ensure!(entry["name"] == "Rust Lobby", "lobby: {entry}");
    ensure!(entry["topic"] == "All things Rust", "lobby: {entry}");
    ensure!(
        entry["canonical_alias"] == "#lobby:localhost",
        "lobby: {entry}"
    );
    ensure!(entry["num_joined_members"] == 2, "Alice and Bob: {entry}");
    ensure!(entry["world_readable"] == false, "lobby: {entry}");
    ensure!(entry["guest_can_join"] == false, "lobby: {entry}");
    ensure!(
        entry.get("join_rule").is_none() || entry["join_rule"] == "public",
        "lobby join_rule: {entry}"
    );

    // Through Alice's client.
    let sdk = alice.client.public_rooms(None, None, None).await?;
    ensure!(sdk.chunk.len() == 3, "matrix-sdk sees three rooms: {sdk:?}");

    // Filtered by a search term.
    let r = http
        .post(
            &format!("{V3}/publicRooms"),
            Some(&token),
            json!({"filter": {"generic_search_term": "Garden"}}),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        room_ids(&r.json) == vec![garden.clone()],
        "search 'Garden': {}",
        r.text
    );
    let r = http
        .post(
            &format!("{V3}/publicRooms"),
            Some(&token),
            json!({"filter": {"generic_search_term": "Rust"}}),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        room_ids(&r.json) == vec![lobby.clone()],
        "search 'Rust' finds the lobby only (not the private room {secret}): {}",
        r.text
    );

    // One at a time, forwards: each room once, then no next_batch.
    let mut pages: Vec<(Vec<String>, Value)> = Vec::new();
    let mut since: Option<String> = None;
    for page in 0.. {
        ensure!(page < 10, "/publicRooms paging did not end");
        let query = match &since {
            Some(s) => format!("?limit=1&since={}", enc(s)),
            None => "?limit=1".to_owned(),
        };
        let resp = public_rooms(&http, &query).await?;
        let ids = room_ids(&resp);
        ensure!(ids.len() <= 1, "limit=1: {resp}");
        if page == 0 {
            ensure!(
                resp.get("prev_batch").is_none(),
                "the first page has no prev_batch: {resp}"
            );
        }
        let next = resp
            .get("next_batch")
            .and_then(Value::as_str)
            .map(str::to_owned);
        pages.push((ids, resp));
        match next {
            Some(n) => since = Some(n),
            None => break,
        }
    }
    let paged: Vec<String> = pages.iter().flat_map(|(ids, _)| ids.clone()).collect();
    let paged_set: BTreeSet<String> = paged.iter().cloned().collect();
    ensure!(
        paged.len() == 3 && paged_set == want,
        "paging gives each room once: {paged:?}"
    );
    // prev_batch of the second page leads back to the first page's room.
    let second = &pages[1].1;
    let prev = second["prev_batch"]
        .as_str()
        .with_context(|| format!("the second page has a prev_batch: {second}"))?;
    let back = public_rooms(&http, &format!("?limit=1&since={}", enc(prev))).await?;
    ensure!(
        room_ids(&back) == pages[0].0,
        "prev_batch goes back to the first page: {back}"
    );
    // POST pages the same way.
    let r = http
        .post(
            &format!("{V3}/publicRooms"),
            Some(&token),
            json!({"limit": 2}),
        )
        .await?;
    r.expect_ok()?;
    ensure!(room_ids(&r.json).len() == 2, "POST limit 2: {}", r.text);
    let next = r.json["next_batch"].as_str().context("POST: next_batch")?;
    let r2 = http
        .post(
            &format!("{V3}/publicRooms"),
            Some(&token),
            json!({"limit": 2, "since": next}),
        )
        .await?;
    r2.expect_ok()?;
    let mut both: Vec<String> = room_ids(&r.json);
    both.extend(room_ids(&r2.json));
    ensure!(
        both.len() == 3 && both.iter().cloned().collect::<BTreeSet<_>>() == want,
        "POST paging: {} then {}",
        r.text,
        r2.text
    );

    // Taking the chess room out of the directory.
    let r = http.get(&visibility_path(&chess), None).await?;
    r.expect_ok()?;
    ensure!(r.json["visibility"] == "public", "{}", r.text);
    http.put(
        &visibility_path(&chess),
        Some(&token),
        json!({"visibility": "private"}),
    )
    .await?
    .expect_ok()
    .context("unpublishing")?;
    let r = http.get(&visibility_path(&chess), None).await?;
    r.expect_ok()?;
    ensure!(r.json["visibility"] == "private", "{}", r.text);
    let all = public_rooms(&http, "").await?;
    ensure!(
        !room_ids(&all).contains(&chess),
        "an unpublished room is not listed: {all}"
    );
    let r = http.get(&visibility_path(&secret), None).await?;
    r.expect_ok()?;
    ensure!(
        r.json["visibility"] == "private",
        "never published: {}",
        r.text
    );
    http.get(&visibility_path("!nosuchroom:localhost"), None)
        .await?
        .expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

/// Who may publish a room: with the default `publish = "members"` any joined
/// member may, a non-member may not; with `publish = "moderators"` only
/// members with power level >= state_default.
#[tokio::test(flavor = "multi_thread")]
async fn who_may_publish_a_room() -> Result<()> {
    for (mode, member_may) in [("members", true), ("moderators", false)] {
        let options = ServerOptions {
            extra_config: if mode == "members" {
                String::new()
            } else {
                format!("[directory]\npublish = \"{mode}\"\n")
            },
            ..Default::default()
        };
        let server = TestServer::start_with(options).await?;
        let http = server.http();
        let alice = server.new_user("alice").await?;
        let bob = server.new_user("bob").await?;
        let mallory = server.new_user("mallory").await?;
        let room = http
            .create_room(
                &alice.access_token(),
                json!({"preset": "private_chat", "name": "Quiet room", "invite": [bob.user_id.as_str()]}),
            )
            .await?;
        http.join(&bob.access_token(), &room).await?;
        let publish = json!({"visibility": "public"});

        // Mallory is not in the room.
        http.put(
            &visibility_path(&room),
            Some(&mallory.access_token()),
            publish.clone(),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")
        .with_context(|| format!("{mode}: a non-member publishing"))?;
        ensure!(
            room_ids(&public_rooms(&http, "").await?).is_empty(),
            "{mode}: nothing was published"
        );

        // Bob is a member with power level 0.
        let r = http
            .put(
                &visibility_path(&room),
                Some(&bob.access_token()),
                publish.clone(),
            )
            .await?;
        if member_may {
            r.expect_ok()
                .with_context(|| format!("{mode}: a member publishing"))?;
            ensure!(
                room_ids(&public_rooms(&http, "").await?) == vec![room.clone()],
                "{mode}: Bob published the room"
            );
            http.put(
                &visibility_path(&room),
                Some(&bob.access_token()),
                json!({"visibility": "private"}),
            )
            .await?
            .expect_ok()?;
        } else {
            r.expect_error(403, "M_FORBIDDEN")
                .with_context(|| format!("{mode}: a plain member publishing"))?;
        }
        ensure!(
            room_ids(&public_rooms(&http, "").await?).is_empty(),
            "{mode}: the room is not listed"
        );

        // Alice (power level 100) may always.
        http.put(
            &visibility_path(&room),
            Some(&alice.access_token()),
            publish,
        )
        .await?
        .expect_ok()
        .with_context(|| format!("{mode}: the room admin publishing"))?;
        ensure!(
            room_ids(&public_rooms(&http, "").await?) == vec![room.clone()],
            "{mode}: Alice published the room"
        );
    }
    Ok(())
}

/// GET /room_summary: a public room is summarised for anyone (by id or
/// alias), with the caller's membership when they have one; an invite-only
/// room is not summarised for an outsider.
#[tokio::test(flavor = "multi_thread")]
async fn room_summaries_for_public_and_private_rooms() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let carol = server.new_user("carol").await?;
    let public = http
        .create_room(
            &alice.access_token(),
            json!({
                "visibility": "public",
                "preset": "public_chat",
                "name": "Town square",
                "topic": "Everyone welcome",
                "room_alias_name": "square",
            }),
        )
        .await?;
    let private = http
        .create_room(
            &alice.access_token(),
            json!({"preset": "private_chat", "name": "Back office", "topic": "Payroll"}),
        )
        .await?;
    let summary = |room: &str| format!("{V1}/room_summary/{}", enc(room));

    for (who, token, membership) in [
        ("Alice (member)", alice.access_token(), Some("join")),
        ("Carol (outsider)", carol.access_token(), None),
    ] {
        for target in [public.as_str(), "#square:localhost"] {
            let r = http.get(&summary(target), Some(&token)).await?;
            r.expect_ok()
                .with_context(|| format!("{who}: summary of {target}"))?;
            let s = &r.json;
            ensure!(s["room_id"] == public.as_str(), "{who}: {target}: {s}");
            ensure!(s["name"] == "Town square", "{who}: {target}: {s}");
            ensure!(s["topic"] == "Everyone welcome", "{who}: {target}: {s}");
            ensure!(s["num_joined_members"] == 1, "{who}: {target}: {s}");
            ensure!(s["join_rule"] == "public", "{who}: {target}: {s}");
            ensure!(s["world_readable"].is_boolean(), "{who}: {target}: {s}");
            ensure!(s["guest_can_join"].is_boolean(), "{who}: {target}: {s}");
            match membership {
                Some(m) => ensure!(s["membership"] == m, "{who}: {target}: {s}"),
                None => ensure!(
                    s.get("membership").is_none() || s["membership"] == "leave",
                    "{who}: an outsider has no membership: {s}"
                ),
            }
        }
    }

    // The invite-only room: Alice gets it, Carol does not.
    let r = http
        .get(&summary(&private), Some(&alice.access_token()))
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["join_rule"] == "invite",
        "private summary: {}",
        r.text
    );
    ensure!(
        r.json["membership"] == "join",
        "private summary: {}",
        r.text
    );
    let r = http
        .get(&summary(&private), Some(&carol.access_token()))
        .await?;
    ensure!(
        matches!(r.status, 403 | 404) && r.errcode().is_some(),
        "an outsider gets no summary of an invite-only room: {} {}",
        r.status,
        r.text
    );
    ensure!(
        !r.text.contains("Back office") && !r.text.contains("Payroll"),
        "nothing about the private room leaks: {}",
        r.text
    );
    let r = http
        .get(
            &summary("!nosuchroom:localhost"),
            Some(&carol.access_token()),
        )
        .await?;
    r.expect_error(404, "M_NOT_FOUND")?;
    Ok(())
}

/// Room tags set through matrix-sdk show in GET /tags and in the room's
/// `m.tag` account data in sync; `m.marked_unread` round-trips through sync;
/// content, rooms and users can be reported.
#[tokio::test(flavor = "multi_thread")]
async fn tags_room_account_data_and_reports() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = alice.create_room_with("Favourites", &[&bob]).await?;
    let room = room_id.as_str();
    let token = alice.access_token();
    let me = alice.user_id.as_str();
    let tags_path = format!("{V3}/user/{}/rooms/{}/tags", enc(me), enc(room));
    let mut alice_sync = alice.raw_sync();
    alice_sync.catch_up().await?;

    // Favourite, through matrix-sdk (PUT .../tags/m.favourite {order: 0.5}).
    let mut info = TagInfo::new();
    info.order = Some(0.5);
    alice
        .room(&room_id)?
        .set_tag(TagName::Favorite, info)
        .await
        .context("tagging the room")?;
    let r = http.get(&tags_path, Some(&token)).await?;
    r.expect_ok()?;
    ensure!(
        r.json["tags"]["m.favourite"]["order"] == 0.5,
        "GET tags: {}",
        r.text
    );
    alice_sync
        .until("m.tag with m.favourite", |resp| {
            RawSync::room_account_data(resp, room, "m.tag")
                .into_iter()
                .find(|e| e["content"]["tags"]["m.favourite"]["order"] == 0.5)
                .cloned()
        })
        .await?;
    // A user tag, raw.
    http.put(
        &format!("{tags_path}/{}", enc("u.work")),
        Some(&token),
        json!({"order": 0.25}),
    )
    .await?
    .expect_ok()?;
    let r = http.get(&tags_path, Some(&token)).await?;
    ensure!(
        r.json["tags"]["u.work"]["order"] == 0.25 && r.json["tags"]["m.favourite"].is_object(),
        "two tags: {}",
        r.text
    );
    // Untag.
    alice
        .room(&room_id)?
        .remove_tag(TagName::Favorite)
        .await
        .context("removing the tag")?;
    let r = http.get(&tags_path, Some(&token)).await?;
    r.expect_ok()?;
    ensure!(
        r.json["tags"].get("m.favourite").is_none() && r.json["tags"]["u.work"].is_object(),
        "m.favourite removed: {}",
        r.text
    );
    alice_sync
        .until("m.tag without m.favourite", |resp| {
            RawSync::room_account_data(resp, room, "m.tag")
                .into_iter()
                .find(|e| {
                    e["content"]["tags"].get("m.favourite").is_none()
                        && e["content"]["tags"]["u.work"].is_object()
                })
                .cloned()
        })
        .await?;
    // Bob's view of the room has no tags of Alice's.
    let r = http
        .get(
            &format!(
                "{V3}/user/{}/rooms/{}/tags",
                enc(bob.user_id.as_str()),
                enc(room)
            ),
            Some(&bob.access_token()),
        )
        .await?;
    r.expect_ok()?;
    ensure!(r.json["tags"] == json!({}), "Bob has no tags: {}", r.text);

    // Marked unread: room account data, round trip through sync.
    let unread_path = format!(
        "{V3}/user/{}/rooms/{}/account_data/m.marked_unread",
        enc(me),
        enc(room)
    );
    http.put(&unread_path, Some(&token), json!({"unread": true}))
        .await?
        .expect_ok()?;
    let r = http.get(&unread_path, Some(&token)).await?;
    r.expect_ok()?;
    ensure!(r.json == json!({"unread": true}), "{}", r.text);
    alice_sync
        .until("m.marked_unread in sync", |resp| {
            RawSync::room_account_data(resp, room, "m.marked_unread")
                .into_iter()
                .find(|e| e["content"]["unread"] == true)
                .cloned()
        })
        .await?;

    // Reports: an event, the room, a user.
    let rude = bob.send_text(&room_id, "something rude").await?;
    let r = http
        .post(
            &format!("{V3}/rooms/{}/report/{}", enc(room), enc(&rude)),
            Some(&token),
            json!({"reason": "rude"}),
        )
        .await?;
    r.expect_ok().context("reporting an event")?;
    ensure!(r.json == json!({}), "reporting answers {{}}: {}", r.text);
    http.post(
        &format!(
            "{V3}/rooms/{}/report/{}",
            enc(room),
            enc("$doesnotexist0000000000000000000000000000000")
        ),
        Some(&token),
        json!({"reason": "rude"}),
    )
    .await?
    .expect_error(404, "M_NOT_FOUND")
    .context("reporting an unknown event")?;
    http.post(
        &format!("{V3}/rooms/{}/report", enc(room)),
        Some(&token),
        json!({"reason": "this room went off the rails"}),
    )
    .await?
    .expect_ok()
    .context("reporting a room")?;
    http.post(
        &format!("{V3}/users/{}/report", enc(bob.user_id.as_str())),
        Some(&token),
        json!({"reason": "keeps being rude"}),
    )
    .await?
    .expect_ok()
    .context("reporting a user")?;
    Ok(())
}
