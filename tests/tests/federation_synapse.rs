//! Federation with Synapse, the reference homeserver: a Bellwire and a
//! Synapse on loopback, each named `localhost:PORT` and presenting a
//! certificate from the same throw-away CA, share rooms. Their users only
//! talk to their own server through matrix-sdk clients; everything that
//! crosses over goes through the server-server API.
//!
//! Synapse comes from the venv of `scripts/install-synapse.sh`
//! (`BELLWIRE_SYNAPSE_PYTHON`); without it these tests fail and say so.
//! When a story fails, the tail of both servers' logs is printed.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use bellwire_tests::{
    MEGOLM, Mxc, RawSync, TestServer, User, WAIT, assert_encrypted_on_the_wire, enc, eventually,
    federation::{Federation, now_ms, port_of},
    synapse::SynapseServer,
    test_image, wait_until_device_known,
};
use image::ImageFormat;
use matrix_sdk::{
    RoomState,
    ruma::{
        OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
        api::client::{
            receipt::create_receipt::v3::ReceiptType,
            room::create_room::{self, v3::RoomPreset},
        },
        events::{
            receipt::ReceiptThread,
            room::message::{ImageMessageEventContent, MessageType, RoomMessageEventContent},
        },
    },
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------------

/// A federating Bellwire and a Synapse trusting the same test CA.
struct Pair {
    bellwire: TestServer,
    synapse: SynapseServer,
    /// Owns the CA and Bellwire's certificate files; declared last so it is
    /// dropped after both servers have stopped (fields drop in order).
    federation: Federation,
}

impl Pair {
    async fn start() -> Result<Self> {
        let federation = Federation::new()?;
        let bellwire = federation.start_server("bellwire").await?;
        let synapse = SynapseServer::start(federation.ca()).await?;
        Ok(Self {
            bellwire,
            synapse,
            federation,
        })
    }

    /// Passes `result` through; on failure first prints what both servers
    /// logged, so the federation request that went wrong can be read off.
    fn report(&self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            let bw = self.bellwire.stderr_log();
            let bw_lines: Vec<&str> = bw.lines().collect();
            eprintln!(
                "---- Bellwire {} stderr ({}), last 150 lines ----\n{}\n\
                 ---- Synapse {} homeserver.log ({}), last 150 lines ----\n{}\n---- end ----",
                self.bellwire.server_name(),
                self.bellwire.stderr_path().display(),
                bw_lines[bw_lines.len().saturating_sub(150)..].join("\n"),
                self.synapse.server_name(),
                self.synapse.log_path().display(),
                self.synapse.log_tail(150),
            );
        }
        result
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `content` of `room`'s `m.room.create` event as `user`'s own server has it.
async fn create_content(user: &User, room: &RoomId) -> Result<Value> {
    let r = user
        .http()
        .state(&user.access_token(), room.as_str(), "m.room.create", "")
        .await?;
    r.expect_ok()
        .with_context(|| format!("{}'s server: m.room.create of {room}", user.user_id))?;
    Ok(r.json)
}

/// `room`'s version as `user`'s server reports it (`"1"` when absent).
async fn room_version(user: &User, room: &RoomId) -> Result<String> {
    let content = create_content(user, room).await?;
    Ok(content
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1")
        .to_owned())
}

/// Polls `user`'s server until it lists exactly `want` as joined to `room`.
async fn wait_for_joined_members(user: &User, room: &RoomId, want: &[&UserId]) -> Result<()> {
    let want: BTreeSet<String> = want.iter().map(|u| u.to_string()).collect();
    let mut last = BTreeSet::new();
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        match user.joined_members(room).await {
            Ok(members) if members == want => return Ok(()),
            Ok(members) => last = members,
            Err(_) => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "{}'s server never listed {want:?} as the joined members of {room}; last answer {last:?}",
        user.user_id
    )
}

/// Syncs `user` until their membership event for `member` in `room` says
/// `membership`.
async fn wait_for_membership(
    user: &User,
    room: &RoomId,
    member: &UserId,
    membership: &str,
) -> Result<()> {
    user.sync_until(&format!("{member}'s {membership} in {room}"), |s| {
        s.membership(room, member).as_deref() == Some(membership)
    })
    .await
}

/// The `m.room.name` of an invite's stripped state.
fn invite_room_name(stripped: &[Value]) -> Option<&str> {
    stripped
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .and_then(|e| e.pointer("/content/name"))
        .and_then(Value::as_str)
}

/// Creates a private room named `name` (room version `version`, or the
/// server's default) inviting `guests`; returns its id.
async fn create_room(
    owner: &User,
    name: &str,
    version: Option<RoomVersionId>,
    guests: &[&User],
) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some(name.to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.room_version = version;
    request.invite = guests.iter().map(|g| g.user_id.clone()).collect();
    let room = owner
        .client
        .create_room(request)
        .await
        .with_context(|| format!("{} creating room {name:?}", owner.user_id))?;
    Ok(room.room_id().to_owned())
}

/// `guest` receives the invite to `room` (named `name`) from `host`, joins
/// (through the host's server), and both servers then list both as joined.
async fn accept_invite(host: &User, guest: &User, room: &RoomId, name: &str) -> Result<()> {
    let stripped = guest
        .wait_for_invite(room)
        .await
        .with_context(|| format!("{}'s invite crossing to {}", host.user_id, guest.user_id))?;
    ensure!(
        invite_room_name(&stripped) == Some(name),
        "{}'s invite does not show the room name {name:?}; stripped state: {stripped:#?}",
        guest.user_id
    );
    guest.join(room).await?;
    wait_for_membership(host, room, &guest.user_id, "join")
        .await
        .with_context(|| format!("{} seeing {}'s join", host.user_id, guest.user_id))?;
    let both = [&*host.user_id, &*guest.user_id];
    wait_for_joined_members(host, room, &both).await?;
    wait_for_joined_members(guest, room, &both).await?;
    Ok(())
}

/// `a` says `to_b`, `b` reads it; `b` answers `to_a`, `a` reads it. Both
/// timelines end up with the two messages in that order.
async fn chat(room: &RoomId, a: &User, to_b: &str, b: &User, to_a: &str) -> Result<()> {
    a.send_text(room, to_b).await?;
    b.wait_for_text(room, &a.user_id, to_b)
        .await
        .with_context(|| format!("{to_b:?} crossing from {} to {}", a.user_id, b.user_id))?;
    b.send_text(room, to_a).await?;
    a.wait_for_text(room, &b.user_id, to_a)
        .await
        .with_context(|| format!("{to_a:?} crossing from {} to {}", b.user_id, a.user_id))?;
    // Each also gets their own message back through sync, after the
    // other's for b and before it for a.
    a.wait_for_text(room, &a.user_id, to_b).await?;
    b.wait_for_text(room, &b.user_id, to_a).await?;
    for user in [a, b] {
        let texts: Vec<String> = user
            .seen()
            .texts(room)
            .into_iter()
            .map(|(_, body)| body)
            .collect();
        let first = texts.iter().position(|t| t == to_b);
        let second = texts.iter().position(|t| t == to_a);
        ensure!(
            matches!((first, second), (Some(f), Some(s)) if f < s),
            "{} should see {to_b:?} before {to_a:?}, saw {texts:?}",
            user.user_id
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The servers find each other
// ---------------------------------------------------------------------------

/// Before any room is shared: each server publishes its signing key over
/// TLS with a certificate from the test CA, and Synapse, asked as a notary,
/// fetches Bellwire's key itself and returns the same key Bellwire publishes
/// (so Synapse's outbound federation reaches Bellwire and trusts its
/// certificate).
#[tokio::test(flavor = "multi_thread")]
async fn synapse_and_bellwire_fetch_each_others_signing_keys() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let client = pair.federation.https_client()?;
        let bw_name = pair.bellwire.server_name().to_owned();
        let bw_port = port_of(&bw_name)?;

        let own: Value = client
            .get(format!("https://localhost:{bw_port}/_matrix/key/v2/server"))
            .send()
            .await
            .context("GET Bellwire's /_matrix/key/v2/server over TLS")?
            .json()
            .await?;
        ensure!(
            own["server_name"] == bw_name.as_str(),
            "Bellwire's key answer: {own}"
        );
        let bw_keys = own["verify_keys"]
            .as_object()
            .context("Bellwire publishes no verify_keys")?
            .clone();
        ensure!(
            !bw_keys.is_empty(),
            "Bellwire publishes no verify_keys: {own}"
        );

        let synapse_keys: Value = client
            .get(format!(
                "{}/_matrix/key/v2/server",
                pair.synapse.federation_url()
            ))
            .send()
            .await
            .context("GET Synapse's /_matrix/key/v2/server over TLS")?
            .json()
            .await?;
        ensure!(
            synapse_keys["server_name"] == pair.synapse.server_name(),
            "Synapse's key answer: {synapse_keys}"
        );

        // Naming the key ids makes Synapse fetch what it has not cached.
        let query = format!("{}/_matrix/key/v2/query", pair.synapse.federation_url());
        let wanted: serde_json::Map<String, Value> = bw_keys
            .keys()
            .map(|id| (id.clone(), json!({"minimum_valid_until_ts": now_ms()})))
            .collect();
        let r = client
            .post(&query)
            .json(&json!({"server_keys": {bw_name.as_str(): wanted}}))
            .send()
            .await
            .with_context(|| format!("POST {query}"))?;
        let status = r.status();
        let notary: Value = r
            .json()
            .await
            .context("Synapse's notary answer is not JSON")?;
        ensure!(status == 200, "POST {query}: {status} {notary}");
        let fetched = notary["server_keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["server_name"] == bw_name.as_str()))
            .with_context(|| {
                format!(
                    "Synapse could not fetch Bellwire's keys: {notary}; Synapse log about \
                     {bw_name}: {:#?}",
                    pair.synapse.log_lines_with(&bw_name)
                )
            })?;
        for (key_id, key) in &bw_keys {
            ensure!(
                fetched["verify_keys"][key_id] == *key,
                "Synapse's copy of Bellwire's key {key_id} differs: {fetched} vs {own}"
            );
        }
        ensure!(
            fetched["signatures"][bw_name.as_str()].is_object()
                && fetched["signatures"][pair.synapse.server_name()].is_object(),
            "the notary answer carries Bellwire's own signature and Synapse's: {fetched}"
        );
        Ok(())
    }
    .await;
    pair.report(result)
}

// ---------------------------------------------------------------------------
// Rooms shared across the two servers
// ---------------------------------------------------------------------------

/// Alice on Bellwire opens a room (Bellwire's default version, 12) and
/// invites Bob on Synapse. Bob sees the invite with the room's name, joins
/// through Bellwire, and both servers agree who is in the room and on its
/// version. They exchange messages, then Bob leaves and Alice sees him go.
#[tokio::test(flavor = "multi_thread")]
async fn a_synapse_user_joins_a_bellwire_room_chats_and_leaves() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let alice = pair.bellwire.new_user("alice").await?;
        let bob = pair.synapse.new_user("bob").await?;
        ensure!(
            bob.user_id == pair.synapse.user_id("bob"),
            "{}",
            bob.user_id
        );

        let name = "Harbour Watch";
        let room = create_room(&alice, name, None, &[&bob]).await?;
        ensure!(
            room_version(&alice, &room).await? == "12",
            "Bellwire's default room version should be 12: {}",
            create_content(&alice, &room).await?
        );
        accept_invite(&alice, &bob, &room, name).await?;
        ensure!(
            room_version(&bob, &room).await? == "12",
            "Synapse's copy of the room has another version: {}",
            create_content(&bob, &room).await?
        );
        ensure!(
            create_content(&bob, &room).await? == create_content(&alice, &room).await?,
            "the servers disagree on the room's m.room.create content"
        );

        chat(
            &room,
            &alice,
            "Bob, the fog is coming in over the harbour.",
            &bob,
            "I'll light the lamp on the north pier.",
        )
        .await?;
        // A second exchange, after the servers have talked once already.
        chat(
            &room,
            &bob,
            "Lamp is lit.",
            &alice,
            "Thanks, I can see it from here.",
        )
        .await?;

        bob.room(&room)?
            .leave()
            .await
            .with_context(|| format!("{} leaving {room}", bob.user_id))?;
        wait_for_membership(&alice, &room, &bob.user_id, "leave")
            .await
            .context("Alice seeing Bob's leave")?;
        wait_for_joined_members(&alice, &room, &[&alice.user_id]).await?;
        bob.sync_until(&format!("{room} in Bob's left rooms"), |s| {
            s.left.contains(&room)
        })
        .await?;
        Ok(())
    }
    .await;
    pair.report(result)
}

/// Carol on Synapse opens a room (Synapse's default version, 12) and
/// invites Dave on Bellwire. Dave joins through Synapse, they talk both
/// ways, then Dave leaves and Carol sees him go.
#[tokio::test(flavor = "multi_thread")]
async fn a_bellwire_user_joins_a_synapse_room_chats_and_leaves() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let carol = pair.synapse.new_user("carol").await?;
        let dave = pair.bellwire.new_user("dave").await?;
        ensure!(
            dave.user_id == pair.bellwire.user_id("dave"),
            "{}",
            dave.user_id
        );

        let name = "Lighthouse Keepers";
        let room = create_room(&carol, name, None, &[&dave]).await?;
        ensure!(
            room_version(&carol, &room).await? == "12",
            "Synapse's default room version should be 12: {}",
            create_content(&carol, &room).await?
        );
        accept_invite(&carol, &dave, &room, name).await?;
        ensure!(
            create_content(&dave, &room).await? == create_content(&carol, &room).await?,
            "the servers disagree on the room's m.room.create content: Bellwire {}, Synapse {}",
            create_content(&dave, &room).await?,
            create_content(&carol, &room).await?
        );
        // The room's name came over with the join's state.
        let r = dave
            .http()
            .state(&dave.access_token(), room.as_str(), "m.room.name", "")
            .await?;
        r.expect_ok().context("Bellwire's copy of m.room.name")?;
        ensure!(r.json["name"] == name, "Bellwire's m.room.name: {}", r.text);

        chat(
            &room,
            &carol,
            "Dave, welcome aboard. The logbook is on the desk.",
            &dave,
            "Found it, signing in now.",
        )
        .await?;
        chat(
            &room,
            &dave,
            "Storm warning for tonight.",
            &carol,
            "Noted, shutters closed.",
        )
        .await?;

        dave.room(&room)?
            .leave()
            .await
            .with_context(|| format!("{} leaving {room}", dave.user_id))?;
        wait_for_membership(&carol, &room, &dave.user_id, "leave")
            .await
            .context("Carol seeing Dave's leave")?;
        wait_for_joined_members(&carol, &room, &[&carol.user_id]).await?;
        dave.sync_until(&format!("{room} in Dave's left rooms"), |s| {
            s.left.contains(&room)
        })
        .await?;
        Ok(())
    }
    .await;
    pair.report(result)
}

