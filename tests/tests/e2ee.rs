//! End-to-end encryption as real clients use it: matrix-sdk with its Olm
//! machine talks to Bellwire, which only stores and moves keys and
//! ciphertext. Encrypted chat, new and deleted devices, cross-signing with
//! emoji verification, and key backup; plus the raw behaviour clients rely on
//! (one-time key claims, to-device delivery and acknowledgement).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail, ensure};
use bellwire_tests::{
    FakeDevice, Http, MEGOLM, RawSync, TestServer, User, device_list, enc, eventually,
    only_ed25519_key, password_for, queried_devices, sync_all_until, sync_all_until_some,
    to_device_events, verify_signature, wait_until_device_known,
};
use matrix_sdk::{
    deserialized_responses::{TimelineEvent, TimelineEventKind},
    encryption::verification::{SasVerification, VerificationRequest},
    ruma::{
        DeviceId, EventId, OwnedRoomId,
        api::client::room::create_room::{self, v3::RoomPreset},
        events::{InitialStateEvent, room::encryption::RoomEncryptionEventContent},
    },
};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const BACKUP_ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Creates a private room with `m.room.encryption` (megolm) in its initial
/// state, invites `members` and has each of them join through their client.
async fn create_encrypted_room(owner: &User, name: &str, members: &[&User]) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some(name.to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = members.iter().map(|m| m.user_id.clone()).collect();
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = owner
        .client
        .create_room(request)
        .await
        .with_context(|| format!("{} creating encrypted room {name:?}", owner.user_id))?;
    let room_id = room.room_id().to_owned();
    for member in members {
        member.wait_for_invite(&room_id).await?;
        member.join(&room_id).await?;
    }
    Ok(room_id)
}

/// The server's `m.room.encryption` state of `room` names megolm.
async fn assert_room_is_encrypted(http: &Http, token: &str, room: &str) -> Result<()> {
    let r = http.state(token, room, "m.room.encryption", "").await?;
    r.expect_ok()
        .with_context(|| format!("m.room.encryption state of {room}"))?;
    ensure!(
        r.json["algorithm"] == MEGOLM,
        "m.room.encryption of {room} is not {MEGOLM}: {}",
        r.text
    );
    Ok(())
}

/// The event as sent over the wire (raw GET /rooms/{id}/event/{id}) is an
/// `m.room.encrypted` megolm event whose JSON does not contain `plaintext`.
async fn assert_encrypted_on_the_wire(
    http: &Http,
    token: &str,
    room: &str,
    event_id: &str,
    plaintext: &str,
) -> Result<()> {
    let r = http.event(token, room, event_id).await?;
    r.expect_ok()
        .with_context(|| format!("GET event {event_id}"))?;
    ensure!(
        r.json["type"] == "m.room.encrypted",
        "event {event_id} is stored as {} rather than m.room.encrypted: {}",
        r.json["type"],
        r.text
    );
    let content = &r.json["content"];
    ensure!(
        content["algorithm"] == MEGOLM
            && content["ciphertext"].is_string()
            && content["session_id"].is_string(),
        "event {event_id} does not carry a megolm ciphertext: {}",
        r.text
    );
    ensure!(
        !r.text.contains(plaintext),
        "the plaintext {plaintext:?} appears in the stored event: {}",
        r.text
    );
    Ok(())
}

/// `content.body` of an event the client decrypted; `None` if it is not a
/// decrypted event.
fn decrypted_body(event: &TimelineEvent) -> Option<String> {
    let TimelineEventKind::Decrypted(decrypted) = &event.kind else {
        return None;
    };
    let json: Value = serde_json::from_str(decrypted.event.json().get()).ok()?;
    json.pointer("/content/body")?.as_str().map(str::to_owned)
}

/// Fails if either side cancelled the verification, with the reason.
fn not_cancelled(request: &VerificationRequest, sas: Option<&SasVerification>) -> Result<()> {
    if let Some(info) = request.cancel_info() {
        bail!("the verification request was cancelled: {info:?}");
    }
    if let Some(info) = sas.and_then(SasVerification::cancel_info) {
        bail!("the SAS verification was cancelled: {info:?}");
    }
    Ok(())
}

