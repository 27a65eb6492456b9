//! Bad input on the end-to-end encryption endpoints (device and one-time
//! keys, cross-signing keys and signatures, to-device messages): each
//! rejection has the right status and errcode, stores nothing, and leaves
//! the server up.

use anyhow::{Context, Result, ensure};
use bellwire_tests::{
    CrossSigningKeys, FakeDevice, Http, RawSync, ServerOptions, SigningKey, TestServer,
    cross_signing_key, only_ed25519_key, password_for, queried_devices, to_device_events,
    verify_signature,
};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

/// `device_keys.<user>.<device>` of a /keys/query answer, as seen by `token`.
async fn stored_device_keys(
    http: &Http,
    token: &str,
    user: &str,
    device: &str,
) -> Result<Option<Value>> {
    let query = http.query_keys_ok(token, &[user]).await?;
    Ok(queried_devices(&query, user).remove(device))
}

/// A cross-signing key of `user` (`master_keys`, `self_signing_keys` or
/// `user_signing_keys`) as `token` sees it in /keys/query.
async fn stored_cross_signing_key(
    http: &Http,
    token: &str,
    user: &str,
    field: &str,
) -> Result<Option<Value>> {
    let query = http.query_keys_ok(token, &[user]).await?;
    Ok(query.get(field).and_then(|f| f.get(user)).cloned())
}

/// The public ed25519 key of a stored cross-signing key object, if any.
fn public_key_of(key: &Option<Value>) -> Option<String> {
    key.as_ref()
        .and_then(|k| only_ed25519_key(k).ok())
        .map(|(_, public)| public)
}