/// An older room version still in wide use: Erin on Synapse opens a
/// version 10 room (room ids with a server part, event ids by reference
/// hash, create event with `creator`) and Frank on Bellwire joins and chats.
#[tokio::test(flavor = "multi_thread")]
async fn a_bellwire_user_chats_in_a_version_10_room_on_synapse() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let erin = pair.synapse.new_user("erin").await?;
        let frank = pair.bellwire.new_user("frank").await?;
        let name = "Old Quay";
        let room = create_room(&erin, name, Some(RoomVersionId::V10), &[&frank]).await?;
        ensure!(
            room.server_name().map(|s| s.as_str()) == Some(pair.synapse.server_name()),
            "a version 10 room id names its server: {room}"
        );
        accept_invite(&erin, &frank, &room, name).await?;
        ensure!(
            room_version(&frank, &room).await? == "10",
            "Bellwire's copy of the room: {}",
            create_content(&frank, &room).await?
        );
        chat(
            &room,
            &frank,
            "Is the old quay still in use?",
            &erin,
            "Only by the fishing boats.",
        )
        .await
    }
    .await;
    pair.report(result)
}

// ---------------------------------------------------------------------------
// End-to-end encryption across servers
// ---------------------------------------------------------------------------

/// Grace on Bellwire opens an encrypted DM with Heidi on Synapse. Each
/// client learns the other's device across the federation (device lists,
/// key queries and one-time key claims), the room key travels as to-device
/// messages between the servers, and each side decrypts the other's
/// message; both servers only ever hold ciphertext.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_dm_between_bellwire_and_synapse_users() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let grace = pair.bellwire.new_user("grace").await?;
        let heidi = pair.synapse.new_user("heidi").await?;

        let room = grace
            .client
            .create_dm(&heidi.user_id)
            .await
            .context("Grace creating an encrypted DM with Heidi")?
            .room_id()
            .to_owned();
        heidi.wait_for_invite(&room).await?;
        heidi.join(&room).await?;
        wait_for_membership(&grace, &room, &heidi.user_id, "join").await?;
        let r = heidi
            .http()
            .state(
                &heidi.access_token(),
                room.as_str(),
                "m.room.encryption",
                "",
            )
            .await?;
        r.expect_ok()
            .context("Synapse's copy of m.room.encryption")?;
        ensure!(
            r.json["algorithm"] == MEGOLM,
            "Synapse's m.room.encryption: {}",
            r.text
        );

        wait_until_device_known(&grace, &heidi.user_id, &heidi.device_id()).await?;
        wait_until_device_known(&heidi, &grace.user_id, &grace.device_id()).await?;

        let question = "Heidi, the spare key is under the third flowerpot.";
        let question_id = grace.send_text(&room, question).await?;
        heidi
            .wait_for_decrypted_text(&room, &grace.user_id, question)
            .await
            .context("Heidi decrypting Grace's message")?;
        assert_encrypted_on_the_wire(&heidi, &room, &question_id, question).await?;
        assert_encrypted_on_the_wire(&grace, &room, &question_id, question).await?;

        let answer = "Got it. I'll water the plants while I'm there.";
        let answer_id = heidi.send_text(&room, answer).await?;
        grace
            .wait_for_decrypted_text(&room, &heidi.user_id, answer)
            .await
            .context("Grace decrypting Heidi's answer")?;
        assert_encrypted_on_the_wire(&grace, &room, &answer_id, answer).await?;

        ensure!(
            grace.seen().undecryptable(&room).is_empty()
                && heidi.seen().undecryptable(&room).is_empty(),
            "undecryptable events: Grace {:#?}, Heidi {:#?}",
            grace.seen().undecryptable(&room),
            heidi.seen().undecryptable(&room)
        );
        Ok(())
    }
    .await;
    pair.report(result)
}

