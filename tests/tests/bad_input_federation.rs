//! Bad input on the server-server API: hostile or broken requests from
//! other servers get a clear spec error (never a 5xx), change nothing in
//! the rooms, and leave the server up, while real traffic between two
//! Bellwire servers keeps flowing.
//!
//! The cast: Alice on hs1 and Bob on hs2 share a public room. A stand-in
//! remote server the test controls ("remote", a [`FakeRemote`] whose keys
//! hs1 can fetch) has joined its user Mallory to that room the way servers
//! do, so its correctly signed requests are ones hs1 would act on: every
//! refusal below is about the one thing wrong with the request.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use bellwire_tests::{
    Body, Http, Reply, SigningKey, TestServer, User, WAIT, enc,
    federation::{
        FakeRemote, Federation, RoomFacts, content_hash, hash_and_sign_pdu, message_pdu, now_ms,
        pdu_result, reference_event_id, room_facts, sign_pdu, x_matrix_authorization,
    },
    raw_status,
};
use matrix_sdk::ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::room::create_room::{self, v3::RoomPreset},
};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const FED_V1: &str = "/_matrix/federation/v1";

// ---------------------------------------------------------------------------
// The scene
// ---------------------------------------------------------------------------

/// Two Bellwire servers and a stand-in remote, all sharing one public room.
struct Scene {
    federation: Federation,
    hs1: TestServer,
    hs2: TestServer,
    alice: User,
    bob: User,
    room_id: OwnedRoomId,
    /// hs1's federation (TLS) listener.
    hs1_https: Http,
    remote: FakeRemote,
    mallory: String,
}

impl Scene {
    /// Alice (hs1) creates a public room and invites Bob (hs2), who joins
    /// through his own server; the stand-in remote then joins Mallory with
    /// make_join/send_join, and Alice says hello so there is history.
    async fn start(room_name: &str) -> Result<Self> {
        let federation = Federation::new()?;
        let hs1 = federation.start_server("hs1").await?;
        let hs2 = federation.start_server("hs2").await?;
        let alice = hs1.new_user("alice").await?;
        let bob = hs2.new_user("bob").await?;

        let mut request = create_room::v3::Request::new();
        request.name = Some(room_name.to_owned());
        request.preset = Some(RoomPreset::PublicChat);
        let room = alice
            .client
            .create_room(request)
            .await
            .with_context(|| format!("Alice creating {room_name:?}"))?;
        let room_id = room.room_id().to_owned();
        room.invite_user_by_id(&bob.user_id)
            .await
            .context("Alice inviting Bob over federation")?;
        bob.wait_for_invite(&room_id).await?;
        bob.join(&room_id).await?;
        alice
            .sync_until("Bob's join", |s| {
                s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
            })
            .await?;

        let hs1_https = federation.https(&hs1)?;
        let remote = federation.fake_remote("remote").await?;
        let mallory = remote.user_id("mallory");
        remote
            .join(&hs1_https, hs1.server_name(), room_id.as_str(), "mallory")
            .await
            .context("the stand-in remote joins Mallory to Alice's public room")?;
        let mallory_id = <&UserId>::try_from(mallory.as_str())?.to_owned();
        alice
            .sync_until("Mallory's join", |s| {
                s.membership(&room_id, &mallory_id).as_deref() == Some("join")
            })
            .await?;
        alice.send_text(&room_id, "Welcome aboard").await?;
        bob.wait_for_text(&room_id, &alice.user_id, "Welcome aboard")
            .await?;
        Ok(Self {
            federation,
            hs1,
            hs2,
            alice,
            bob,
            room_id,
            hs1_https,
            remote,
            mallory,
        })
    }

    fn hs1_name(&self) -> &str {
        self.hs1.server_name()
    }

    /// A federation request to hs1 from the stand-in remote, correctly signed.
    async fn remote_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply> {
        self.remote
            .call(&self.hs1_https, self.hs1_name(), method, path, body)
            .await
    }

    /// A transaction body from the stand-in remote carrying `pdus`.
    fn transaction(&self, pdus: Vec<Value>) -> Value {
        json!({
            "origin": self.remote.name(),
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": [],
        })
    }

    /// PUT /send/{txn} of `body` from the stand-in remote, correctly signed.
    async fn send_txn(&self, txn: &str, body: Value) -> Result<Reply> {
        self.remote_call("PUT", &send_path(txn), Some(body)).await
    }

    /// A message by Mallory after the room's latest event, hashed and
    /// signed by the stand-in remote; returns it and its event id.
    async fn mallory_says(&self, text: &str) -> Result<(Value, String)> {
        let facts = room_facts(&self.alice, &self.room_id).await?;
        self.mallory_says_after(&facts, text)
    }

    fn mallory_says_after(&self, facts: &RoomFacts, text: &str) -> Result<(Value, String)> {
        let mut pdu = message_pdu(
            self.room_id.as_str(),
            &self.mallory,
            text,
            std::slice::from_ref(&facts.latest),
            &facts.auth_events_for(&self.mallory)?,
            facts.depth + 1,
        );
        let id = hash_and_sign_pdu(
            &mut pdu,
            &facts.version,
            self.remote.name(),
            self.remote.key(),
        )?;
        Ok((pdu, id))
    }

    /// hs1 still answers, on its client and its federation listener.
    async fn assert_alive(&self) -> Result<()> {
        self.hs1.http().assert_alive().await?;
        self.hs1_https
            .get(&format!("{FED_V1}/version"), None)
            .await?
            .expect_ok()
            .context("GET /_matrix/federation/v1/version")?;
        Ok(())
    }

    /// Nothing Alice (hs1) or Bob (hs2) can read of the room contains
    /// `marker`, and hs1 serves none of `ids`.
    async fn assert_never_shown(&self, marker: &str, ids: &[&str]) -> Result<()> {
        for user in [&self.alice, &self.bob] {
            let messages = user
                .http()
                .all_messages(&user.access_token(), self.room_id.as_str())
                .await?;
            let shown: Vec<_> = messages
                .iter()
                .filter(|m| m.to_string().contains(marker))
                .collect();
            ensure!(
                shown.is_empty(),
                "{}'s server shows refused events in /messages: {shown:#?}",
                user.user_id
            );
        }
        for id in ids {
            let r = self
                .alice
                .http()
                .event(&self.alice.access_token(), self.room_id.as_str(), id)
                .await?;
            ensure!(
                r.status == 404,
                "hs1 serves the refused event {id}: {} {}",
                r.status,
                r.text
            );
        }
        Ok(())
    }

