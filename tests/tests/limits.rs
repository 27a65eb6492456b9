//! Protecting the server and serving browsers: rate limits (429
//! M_LIMIT_EXCEEDED with `retry_after_ms`, recovery after waiting, the
//! `enabled` switch) and CORS headers on preflights, answers and errors.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bellwire_tests::{Body, Http, Reply, ServerOptions, TestServer, enc, password_for};
use serde_json::json;

/// Never sleep longer than this for a `retry_after_ms`, whatever it says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

fn limited_server(limits: &str) -> ServerOptions {
    ServerOptions {
        rate_limits: true,
        extra_config: format!("[rate_limits]\n{limits}"),
        ..Default::default()
    }
}

/// Checks a 429 answer and returns its `retry_after_ms`.
fn retry_after(r: &Reply) -> Result<Duration> {
    r.expect_error(429, "M_LIMIT_EXCEEDED")?;
    let ms = r.json["retry_after_ms"]
        .as_u64()
        .with_context(|| format!("429 without an integer retry_after_ms: {}", r.text))?;
    ensure!(ms > 0, "retry_after_ms must be positive: {}", r.text);
    if let Some(h) = r.header("retry-after") {
        ensure!(
            h.trim().parse::<u64>().is_ok(),
            "Retry-After, when sent, is a number of seconds: {h:?}"
        );
    }
    Ok(Duration::from_millis(ms))
}

/// Alice sends a burst of messages: after the burst allowance she gets 429
/// M_LIMIT_EXCEEDED with `retry_after_ms`, the refused message is not stored,
/// Bob is not affected, and after waiting as told Alice can send again.
#[tokio::test(flavor = "multi_thread")]
async fn message_bursts_are_limited_per_user_and_recover() -> Result<()> {
    let server = TestServer::start_with(limited_server(
        "enabled = true\nmessage_per_second = 1.0\nmessage_burst = 3\n\
         login_per_second = 1.0\nlogin_burst = 2\n\
         registration_per_second = 1.0\nregistration_burst = 50\n",
    ))
    .await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());
    let room = http
        .create_room(
            &alice_token,
            json!({"name": "Chatty", "invite": [bob.user_id.as_str()]}),
        )
        .await?;
    http.join(&bob_token, &room).await?;

    let mut limited = None;
    for i in 0..12 {
        let r = http
            .send_text(
                &alice_token,
                &room,
                &format!("burst-{i}"),
                &format!("burst {i}"),
            )
            .await?;
        match r.status {
            200 => {}
            429 => {
                limited = Some((i, r));
                break;
            }
            _ => bail!("send {i}: expected 200 or 429, got {} {}", r.status, r.text),
        }
    }
    let (sent, r) = limited.context("12 quick sends were never limited (burst is 3)")?;
    ensure!(
        sent >= 3,
        "the burst allowance of 3 was honoured, but send {sent} was already limited"
    );
    let wait = retry_after(&r)?;
    ensure!(
        wait <= Duration::from_secs(5),
        "at 1 message/s the wait should be about a second, not {wait:?}"
    );

    // Limits are per user: Bob can still talk.
    http.send_text(&bob_token, &room, "bob-1", "I can still talk")
        .await?
        .expect_ok()
        .context("Bob is not limited by Alice's burst")?;

    // After waiting as told, Alice can send again.
    tokio::time::sleep(wait.min(MAX_RETRY_WAIT) + Duration::from_millis(50)).await;
    http.send_text(&alice_token, &room, "after-wait", "after waiting")
        .await?
        .expect_ok()
        .context("sending after waiting retry_after_ms")?;

    let bodies: Vec<String> = http
        .all_messages(&alice_token, &room)
        .await?
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !bodies.contains(&format!("burst {sent}")),
        "the refused message was not stored: {bodies:?}"
    );
    ensure!(
        bodies.contains(&"after waiting".to_owned()),
        "the later message was stored: {bodies:?}"
    );
    Ok(())
}