// ---------------------------------------------------------------------------
// More of what users do in shared rooms
// ---------------------------------------------------------------------------

/// `host` creates a private room named `name` inviting `guest`, who joins.
async fn shared_room(host: &User, guest: &User, name: &str) -> Result<OwnedRoomId> {
    let room = create_room(host, name, None, &[guest]).await?;
    accept_invite(host, guest, &room, name).await?;
    Ok(room)
}

/// Ivan on Bellwire and Judy on Synapse share a room: each sees the other
/// start and stop typing, and each sees the other's read receipt on their
/// message (typing and receipt EDUs, both directions).
#[tokio::test(flavor = "multi_thread")]
async fn typing_and_read_receipts_cross_between_bellwire_and_synapse() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let ivan = pair.bellwire.new_user("ivan").await?;
        let judy = pair.synapse.new_user("judy").await?;
        let room_id = shared_room(&ivan, &judy, "Signal Box").await?;
        let room = room_id.as_str();
        let (ivan_id, judy_id) = (ivan.user_id.to_string(), judy.user_id.to_string());
        let mut ivan_sync = ivan.raw_sync();
        ivan_sync.catch_up().await?;
        let mut judy_sync = judy.raw_sync();
        judy_sync.catch_up().await?;

        ivan.room(&room_id)?.typing_notice(true).await?;
        judy_sync
            .until("m.typing naming Ivan (from Bellwire)", |r| {
                RawSync::typing_users(r, room).filter(|u| u.contains(&ivan_id))
            })
            .await?;
        ivan.room(&room_id)?.typing_notice(false).await?;
        judy_sync
            .until("Ivan to stop typing", |r| {
                RawSync::typing_users(r, room).filter(|u| !u.contains(&ivan_id))
            })
            .await?;
        judy.room(&room_id)?.typing_notice(true).await?;
        ivan_sync
            .until("m.typing naming Judy (from Synapse)", |r| {
                RawSync::typing_users(r, room).filter(|u| u.contains(&judy_id))
            })
            .await?;
        judy.room(&room_id)?.typing_notice(false).await?;
        ivan_sync
            .until("Judy to stop typing", |r| {
                RawSync::typing_users(r, room).filter(|u| !u.contains(&judy_id))
            })
            .await?;

        let signal = "Down train approaching, set the points.";
        let signal_id = ivan.send_text(&room_id, signal).await?;
        judy.wait_for_text(&room_id, &ivan.user_id, signal).await?;
        judy.room(&room_id)?
            .send_single_receipt(
                ReceiptType::Read,
                ReceiptThread::Unthreaded,
                OwnedEventId::try_from(signal_id.as_str())?,
            )
            .await
            .context("Judy's read receipt on Ivan's message")?;
        let receipt = ivan_sync
            .until(
                "Judy's m.read receipt on Ivan's message (from Synapse)",
                |r| RawSync::read_receipt(r, room, &signal_id, &judy_id),
            )
            .await?;
        ensure!(
            receipt["ts"].as_u64().is_some_and(|ts| ts > 0),
            "the receipt carries a timestamp: {receipt}"
        );

        let reply = "Points set, line clear.";
        let reply_id = judy.send_text(&room_id, reply).await?;
        ivan.wait_for_text(&room_id, &judy.user_id, reply).await?;
        ivan.room(&room_id)?
            .send_single_receipt(
                ReceiptType::Read,
                ReceiptThread::Unthreaded,
                OwnedEventId::try_from(reply_id.as_str())?,
            )
            .await
            .context("Ivan's read receipt on Judy's reply")?;
        judy_sync
            .until(
                "Ivan's m.read receipt on Judy's reply (from Bellwire)",
                |r| RawSync::read_receipt(r, room, &reply_id, &ivan_id),
            )
            .await?;
        Ok(())
    }
    .await;
    pair.report(result)
}