    /// A real message goes both ways between Alice (hs1) and Bob (hs2).
    async fn assert_messages_still_flow(&self, tag: &str) -> Result<()> {
        let from_alice = format!("{tag}: Alice to Bob, still fine");
        self.alice.send_text(&self.room_id, &from_alice).await?;
        self.bob
            .wait_for_text(&self.room_id, &self.alice.user_id, &from_alice)
            .await
            .context("a message from hs1 reaches hs2 after the bad input")?;
        let from_bob = format!("{tag}: Bob to Alice, still fine");
        self.bob.send_text(&self.room_id, &from_bob).await?;
        self.alice
            .wait_for_text(&self.room_id, &self.bob.user_id, &from_bob)
            .await
            .context("a message from hs2 reaches hs1 after the bad input")?;
        Ok(())
    }
}

fn send_path(txn: &str) -> String {
    format!("{FED_V1}/send/{}", enc(txn))
}

/// Bodies of Alice's /messages view of the room sent by `sender`.
async fn bodies_from(user: &User, room: &RoomId, sender: &str) -> Result<Vec<String>> {
    let messages = user
        .http()
        .all_messages(&user.access_token(), room.as_str())
        .await?;
    Ok(messages
        .iter()
        .filter(|m| m["sender"] == sender)
        .map(|m| m["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// Writes `head` and `body` to `server`'s federation (TLS) listener while
/// reading its answer; a server that answers early and stops reading is
/// fine (the rest of the body is dropped). Returns the raw HTTP answer.
async fn tls_exchange(
    federation: &Federation,
    server: &TestServer,
    head: &str,
    body: &[u8],
) -> Result<String> {
    use std::{sync::Arc, time::Duration};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(federation.ca().ca_pem().as_bytes()) {
        roots.add(cert.context("the test CA certificate does not parse")?)?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let port = bellwire_tests::federation::port_of(server.server_name())?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let (mut reader, mut writer) = tokio::io::split(tls);
    let read = async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let idle = if got.is_empty() {
                WAIT
            } else {
                Duration::from_secs(1)
            };
            match tokio::time::timeout(idle, reader.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) if got.is_empty() => anyhow::bail!("no answer within {WAIT:?}"),
                Err(_) => break,
            }
        }
        Ok(got)
    };
    let write = async {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for part in body.chunks(64 * 1024) {
            if writer.write_all(part).await.is_err() {
                return;
            }
        }
        let _ = writer.flush().await;
    };
    let (got, ()) = tokio::join!(read, write);
    Ok(String::from_utf8_lossy(&got?).into_owned())
}

/// Fails unless `r` is one of the `(status, errcode)` pairs (for a spec
/// that allows either, e.g. 400 or 403 for a join in someone else's name).
fn expect_one_of<'a>(r: &'a Reply, allowed: &[(u16, &str)]) -> Result<&'a Reply> {
    ensure!(
        allowed
            .iter()
            .any(|(status, code)| r.status == *status && r.errcode() == Some(*code)),
        "expected one of {allowed:?}, got {} {}",
        r.status,
        r.text
    );
    Ok(r)
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

/// PUT /send without a valid X-Matrix signature is 401 M_UNAUTHORIZED,
/// whatever is wrong with it: no Authorization header, a header that is not
/// X-Matrix or cannot be parsed, a signature made for another destination,
/// or one over another body, method or path. The message in those
/// transactions is never shown; the very same message, correctly signed,
/// is.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_without_a_valid_signature_are_refused() -> Result<()> {
    let scene = Scene::start("Signal box").await?;
    let https = &scene.hs1_https;
    let (origin, key) = (scene.remote.name(), scene.remote.key());
    let hs1 = scene.hs1_name().to_owned();
    let hs2 = scene.hs2.server_name().to_owned();
    const MARK: &str = "UNSIGNED-51c2";
    let (pdu, pdu_id) = scene
        .mallory_says(&format!(
            "{MARK} Mallory, in a transaction that is not hers"
        ))
        .await?;
    let body = scene.transaction(vec![pdu.clone()]);
    let path = send_path("unsigned-1");

    // No Authorization header at all.
    https
        .put(&path, None, body.clone())
        .await?
        .expect_error(401, "M_UNAUTHORIZED")
        .context("PUT /send without an Authorization header")?;

    // Headers that are not a usable X-Matrix authorization.
    let good = x_matrix_authorization(origin, &hs1, key, "PUT", &path, Some(&body))?;
    let unterminated = good.trim_end_matches('"').to_owned();
    let bad_headers = [
        ("a Bearer token", "Bearer syt_not_a_server".to_owned()),
        (
            "the X-Matrix scheme and nothing else",
            "X-Matrix".to_owned(),
        ),
        ("X-Matrix with garbage", "X-Matrix ;;;===,,,\"".to_owned()),
        (
            "X-Matrix without a sig",
            format!(
                "X-Matrix origin=\"{origin}\",destination=\"{hs1}\",key=\"{}\"",
                key.key_id()
            ),
        ),
        (
            "X-Matrix without an origin",
            good.replace(&format!("origin=\"{origin}\","), ""),
        ),
        ("X-Matrix with an unterminated quote", unterminated),
        (
            "X-Matrix whose sig is not base64",
            format!(
                "X-Matrix origin=\"{origin}\",destination=\"{hs1}\",key=\"{}\",sig=\"@@not base64@@\"",
                key.key_id()
            ),
        ),
        (
            "X-Matrix naming a key the origin does not have",
            good.replace(key.key_id(), "ed25519:nosuchkey"),
        ),
        (
            "X-Matrix with hs1 itself as the origin",
            x_matrix_authorization(&hs1, &hs1, key, "PUT", &path, Some(&body))?,
        ),
    ];
    for (what, header) in &bad_headers {
        https
            .call_with_headers(
                "PUT",
                &path,
                None,
                &[("authorization", header)],
                Body::Json(body.clone()),
            )
            .await?
            .expect_error(401, "M_UNAUTHORIZED")
            .with_context(|| format!("PUT /send with {what}: {header}"))?;
    }
    scene.assert_alive().await?;

    // Correctly made signatures, but for another request: another
    // destination (named in the header, or only signed for), another body,
    // another method or path.
    https
        .federation_call(origin, key, &hs2, "PUT", &path, Some(body.clone()))
        .await?
        .expect_error(401, "M_UNAUTHORIZED")
        .context("a transaction signed for hs2, sent to hs1")?;
    let for_hs2_no_destination =
        x_matrix_authorization(origin, &hs2, key, "PUT", &path, Some(&body))?
            .replace(&format!("destination=\"{hs2}\","), "");
    https
        .call_with_headers(
            "PUT",
            &path,
            None,
            &[("authorization", &for_hs2_no_destination)],
            Body::Json(body.clone()),
        )
        .await?
        .expect_error(401, "M_UNAUTHORIZED")
        .context("signed for hs2 with the destination left out of the header")?;
    let other_body = scene.transaction(vec![]);
    let signed_for_other_body =
        x_matrix_authorization(origin, &hs1, key, "PUT", &path, Some(&other_body))?;
    https
        .call_with_headers(
            "PUT",
            &path,
            None,
            &[("authorization", &signed_for_other_body)],
            Body::Json(body.clone()),
        )
        .await?
        .expect_error(401, "M_UNAUTHORIZED")
        .context("a signature over an empty transaction, sent with a message in it")?;
    let signed_for_other_path = x_matrix_authorization(
        origin,
        &hs1,
        key,
        "PUT",
        &send_path("another-txn"),
        Some(&body),
    )?;
    https
        .call_with_headers(
            "PUT",
            &path,
            None,
            &[("authorization", &signed_for_other_path)],
            Body::Json(body.clone()),
        )
        .await?
        .expect_error(401, "M_UNAUTHORIZED")
        .context("a signature for another transaction id")?;
    let signed_as_post = x_matrix_authorization(origin, &hs1, key, "POST", &path, Some(&body))?;
    https
        .call_with_headers(
            "PUT",
            &path,
            None,
            &[("authorization", &signed_as_post)],
            Body::Json(body.clone()),
        )
        .await?
        .expect_error(401, "M_UNAUTHORIZED")
        .context("a signature for POST on a PUT")?;
    scene.assert_alive().await?;
    scene.assert_never_shown(MARK, &[&pdu_id]).await?;

    // The refusals were about the signatures: the same transaction,
    // correctly signed, is taken (and the refused attempts did not use up
    // its transaction id).
    let r = scene.send_txn("unsigned-1", body).await?;
    r.expect_ok()
        .context("the same transaction, correctly signed")?;
    ensure!(
        matches!(pdu_result(&r.json, &pdu_id), Some(None)),
        "hs1 should take Mallory's message once correctly signed: {}",
        r.text
    );
    let bodies = bodies_from(&scene.alice, &scene.room_id, &scene.mallory).await?;
    ensure!(
        bodies.iter().filter(|b| b.contains(MARK)).count() == 1,
        "Alice sees Mallory's message exactly once: {bodies:?}"
    );
    scene
        .assert_messages_still_flow("after unsigned transactions")
        .await
}

