//! Bad input over raw HTTP: each rejection has the right status and errcode,
//! changes nothing, and leaves the server up.

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Body, Http, ServerOptions, TestServer, enc, password_for};
use serde_json::{Value, json};

const CREATE_ROOM: &str = "/_matrix/client/v3/createRoom";
const JOINED_ROOMS: &str = "/_matrix/client/v3/joined_rooms";
const LOGIN: &str = "/_matrix/client/v3/login";
const REGISTER: &str = "/_matrix/client/v3/register";

fn name_path(room: &str) -> String {
    Http::state_path(room, "m.room.name", "")
}

fn send_path(room: &str, txn: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        enc(room),
        enc(txn)
    )
}

async fn room_name(http: &Http, token: &str, room: &str) -> Result<Value> {
    let r = http.state(token, room, "m.room.name", "").await?;
    r.expect_ok()?;
    Ok(r.json["name"].clone())
}

/// The server still answers, and still does real work.
async fn assert_still_serving(http: &Http, token: &str) -> Result<()> {
    http.assert_alive().await?;
    let room = http
        .create_room(token, json!({"name": "still here"}))
        .await?;
    let sent = http.send_text(token, &room, "alive-check", "ping").await?;
    sent.expect_ok()?;
    Ok(())
}

async fn registered(http: &Http, localpart: &str) -> Result<String> {
    Ok(http.register(localpart, &password_for(localpart)).await?.1)
}

/// Broken JSON bodies get 400 M_NOT_JSON and write nothing.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_m_not_json() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;
    let room = http
        .create_room(&token, json!({"name": "Original name"}))
        .await?;

    // createRoom with a truncated body: no room is created.
    let r = http
        .call(
            "POST",
            CREATE_ROOM,
            Some(&token),
            Body::Raw(br#"{"name": "Broken""#.to_vec()),
        )
        .await?;
    r.expect_error(400, "M_NOT_JSON")?;
    assert_eq!(
        http.joined_rooms(&token).await?,
        vec![room.clone()],
        "no extra room was created"
    );

    // Renaming the room with garbage: the name stays.
    let r = http
        .call(
            "PUT",
            &name_path(&room),
            Some(&token),
            Body::Raw(b"{\"name\": ".to_vec()),
        )
        .await?;
    r.expect_error(400, "M_NOT_JSON")?;
    assert_eq!(room_name(&http, &token, &room).await?, "Original name");

    // A message that is not JSON at all, and one that is not even UTF-8.
    let r = http
        .call(
            "PUT",
            &send_path(&room, "t1"),
            Some(&token),
            Body::Raw(b"hello there".to_vec()),
        )
        .await?;
    r.expect_error(400, "M_NOT_JSON")?;
    let r = http
        .call(
            "PUT",
            &send_path(&room, "t2"),
            Some(&token),
            Body::Raw(vec![0xff, 0xfe, b'{', 0x80]),
        )
        .await?;
    r.expect_error(400, "M_NOT_JSON")?;
    let history = http.all_messages(&token, &room).await?;
    assert!(history.is_empty(), "no message was stored: {history:#?}");

    // Unauthenticated endpoints parse JSON the same way.
    let r = http
        .call("POST", LOGIN, None, Body::Raw(b"{{{".to_vec()))
        .await?;
    r.expect_error(400, "M_NOT_JSON")?;
    let r = http
        .call("POST", REGISTER, None, Body::Raw(b"[1, 2".to_vec()))
        .await?;
    r.expect_error(400, "M_NOT_JSON")?;

    assert_still_serving(&http, &token).await
}

/// Well-formed JSON with wrongly typed fields gets 400 M_BAD_JSON and writes
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn wrongly_typed_fields_are_m_bad_json() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;

    // createRoom with a number for a name, or a string for the invite list.
    http.post(CREATE_ROOM, Some(&token), json!({"name": 5}))
        .await?
        .expect_error(400, "M_BAD_JSON")?;
    http.post(
        CREATE_ROOM,
        Some(&token),
        json!({"invite": "@bob:localhost"}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")?;
    assert!(
        http.joined_rooms(&token).await?.is_empty(),
        "no room was created"
    );

    // register with a number for a username: no account appears.
    let r = http
        .post(
            REGISTER,
            None,
            json!({"username": 12, "password": "twelve-twelve-12"}),
        )
        .await?;
    r.expect_error(400, "M_BAD_JSON")?;
    let r = http
        .post(
            REGISTER,
            None,
            json!({"username": 12, "password": "twelve-twelve-12", "auth": {"type": "m.login.dummy"}}),
        )
        .await?;
    r.expect_error(400, "M_BAD_JSON")?;
    http.login("12", "twelve-twelve-12")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    // login with a number for a password.
    let r = http
        .post(
            LOGIN,
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "alice"},
                "password": 12345,
            }),
        )
        .await?;
    r.expect_error(400, "M_BAD_JSON")?;

    assert_still_serving(&http, &token).await
}