/// After `user` declined the invitation to `room`, their server no longer
/// offers it: neither a fresh initial sync nor the client's own sync shows
/// it as an invitation.
async fn invitation_is_gone(user: &User, room: &RoomId) -> Result<()> {
    user.sync_once().await?;
    let state = user.client.get_room(room).map(|r| r.state());
    ensure!(
        state != Some(RoomState::Invited),
        "{}'s client still shows the declined invitation to {room}",
        user.user_id
    );
    let initial = user.raw_sync().once(0).await?;
    ensure!(
        initial
            .pointer(&format!(
                "/rooms/invite/{}",
                room.as_str().replace('~', "~0").replace('/', "~1")
            ))
            .is_none(),
        "{}'s initial sync still offers the declined invitation to {room}: {}",
        user.user_id,
        initial["rooms"]["invite"]
    );
    Ok(())
}

/// Invitations can be declined across servers: Bob on Synapse declines
/// Alice's invitation to a Bellwire room, and Alice on Bellwire declines
/// Bob's invitation to a Synapse room. Each inviter sees the decline,
/// neither room counts the decliner as a member, and the decliner's own
/// server stops offering the invitation.
#[tokio::test(flavor = "multi_thread")]
async fn invitations_are_declined_across_servers() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let alice = pair.bellwire.new_user("alice").await?;
        let bob = pair.synapse.new_user("bob").await?;

        let night = create_room(&alice, "Night Shift", None, &[&bob]).await?;
        bob.wait_for_invite(&night).await?;
        bob.room(&night)?
            .leave()
            .await
            .context("Bob declining Alice's invitation")?;
        wait_for_membership(&alice, &night, &bob.user_id, "leave")
            .await
            .context("Alice seeing Bob decline")?;
        wait_for_joined_members(&alice, &night, &[&alice.user_id]).await?;
        invitation_is_gone(&bob, &night).await?;

        let day = create_room(&bob, "Day Shift", None, &[&alice]).await?;
        alice.wait_for_invite(&day).await?;
        alice
            .room(&day)?
            .leave()
            .await
            .context("Alice declining Bob's invitation")?;
        wait_for_membership(&bob, &day, &alice.user_id, "leave")
            .await
            .context("Bob seeing Alice decline")?;
        wait_for_joined_members(&bob, &day, &[&bob.user_id]).await?;
        invitation_is_gone(&alice, &day).await?;
        Ok(())
    }
    .await;
    pair.report(result)
}