/// Transaction bodies that are not what the spec describes: not JSON
/// (4xx, never 5xx), JSON but not an object, `pdus` or `edus` not an
/// array, more than 50 PDUs (400), over 8 MiB (413 M_TOO_LARGE). None of
/// their messages is ever shown, and a refused transaction does not use up
/// its id. A full-size honest transaction just under the limits is taken.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_transactions_are_refused() -> Result<()> {
    let scene = Scene::start("Goods yard").await?;
    let https = &scene.hs1_https;
    let (origin, key) = (scene.remote.name(), scene.remote.key());
    let hs1 = scene.hs1_name().to_owned();
    const MARK: &str = "MALFORMED-9e01";
    let facts = room_facts(&scene.alice, &scene.room_id).await?;

    // Not JSON. A body that is not JSON cannot be signed as JSON content:
    // sign the request as if it had none. Either way the answer is a 4xx
    // spec error, not a crash.
    let path = send_path("not-json-1");
    let auth = x_matrix_authorization(origin, &hs1, key, "PUT", &path, None)?;
    for (what, raw) in [
        ("text", b"pdus: all of them, please".to_vec()),
        ("truncated JSON", br#"{"origin": "x", "pdus": ["#.to_vec()),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}']),
    ] {
        let r = https
            .call_with_headers(
                "PUT",
                &path,
                None,
                &[("authorization", &auth)],
                Body::Raw(raw),
            )
            .await?;
        expect_one_of(&r, &[(400, "M_NOT_JSON"), (401, "M_UNAUTHORIZED")])
            .with_context(|| format!("PUT /send with a body that is {what}"))?;
    }
    scene.assert_alive().await?;

    // JSON, correctly signed, but not a transaction.
    let (pdu, pdu_id) = scene.mallory_says_after(&facts, &format!("{MARK} in a bad body"))?;
    for (txn, what, body) in [
        ("shape-1", "a JSON array", json!([pdu.clone()])),
        ("shape-2", "a JSON string", json!("pdus")),
        (
            "shape-3",
            "`pdus` as an object",
            json!({"origin": origin, "origin_server_ts": now_ms(), "pdus": {"0": pdu.clone()}, "edus": []}),
        ),
        (
            "shape-4",
            "`pdus` as a string",
            json!({"origin": origin, "origin_server_ts": now_ms(), "pdus": "[]", "edus": []}),
        ),
        (
            "shape-5",
            "`edus` as an object, next to a good PDU",
            json!({"origin": origin, "origin_server_ts": now_ms(), "pdus": [pdu.clone()], "edus": {"edu_type": "m.typing"}}),
        ),
    ] {
        scene
            .send_txn(txn, body)
            .await?
            .expect_error(400, "M_BAD_JSON")
            .with_context(|| format!("PUT /send/{txn} with {what}"))?;
    }
    scene.assert_alive().await?;
    scene.assert_never_shown(MARK, &[&pdu_id]).await?;

    // A refused transaction is not remembered: its id, with a proper body,
    // is then taken.
    let r = scene
        .send_txn("shape-4", scene.transaction(vec![pdu.clone()]))
        .await?;
    r.expect_ok()
        .context("a proper transaction under the id of a refused one")?;
    ensure!(
        matches!(pdu_result(&r.json, &pdu_id), Some(None)),
        "the message of the proper transaction is taken: {}",
        r.text
    );
    let bodies = bodies_from(&scene.alice, &scene.room_id, &scene.mallory).await?;
    ensure!(
        bodies.iter().filter(|b| b.contains(MARK)).count() == 1,
        "the message shows once: {bodies:?}"
    );

    // 51 PDUs: one over the limit. None of them is taken.
    let facts = room_facts(&scene.alice, &scene.room_id).await?;
    const MANY: &str = "FIFTY-ONE-2c7d";
    let mut pdus = Vec::new();
    let mut ids = Vec::new();
    for i in 0..51 {
        let (pdu, id) = scene.mallory_says_after(&facts, &format!("{MANY} number {i}"))?;
        pdus.push(pdu);
        ids.push(id);
    }
    let r = scene
        .send_txn("fifty-one-1", scene.transaction(pdus.clone()))
        .await?;
    expect_one_of(
        &r,
        &[
            (400, "M_BAD_JSON"),
            (400, "M_INVALID_PARAM"),
            (400, "M_TOO_LARGE"),
        ],
    )
    .context("a transaction with 51 PDUs")?;
    // Also with a small body around it, but 101 EDUs.
    let edus: Vec<Value> = (0..101)
        .map(|_| json!({"edu_type": "m.typing", "content": {"room_id": scene.room_id, "user_id": scene.mallory, "typing": false}}))
        .collect();
    let r = scene
        .send_txn(
            "many-edus-1",
            json!({"origin": origin, "origin_server_ts": now_ms(), "pdus": [], "edus": edus}),
        )
        .await?;
    expect_one_of(
        &r,
        &[
            (400, "M_BAD_JSON"),
            (400, "M_INVALID_PARAM"),
            (400, "M_TOO_LARGE"),
        ],
    )
    .context("a transaction with 101 EDUs")?;
    scene.assert_alive().await?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    scene.assert_never_shown(MANY, &id_refs).await?;

    // Over 8 MiB: 413 M_TOO_LARGE, correctly signed or not.
    const HUGE: &str = "HUGE-3f90";
    let (pdu, big_id) =
        scene.mallory_says_after(&facts, &format!("{HUGE} with 9 MiB of padding"))?;
    let mut huge = scene.transaction(vec![pdu]);
    huge["padding"] = json!("x".repeat(9 * 1024 * 1024));
    // The server may answer before it has read the whole body and close
    // the connection: send it raw and read whatever answer comes.
    let huge_bytes = huge.to_string().into_bytes();
    for (txn, signed) in [("huge-1", true), ("huge-2", false)] {
        let path = send_path(txn);
        let auth = if signed {
            format!(
                "authorization: {}\r\n",
                x_matrix_authorization(origin, &hs1, key, "PUT", &path, Some(&huge))?
            )
        } else {
            String::new()
        };
        let head = format!(
            "PUT {path} HTTP/1.1\r\nhost: {hs1}\r\n{auth}content-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            huge_bytes.len()
        );
        let answer = tls_exchange(&scene.federation, &scene.hs1, &head, &huge_bytes)
            .await
            .with_context(|| format!("PUT {path} with 9 MiB"))?;
        ensure!(
            raw_status(&answer)? == 413 && answer.contains("\"M_TOO_LARGE\""),
            "a 9 MiB transaction ({}) should be 413 M_TOO_LARGE: {:?}",
            if signed {
                "correctly signed"
            } else {
                "unsigned"
            },
            answer.chars().take(600).collect::<String>()
        );
    }
    scene.assert_alive().await?;
    scene.assert_never_shown(HUGE, &[&big_id]).await?;

    // An honest transaction near the limits: 45 messages of 60,000 bytes
    // each (50 PDUs of up to 64 KiB are allowed, so 2.7 MB is a body any
    // server may send). It is taken, all of it.
    let facts = room_facts(&scene.alice, &scene.room_id).await?;
    const BIG: &str = "BIG-BUT-FINE-44aa";
    let mut pdus = Vec::new();
    let mut big_ids = Vec::new();
    let mut prev = facts.latest.clone();
    for i in 0..45u64 {
        let text = format!("{BIG} {i:02} {}", "z".repeat(60_000));
        let mut pdu = message_pdu(
            scene.room_id.as_str(),
            &scene.mallory,
            &text,
            std::slice::from_ref(&prev),
            &facts.auth_events_for(&scene.mallory)?,
            facts.depth + 1 + i,
        );
        let id = hash_and_sign_pdu(&mut pdu, &facts.version, origin, key)?;
        prev = id.clone();
        pdus.push(pdu);
        big_ids.push(id);
    }
    let body = scene.transaction(pdus);
    let size = body.to_string().len();
    ensure!(
        (2_500_000..8 * 1024 * 1024).contains(&size),
        "the honest transaction should be a few MB: {size}"
    );
    let r = scene.send_txn("big-but-fine-1", body).await?;
    r.expect_ok()
        .with_context(|| format!("an honest transaction of {size} bytes (under 8 MiB)"))?;
    for id in &big_ids {
        ensure!(
            matches!(pdu_result(&r.json, id), Some(None)),
            "hs1 did not take {id} of the honest big transaction: {}",
            r.text.chars().take(2000).collect::<String>()
        );
    }
    let bodies = bodies_from(&scene.alice, &scene.room_id, &scene.mallory).await?;
    ensure!(
        bodies.iter().filter(|b| b.starts_with(BIG)).count() == 45,
        "Alice sees the 45 big messages: {} of them",
        bodies.iter().filter(|b| b.starts_with(BIG)).count()
    );

    scene.assert_alive().await?;
    scene
        .assert_messages_still_flow("after malformed transactions")
        .await
}