/// No token: 401 M_MISSING_TOKEN. A token the server never issued, or one
/// that was logged out: 401 M_UNKNOWN_TOKEN.
#[tokio::test(flavor = "multi_thread")]
async fn missing_and_unknown_tokens_are_401() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;

    http.get(JOINED_ROOMS, None)
        .await?
        .expect_error(401, "M_MISSING_TOKEN")?;
    http.post(CREATE_ROOM, None, json!({"name": "anonymous"}))
        .await?
        .expect_error(401, "M_MISSING_TOKEN")?;

    let bogus = "syt_bm90LWEtdG9rZW4_notissuedbythisserver_0000";
    http.get(JOINED_ROOMS, Some(bogus))
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    http.post(CREATE_ROOM, Some(bogus), json!({"name": "forged"}))
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    assert!(
        http.joined_rooms(&token).await?.is_empty(),
        "nothing was created for anyone"
    );

    // A second login of Alice, logged out: that token dies, the first lives.
    let login = http.login("alice", &password_for("alice")).await?;
    login.expect_ok()?;
    let second = login.json["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned();
    http.post("/_matrix/client/v3/logout", Some(&second), json!({}))
        .await?
        .expect_ok()?;
    http.get(JOINED_ROOMS, Some(&second))
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")?;
    http.get(JOINED_ROOMS, Some(&token)).await?.expect_ok()?;

    assert_still_serving(&http, &token).await
}

/// Acting without the right to: 403 M_FORBIDDEN, and the room is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn forbidden_actions_are_403_and_change_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = registered(&http, "alice").await?;
    let bob = registered(&http, "bob").await?;
    let room = http
        .create_room(
            &alice,
            json!({"name": "Alice's diary", "preset": "private_chat"}),
        )
        .await?;

    // Bob is not in the room: he can't write, rename it, or join it uninvited.
    http.send_text(&bob, &room, "b1", "I read your diary")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    http.put(
        &name_path(&room),
        Some(&bob),
        json!({"name": "Bob's diary"}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    http.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(&bob),
        json!({}),
    )
    .await?
    .expect_error(403, "M_FORBIDDEN")?;
    assert!(
        http.all_messages(&alice, &room).await?.is_empty(),
        "no message got in"
    );
    assert_eq!(room_name(&http, &alice, &room).await?, "Alice's diary");
    assert!(
        http.joined_rooms(&bob).await?.is_empty(),
        "Bob did not get in"
    );

    // Invited and joined, Bob is still only a regular member.
    http.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
        Some(&alice),
        json!({"user_id": "@bob:localhost"}),
    )
    .await?
    .expect_ok()?;
    http.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(&bob),
        json!({}),
    )
    .await?
    .expect_ok()?;

    // He cannot grant himself power...
    let pl_path = Http::state_path(&room, "m.room.power_levels", "");
    let before = http.get(&pl_path, Some(&alice)).await?;
    before.expect_ok()?;
    let mut grab = before.json.clone();
    grab["users"]["@bob:localhost"] = json!(100);
    http.put(&pl_path, Some(&bob), grab)
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let after = http.get(&pl_path, Some(&alice)).await?;
    after.expect_ok()?;
    assert_eq!(after.json, before.json, "power levels unchanged");

    // ...nor kick or ban Alice.
    for action in ["kick", "ban"] {
        http.post(
            &format!("/_matrix/client/v3/rooms/{}/{action}", enc(&room)),
            Some(&bob),
            json!({"user_id": "@alice:localhost", "reason": "mine now"}),
        )
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    }
    let members = http
        .get(
            &format!("/_matrix/client/v3/rooms/{}/members", enc(&room)),
            Some(&alice),
        )
        .await?;
    members.expect_ok()?;
    let alice_membership = members.json["chunk"]
        .as_array()
        .context("no chunk")?
        .iter()
        .find(|e| e["state_key"] == "@alice:localhost")
        .map(|e| e["content"]["membership"].clone());
    assert_eq!(
        alice_membership,
        Some(json!("join")),
        "Alice is still in her room"
    );

    assert_still_serving(&http, &alice).await
}

/// Unknown endpoints: 404 M_UNRECOGNIZED; known endpoints with the wrong
/// method: 405 M_UNRECOGNIZED. Paths outside /_matrix and /.well-known
/// are not Matrix endpoints (the web client lives there): a plain 404.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_endpoints_and_wrong_methods_are_unrecognized() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;

    for (method, path) in [
        ("GET", "/_matrix/client/v3/this/does/not/exist"),
        ("POST", "/_matrix/client/v3/teleport"),
        ("GET", "/_matrix/client/v3/rooms"),
    ] {
        for auth in [Some(token.as_str()), None] {
            let r = http.call(method, path, auth, Body::None).await?;
            r.expect_error(404, "M_UNRECOGNIZED")
                .with_context(|| format!("{method} {path} (token: {})", auth.is_some()))?;
        }
    }
    for (method, path) in [
        ("GET", CREATE_ROOM),
        ("DELETE", LOGIN),
        ("PUT", JOINED_ROOMS),
        ("GET", "/_matrix/client/v3/logout"),
    ] {
        let r = http.call(method, path, Some(&token), Body::None).await?;
        r.expect_error(405, "M_UNRECOGNIZED")
            .with_context(|| format!("{method} {path}"))?;
    }
    assert!(
        http.joined_rooms(&token).await?.is_empty(),
        "GET createRoom created nothing"
    );
    for path in ["/", "/no/such/page", "/_matrixx/client"] {
        let r = http.call("GET", path, None, Body::None).await?;
        ensure!(
            r.status == 404 && r.errcode().is_none(),
            "GET {path}: {} {}",
            r.status,
            r.text
        );
    }
    http.call("GET", "/.well-known/matrix/nothing", None, Body::None)
        .await?
        .expect_error(404, "M_UNRECOGNIZED")?;

    assert_still_serving(&http, &token).await
}