/// Carol on Synapse has been keeping a log in her room before she invites
/// Dave on Bellwire. The room shares its history with members, so once Dave
/// has joined, scrolling back shows him the entries written before he
/// arrived (Bellwire backfills them from Synapse), in order, followed by
/// what is said after.
#[tokio::test(flavor = "multi_thread")]
async fn a_bellwire_user_who_joins_late_reads_the_earlier_history() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let carol = pair.synapse.new_user("carol").await?;
        let dave = pair.bellwire.new_user("dave").await?;
        let room = create_room(&carol, "Ship's Log", None, &[]).await?;
        let entries = [
            "06:00 Left harbour, wind north-west.",
            "09:30 Passed the lighthouse.",
            "12:00 Anchored in the bay for lunch.",
        ];
        for entry in entries {
            carol.send_text(&room, entry).await?;
        }
        carol
            .room(&room)?
            .invite_user_by_id(&dave.user_id)
            .await
            .context("Carol inviting Dave")?;
        accept_invite(&carol, &dave, &room, "Ship's Log").await?;
        let later = "15:00 Dave is aboard.";
        carol.send_text(&room, later).await?;
        dave.wait_for_text(&room, &carol.user_id, later).await?;

        let want: Vec<&str> = entries.iter().copied().chain([later]).collect();
        let http = dave.http();
        let token = dave.access_token();
        let last = std::sync::Mutex::new(Vec::new());
        let found = eventually("Dave's scrollback to show the whole log", || {
            let (http, token, room, want, last) = (&http, &token, &room, &want, &last);
            async move {
                let bodies: Vec<String> = http
                    .all_messages(token, room.as_str())
                    .await?
                    .iter()
                    .filter_map(|e| e.pointer("/content/body")?.as_str().map(str::to_owned))
                    .collect();
                let done = bodies == *want;
                *last.lock().unwrap() = bodies;
                Ok(done)
            }
        })
        .await;
        found.with_context(|| {
            format!(
                "Dave's /messages on Bellwire shows {:?}, Carol's log is {want:?}",
                last.lock().unwrap()
            )
        })
    }
    .await;
    pair.report(result)
}