/// A transaction sent twice (same id, same body) is answered the same both
/// times and its message is in the room once. The same PDU in a new
/// transaction is taken again without a second copy; another body under an
/// already used id is answered as the first one was and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_transaction_is_applied_once() -> Result<()> {
    let scene = Scene::start("Turntable").await?;
    const TEXT: &str = "REPLAY-0b3e Mallory says this once";
    let (pdu, pdu_id) = scene.mallory_says(TEXT).await?;
    let body = scene.transaction(vec![pdu.clone()]);

    let first = scene.send_txn("replay-1", body.clone()).await?;
    first.expect_ok().context("the first delivery")?;
    ensure!(
        matches!(pdu_result(&first.json, &pdu_id), Some(None)),
        "hs1 takes Mallory's message: {}",
        first.text
    );
    let mallory = <&UserId>::try_from(scene.mallory.as_str())?;
    scene
        .alice
        .wait_for_text(&scene.room_id, mallory, TEXT)
        .await?;

    let second = scene.send_txn("replay-1", body.clone()).await?;
    second.expect_ok().context("the replay")?;
    ensure!(
        second.json == first.json,
        "a replayed transaction gets the first answer: first {}, then {}",
        first.text,
        second.text
    );

    // The same PDU in a transaction with a new id.
    let again = scene
        .send_txn("replay-2", scene.transaction(vec![pdu]))
        .await?;
    again
        .expect_ok()
        .context("the same PDU in a new transaction")?;
    ensure!(
        pdu_result(&again.json, &pdu_id).is_some_and(|e| e.is_none()),
        "an event already held is not an error: {}",
        again.text
    );

    // Another body under the used id: the first answer, nothing applied.
    const OTHER: &str = "REPLAY-0b3e a different body under a used id";
    let (other, other_id) = scene.mallory_says(OTHER).await?;
    let third = scene
        .send_txn("replay-1", scene.transaction(vec![other]))
        .await?;
    third.expect_ok().context("another body under a used id")?;
    ensure!(
        third.json == first.json,
        "a used transaction id is answered as before: {}",
        third.text
    );

    scene
        .assert_messages_still_flow("after the replays")
        .await?;
    let bodies = bodies_from(&scene.alice, &scene.room_id, &scene.mallory).await?;
    ensure!(
        bodies == vec![TEXT.to_owned()],
        "Alice sees Mallory's message exactly once, and nothing else of hers: {bodies:?}"
    );
    let r = scene
        .alice
        .http()
        .event(
            &scene.alice.access_token(),
            scene.room_id.as_str(),
            &other_id,
        )
        .await?;
    ensure!(
        r.status == 404,
        "the body sent under a used id was applied: {} {}",
        r.status,
        r.text
    );
    Ok(())
}