/// Guessing passwords quickly gets 429 M_LIMIT_EXCEEDED instead of 403; after
/// waiting, the right password works.
#[tokio::test(flavor = "multi_thread")]
async fn password_guessing_is_rate_limited() -> Result<()> {
    let server = TestServer::start_with(limited_server(
        "enabled = true\nlogin_per_second = 1.0\nlogin_burst = 2\n\
         registration_per_second = 1.0\nregistration_burst = 50\n",
    ))
    .await?;
    let http = server.http();
    http.register("alice", &password_for("alice")).await?;

    let mut limited = None;
    for i in 0..12 {
        let r = http.login("alice", "not-the-password").await?;
        match (r.status, r.errcode()) {
            (403, Some("M_FORBIDDEN")) => {}
            (429, Some("M_LIMIT_EXCEEDED")) => {
                limited = Some((i, r));
                break;
            }
            _ => bail!(
                "login {i}: expected 403 or 429, got {} {}",
                r.status,
                r.text
            ),
        }
    }
    let (attempt, r) = limited.context("12 quick wrong passwords were never limited")?;
    ensure!(
        attempt >= 2,
        "the login burst of 2 was honoured, but attempt {attempt} was already limited"
    );
    let mut wait = retry_after(&r)?;

    // Wait as told (a limit per IP and per user may need a second round).
    for round in 0..3 {
        tokio::time::sleep(wait.min(MAX_RETRY_WAIT) + Duration::from_millis(50)).await;
        let r = http.login("alice", &password_for("alice")).await?;
        if r.status == 200 {
            ensure!(r.json["access_token"].is_string(), "login: {}", r.text);
            return Ok(());
        }
        wait = retry_after(&r).with_context(|| format!("login after waiting, round {round}"))?;
    }
    bail!("the right password was still refused after waiting retry_after_ms three times")
}

/// Registrations are limited per client IP: in a quick series of complete
/// sign-ups (UIA with `m.login.dummy`) at most the burst allowance gets
/// through; the refused one creates no account.
#[tokio::test(flavor = "multi_thread")]
async fn registration_bursts_are_rate_limited() -> Result<()> {
    const REGISTER: &str = "/_matrix/client/v3/register";
    let server = TestServer::start_with(limited_server(
        "enabled = true\nregistration_per_second = 0.1\nregistration_burst = 3\n",
    ))
    .await?;
    let http = server.http();
    let password = password_for("user");
    let mut completed = 0;
    let mut limited = None;
    for i in 0..10 {
        let username = format!("user{i}");
        let first = http
            .post(
                REGISTER,
                None,
                json!({"username": username, "password": password}),
            )
            .await?;
        match first.status {
            401 => {}
            429 => {
                limited = Some((username, first));
                break;
            }
            _ => bail!(
                "register {username}, step 1: expected 401 or 429, got {} {}",
                first.status,
                first.text
            ),
        }
        let done = http
            .post(
                REGISTER,
                None,
                json!({
                    "username": username,
                    "password": password,
                    "auth": {"type": "m.login.dummy", "session": first.json["session"]},
                }),
            )
            .await?;
        match done.status {
            200 => completed += 1,
            429 => {
                limited = Some((username, done));
                break;
            }
            _ => bail!(
                "register {username}, step 2: expected 200 or 429, got {} {}",
                done.status,
                done.text
            ),
        }
    }
    let (refused, r) = limited.context("10 quick registrations were never limited (burst 3)")?;
    ensure!(
        (1..=3).contains(&completed),
        "with a burst of 3, between 1 and 3 sign-ups get through, not {completed}"
    );
    let wait = retry_after(&r)?;
    ensure!(
        wait > Duration::from_secs(1),
        "at 0.1 registrations/s the wait is several seconds, not {wait:?}"
    );
    http.login(&refused, &password)
        .await?
        .expect_error(403, "M_FORBIDDEN")
        .with_context(|| format!("the refused registration of {refused} created no account"))?;
    http.assert_alive().await
}