/// `sender` uploads `bytes` (a PNG) to their server and sends it as an
/// `m.image` in `room`; returns its content URI.
async fn send_picture(sender: &User, room: &RoomId, bytes: Vec<u8>, name: &str) -> Result<Mxc> {
    let uploaded = sender
        .client
        .media()
        .upload(&"image/png".parse()?, bytes, None)
        .await
        .with_context(|| format!("{} uploading {name}", sender.user_id))?;
    let mxc = Mxc::parse(uploaded.content_uri.as_str())?;
    ensure!(
        mxc.server_name == sender.user_id.server_name().as_str(),
        "{}'s upload got a content URI of another server: {mxc}",
        sender.user_id
    );
    sender
        .room(room)?
        .send(RoomMessageEventContent::new(MessageType::Image(
            ImageMessageEventContent::plain(name.to_owned(), uploaded.content_uri),
        )))
        .await
        .with_context(|| format!("{} sending {name}", sender.user_id))?;
    Ok(mxc)
}

/// `receiver` gets the `m.image` named `name` through sync, and downloads
/// the picture it points at from their own server, which fetches it from
/// the sender's over federation; returns the bytes.
async fn receive_picture(receiver: &User, room: &RoomId, name: &str, mxc: &Mxc) -> Result<Vec<u8>> {
    let is_it = |e: &bellwire_tests::SeenEvent| {
        e.room_id == room
            && e.json.pointer("/content/msgtype") == Some(&json!("m.image"))
            && e.json.pointer("/content/body") == Some(&json!(name))
    };
    receiver
        .sync_until(&format!("the m.image {name:?}"), |s| {
            s.events.iter().any(is_it)
        })
        .await?;
    let seen = receiver.seen();
    let event = seen.events.iter().find(|e| is_it(e)).expect("just seen");
    ensure!(
        event.json.pointer("/content/url") == Some(&json!(mxc.to_string())),
        "the m.image does not point at {mxc}: {}",
        event.json
    );
    let path = mxc.download_path();
    let r = receiver
        .http()
        .get_bytes(&path, Some(&receiver.access_token()), &[])
        .await?;
    r.expect_ok().with_context(|| {
        format!(
            "{} downloading {mxc} through their own server ({path})",
            receiver.user_id
        )
    })?;
    ensure!(
        r.header("content-type") == Some("image/png"),
        "remote media keeps its Content-Type: {:?}",
        r.header("content-type")
    );
    Ok(r.body.clone())
}