/// PDUs changed after they were signed. A field the signature covers
/// (timestamp, depth, sender's membership) no longer verifies: the PDU is
/// listed with an error and never shown. A changed message body breaks only
/// the content hash (message content is not signed): the spec has such an
/// event redacted, so the new text is never shown either. A PDU without
/// any signature is refused too; an untouched one next to them is taken.
#[tokio::test(flavor = "multi_thread")]
async fn pdus_altered_after_signing_are_never_shown() -> Result<()> {
    let scene = Scene::start("Points and crossings").await?;
    const MARK: &str = "TAMPERED-77d1";
    let facts = room_facts(&scene.alice, &scene.room_id).await?;
    let version = facts.version.clone();

    // The timestamp changed after signing.
    let (mut retimed, _) =
        scene.mallory_says_after(&facts, &format!("{MARK} with a new timestamp"))?;
    retimed["origin_server_ts"] = json!(retimed["origin_server_ts"].as_u64().unwrap_or(0) + 1);
    let retimed_id = reference_event_id(&retimed, &version)?;

    // The depth changed, and the content hash brought up to date: only the
    // signature can tell.
    let (mut redepthed, _) =
        scene.mallory_says_after(&facts, &format!("{MARK} with a new depth"))?;
    redepthed["depth"] = json!(facts.depth + 50);
    redepthed["hashes"] = json!({"sha256": content_hash(&redepthed)?});
    let redepthed_id = reference_event_id(&redepthed, &version)?;

    // No signatures at all.
    let (mut unsigned, _) = scene.mallory_says_after(&facts, &format!("{MARK} unsigned"))?;
    unsigned
        .as_object_mut()
        .context("a PDU is an object")?
        .remove("signatures");
    let unsigned_id = reference_event_id(&unsigned, &version)?;

    // Signed by the remote, then its signature replaced by one of a key
    // with the same id that it never published.
    let (mut resigned, _) =
        scene.mallory_says_after(&facts, &format!("{MARK} signed by an impostor"))?;
    resigned["signatures"] = json!({});
    sign_pdu(
        &mut resigned,
        &version,
        scene.remote.name(),
        &SigningKey::named(scene.remote.key().key_id()),
    )?;
    let resigned_id = reference_event_id(&resigned, &version)?;

    // The message body changed after signing: same event id, wrong hash.
    let original = "Mallory's words as she signed them";
    let (mut rewritten, rewritten_id) = scene.mallory_says_after(&facts, original)?;
    rewritten["content"]["body"] = json!(format!("{MARK} words put in Mallory's mouth"));
    ensure!(
        reference_event_id(&rewritten, &version)? == rewritten_id,
        "message content is not part of the event id"
    );

    // And one honest message, to show the hand-made events are sound.
    let honest = "Mallory's honest message, untouched";
    let (honest_pdu, honest_id) = scene.mallory_says_after(&facts, honest)?;

    let r = scene
        .send_txn(
            "tampered-1",
            scene.transaction(vec![
                retimed, redepthed, unsigned, resigned, rewritten, honest_pdu,
            ]),
        )
        .await?;
    r.expect_ok()
        .context("a correctly signed transaction is taken; its PDUs are judged one by one")?;
    ensure!(
        matches!(pdu_result(&r.json, &honest_id), Some(None)),
        "hs1 takes the untouched message {honest_id}: {}",
        r.text
    );
    for (what, id) in [
        ("the PDU with a changed timestamp", &retimed_id),
        ("the PDU with a changed depth", &redepthed_id),
        ("the PDU without signatures", &unsigned_id),
        ("the PDU signed with an unpublished key", &resigned_id),
    ] {
        ensure!(
            matches!(pdu_result(&r.json, id), Some(Some(_))),
            "hs1 should list {what} ({id}) with an error: {}",
            r.text
        );
    }
    ensure!(
        pdu_result(&r.json, &rewritten_id).is_some(),
        "hs1 should answer for the PDU with a rewritten body ({rewritten_id}): {}",
        r.text
    );
    let mallory = <&UserId>::try_from(scene.mallory.as_str())?;
    scene
        .alice
        .wait_for_text(&scene.room_id, mallory, honest)
        .await?;

    scene.assert_alive().await?;
    scene
        .assert_never_shown(
            MARK,
            &[&retimed_id, &redepthed_id, &unsigned_id, &resigned_id],
        )
        .await?;
    // The rewritten message: either refused, or kept redacted. Neither
    // its new words nor its old ones show.
    let r = scene
        .alice
        .http()
        .event(
            &scene.alice.access_token(),
            scene.room_id.as_str(),
            &rewritten_id,
        )
        .await?;
    match r.status {
        404 => {}
        200 => ensure!(
            r.json["content"].as_object().is_some_and(|c| c.is_empty()),
            "an event whose content hash fails is kept only redacted: {}",
            r.text
        ),
        _ => anyhow::bail!("GET /event/{rewritten_id}: {} {}", r.status, r.text),
    }
    let bodies = bodies_from(&scene.alice, &scene.room_id, &scene.mallory).await?;
    ensure!(
        !bodies.iter().any(|b| b == original),
        "the rewritten message shows its signed text: {bodies:?}"
    );
    scene
        .assert_messages_still_flow("after tampered PDUs")
        .await
}