/// Malformed device keys and one-time keys are refused as a whole: nothing
/// of a refused upload is stored, and valid keys stored before stay as they
/// were.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_device_and_one_time_keys_are_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    http.register("alice", &password_for("alice")).await?;
    http.register("bob", &password_for("bob")).await?;
    let alice = FakeDevice::login(&http, "alice").await?;
    let bob = FakeDevice::login(&http, "bob").await?;
    let (alice_id, device) = (alice.user_id.as_str(), alice.device_id.as_str());
    let valid_otks = alice.one_time_keys(&["AAAAAA", "AAAAAQ"])?;

    // Device keys claiming to be Bob's, or another of Alice's devices.
    let mut for_bob = alice.device_keys()?;
    for_bob["user_id"] = json!(bob.user_id);
    alice
        .upload(&http, json!({"device_keys": for_bob}))
        .await?
        .expect_error_in(400, &["M_INVALID_PARAM", "M_BAD_JSON"])
        .context("device_keys for another user")?;
    let mut other_device = alice.device_keys()?;
    other_device["device_id"] = json!("SOMEONEELSE");
    alice
        .upload(
            &http,
            json!({"device_keys": other_device, "one_time_keys": valid_otks}),
        )
        .await?
        .expect_error_in(400, &["M_INVALID_PARAM", "M_BAD_JSON"])
        .context("device_keys for another device id")?;
    // `keys` must be a map of key id to key.
    let mut keys_list = alice.device_keys()?;
    keys_list["keys"] = json!(["curve25519", "ed25519"]);
    alice
        .upload(&http, json!({"device_keys": keys_list}))
        .await?
        .expect_error(400, "M_BAD_JSON")
        .context("device_keys.keys as a list")?;
    // A one-time key that is neither a key object nor a key string, next
    // to valid ones: the whole upload is refused.
    let mut bad_otks = valid_otks.clone();
    bad_otks["signed_curve25519:AAAAAg"] = json!(5);
    alice
        .upload(&http, json!({"one_time_keys": bad_otks}))
        .await?
        .expect_error_in(400, &["M_BAD_JSON", "M_INVALID_PARAM"])
        .context("a numeric one-time key")?;
    alice
        .upload(
            &http,
            json!({"one_time_keys": {"signed_curve25519:AAAAAw": [1, 2]}}),
        )
        .await?
        .expect_error_in(400, &["M_BAD_JSON", "M_INVALID_PARAM"])
        .context("a one-time key that is a list")?;
    alice
        .upload(&http, json!({"one_time_keys": "AAAA"}))
        .await?
        .expect_error(400, "M_BAD_JSON")
        .context("one_time_keys as a string")?;
    alice
        .upload(
            &http,
            json!({"fallback_keys": {"signed_curve25519:AAAAFB": true}}),
        )
        .await?
        .expect_error_in(400, &["M_BAD_JSON", "M_INVALID_PARAM"])
        .context("a boolean fallback key")?;

    // Nothing of that was stored.
    ensure!(
        stored_device_keys(&http, &bob.token, alice_id, device)
            .await?
            .is_none(),
        "refused device keys must not be published"
    );
    ensure!(
        alice.one_time_key_count(&http, "signed_curve25519").await? == 0,
        "refused one-time keys must not be stored"
    );
    let r = http
        .claim_key(&bob.token, alice_id, device, "signed_curve25519")
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["one_time_keys"][alice_id][device]
            .as_object()
            .is_none_or(|k| k.is_empty()),
        "no key can be claimed from refused uploads: {}",
        r.text
    );
    http.assert_alive().await?;

    // Valid keys are accepted; a later bad upload leaves them alone.
    let good = alice.device_keys()?;
    let r = alice
        .upload(
            &http,
            json!({"device_keys": good, "one_time_keys": valid_otks}),
        )
        .await?;
    r.expect_ok().context("a valid upload")?;
    ensure!(
        r.json["one_time_key_counts"]["signed_curve25519"] == 2,
        "two one-time keys stored: {}",
        r.text
    );
    let mut for_bob = alice.device_keys()?;
    for_bob["user_id"] = json!(bob.user_id);
    alice
        .upload(&http, json!({"device_keys": for_bob}))
        .await?
        .expect_error_in(400, &["M_INVALID_PARAM", "M_BAD_JSON"])
        .context("device_keys for another user, after valid keys")?;
    ensure!(
        stored_device_keys(&http, &bob.token, alice_id, device).await? == Some(good.clone()),
        "the stored device keys are unchanged"
    );
    ensure!(
        stored_device_keys(&http, &bob.token, bob.user_id.as_str(), device)
            .await?
            .is_none(),
        "nothing was stored under Bob's name"
    );

    // Malformed query and claim bodies.
    http.post(
        &format!("{V3}/keys/query"),
        Some(&bob.token),
        json!({"device_keys": "all"}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("/keys/query with device_keys as a string")?;
    http.post(
        &format!("{V3}/keys/claim"),
        Some(&bob.token),
        json!({"one_time_keys": [alice_id]}),
    )
    .await?
    .expect_error(400, "M_BAD_JSON")
    .context("/keys/claim with one_time_keys as a list")?;
    ensure!(
        alice.one_time_key_count(&http, "signed_curve25519").await? == 2,
        "a refused claim hands out nothing"
    );
    http.assert_alive().await?;
    Ok(())
}

/// Cross-signing keys whose signatures do not verify are refused without
/// storing anything; the first valid upload needs no password, repeating it
/// is harmless, and replacing the keys needs the password (and still valid
/// signatures).
#[tokio::test(flavor = "multi_thread")]
async fn bad_cross_signing_uploads_change_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    http.register("alice", &password_for("alice")).await?;
    http.register("bob", &password_for("bob")).await?;
    let alice = FakeDevice::login(&http, "alice").await?;
    let bob = FakeDevice::login(&http, "bob").await?;
    let alice_id = alice.user_id.as_str();
    let path = format!("{V3}/keys/device_signing/upload");
    alice
        .upload(&http, json!({"device_keys": alice.device_keys()?}))
        .await?
        .expect_ok()?;

    let keys = CrossSigningKeys::generate();
    let impostor = SigningKey::cross_signing();
    // A self-signing key "signed by the master key" with another key.
    let mut forged_ssk = cross_signing_key(alice_id, "self_signing", &keys.self_signing, None)?;
    forged_ssk["signatures"] =
        json!({alice_id: {keys.master.key_id(): impostor.signature(&forged_ssk)?}});
    let nothing_stored = || async {
        for field in ["master_keys", "self_signing_keys", "user_signing_keys"] {
            let key = stored_cross_signing_key(&http, &alice.token, alice_id, field).await?;
            ensure!(
                key.is_none(),
                "a refused upload stored Alice's {field}: {key:?}"
            );
        }
        anyhow::Ok(())
    };

    http.post(
        &path,
        Some(&alice.token),
        json!({"master_key": keys.master_key(alice_id)?, "self_signing_key": forged_ssk}),
    )
    .await?
    .expect_error_in(400, &["M_INVALID_SIGNATURE", "M_INVALID_PARAM"])
    .context("a self-signing key with a forged master signature")?;
    nothing_stored().await?;
    let unsigned_usk = cross_signing_key(alice_id, "user_signing", &keys.user_signing, None)?;
    http.post(
        &path,
        Some(&alice.token),
        json!({"master_key": keys.master_key(alice_id)?, "user_signing_key": unsigned_usk}),
    )
    .await?
    .expect_error_in(400, &["M_INVALID_SIGNATURE", "M_INVALID_PARAM"])
    .context("a user-signing key without any signature")?;
    nothing_stored().await?;
    http.post(
        &path,
        Some(&alice.token),
        json!({"self_signing_key": keys.self_signing_key(alice_id)?}),
    )
    .await?
    .expect_error(400, "M_MISSING_PARAM")
    .context("a self-signing key while no master key exists")?;
    nothing_stored().await?;
    http.assert_alive().await?;

    // The first valid upload needs no UIA; repeating it is idempotent.
    let body = keys.upload_body(alice_id)?;
    let r = http.post(&path, Some(&alice.token), body.clone()).await?;
    r.expect_ok()
        .context("the first cross-signing upload, without UIA")?;
    http.post(&path, Some(&alice.token), body)
        .await?
        .expect_ok()
        .context("re-uploading the same keys, without UIA")?;
    let master = stored_cross_signing_key(&http, &alice.token, alice_id, "master_keys").await?;
    ensure!(
        public_key_of(&master) == Some(keys.master.public_key()),
        "the uploaded master key is published: {master:?}"
    );

    // Replacing them without UIA: 401 with a password flow; nothing changes.
    let new_keys = CrossSigningKeys::generate();
    let r = http
        .post(&path, Some(&alice.token), new_keys.upload_body(alice_id)?)
        .await?;
    ensure!(
        r.status == 401
            && r.json["session"].is_string()
            && r.json["flows"].as_array().is_some_and(|flows| flows
                .iter()
                .any(|f| f["stages"] == json!(["m.login.password"]))),
        "replacing cross-signing keys without UIA must answer 401 with a password flow: {} {}",
        r.status,
        r.text
    );
    // A wrong password does not do it either.
    let mut wrong = new_keys.upload_body(alice_id)?;
    wrong["auth"] = Http::password_auth(alice_id, "not-the-password", r.json["session"].as_str());
    let r = http.post(&path, Some(&alice.token), wrong).await?;
    ensure!(
        r.status == 401 && r.errcode() == Some("M_FORBIDDEN"),
        "a wrong UIA password answers 401 M_FORBIDDEN: {} {}",
        r.status,
        r.text
    );
    // With the password but a forged self-signing key: refused.
    let mut forged_replacement = new_keys.upload_body(alice_id)?;
    let mut forged_ssk = cross_signing_key(alice_id, "self_signing", &new_keys.self_signing, None)?;
    forged_ssk["signatures"] =
        json!({alice_id: {new_keys.master.key_id(): impostor.signature(&forged_ssk)?}});
    forged_replacement["self_signing_key"] = forged_ssk;
    http.call_with_password_uia(
        "POST",
        &path,
        &alice.token,
        forged_replacement,
        alice_id,
        &password_for("alice"),
    )
    .await?
    .expect_error_in(400, &["M_INVALID_SIGNATURE", "M_INVALID_PARAM"])
    .context("a replacement with a forged self-signing key, with UIA")?;
    for (field, key) in [
        ("master_keys", &keys.master),
        ("self_signing_keys", &keys.self_signing),
        ("user_signing_keys", &keys.user_signing),
    ] {
        let stored = stored_cross_signing_key(&http, &alice.token, alice_id, field).await?;
        ensure!(
            public_key_of(&stored) == Some(key.public_key()),
            "refused replacements leave Alice's {field} as it was: {stored:?}"
        );
    }
    http.assert_alive().await?;

    // With the password and valid keys, the replacement goes through.
    http.call_with_password_uia(
        "POST",
        &path,
        &alice.token,
        new_keys.upload_body(alice_id)?,
        alice_id,
        &password_for("alice"),
    )
    .await?
    .expect_ok()
    .context("replacing cross-signing keys with UIA")?;
    let master = stored_cross_signing_key(&http, &bob.token, alice_id, "master_keys").await?;
    let ssk = stored_cross_signing_key(&http, &bob.token, alice_id, "self_signing_keys").await?;
    ensure!(
        public_key_of(&master) == Some(new_keys.master.public_key())
            && public_key_of(&ssk) == Some(new_keys.self_signing.public_key()),
        "Bob sees Alice's new keys: {master:?} {ssk:?}"
    );
    Ok(())
}