/// Pictures cross both ways: Kim on Bellwire and Leo on Synapse each send
/// a photo; each downloads the other's from their own server, which fetches
/// it over federation (authenticated media), byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn pictures_cross_between_bellwire_and_synapse() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let kim = pair.bellwire.new_user("kim").await?;
        let leo = pair.synapse.new_user("leo").await?;
        let room = shared_room(&kim, &leo, "Holiday Photos").await?;

        let beach = test_image(320, 240, ImageFormat::Png)?;
        let beach_mxc = send_picture(&kim, &room, beach.clone(), "beach.png").await?;
        let got = receive_picture(&leo, &room, "beach.png", &beach_mxc).await?;
        ensure!(
            got == beach,
            "Leo got {} bytes through Synapse for Kim's {}-byte photo, or different ones",
            got.len(),
            beach.len()
        );

        let hills = test_image(200, 300, ImageFormat::Png)?;
        let hills_mxc = send_picture(&leo, &room, hills.clone(), "hills.png").await?;
        let got = receive_picture(&kim, &room, "hills.png", &hills_mxc).await?;
        ensure!(
            got == hills,
            "Kim got {} bytes through Bellwire for Leo's {}-byte photo, or different ones",
            got.len(),
            hills.len()
        );
        Ok(())
    }
    .await;
    pair.report(result)
}