// ---------------------------------------------------------------------------
// Joins and invites
// ---------------------------------------------------------------------------

/// `?ver=10&ver=11&ver=12`: every version Bellwire speaks.
fn all_versions() -> String {
    "ver=10&ver=11&ver=12".to_owned()
}

fn make_join_path(room: &str, user: &str, query: &str) -> String {
    format!("{FED_V1}/make_join/{}/{}?{query}", enc(room), enc(user))
}

/// make_join for a user of another server than the asking one is 403, with
/// only room versions the room is not in 400 M_INCOMPATIBLE_ROOM_VERSION
/// (naming the room's version), for an unknown room 404. send_join with an
/// event ID in the path that is not the event's is 400, and a join of a
/// user of another server than the asking one is refused too. Nobody
/// joined; the same join, sent properly, is taken.
#[tokio::test(flavor = "multi_thread")]
async fn bad_join_handshakes_are_refused() -> Result<()> {
    let scene = Scene::start("Junction").await?;
    let room = scene.room_id.as_str();
    let remote = &scene.remote;
    let https = &scene.hs1_https;
    let hs1 = scene.hs1_name().to_owned();
    // A second stand-in server, whose keys hs1 can fetch as well.
    let other = scene.federation.fake_remote("other").await?;
    let members_before = scene.alice.joined_members(&scene.room_id).await?;

    // make_join in the name of users of other servers.
    for user in [
        scene.bob.user_id.to_string(),
        scene.alice.user_id.to_string(),
        other.user_id("eve"),
    ] {
        scene
            .remote_call("GET", &make_join_path(room, &user, &all_versions()), None)
            .await?
            .expect_error(403, "M_FORBIDDEN")
            .with_context(|| format!("make_join for {user}, asked by {}", remote.name()))?;
    }
    // Only versions the room is not in (or none, which means version 1).
    let facts = room_facts(&scene.alice, &scene.room_id).await?;
    let trent = remote.user_id("trent");
    for query in ["ver=1&ver=2&ver=6", "ver=9001", ""] {
        let r = scene
            .remote_call("GET", &make_join_path(room, &trent, query), None)
            .await?;
        r.expect_error(400, "M_INCOMPATIBLE_ROOM_VERSION")
            .with_context(|| format!("make_join with {query:?}"))?;
        ensure!(
            r.json["room_version"] == facts.version,
            "M_INCOMPATIBLE_ROOM_VERSION names the room's version {}: {}",
            facts.version,
            r.text
        );
    }
    // Unknown rooms.
    for unknown in [format!("!nosuchroom:{hs1}"), "!nosuchroom".to_owned()] {
        scene
            .remote_call(
                "GET",
                &make_join_path(&unknown, &trent, &all_versions()),
                None,
            )
            .await?
            .expect_error(404, "M_NOT_FOUND")
            .with_context(|| format!("make_join for the unknown room {unknown}"))?;
    }
    scene.assert_alive().await?;

    // A proper template for Trent, signed by his server...
    let r = scene
        .remote_call("GET", &make_join_path(room, &trent, &all_versions()), None)
        .await?;
    r.expect_ok().context("make_join for Trent")?;
    let version = r.json["room_version"]
        .as_str()
        .context("make_join answer without room_version")?
        .to_owned();
    let mut join = r.json["event"].clone();
    join["origin_server_ts"] = json!(now_ms());
    let join_id = hash_and_sign_pdu(&mut join, &version, remote.name(), remote.key())?;
    let send_join = |event_id: &str| {
        format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            enc(room),
            enc(event_id)
        )
    };
    // ...sent under another event's ID: Mallory's join, and a made-up one.
    let mallory_join = facts
        .members
        .get(&scene.mallory)
        .context("Mallory's join is in the room state")?
        .clone();
    for wrong in [mallory_join.as_str(), "$notthejoinyouarelookingfor"] {
        scene
            .remote_call("PUT", &send_join(wrong), Some(join.clone()))
            .await?
            .expect_error(400, "M_BAD_JSON")
            .with_context(|| format!("send_join of {join_id} under the ID {wrong}"))?;
    }
    ensure!(
        !scene
            .alice
            .joined_members(&scene.room_id)
            .await?
            .contains(&trent),
        "Trent joined through a send_join under the wrong ID"
    );

    // A join of Eve, a user of the other stand-in server: her server made
    // and signed it, but the remote sends it.
    let r = other
        .call(
            https,
            &hs1,
            "GET",
            &make_join_path(room, &other.user_id("eve"), &all_versions()),
            None,
        )
        .await?;
    r.expect_ok()
        .context("make_join for Eve, asked by her own server")?;
    let mut eve_join = r.json["event"].clone();
    eve_join["origin_server_ts"] = json!(now_ms());
    let eve_join_id = hash_and_sign_pdu(&mut eve_join, &version, other.name(), other.key())?;
    let r = scene
        .remote_call("PUT", &send_join(&eve_join_id), Some(eve_join.clone()))
        .await?;
    expect_one_of(&r, &[(400, "M_BAD_JSON"), (403, "M_FORBIDDEN")])
        .context("send_join of a user of another server than the asking one")?;
    // A join of Bob (hs2), signed by the remote alone: hs2 never signed it.
    let mut bob_join = join.clone();
    for field in ["sender", "state_key"] {
        bob_join[field] = json!(scene.bob.user_id.as_str());
    }
    bob_join
        .as_object_mut()
        .context("a PDU is an object")?
        .remove("signatures");
    let bob_join_id = hash_and_sign_pdu(&mut bob_join, &version, remote.name(), remote.key())?;
    let r = scene
        .remote_call("PUT", &send_join(&bob_join_id), Some(bob_join))
        .await?;
    expect_one_of(&r, &[(400, "M_BAD_JSON"), (403, "M_FORBIDDEN")])
        .context("send_join of Bob (hs2), made and signed by the remote")?;
    scene.assert_alive().await?;
    let members = scene.alice.joined_members(&scene.room_id).await?;
    ensure!(
        members == members_before,
        "refused joins changed the members: before {members_before:?}, after {members:?}"
    );

    // The refusals were about the handshake: Trent's join, under its own
    // ID, is taken, and so is Eve's when her own server sends it.
    scene
        .remote_call("PUT", &send_join(&join_id), Some(join))
        .await?
        .expect_ok()
        .context("Trent's join under its own ID")?;
    other
        .call(https, &hs1, "PUT", &send_join(&eve_join_id), Some(eve_join))
        .await?
        .expect_ok()
        .context("Eve's join sent by her own server")?;
    let mut expected: BTreeSet<String> = members_before;
    expected.insert(trent.clone());
    expected.insert(other.user_id("eve"));
    let members = scene.alice.joined_members(&scene.room_id).await?;
    ensure!(
        members == expected,
        "after the proper joins the members are {members:?}, expected {expected:?}"
    );
    scene.assert_messages_still_flow("after bad joins").await
}