/// With `max_request_bytes = 65536`, a 100 KB body is refused with 413
/// M_TOO_LARGE and not stored; a normal-sized one still goes through.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_m_too_large() -> Result<()> {
    let options = ServerOptions {
        max_request_bytes: Some(65536),
        ..Default::default()
    };
    let server = TestServer::start_with(options).await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;
    let room = http
        .create_room(&token, json!({"name": "Small talk"}))
        .await?;
    let huge = "x".repeat(100 * 1024);

    // After each 413 the very next request goes out on the same keep-alive
    // client: a server that stops reading a body must also stop the
    // connection being reused (`Connection: close`) or drain the body.
    let reuse = "the request right after a 413 failed on the reused keep-alive connection: \
                 the server closed it without `Connection: close` (or without draining the body)";

    http.send_text(&token, &room, "big-1", &huge)
        .await?
        .expect_error(413, "M_TOO_LARGE")?;
    http.assert_alive().await.context(reuse)?;
    assert!(
        http.all_messages(&token, &room).await?.is_empty(),
        "the big message was not stored"
    );

    http.put(&name_path(&room), Some(&token), json!({"name": huge}))
        .await?
        .expect_error(413, "M_TOO_LARGE")?;
    http.assert_alive().await.context(reuse)?;
    assert_eq!(room_name(&http, &token, &room).await?, "Small talk");

    // Before authentication too: no account appears.
    http.post(
        REGISTER,
        None,
        json!({"username": "mallory", "password": huge}),
    )
    .await?
    .expect_error(413, "M_TOO_LARGE")?;
    http.assert_alive().await.context(reuse)?;
    http.login("mallory", &huge[..64])
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    // A 20 KB message is fine.
    let medium = "y".repeat(20 * 1024);
    http.send_text(&token, &room, "medium-1", &medium)
        .await?
        .expect_ok()?;
    let history = http.all_messages(&token, &room).await?;
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0]["content"]["body"].as_str().map(str::len),
        Some(medium.len())
    );

    assert_still_serving(&http, &token).await
}

/// Registering a taken username: 400 M_USER_IN_USE, and the original account
/// keeps its password.
#[tokio::test(flavor = "multi_thread")]
async fn registering_a_taken_username_is_m_user_in_use() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;

    // The server may refuse right away or after the UIA stage; either way the
    // final answer is M_USER_IN_USE.
    let body = json!({"username": "alice", "password": "impostor-password"});
    let first = http.post(REGISTER, None, body.clone()).await?;
    let last = if first.status == 401 {
        let mut retry = body.clone();
        retry["auth"] = json!({"type": "m.login.dummy", "session": first.json["session"]});
        http.post(REGISTER, None, retry).await?
    } else {
        first
    };
    last.expect_error(400, "M_USER_IN_USE")?;

    http.login("alice", "impostor-password")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;
    let ok = http.login("alice", &password_for("alice")).await?;
    ok.expect_ok()?;
    assert_eq!(ok.json["user_id"], "@alice:localhost");

    assert_still_serving(&http, &token).await
}

/// A wrong password or an unknown user: 403 M_FORBIDDEN and no token; the
/// right password works with the localpart and with the full user id.
#[tokio::test(flavor = "multi_thread")]
async fn bad_password_login_is_m_forbidden() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let token = registered(&http, "alice").await?;

    for (user, password) in [
        ("alice", "wrong-password"),
        ("@alice:localhost", "wrong-password"),
        ("alice", ""),
        ("nobody", "whatever-password"),
    ] {
        let r = http.login(user, password).await?;
        r.expect_error(403, "M_FORBIDDEN")
            .with_context(|| format!("login as {user:?}"))?;
        assert!(
            r.json.get("access_token").is_none(),
            "no token on failure: {}",
            r.text
        );
    }
    for user in ["alice", "@alice:localhost"] {
        let r = http.login(user, &password_for("alice")).await?;
        r.expect_ok()?;
        assert_eq!(r.json["user_id"], "@alice:localhost");
        assert!(
            r.json["access_token"].is_string() && r.json["device_id"].is_string(),
            "{}",
            r.text
        );
    }

    assert_still_serving(&http, &token).await
}