/// Mallory on Synapse shares a room with Niaj on Bellwire. She says she is
/// online with a status message and Niaj's sync on Bellwire shows it; then
/// he does the same and her sync on Synapse shows his (presence EDUs both
/// ways).
#[tokio::test(flavor = "multi_thread")]
async fn presence_crosses_between_bellwire_and_synapse() -> Result<()> {
    let pair = Pair::start().await?;
    let result = async {
        let niaj = pair.bellwire.new_user("niaj").await?;
        let mallory = pair.synapse.new_user("mallory").await?;
        shared_room(&niaj, &mallory, "Station Master's Office").await?;
        let mut niaj_sync = niaj.raw_sync();
        niaj_sync.catch_up().await?;

        let status = "On the platform until the 5:15";
        let mallory_id = mallory.user_id.as_str();
        mallory
            .http()
            .put(
                &format!("/_matrix/client/v3/presence/{}/status", enc(mallory_id)),
                Some(&mallory.access_token()),
                json!({"presence": "online", "status_msg": status}),
            )
            .await?
            .expect_ok()
            .context("Mallory sets her presence on Synapse")?;
        let ev = niaj_sync
            .until("Mallory's presence (from Synapse)", |r| {
                RawSync::presence_of(r, mallory_id)
                    .into_iter()
                    .find(|e| e["content"]["status_msg"] == status)
                    .cloned()
            })
            .await?;
        ensure!(
            ev["content"]["presence"] == "online",
            "Mallory's presence as Niaj sees it: {ev}"
        );

        let mut mallory_sync = mallory.raw_sync();
        mallory_sync.catch_up().await?;
        let status = "Checking the timetable";
        let niaj_id = niaj.user_id.as_str();
        niaj.http()
            .put(
                &format!("/_matrix/client/v3/presence/{}/status", enc(niaj_id)),
                Some(&niaj.access_token()),
                json!({"presence": "online", "status_msg": status}),
            )
            .await?
            .expect_ok()
            .context("Niaj sets his presence on Bellwire")?;
        let ev = mallory_sync
            .until("Niaj's presence (from Bellwire)", |r| {
                RawSync::presence_of(r, niaj_id)
                    .into_iter()
                    .find(|e| e["content"]["status_msg"] == status)
                    .cloned()
            })
            .await?;
        ensure!(
            ev["content"]["presence"] == "online",
            "Niaj's presence as Mallory sees it: {ev}"
        );
        Ok(())
    }
    .await;
    pair.report(result)
}