/// An invite (room version 10) of `target` by `sender` into a room that
/// lives on `server`, hashed and signed as `server`; returns the /v2/invite
/// body and the event id.
fn invite_request(
    room: &str,
    sender: &str,
    target: &str,
    server: &str,
    key: &SigningKey,
) -> Result<(Value, String)> {
    let mut event = json!({
        "room_id": room,
        "sender": sender,
        "type": "m.room.member",
        "state_key": target,
        "content": {"membership": "invite"},
        "origin_server_ts": now_ms(),
        "depth": 5,
        "prev_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        "auth_events": ["$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],
    });
    let id = hash_and_sign_pdu(&mut event, "10", server, key)?;
    let body = json!({
        "room_version": "10",
        "event": event,
        "invite_room_state": [{
            "type": "m.room.name", "state_key": "", "sender": sender,
            "content": {"name": "Elsewhere"},
        }],
    });
    Ok((body, id))
}

fn invite_path(room: &str, id: &str) -> String {
    format!("/_matrix/federation/v2/invite/{}/{}", enc(room), enc(id))
}

/// The stand-in remote invites `target` into its room `room` in the name
/// of `sender`, correctly signed; returns hs1's answer and the event id.
async fn send_invite(
    scene: &Scene,
    room: &str,
    target: &str,
    sender: &str,
) -> Result<(Reply, String)> {
    let (body, id) = invite_request(
        room,
        sender,
        target,
        scene.remote.name(),
        scene.remote.key(),
    )?;
    let r = scene
        .remote_call("PUT", &invite_path(room, &id), Some(body))
        .await?;
    Ok((r, id))
}

/// /v2/invite for a user hs1 does not have is 404, for a user of another
/// server 400, from an inviter of another server than the asking one 403,
/// with the event ID in the path not the event's 400. No invite shows up;
/// a proper invite, made the same way, does.
#[tokio::test(flavor = "multi_thread")]
async fn bad_invites_are_refused() -> Result<()> {
    let scene = Scene::start("Branch line").await?;
    let remote = &scene.remote;
    let hs1 = scene.hs1_name().to_owned();
    let carol = scene.hs1.new_user("carol").await?;
    let elsewhere = format!("!elsewhere:{}", remote.name());
    let (r, _) = send_invite(
        &scene,
        &elsewhere,
        &format!("@nobody:{hs1}"),
        &scene.mallory,
    )
    .await?;
    r.expect_error(404, "M_NOT_FOUND")
        .context("an invite for a user hs1 does not have")?;
    let (r, _) = send_invite(
        &scene,
        &elsewhere,
        scene.bob.user_id.as_str(),
        &scene.mallory,
    )
    .await?;
    expect_one_of(&r, &[(400, "M_BAD_JSON"), (400, "M_INVALID_PARAM")])
        .context("an invite for a user of hs2, sent to hs1")?;
    let (r, _) = send_invite(
        &scene,
        &elsewhere,
        carol.user_id.as_str(),
        "@someone:nobody.invalid",
    )
    .await?;
    r.expect_error(403, "M_FORBIDDEN")
        .context("an invite by a user of another server than the asking one")?;
    // The path names another event than the body carries.
    let (body, _) = invite_request(
        &elsewhere,
        &scene.mallory,
        carol.user_id.as_str(),
        remote.name(),
        remote.key(),
    )?;
    scene
        .remote_call(
            "PUT",
            &invite_path(&elsewhere, "$someotherevent"),
            Some(body),
        )
        .await?
        .expect_error(400, "M_BAD_JSON")
        .context("an invite under another event's ID")?;
    // An unsupported room version.
    let (mut body, id) = invite_request(
        &elsewhere,
        &scene.mallory,
        carol.user_id.as_str(),
        remote.name(),
        remote.key(),
    )?;
    body["room_version"] = json!("3");
    scene
        .remote_call("PUT", &invite_path(&elsewhere, &id), Some(body))
        .await?
        .expect_error(400, "M_INCOMPATIBLE_ROOM_VERSION")
        .context("an invite into a room of a version hs1 does not speak")?;
    scene.assert_alive().await?;

    // Nobody was invited: Carol and Alice have no invites, Bob neither.
    for user in [&carol, &scene.alice, &scene.bob] {
        user.sync_once().await?;
        let room: &RoomId = <&RoomId>::try_from(elsewhere.as_str())?;
        ensure!(
            !user.seen().invites.contains_key(room),
            "{} got a refused invite",
            user.user_id
        );
    }

    // The same invite of Carol, done properly, is countersigned and shows.
    let (r, id) = send_invite(&scene, &elsewhere, carol.user_id.as_str(), &scene.mallory).await?;
    r.expect_ok().context("a proper invite of Carol")?;
    ensure!(
        r.json["event"]["signatures"][hs1.as_str()].is_object()
            && reference_event_id(&r.json["event"], "10")? == id,
        "hs1 countersigns the invite it takes: {}",
        r.text
    );
    carol
        .wait_for_invite(<&RoomId>::try_from(elsewhere.as_str())?)
        .await
        .context("Carol sees the proper invite")?;
    scene.assert_messages_still_flow("after bad invites").await
}