/// A signature that does not verify is reported in `failures` (200) and not
/// published; a valid one in the same request is.
#[tokio::test(flavor = "multi_thread")]
async fn bogus_signatures_are_reported_as_failures() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    http.register("alice", &password_for("alice")).await?;
    http.register("bob", &password_for("bob")).await?;
    let alice = FakeDevice::login(&http, "alice").await?;
    let tablet = FakeDevice::login(&http, "alice").await?;
    let bob = FakeDevice::login(&http, "bob").await?;
    let alice_id = alice.user_id.as_str();
    for device in [&alice, &tablet] {
        device
            .upload(&http, json!({"device_keys": device.device_keys()?}))
            .await?
            .expect_ok()?;
    }
    let keys = CrossSigningKeys::generate();
    http.post(
        &format!("{V3}/keys/device_signing/upload"),
        Some(&alice.token),
        keys.upload_body(alice_id)?,
    )
    .await?
    .expect_ok()
    .context("Alice's cross-signing keys")?;

    // The device keys of the first device "signed" by her self-signing key
    // with another key, and the tablet's keys signed for real.
    let impostor = SigningKey::cross_signing();
    let mut forged = alice.device_keys()?;
    let forged_signature = impostor.signature(&forged)?;
    forged["signatures"][alice_id][keys.self_signing.key_id()] = json!(forged_signature);
    let mut genuine = tablet.device_keys()?;
    keys.self_signing.sign(alice_id, &mut genuine)?;
    let r = http
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.token),
            json!({alice_id: {&alice.device_id: forged, &tablet.device_id: genuine}}),
        )
        .await?;
    r.expect_ok()
        .context("signature upload with one bogus signature")?;
    ensure!(
        r.json["failures"][alice_id][&alice.device_id]["errcode"] == "M_INVALID_SIGNATURE",
        "the bogus signature is reported as M_INVALID_SIGNATURE: {}",
        r.text
    );
    ensure!(
        r.json["failures"][alice_id]
            .get(&tablet.device_id)
            .is_none(),
        "the genuine signature is not a failure: {}",
        r.text
    );
    // A signature on a device that does not exist fails too.
    let mut ghost = alice.device_keys()?;
    ghost["device_id"] = json!("GHOSTDEVICE");
    keys.self_signing.sign(alice_id, &mut ghost)?;
    let r = http
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.token),
            json!({alice_id: {"GHOSTDEVICE": ghost}}),
        )
        .await?;
    r.expect_ok()?;
    ensure!(
        r.json["failures"][alice_id]["GHOSTDEVICE"]["errcode"].is_string(),
        "a signature for an unknown device is a failure: {}",
        r.text
    );

    // What Bob sees: the genuine signature, not the bogus one.
    let query = http.query_keys_ok(&bob.token, &[alice_id]).await?;
    let devices = queried_devices(&query, alice_id);
    let first = devices
        .get(&alice.device_id)
        .context("Alice's first device")?;
    ensure!(
        first["signatures"][alice_id]
            .get(keys.self_signing.key_id())
            .is_none(),
        "the bogus signature must not be published: {first}"
    );
    ensure!(
        *first == alice.device_keys()?,
        "the first device's keys are unchanged: {first}"
    );
    let tablet_keys = devices.get(&tablet.device_id).context("the tablet")?;
    verify_signature(
        tablet_keys,
        alice_id,
        keys.self_signing.key_id(),
        &keys.self_signing.public_key(),
    )
    .context("the genuine signature is published")?;
    ensure!(
        !devices.contains_key("GHOSTDEVICE"),
        "no device appears out of a signature upload: {query}"
    );
    http.assert_alive().await?;
    Ok(())
}