/// One-time key ids of `user`'s `device` in a /keys/claim answer, with the
/// key objects.
fn claimed_keys(claim: &Value, user: &str, device: &str) -> BTreeMap<String, Value> {
    claim["one_time_keys"][user][device]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The single key a claim for one device returned: (key id, key object).
fn single_claimed_key(claim: &Value, user: &str, device: &str) -> Result<(String, Value)> {
    let keys = claimed_keys(claim, user, device);
    ensure!(
        keys.len() == 1,
        "a claim for one key of {device} must return exactly one key, got {}",
        claim
    );
    Ok(keys.into_iter().next().expect("one key"))
}

/// `device_unused_fallback_key_types` of a raw /sync response, required by
/// the spec once a server supports fallback keys.
fn unused_fallback_types(resp: &Value) -> Result<Vec<String>> {
    let types = resp
        .get("device_unused_fallback_key_types")
        .and_then(Value::as_array)
        .with_context(|| {
            format!(
                "/sync answer without device_unused_fallback_key_types: {}",
                serde_json::to_string(resp).unwrap_or_default()
            )
        })?;
    Ok(types
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect())
}

/// `device_one_time_keys_count.signed_curve25519` of a raw /sync response
/// (absent counts as 0, per the spec).
fn synced_otk_count(resp: &Value) -> u64 {
    resp.pointer("/device_one_time_keys_count/signed_curve25519")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Encrypted chat
// ---------------------------------------------------------------------------

/// Alice opens an encrypted DM with Bob. Each message travels as megolm
/// ciphertext (the server never holds the text) and each side's client
/// decrypts the other's message from its sync.
#[tokio::test(flavor = "multi_thread")]
async fn alice_and_bob_chat_in_an_encrypted_dm() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    // (Logging in includes a first sync, which uploads each device's keys.)

    let room_id = alice
        .client
        .create_dm(&bob.user_id)
        .await
        .context("Alice creating an encrypted DM with Bob")?
        .room_id()
        .to_owned();
    let room = room_id.as_str();
    assert_room_is_encrypted(&http, &alice.access_token(), room).await?;
    bob.wait_for_invite(&room_id).await?;
    bob.join(&room_id).await?;

    // Each client learns the other's device through the room membership.
    alice
        .sync_until("Bob's join", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;
    wait_until_device_known(&alice, &bob.user_id, &bob.device_id()).await?;
    wait_until_device_known(&bob, &alice.user_id, &alice.device_id()).await?;

    let question = "Shall we meet at the old lighthouse at nine?";
    let question_id = alice.send_text(&room_id, question).await?;
    assert_encrypted_on_the_wire(&http, &bob.access_token(), room, &question_id, question).await?;
    bob.wait_for_decrypted_text(&room_id, &alice.user_id, question)
        .await?;
    let seen = bob.seen();
    let event = seen
        .event(&question_id)
        .context("Bob's decrypted message has the id Alice got when sending")?;
    ensure!(
        event.decrypted && event.event_type == "m.room.message",
        "Bob's copy of the question: {event:?}"
    );

    let answer = "Yes, bring the lantern.";
    let answer_id = bob.send_text(&room_id, answer).await?;
    assert_encrypted_on_the_wire(&http, &alice.access_token(), room, &answer_id, answer).await?;
    alice
        .wait_for_decrypted_text(&room_id, &bob.user_id, answer)
        .await?;
    // Alice's client also decrypts the echo of her own message.
    alice
        .wait_for_decrypted_text(&room_id, &alice.user_id, question)
        .await?;
    ensure!(
        alice.seen().undecryptable(&room_id).is_empty()
            && bob.seen().undecryptable(&room_id).is_empty(),
        "undecryptable events: Alice {:#?}, Bob {:#?}",
        alice.seen().undecryptable(&room_id),
        bob.seen().undecryptable(&room_id)
    );
    Ok(())
}

/// Bob signs in on a second device. Alice's client learns about it through
/// ordinary syncing, so her next message is readable there. When Bob then
/// deletes his first device, its keys disappear from /keys/query and Alice's
/// sync reports that Bob's device list changed.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_device_receives_the_next_message() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let room_id = create_encrypted_room(&alice, "Harbour", &[&bob]).await?;
    alice
        .sync_until("Bob's join", |s| {
            s.membership(&room_id, &bob.user_id).as_deref() == Some("join")
        })
        .await?;
    wait_until_device_known(&alice, &bob.user_id, &bob.device_id()).await?;
    alice
        .send_text(&room_id, "The ferry leaves at six.")
        .await?;
    bob.wait_for_decrypted_text(&room_id, &alice.user_id, "The ferry leaves at six.")
        .await?;

    // Bob's phone: a new login (which syncs once, uploading its keys).
    let bob_phone = server.login("bob", &password_for("bob")).await?;
    let phone_device = bob_phone.device_id();
    ensure!(
        phone_device != bob.device_id(),
        "a second login got the same device id {phone_device}"
    );

    // Alice only keeps syncing; her client picks the new device up.
    wait_until_device_known(&alice, &bob.user_id, &phone_device).await?;
    let news = "Change of plan: the ferry leaves at seven.";
    alice.send_text(&room_id, news).await?;
    bob_phone
        .wait_for_decrypted_text(&room_id, &alice.user_id, news)
        .await
        .context("Bob's new device reads the message sent after it appeared")?;
    bob.wait_for_decrypted_text(&room_id, &alice.user_id, news)
        .await
        .context("Bob's first device still reads new messages")?;

    // Alice watches device list changes from a raw session of her own (a
    // separate device, so it cannot acknowledge her client's to-device
    // messages).
    let alice_raw = FakeDevice::login(&http, "alice").await?;
    let mut alice_sync = RawSync::new(&http, &alice_raw.token, "alice (raw)");
    alice_sync.catch_up().await?;

    // Bob removes his first device from the phone, confirming his password.
    let old_device = bob.device_id();
    http.delete_device(
        &bob_phone.access_token(),
        &old_device,
        bob.user_id.as_str(),
        &password_for("bob"),
    )
    .await?;

    let bob_id = bob.user_id.as_str();
    let query = http.query_keys_ok(&alice_raw.token, &[bob_id]).await?;
    let devices = queried_devices(&query, bob_id);
    ensure!(
        !devices.contains_key(&old_device) && devices.contains_key(&phone_device),
        "after deleting {old_device}, /keys/query must list only {phone_device}: {query}"
    );
    alice_sync
        .until("Bob in device_lists.changed", |r| {
            device_list(r, "changed")
                .contains(&bob_id.to_owned())
                .then_some(())
        })
        .await?;

    // The deleted device's session is gone with it.
    let r = http
        .get(&format!("{V3}/account/whoami"), Some(&bob.access_token()))
        .await?;
    r.expect_error(401, "M_UNKNOWN_TOKEN")
        .context("the deleted device's access token")?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Cross-signing and verification
// ---------------------------------------------------------------------------

/// Alice and Bob set up cross-signing (the first upload needs no password).
/// Alice verifies her new second device from the first by comparing emojis
/// over to-device messages; afterwards each trusts the other, and the first
/// device's cross-signature on the second is published. Bob can see Alice's
/// master and self-signing keys but not her user-signing key.
#[tokio::test(flavor = "multi_thread")]
async fn cross_signing_and_sas_verification() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    for user in [&alice, &bob] {
        if let Err(err) = user.client.encryption().bootstrap_cross_signing(None).await {
            match err.as_uiaa_response() {
                Some(uiaa) => bail!(
                    "{}: the server demanded UIA for the first cross-signing upload: {uiaa:?}",
                    user.user_id
                ),
                None => bail!("{}: bootstrapping cross-signing: {err:?}", user.user_id),
            }
        }
        let status = user
            .client
            .encryption()
            .cross_signing_status()
            .await
            .context("no cross-signing status")?;
        ensure!(
            status.has_master && status.has_self_signing && status.has_user_signing,
            "{}: cross-signing status after bootstrap: {status:?}",
            user.user_id
        );
    }

    // Who sees which of Alice's cross-signing keys.
    let (alice_id, bob_id) = (alice.user_id.as_str(), bob.user_id.as_str());
    let seen_by_bob = http.query_keys_ok(&bob.access_token(), &[alice_id]).await?;
    let seen_by_alice = http
        .query_keys_ok(&alice.access_token(), &[alice_id])
        .await?;
    for (what, query) in [("Bob", &seen_by_bob), ("Alice", &seen_by_alice)] {
        ensure!(
            query["master_keys"][alice_id]["usage"] == json!(["master"]),
            "{what} sees Alice's master key: {query}"
        );
        ensure!(
            query["self_signing_keys"][alice_id]["usage"] == json!(["self_signing"]),
            "{what} sees Alice's self-signing key: {query}"
        );
    }
    ensure!(
        seen_by_bob["master_keys"][alice_id] == seen_by_alice["master_keys"][alice_id],
        "Alice and Bob see the same master key: {seen_by_bob} vs {seen_by_alice}"
    );
    ensure!(
        seen_by_bob
            .get("user_signing_keys")
            .and_then(|u| u.get(alice_id))
            .is_none(),
        "only Alice may see her user-signing key, Bob got: {seen_by_bob}"
    );
    ensure!(
        seen_by_alice["user_signing_keys"][alice_id]["usage"] == json!(["user_signing"]),
        "Alice sees her own user-signing key: {seen_by_alice}"
    );
    // The self-signing key is signed by the master key.
    let (master_id, master_key) = only_ed25519_key(&seen_by_bob["master_keys"][alice_id])?;
    verify_signature(
        &seen_by_bob["self_signing_keys"][alice_id],
        alice_id,
        &master_id,
        &master_key,
    )?;
    let bob_self = http.query_keys_ok(&bob.access_token(), &[bob_id]).await?;
    ensure!(
        bob_self["user_signing_keys"][bob_id]["usage"] == json!(["user_signing"]),
        "Bob sees his own user-signing key: {bob_self}"
    );

    // Alice's laptop: a second login.
    let laptop = server.login("alice", &password_for("alice")).await?;
    let (first_device, laptop_device) = (alice.device_id(), laptop.device_id());
    let alice_devices = || async {
        let on_first = alice
            .client
            .encryption()
            .get_device(&alice.user_id, <&DeviceId>::from(laptop_device.as_str()))
            .await?;
        let on_laptop = laptop
            .client
            .encryption()
            .get_device(&alice.user_id, <&DeviceId>::from(first_device.as_str()))
            .await?;
        anyhow::Ok((on_first, on_laptop))
    };
    sync_all_until(
        &[&alice, &laptop],
        "each of Alice's devices to know the other",
        || async {
            let (a, b) = alice_devices().await?;
            Ok(a.is_some() && b.is_some())
        },
    )
    .await?;
    let (laptop_on_first, first_on_laptop) = alice_devices().await?;
    let (laptop_on_first, first_on_laptop) = (
        laptop_on_first.context("laptop device")?,
        first_on_laptop.context("first device")?,
    );
    ensure!(
        !laptop_on_first.is_verified(),
        "the laptop is not verified before the emoji comparison"
    );

    // The laptop asks the first device to verify it.
    let request = first_on_laptop
        .request_verification()
        .await
        .context("the laptop requesting verification")?;
    let flow_id = request.flow_id().to_owned();
    let incoming = sync_all_until_some(
        &[&alice, &laptop],
        "the verification request on the first device",
        || async {
            Ok(alice
                .client
                .encryption()
                .get_verification_request(&alice.user_id, &flow_id)
                .await)
        },
    )
    .await?;
    incoming
        .accept()
        .await
        .context("the first device accepting")?;
    sync_all_until(
        &[&alice, &laptop],
        "the request to be ready on the laptop",
        || async {
            not_cancelled(&request, None)?;
            Ok(request.is_ready())
        },
    )
    .await?;

    let laptop_sas = request
        .start_sas()
        .await
        .context("starting SAS")?
        .context("start_sas returned no SAS verification")?;
    let first_sas = sync_all_until_some(
        &[&alice, &laptop],
        "the SAS flow on the first device",
        || async {
            not_cancelled(&request, Some(&laptop_sas))?;
            Ok(alice
                .client
                .encryption()
                .get_verification(&alice.user_id, &flow_id)
                .await
                .and_then(|v| v.sas()))
        },
    )
    .await?;
    first_sas
        .accept()
        .await
        .context("the first device accepting SAS")?;
    sync_all_until(
        &[&alice, &laptop],
        "both devices to show emojis",
        || async {
            not_cancelled(&incoming, Some(&first_sas))?;
            not_cancelled(&request, Some(&laptop_sas))?;
            Ok(first_sas.emoji().is_some() && laptop_sas.emoji().is_some())
        },
    )
    .await?;
    let emojis = |sas: &SasVerification| -> Vec<(&'static str, &'static str)> {
        sas.emoji()
            .map(|e| e.iter().map(|e| (e.symbol, e.description)).collect())
            .unwrap_or_default()
    };
    let (on_first, on_laptop) = (emojis(&first_sas), emojis(&laptop_sas));
    ensure!(
        on_first.len() == 7 && on_first == on_laptop,
        "both devices show the same 7 emojis: {on_first:?} vs {on_laptop:?}"
    );

    first_sas.confirm().await.context("first device confirms")?;
    laptop_sas.confirm().await.context("laptop confirms")?;
    sync_all_until(
        &[&alice, &laptop],
        "the verification to finish on both",
        || async {
            not_cancelled(&incoming, Some(&first_sas))?;
            not_cancelled(&request, Some(&laptop_sas))?;
            Ok(first_sas.is_done() && laptop_sas.is_done())
        },
    )
    .await?;

    let (laptop_on_first, first_on_laptop) = alice_devices().await?;
    ensure!(
        laptop_on_first.is_some_and(|d| d.is_verified()),
        "the first device trusts the laptop after verification"
    );
    ensure!(
        first_on_laptop.is_some_and(|d| d.is_verified()),
        "the laptop trusts the first device after verification"
    );

    // The first device holds the self-signing key, so it signed the laptop's
    // device keys; Bob sees that signature, and it verifies.
    let (ssk_id, ssk_key) = only_ed25519_key(&seen_by_bob["self_signing_keys"][alice_id])?;
    eventually(
        "the laptop's device keys to carry Alice's self-signing signature",
        || async {
            let query = http.query_keys_ok(&bob.access_token(), &[alice_id]).await?;
            let devices = queried_devices(&query, alice_id);
            let laptop_keys = devices
                .get(&laptop_device)
                .with_context(|| format!("laptop missing from {query}"))?;
            if laptop_keys["signatures"][alice_id].get(&ssk_id).is_none() {
                return Ok(false);
            }
            verify_signature(laptop_keys, alice_id, &ssk_id, &ssk_key)?;
            Ok(true)
        },
    )
    .await?;
    // ... and the first device's client, re-reading Alice's keys after the
    // device list change, sees the laptop as cross-signed by its owner.
    sync_all_until(
        &[&alice, &laptop],
        "the first device to see the laptop cross-signed",
        || async {
            Ok(alice
                .client
                .encryption()
                .get_device(&alice.user_id, <&DeviceId>::from(laptop_device.as_str()))
                .await?
                .is_some_and(|d| d.is_cross_signed_by_owner()))
        },
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Key backup
// ---------------------------------------------------------------------------

/// Alice writes in an encrypted room, then turns on recovery: her room keys
/// go to the server-side backup and her secrets to secret storage. A fresh
/// device cannot read the old messages until Alice enters her recovery key;
/// then it restores the keys from the backup and reads them. The backup's
/// etag and count track stored keys, and writes to a replaced backup
/// version are refused with the current version.
#[tokio::test(flavor = "multi_thread")]
async fn key_backup_restores_history_on_a_fresh_device() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    alice
        .client
        .encryption()
        .bootstrap_cross_signing(None)
        .await
        .context("bootstrapping cross-signing")?;
    let room_id = create_encrypted_room(&alice, "Diary", &[]).await?;
    let room = room_id.as_str();
    alice
        .sync_until("the diary room", |s| s.joined.contains(&room_id))
        .await?;
    let notes = [
        "Buried the key under the oak.",
        "The map is in the blue book.",
    ];
    let mut note_ids = Vec::new();
    for note in notes {
        note_ids.push(alice.send_text(&room_id, note).await?);
    }
    assert_encrypted_on_the_wire(&http, &alice.access_token(), room, &note_ids[0], notes[0])
        .await?;

    let recovery_key = tokio::time::timeout(
        bellwire_tests::WAIT,
        alice
            .client
            .encryption()
            .recovery()
            .enable()
            .wait_for_backups_to_upload()
            .into_future(),
    )
    .await
    .context("enabling recovery did not finish in time")?
    .context("enabling recovery")?;

    // The backup on the server holds Alice's room key.
    let token = alice.access_token();
    let backup_info = || async {
        let r = http
            .get(&format!("{V3}/room_keys/version"), Some(&token))
            .await?;
        r.expect_ok()?;
        ensure!(
            r.json["algorithm"] == BACKUP_ALGORITHM && r.json["auth_data"].is_object(),
            "backup version info: {}",
            r.text
        );
        let version = r.json["version"].as_str().context("no version")?.to_owned();
        let etag = r.json["etag"].as_str().context("no etag")?.to_owned();
        let count = r.json["count"].as_u64().context("no count")?;
        anyhow::Ok((version, etag, count))
    };
    eventually("the backup to hold Alice's room key", || async {
        Ok(backup_info().await?.2 >= 1)
    })
    .await?;
    let (version, etag, count) = backup_info().await?;
    let r = http
        .get(
            &format!("{V3}/room_keys/keys?version={}", enc(&version)),
            Some(&token),
        )
        .await?;
    r.expect_ok()?;
    let sessions = r.json["rooms"][room]["sessions"]
        .as_object()
        .with_context(|| format!("the backup has no sessions for {room}: {}", r.text))?;
    ensure!(
        sessions.values().all(|s| s["session_data"].is_object()),
        "backed-up sessions carry session_data: {}",
        r.text
    );
    // Secret storage is ordinary global account data.
    let account_data = |ty: &str| {
        format!(
            "{V3}/user/{}/account_data/{}",
            enc(alice.user_id.as_str()),
            enc(ty)
        )
    };
    let r = http
        .get(&account_data("m.secret_storage.default_key"), Some(&token))
        .await?;
    r.expect_ok().context("m.secret_storage.default_key")?;
    let key_id = r.json["key"].as_str().context("default key id")?.to_owned();
    for ty in [
        format!("m.secret_storage.key.{key_id}"),
        "m.megolm_backup.v1".to_owned(),
        "m.cross_signing.master".to_owned(),
    ] {
        http.get(&account_data(&ty), Some(&token))
            .await?
            .expect_ok()
            .with_context(|| format!("account data {ty} after enabling recovery"))?;
    }

    // A fresh device: it knows the room but has none of its keys.
    let fresh = server.login("alice", &password_for("alice")).await?;
    fresh
        .sync_until("the diary room on the fresh device", |s| {
            s.joined.contains(&room_id)
        })
        .await?;
    let fresh_room = fresh.room(&room_id)?;
    let event_id = EventId::parse(&note_ids[0])?;
    let before = fresh_room.event(&event_id, None).await?;
    ensure!(
        matches!(before.kind, TimelineEventKind::UnableToDecrypt { .. }),
        "the fresh device must not read old messages before recovery: {:?}",
        before.kind
    );

    fresh
        .client
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .context("recovering with the recovery key")?;
    ensure!(
        fresh.client.encryption().backups().are_enabled().await,
        "recovery turned on backups on the fresh device"
    );
    fresh
        .client
        .encryption()
        .backups()
        .download_room_keys_for_room(&room_id)
        .await
        .context("downloading the room's keys from the backup")?;
    for (note, id) in notes.iter().zip(&note_ids) {
        let event = fresh_room.event(&EventId::parse(id)?, None).await?;
        ensure!(
            decrypted_body(&event).as_deref() == Some(*note),
            "the fresh device decrypts {note:?} after restoring the backup: {:?}",
            event.kind
        );
    }

    // Raw: adding a key changes the etag and the count.
    let fake_session = json!({
        "first_message_index": 0,
        "forwarded_count": 0,
        "is_verified": false,
        "session_data": {"ephemeral": "aGVsbG8", "ciphertext": "d29ybGQ", "mac": "bWFj"},
    });
    let key_path = |version: &str| {
        format!(
            "{V3}/room_keys/keys/{}/{}?version={}",
            enc(room),
            enc("bellwire-test-session"),
            enc(version)
        )
    };
    let r = http
        .put(&key_path(&version), Some(&token), fake_session.clone())
        .await?;
    r.expect_ok().context("PUT a key into the backup")?;
    let new_etag = r.json["etag"].as_str().context("PUT answer without etag")?;
    ensure!(
        new_etag != etag && r.json["count"].as_u64() == Some(count + 1),
        "adding a key changes the etag (was {etag}) and counts it (was {count}): {}",
        r.text
    );
    let r = http
        .get(
            &format!("{V3}/room_keys/version/{}", enc(&version)),
            Some(&token),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["etag"] == new_etag && r.json["count"].as_u64() == Some(count + 1),
        "GET version {version} reflects the new key: {}",
        r.text
    );

    // A new backup version replaces the old one; writes to the old one are
    // refused and name the current version.
    let r = http
        .post(
            &format!("{V3}/room_keys/version"),
            Some(&token),
            json!({
                "algorithm": BACKUP_ALGORITHM,
                "auth_data": {"public_key": bellwire_tests::random_curve25519_key()},
            }),
        )
        .await?;
    r.expect_ok().context("creating a second backup version")?;
    let current = r.json["version"].as_str().context("no version")?.to_owned();
    ensure!(current != version, "a new backup gets a new version");
    let r = http
        .put(&key_path(&version), Some(&token), fake_session)
        .await?;
    r.expect_error(403, "M_WRONG_ROOM_KEYS_VERSION")
        .context("PUT to a replaced backup version")?;
    ensure!(
        r.json["current_version"] == current.as_str(),
        "the refusal names the current version {current}: {}",
        r.text
    );
    let r = http
        .get(&format!("{V3}/room_keys/version"), Some(&token))
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["version"] == current.as_str() && r.json["count"] == 0,
        "the new backup is current and empty: {}",
        r.text
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Raw key and to-device behaviour
// ---------------------------------------------------------------------------

/// Bob's device publishes five one-time keys and a fallback key. Alice's
/// claims hand out each one-time key exactly once, then the fallback key
/// (as often as asked). The counts in /keys/upload and in Bob's sync go down
/// with each claim, and the fallback key is reported used once claimed. Ten
/// simultaneous claims against five keys never share a key either.
#[tokio::test(flavor = "multi_thread")]
async fn one_time_keys_are_claimed_once_then_the_fallback() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let (_, alice_token) = http.register("alice", &password_for("alice")).await?;
    http.register("bob", &password_for("bob")).await?;
    let bob = FakeDevice::login(&http, "bob").await?;
    let (bob_id, device) = (bob.user_id.as_str(), bob.device_id.as_str());

    let ids = ["AAAAAA", "AAAAAQ", "AAAAAg", "AAAAAw", "AAAABA"];
    let one_time_keys = bob.one_time_keys(&ids)?;
    let fallback = bob.signed_curve25519(true)?;
    let r = bob
        .upload(
            &http,
            json!({
                "device_keys": bob.device_keys()?,
                "one_time_keys": one_time_keys,
                "fallback_keys": {"signed_curve25519:AAAAFB": fallback},
            }),
        )
        .await?;
    r.expect_ok().context("uploading Bob's keys")?;
    ensure!(
        r.json["one_time_key_counts"]["signed_curve25519"] == 5,
        "the upload answer counts five keys: {}",
        r.text
    );
    let mut bob_sync = RawSync::new(&http, &bob.token, "bob");
    let first = bob_sync.once(0).await?;
    ensure!(
        synced_otk_count(&first) == 5
            && unused_fallback_types(&first)? == vec!["signed_curve25519".to_owned()],
        "Bob's sync reports five keys and an unused fallback key: {first}"
    );

    let mut handed_out = BTreeSet::new();
    for claimed in 1..=5u64 {
        let r = http
            .claim_key(&alice_token, bob_id, device, "signed_curve25519")
            .await?;
        r.expect_ok().with_context(|| format!("claim #{claimed}"))?;
        let (key_id, key) = single_claimed_key(&r.json, bob_id, device)?;
        ensure!(
            key_id != "signed_curve25519:AAAAFB",
            "claim #{claimed} got the fallback key while one-time keys remain: {}",
            r.text
        );
        ensure!(
            one_time_keys.get(&key_id) == Some(&key),
            "claim #{claimed} returned {key_id} exactly as uploaded: {}",
            r.text
        );
        ensure!(
            handed_out.insert(key_id.clone()),
            "claim #{claimed} handed out {key_id} a second time"
        );
        let left = bob.one_time_key_count(&http, "signed_curve25519").await?;
        ensure!(
            left == 5 - claimed,
            "after {claimed} claims {} keys must be left, /keys/upload says {left}",
            5 - claimed
        );
        let resp = bob_sync.once(0).await?;
        ensure!(
            synced_otk_count(&resp) == 5 - claimed
                && unused_fallback_types(&resp)? == vec!["signed_curve25519".to_owned()],
            "Bob's sync after {claimed} claims: {resp}"
        );
    }

    // Out of one-time keys: the fallback key, marked as such, every time.
    for claim in 6..=7 {
        let r = http
            .claim_key(&alice_token, bob_id, device, "signed_curve25519")
            .await?;
        r.expect_ok().with_context(|| format!("claim #{claim}"))?;
        let (key_id, key) = single_claimed_key(&r.json, bob_id, device)?;
        ensure!(
            key_id == "signed_curve25519:AAAAFB" && key == fallback,
            "claim #{claim} returns the fallback key as uploaded: {}",
            r.text
        );
        let resp = bob_sync.once(0).await?;
        ensure!(
            synced_otk_count(&resp) == 0 && unused_fallback_types(&resp)?.is_empty(),
            "after the fallback key was claimed Bob's sync reports it used: {resp}"
        );
    }
    // A new fallback key replaces the used one.
    let fresh_fallback = bob.signed_curve25519(true)?;
    bob.upload(
        &http,
        json!({"fallback_keys": {"signed_curve25519:AAAAFC": fresh_fallback}}),
    )
    .await?
    .expect_ok()
    .context("uploading a new fallback key")?;
    let resp = bob_sync.once(0).await?;
    ensure!(
        unused_fallback_types(&resp)? == vec!["signed_curve25519".to_owned()],
        "a new fallback key is unused again: {resp}"
    );
    let r = http
        .claim_key(&alice_token, bob_id, device, "signed_curve25519")
        .await?;
    r.expect_ok()?;
    let (key_id, key) = single_claimed_key(&r.json, bob_id, device)?;
    ensure!(
        key_id == "signed_curve25519:AAAAFC" && key == fresh_fallback,
        "the new fallback key replaced the old one: {}",
        r.text
    );

    // A second device with five keys; ten claims at once.
    let tablet = FakeDevice::login(&http, "bob").await?;
    let tablet_ids = ["BBBBBA", "BBBBBQ", "BBBBBg", "BBBBBw", "BBBBCA"];
    tablet
        .upload(
            &http,
            json!({
                "device_keys": tablet.device_keys()?,
                "one_time_keys": tablet.one_time_keys(&tablet_ids)?,
                "fallback_keys": {"signed_curve25519:BBBBFB": tablet.signed_curve25519(true)?},
            }),
        )
        .await?
        .expect_ok()
        .context("uploading the tablet's keys")?;
    let mut claims = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (http, token) = (http.clone(), alice_token.clone());
        let (user, device) = (bob_id.to_owned(), tablet.device_id.clone());
        claims.spawn(async move {
            http.claim_key(&token, &user, &device, "signed_curve25519")
                .await
        });
    }
    let mut one_time = Vec::new();
    let mut fallbacks = 0;
    while let Some(joined) = claims.join_next().await {
        let r = joined??;
        r.expect_ok().context("a concurrent claim")?;
        let (key_id, _) = single_claimed_key(&r.json, bob_id, &tablet.device_id)?;
        if key_id == "signed_curve25519:BBBBFB" {
            fallbacks += 1;
        } else {
            one_time.push(key_id);
        }
    }
    let distinct: BTreeSet<&String> = one_time.iter().collect();
    let expected: BTreeSet<String> = tablet_ids
        .iter()
        .map(|id| format!("signed_curve25519:{id}"))
        .collect();
    ensure!(
        one_time.len() == 5
            && distinct.len() == 5
            && distinct.into_iter().cloned().collect::<BTreeSet<_>>() == expected,
        "ten concurrent claims hand out each of the five keys exactly once: {one_time:?}"
    );
    ensure!(
        fallbacks == 5,
        "the other five concurrent claims get the fallback key, got {fallbacks}"
    );
    ensure!(
        tablet
            .one_time_key_count(&http, "signed_curve25519")
            .await?
            == 0,
        "no one-time keys are left on the tablet"
    );
    Ok(())
}

/// A to-device message stays queued until the device acknowledges it by
/// syncing with the `next_batch` that delivered it: repeating the same
/// request delivers it again, the next one does not. A retried transaction
/// is not delivered twice, and `*` reaches every device of the user.
#[tokio::test(flavor = "multi_thread")]
async fn to_device_messages_are_delivered_once_and_kept_until_acknowledged() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let (alice_id, alice_token) = http.register("alice", &password_for("alice")).await?;
    http.register("bob", &password_for("bob")).await?;
    let phone = FakeDevice::login(&http, "bob").await?;
    let laptop = FakeDevice::login(&http, "bob").await?;
    let bob_id = phone.user_id.clone();
    let mut phone_sync = RawSync::new(&http, &phone.token, "bob's phone");
    let mut laptop_sync = RawSync::new(&http, &laptop.token, "bob's laptop");
    phone_sync.catch_up().await?;
    laptop_sync.catch_up().await?;

    const TYPE: &str = "org.bellwire.test.ping";
    let message = |n: u64| json!({"n": n, "text": format!("ping #{n}")});
    let has = |resp: &Value, n: u64| {
        to_device_events(resp)
            .into_iter()
            .any(|e| e["type"] == TYPE && e["content"]["n"] == n)
    };

    http.send_to_device(
        &alice_token,
        TYPE,
        "ping-1",
        json!({&bob_id: {&phone.device_id: message(1)}}),
    )
    .await?
    .expect_ok()
    .context("sending ping #1")?;
    let unacknowledged = phone_sync.since().map(str::to_owned);
    let delivered = phone_sync
        .until("ping #1", |r| {
            to_device_events(r)
                .into_iter()
                .find(|e| e["type"] == TYPE && e["content"]["n"] == 1)
                .cloned()
        })
        .await?;
    ensure!(
        delivered["sender"] == alice_id.as_str() && delivered["content"] == message(1),
        "ping #1 arrives from Alice with its content: {delivered}"
    );
    // The answer that delivered it was not necessarily the first one.
    let delivering_since = phone_sync
        .responses
        .iter()
        .rev()
        .nth(1)
        .and_then(|r| r["next_batch"].as_str())
        .map(str::to_owned)
        .or(unacknowledged);

    // The client "lost" that answer and asks again from the same place.
    phone_sync.set_since(delivering_since.clone());
    let again = phone_sync.once(0).await?;
    ensure!(
        has(&again, 1),
        "an unacknowledged to-device message is delivered again: {again}"
    );
    // Syncing on from the new next_batch acknowledges it.
    let after = phone_sync.once(0).await?;
    ensure!(
        !has(&after, 1),
        "an acknowledged to-device message is not delivered again: {after}"
    );
    phone_sync.set_since(delivering_since);
    let stale = phone_sync.once(0).await?;
    ensure!(
        !has(&stale, 1),
        "once acknowledged, a message is gone even for an older token: {stale}"
    );

    // Retrying the same transaction does not send it again.
    http.send_to_device(
        &alice_token,
        TYPE,
        "ping-1",
        json!({&bob_id: {&phone.device_id: message(1)}}),
    )
    .await?
    .expect_ok()
    .context("retrying ping #1 with the same transaction id")?;
    http.send_to_device(
        &alice_token,
        TYPE,
        "ping-2",
        json!({&bob_id: {&phone.device_id: message(2)}}),
    )
    .await?
    .expect_ok()?;
    let seen_from = phone_sync.responses.len();
    phone_sync
        .until("ping #2", |r| has(r, 2).then_some(()))
        .await?;
    ensure!(
        !phone_sync.responses[seen_from..].iter().any(|r| has(r, 1)),
        "the retried transaction delivered ping #1 twice: {:#?}",
        &phone_sync.responses[seen_from..]
    );

    // `*` fans out to all of Bob's devices; the laptop got nothing before.
    http.send_to_device(
        &alice_token,
        TYPE,
        "ping-3",
        json!({&bob_id: {"*": message(3)}}),
    )
    .await?
    .expect_ok()
    .context("sending ping #3 to every device")?;
    phone_sync
        .until("ping #3 on the phone", |r| has(r, 3).then_some(()))
        .await?;
    laptop_sync
        .until("ping #3 on the laptop", |r| has(r, 3).then_some(()))
        .await?;
    ensure!(
        !laptop_sync.responses.iter().any(|r| has(r, 1) || has(r, 2)),
        "messages for the phone reached the laptop: {:#?}",
        laptop_sync.responses
    );
    // The same transaction id from another device of Alice's is a new
    // message (transactions are scoped to the sending device).
    let alice_other = FakeDevice::login(&http, "alice").await?;
    http.send_to_device(
        &alice_other.token,
        TYPE,
        "ping-1",
        json!({&bob_id: {&laptop.device_id: message(4)}}),
    )
    .await?
    .expect_ok()?;
    laptop_sync
        .until("ping #4 (same txn id, other sender device)", |r| {
            has(r, 4).then_some(())
        })
        .await?;
    Ok(())
}