// ---------------------------------------------------------------------------
// Lookups, unknown endpoints, OpenID
// ---------------------------------------------------------------------------

/// A server with no member in a room cannot read its events (403), nor its
/// state; an unknown event is 404; an unknown federation endpoint is 404
/// M_UNRECOGNIZED; a bogus OpenID token is 401 M_UNKNOWN_TOKEN while a real
/// one names its user.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_are_limited_to_what_the_origin_may_see() -> Result<()> {
    let scene = Scene::start("Lamp room").await?;
    let https = &scene.hs1_https;
    let hs1 = scene.hs1_name().to_owned();
    let room = scene.room_id.as_str();
    let stranger = scene.federation.fake_remote("stranger").await?;
    let event_id = scene
        .alice
        .send_text(&scene.room_id, "Only for those in the room")
        .await?;
    let event_path = format!("{FED_V1}/event/{}", enc(&event_id));

    // The remote has Mallory in the room: it may read the event.
    let r = scene.remote_call("GET", &event_path, None).await?;
    r.expect_ok()
        .context("GET /event by a server in the room")?;
    ensure!(
        r.json["pdus"][0]["content"]["body"] == "Only for those in the room",
        "GET /event answers the event: {}",
        r.text
    );
    // A server with nobody in the room may not.
    let r = stranger.call(https, &hs1, "GET", &event_path, None).await?;
    r.expect_error(403, "M_FORBIDDEN")
        .context("GET /event by a server with no member in the room")?;
    ensure!(
        !r.text.contains("Only for those in the room"),
        "the refusal leaks the event: {}",
        r.text
    );
    for path in [
        format!(
            "{FED_V1}/state_ids/{}?event_id={}",
            enc(room),
            enc(&event_id)
        ),
        format!("{FED_V1}/state/{}?event_id={}", enc(room), enc(&event_id)),
        format!(
            "{FED_V1}/backfill/{}?v={}&limit=10",
            enc(room),
            enc(&event_id)
        ),
        format!("{FED_V1}/event_auth/{}/{}", enc(room), enc(&event_id)),
    ] {
        stranger
            .call(https, &hs1, "GET", &path, None)
            .await?
            .expect_error(403, "M_FORBIDDEN")
            .with_context(|| format!("GET {path} by a server with no member in the room"))?;
    }
    // Unknown events, for anyone.
    for id in ["$thiseventdoesnotexist", "$"] {
        let path = format!("{FED_V1}/event/{}", enc(id));
        scene
            .remote_call("GET", &path, None)
            .await?
            .expect_error(404, "M_NOT_FOUND")
            .with_context(|| format!("GET /event of the unknown event {id:?}"))?;
    }
    scene.assert_alive().await?;

    // Endpoints that do not exist, signed or not.
    for path in [
        format!("{FED_V1}/no_such_endpoint"),
        format!("{FED_V1}/send"),
        "/_matrix/federation/v9/send/txn1".to_owned(),
        "/_matrix/federation/v1/query/nothing?x=1".to_owned(),
    ] {
        scene
            .remote_call("GET", &path, None)
            .await?
            .expect_error(404, "M_UNRECOGNIZED")
            .with_context(|| format!("signed GET {path}"))?;
        https
            .get(&path, None)
            .await?
            .expect_error(404, "M_UNRECOGNIZED")
            .with_context(|| format!("unsigned GET {path}"))?;
    }
    // A known path with the wrong method.
    https
        .call("DELETE", &send_path("txn1"), None, Body::None)
        .await?
        .expect_error(405, "M_UNRECOGNIZED")
        .context("DELETE /send/{txn}")?;

    // OpenID: a bogus token is refused, a real one names its user.
    let userinfo = |token: &str| format!("{FED_V1}/openid/userinfo?access_token={}", enc(token));
    for bogus in ["bogus", "", &scene.alice.access_token()] {
        https
            .get(&userinfo(bogus), None)
            .await?
            .expect_error(401, "M_UNKNOWN_TOKEN")
            .with_context(|| format!("openid/userinfo with the token {bogus:?}"))?;
    }
    let r = scene
        .hs1
        .http()
        .post(
            &format!(
                "{V3}/user/{}/openid/request_token",
                enc(scene.alice.user_id.as_str())
            ),
            Some(&scene.alice.access_token()),
            json!({}),
        )
        .await?;
    r.expect_ok().context("Alice asks for an OpenID token")?;
    let token = r.json["access_token"]
        .as_str()
        .with_context(|| format!("no access_token: {}", r.text))?;
    let r = https.get(&userinfo(token), None).await?;
    r.expect_ok()
        .context("openid/userinfo with Alice's token")?;
    ensure!(
        r.json["sub"] == scene.alice.user_id.as_str(),
        "userinfo names Alice: {}",
        r.text
    );

    scene.assert_alive().await?;
    scene.assert_messages_still_flow("after bad lookups").await
}