/// `enabled = false` turns every limit off, however tight the numbers.
#[tokio::test(flavor = "multi_thread")]
async fn disabled_rate_limits_limit_nothing() -> Result<()> {
    let server = TestServer::start_with(limited_server(
        "enabled = false\nmessage_per_second = 0.1\nmessage_burst = 1\n\
         login_per_second = 0.1\nlogin_burst = 1\n",
    ))
    .await?;
    let http = server.http();
    let (_, token) = http.register("alice", &password_for("alice")).await?;
    let room = http
        .create_room(&token, json!({"name": "Unlimited"}))
        .await?;
    for i in 0..10 {
        http.send_text(&token, &room, &format!("t{i}"), &format!("message {i}"))
            .await?
            .expect_ok()
            .with_context(|| format!("send {i} with rate limits disabled"))?;
    }
    for i in 0..5 {
        http.login("alice", "wrong")
            .await?
            .expect_error(403, "M_FORBIDDEN")
            .with_context(|| format!("wrong login {i} with rate limits disabled"))?;
    }
    http.login("alice", &password_for("alice"))
        .await?
        .expect_ok()?;
    Ok(())
}

fn header_list(r: &Reply, name: &str) -> Vec<String> {
    r.header(name)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A browser client works: preflights are answered with the spec's CORS
/// headers, and every answer, errors included, allows any origin.
#[tokio::test(flavor = "multi_thread")]
async fn cors_headers_on_preflights_answers_and_errors() -> Result<()> {
    let server = TestServer::start().await?;
    let http: Http = server.http();
    let (_, token) = http.register("alice", &password_for("alice")).await?;
    let origin = ("Origin", "https://app.example.org");

    let preflight_paths = [
        ("GET", "/_matrix/client/v3/sync".to_owned()),
        (
            "PUT",
            format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/txn1",
                enc("!room:localhost")
            ),
        ),
    ];
    for (method, path) in &preflight_paths {
        let r = http
            .call_with_headers(
                "OPTIONS",
                path,
                None,
                &[
                    origin,
                    ("Access-Control-Request-Method", method),
                    (
                        "Access-Control-Request-Headers",
                        "authorization, content-type",
                    ),
                ],
                Body::None,
            )
            .await?;
        ensure!(
            matches!(r.status, 200 | 204),
            "preflight for {method} {path}: {} {}",
            r.status,
            r.text
        );
        ensure!(
            r.header("access-control-allow-origin") == Some("*"),
            "preflight {path}: Access-Control-Allow-Origin {:?}",
            r.headers
        );
        let methods = header_list(&r, "access-control-allow-methods");
        for m in ["get", "post", "put", "delete", "options"] {
            ensure!(
                methods.iter().any(|x| x == m),
                "preflight {path}: Allow-Methods lacks {m}: {methods:?}"
            );
        }
        let headers = header_list(&r, "access-control-allow-headers");
        for h in ["authorization", "content-type"] {
            ensure!(
                headers.iter().any(|x| x == h),
                "preflight {path}: Allow-Headers lacks {h}: {headers:?}"
            );
        }
    }

    // Ordinary answers.
    let r = http
        .call_with_headers(
            "GET",
            "/_matrix/client/versions",
            None,
            &[origin],
            Body::None,
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.header("access-control-allow-origin") == Some("*"),
        "GET /versions: {:?}",
        r.headers
    );
    let r = http
        .call_with_headers(
            "GET",
            "/_matrix/client/v3/joined_rooms",
            Some(&token),
            &[origin],
            Body::None,
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.header("access-control-allow-origin") == Some("*"),
        "GET /joined_rooms: {:?}",
        r.headers
    );

    // Errors too: no token, and an unknown endpoint.
    let r = http
        .call_with_headers(
            "GET",
            "/_matrix/client/v3/sync",
            None,
            &[origin],
            Body::None,
        )
        .await?;
    r.expect_error(401, "M_MISSING_TOKEN")?;
    ensure!(
        r.header("access-control-allow-origin") == Some("*"),
        "401 on /sync: {:?}",
        r.headers
    );
    let r = http
        .call_with_headers(
            "GET",
            "/_matrix/client/v3/no/such/endpoint",
            Some(&token),
            &[origin],
            Body::None,
        )
        .await?;
    r.expect_error(404, "M_UNRECOGNIZED")?;
    ensure!(
        r.header("access-control-allow-origin") == Some("*"),
        "404 on an unknown endpoint: {:?}",
        r.headers
    );
    Ok(())
}