/// A to-device message over 64 KiB is refused (413) even when the request
/// is within the server's body limit, and nothing of that request is
/// delivered; messages for unknown users or devices are accepted and
/// dropped; malformed bodies are refused.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_misaddressed_to_device_messages() -> Result<()> {
    let server = TestServer::start_with(ServerOptions {
        max_request_bytes: Some(4 << 20),
        ..Default::default()
    })
    .await?;
    let http = server.http();
    let (_, alice_token) = http.register("alice", &password_for("alice")).await?;
    http.register("bob", &password_for("bob")).await?;
    let phone = FakeDevice::login(&http, "bob").await?;
    let laptop = FakeDevice::login(&http, "bob").await?;
    let bob_id = phone.user_id.clone();
    let mut phone_sync = RawSync::new(&http, &phone.token, "bob's phone");
    let mut laptop_sync = RawSync::new(&http, &laptop.token, "bob's laptop");
    phone_sync.catch_up().await?;
    laptop_sync.catch_up().await?;
    const TYPE: &str = "org.bellwire.test.blob";

    // 70 000 bytes of content for the phone, a small note for the laptop.
    let big = json!({"tag": "too-big", "blob": "x".repeat(70_000)});
    http.send_to_device(
        &alice_token,
        TYPE,
        "big-1",
        json!({&bob_id: {&phone.device_id: big, &laptop.device_id: {"tag": "beside-too-big"}}}),
    )
    .await?
    .expect_error(413, "M_TOO_LARGE")
    .context("a to-device message with 70 000 bytes of content")?;
    http.assert_alive().await?;
    // Well under the limit is fine.
    let medium = json!({"tag": "medium", "blob": "y".repeat(32 * 1024)});
    http.send_to_device(
        &alice_token,
        TYPE,
        "medium-1",
        json!({&bob_id: {&phone.device_id: medium}}),
    )
    .await?
    .expect_ok()
    .context("a 32 KiB to-device message")?;

    // Unknown recipients: accepted, delivered nowhere.
    http.send_to_device(
        &alice_token,
        TYPE,
        "nobody-1",
        json!({"@nobody:localhost": {"SOMEDEVICE": {"tag": "nobody"}, "*": {"tag": "nobody-all"}}}),
    )
    .await?
    .expect_ok()
    .context("to-device for an unknown user")?;
    http.send_to_device(
        &alice_token,
        TYPE,
        "ghost-1",
        json!({&bob_id: {"NOSUCHDEVICE": {"tag": "ghost"}}}),
    )
    .await?
    .expect_ok()
    .context("to-device for an unknown device of Bob")?;
    // Malformed bodies.
    for (what, body) in [
        ("messages as a list", json!({"messages": [1, 2]})),
        ("no messages", json!({})),
        (
            "a device's content as a string",
            json!({"messages": {&bob_id: {&phone.device_id: "hi"}}}),
        ),
    ] {
        http.put(
            &format!("{V3}/sendToDevice/{TYPE}/bad-{}", what.len()),
            Some(&alice_token),
            body,
        )
        .await?
        .expect_error(400, "M_BAD_JSON")
        .with_context(|| format!("sendToDevice with {what}"))?;
    }
    http.assert_alive().await?;

    // A marker to both devices; by then each has exactly what it should.
    http.send_to_device(
        &alice_token,
        TYPE,
        "marker-1",
        json!({&bob_id: {"*": {"tag": "marker"}}}),
    )
    .await?
    .expect_ok()?;
    let tags = |sync: &RawSync| -> Vec<String> {
        sync.responses
            .iter()
            .flat_map(|r| to_device_events(r))
            .filter(|e| e["type"] == TYPE)
            .filter_map(|e| e["content"]["tag"].as_str().map(str::to_owned))
            .collect()
    };
    phone_sync
        .until("the marker on the phone", |r| {
            to_device_events(r)
                .into_iter()
                .any(|e| e["content"]["tag"] == "marker")
                .then_some(())
        })
        .await?;
    laptop_sync
        .until("the marker on the laptop", |r| {
            to_device_events(r)
                .into_iter()
                .any(|e| e["content"]["tag"] == "marker")
                .then_some(())
        })
        .await?;
    ensure!(
        tags(&phone_sync) == ["medium", "marker"],
        "the phone gets the medium message and the marker only: {:?}",
        tags(&phone_sync)
    );
    ensure!(
        tags(&laptop_sync) == ["marker"],
        "the laptop gets only the marker (nothing from the refused request): {:?}",
        tags(&laptop_sync)
    );
    Ok(())
}
