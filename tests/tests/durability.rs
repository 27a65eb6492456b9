//! Durability: what the server acknowledged must survive a graceful restart
//! and a SIGKILL on the same data directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::ExitStatusExt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, TestServer, eventually, password_for};
use matrix_sdk::ruma::api::client::room::create_room::{self, v3::RoomPreset};
use serde_json::{Value, json};

fn texts(messages: &[Value]) -> Vec<(String, String, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m["event_id"].as_str().unwrap_or_default().to_owned(),
                m["sender"].as_str().unwrap_or_default().to_owned(),
                m["content"]["body"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Users, rooms, memberships, messages, account data and access tokens are all
/// still there after a SIGTERM + start on the same data directory, and the
/// room keeps working afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn everything_survives_a_graceful_restart() -> Result<()> {
    let mut server = TestServer::start().await?;
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;

    // A book club room with a conversation in it.
    let mut request = create_room::v3::Request::new();
    request.name = Some("Book club".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id.clone()];
    let room = alice.client.create_room(request).await?;
    let room_id = room.room_id().to_owned();
    bob.wait_for_invite(&room_id).await?;
    bob.join(&room_id).await?;
    let mut sent = Vec::new();
    for i in 0..10 {
        let (speaker, body) = if i % 2 == 0 {
            (&alice, format!("Alice, chapter {i}"))
        } else {
            (&bob, format!("Bob, chapter {i}"))
        };
        let event_id = speaker.send_text(&room_id, &body).await?;
        sent.push((event_id, speaker.user_id.to_string(), body));
    }
    // And a DM, which also writes m.direct account data.
    let dm = alice.client.create_dm(&bob.user_id).await?;
    let dm_id = dm.room_id().to_owned();
    let alice_token = alice.access_token();
    let before = server
        .http()
        .all_messages(&alice_token, room_id.as_str())
        .await?;
    assert_eq!(texts(&before), sent, "sanity: history before the restart");

    let status = server.restart().await?;
    eprintln!("bellwire exited with {status:?} after SIGTERM");
    let http = server.http();

    // Alice's existing access token still works.
    let whoami = http
        .get("/_matrix/client/v3/account/whoami", Some(&alice_token))
        .await?;
    whoami.expect_ok()?;
    assert_eq!(whoami.json["user_id"], alice.user_id.as_str());

    // Both can log in again, by full user id and by localpart; a wrong
    // password is still refused.
    let alice2 = server
        .login(alice.user_id.as_str(), &password_for("alice"))
        .await?;
    let bob2 = server.login("bob", &password_for("bob")).await?;
    http.login("alice", "not-her-password")
        .await?
        .expect_error(403, "M_FORBIDDEN")?;

    // Rooms and memberships are still there.
    let alice_rooms: BTreeSet<String> = http
        .joined_rooms(&alice2.access_token())
        .await?
        .into_iter()
        .collect();
    assert!(
        alice_rooms.contains(room_id.as_str()) && alice_rooms.contains(dm_id.as_str()),
        "{alice_rooms:?}"
    );
    let bob_rooms: BTreeSet<String> = http
        .joined_rooms(&bob2.access_token())
        .await?
        .into_iter()
        .collect();
    assert!(bob_rooms.contains(room_id.as_str()), "{bob_rooms:?}");
    let name = http
        .state(&alice2.access_token(), room_id.as_str(), "m.room.name", "")
        .await?;
    name.expect_ok()?;
    assert_eq!(name.json["name"], "Book club");
    let joined = alice2.joined_members(&room_id).await?;
    assert_eq!(
        joined,
        [alice.user_id.to_string(), bob.user_id.to_string()]
            .into_iter()
            .collect()
    );

    // Every message, same ids, same order; each one also fetchable by id.
    let after = http
        .all_messages(&alice2.access_token(), room_id.as_str())
        .await?;
    assert_eq!(texts(&after), sent, "history after the restart");
    for (event_id, sender, body) in &sent {
        let ev = http
            .event(&bob2.access_token(), room_id.as_str(), event_id)
            .await?;
        ev.expect_ok()?;
        assert_eq!(ev.json["sender"], sender.as_str());
        assert_eq!(ev.json["content"]["body"], body.as_str());
    }

    // Account data survived: Alice's m.direct still lists the DM with Bob.
    let direct = http
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.direct",
                bellwire_tests::enc(alice.user_id.as_str())
            ),
            Some(&alice2.access_token()),
        )
        .await?;
    direct.expect_ok()?;
    let dms = direct.json[bob.user_id.as_str()]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        dms.iter().any(|r| r == dm_id.as_str()),
        "m.direct after restart: {}",
        direct.text
    );

    // A fresh client's first sync after the restart shows both rooms, with the
    // end of the conversation in the book club's timeline.
    alice2
        .sync_until("both rooms in the initial sync", |s| {
            s.joined.contains(&room_id) && s.joined.contains(&dm_id)
        })
        .await?;
    let (_, last_sender, last_body) = sent.last().unwrap();
    let seen = alice2.seen().texts(&room_id);
    assert_eq!(
        seen.last(),
        Some(&(last_sender.clone(), last_body.clone())),
        "initial sync timeline ends with the last message: {seen:?}"
    );

    // The room keeps working, and new messages sort after the old ones.
    let line = "Shall we read the sequel next?";
    alice2.send_text(&room_id, line).await?;
    bob2.wait_for_text(&room_id, &alice.user_id, line).await?;
    let latest = http
        .all_messages(&bob2.access_token(), room_id.as_str())
        .await?;
    assert_eq!(latest.len(), sent.len() + 1);
    assert_eq!(texts(&latest)[..sent.len()], sent[..]);
    assert_eq!(latest.last().unwrap()["content"]["body"], line);

    // New accounts can still be created next to the old ones.
    let carol = server.new_user("carol").await?;
    assert_eq!(carol.user_id.as_str(), "@carol:localhost");
    Ok(())
}

/// SIGTERM makes the server exit on its own, promptly and with status 0; the
/// data written before is there on the next start.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_shuts_the_server_down_cleanly() -> Result<()> {
    let mut server = TestServer::start().await?;
    let http = server.http();
    let (_, token) = http.register("alice", &password_for("alice")).await?;
    let room = http
        .create_room(&token, json!({"name": "Last words"}))
        .await?;
    let sent = http.send_text(&token, &room, "txn-1", "goodnight").await?;
    sent.expect_ok()?;
    let event_id = sent.json["event_id"]
        .as_str()
        .context("no event_id")?
        .to_owned();

    let status = server.stop().await?;
    assert!(
        status.success(),
        "exit status after SIGTERM should be 0, got {status:?}"
    );

    server.start_again().await?;
    let http = server.http();
    let ev = http.event(&token, &room, &event_id).await?;
    ev.expect_ok()?;
    assert_eq!(ev.json["content"]["body"], "goodnight");
    Ok(())
}

#[derive(Clone, Debug)]
struct Acked {
    round: usize,
    writer: usize,
    seq: usize,
    event_id: String,
    body: String,
}

const WRITERS: usize = 4;
const KILL_AFTER: usize = 60;

/// Starts `WRITERS` tasks sending to `room` as fast as the server answers,
/// waits for `KILL_AFTER` acknowledgements, SIGKILLs the server while they
/// are still sending, and returns what was acknowledged.
async fn load_then_kill(
    server: &mut TestServer,
    token: &str,
    room: &str,
    round: usize,
) -> Result<Vec<Acked>> {
    let http = server.http();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (http, token, room) = (http.clone(), token.to_owned(), room.to_owned());
        let (acked, killed) = (acked.clone(), killed.clone());
        writers.push(tokio::spawn(async move {
            // (rejections while the server was certainly up, requests cut by the kill)
            let mut failures_before_kill = Vec::new();
            let mut cut = 0usize;
            for seq in 0..100_000usize {
                let body = format!("round {round} writer {writer} message {seq:05}");
                let txn = format!("load-{round}-{writer}-{seq}");
                let was_killed = killed.load(Ordering::SeqCst);
                match send_one(&http, &token, &room, &txn, &body).await {
                    Ok(event_id) => acked.lock().unwrap().push(Acked {
                        round,
                        writer,
                        seq,
                        event_id,
                        body,
                    }),
                    Err(_) if was_killed || killed.load(Ordering::SeqCst) => cut += 1,
                    Err(e) => failures_before_kill.push(format!("{body}: {e:#}")),
                }
                if killed.load(Ordering::SeqCst) {
                    break;
                }
            }
            (failures_before_kill, cut)
        }));
    }

    // Let the load build up, then pull the plug.
    eventually("enough acknowledged messages before the kill", || {
        let n = acked.lock().unwrap().len();
        async move { Ok(n >= KILL_AFTER) }
    })
    .await?;
    // Flag first, so a request that fails because of the kill is never
    // mistaken for a rejection by a live server.
    killed.store(true, Ordering::SeqCst);
    let status = server.kill9().await?;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the server died of SIGKILL: {status:?}"
    );

    let mut failures = Vec::new();
    let mut cut = 0;
    for w in writers {
        let (f, c) = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .context("a writer hung")??;
        failures.extend(f);
        cut += c;
    }
    assert!(
        failures.is_empty(),
        "round {round}: sends failed while the server was up: {failures:#?}"
    );
    let acked = acked.lock().unwrap().clone();
    ensure!(
        acked.len() >= KILL_AFTER,
        "round {round}: only {} acknowledged",
        acked.len()
    );
    eprintln!(
        "round {round}: {} messages acknowledged before SIGKILL, {cut} requests cut by it",
        acked.len()
    );
    Ok(acked)
}

/// Checks that every acknowledged event is retrievable by id, intact, and in
/// /messages with each (round, writer)'s messages in send order.
async fn check_acknowledged(
    http: &Http,
    token: &str,
    room: &str,
    sender: &str,
    acked: &[Acked],
) -> Result<()> {
    let mut missing = Vec::new();
    for a in acked {
        let ev = http.event(token, room, &a.event_id).await?;
        if ev.status != 200 {
            missing.push(format!(
                "{} ({}): {} {}",
                a.event_id, a.body, ev.status, ev.text
            ));
            continue;
        }
        assert_eq!(
            ev.json["content"]["body"],
            a.body.as_str(),
            "{}",
            a.event_id
        );
        assert_eq!(ev.json["sender"], sender);
        assert_eq!(ev.json["type"], "m.room.message");
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost: {missing:#?}",
        missing.len(),
        acked.len()
    );

    let history = http.all_messages(token, room).await?;
    let position: BTreeMap<String, usize> = history
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((e["event_id"].as_str()?.to_owned(), i)))
        .collect();
    assert_eq!(
        position.len(),
        history.len(),
        "no event appears twice in /messages"
    );
    let mut last: BTreeMap<(usize, usize), (usize, usize)> = BTreeMap::new();
    for a in acked {
        let pos = *position.get(&a.event_id).with_context(|| {
            format!(
                "acknowledged {} ({}) missing from /messages",
                a.event_id, a.body
            )
        })?;
        if let Some((seq, prev)) = last.insert((a.round, a.writer), (a.seq, pos)) {
            assert!(
                pos > prev,
                "round {} writer {}: seq {} sorts before seq {seq}",
                a.round,
                a.writer,
                a.seq
            );
        }
    }
    Ok(())
}

/// Writers send messages as fast as the server accepts them; the server is
/// SIGKILLed in the middle; after starting again on the same data directory,
/// every message that had been acknowledged (got an event_id back) is there,
/// each writer's messages in the order they were sent. Done twice, so the
/// second crash hits a store that already recovered from one.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_messages_survive_kill_9_mid_load() -> Result<()> {
    let mut server = TestServer::start().await?;
    let http = server.http();
    let (alice_id, token) = http.register("alice", &password_for("alice")).await?;
    let room = http
        .create_room(
            &token,
            json!({"name": "Under load", "preset": "private_chat"}),
        )
        .await?;

    let mut acked = Vec::new();
    for round in 1..=2 {
        acked.extend(load_then_kill(&mut server, &token, &room, round).await?);

        // Same data directory: the store must open cleanly.
        server
            .start_again()
            .await
            .with_context(|| format!("bellwire failed to start again after SIGKILL #{round}"))?;
        let http = server.http();
        let whoami = http
            .get("/_matrix/client/v3/account/whoami", Some(&token))
            .await?;
        whoami.expect_ok()?;
        assert_eq!(
            whoami.json["user_id"],
            alice_id.as_str(),
            "the access token survived"
        );
        check_acknowledged(&http, &token, &room, &alice_id, &acked)
            .await
            .with_context(|| format!("after SIGKILL #{round}"))?;
    }

    // And the server takes new writes on top of the recovered state.
    let http = server.http();
    let after = http
        .send_text(&token, &room, "after-crash-1", "back on my feet")
        .await?;
    after.expect_ok()?;
    let history = http.all_messages(&token, &room).await?;
    assert_eq!(
        history.last().map(|e| e["content"]["body"].clone()),
        Some(json!("back on my feet"))
    );
    assert!(
        !server.stderr_log().contains("panicked"),
        "server log shows a panic:\n{}",
        server.stderr_log()
    );
    Ok(())
}

async fn send_one(http: &Http, token: &str, room: &str, txn: &str, body: &str) -> Result<String> {
    let reply = http.send_text(token, room, txn, body).await?;
    reply.expect_ok()?;
    Ok(reply.json["event_id"]
        .as_str()
        .context("200 without event_id")?
        .to_owned())
}

/// A photo whose upload is cut off by SIGKILL halfway through leaves nothing
/// behind: after the restart no partial file exists anywhere under the media
/// directory, the photo acknowledged before the crash is still served
/// byte for byte, and uploads work again.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_killed_halfway_leaves_no_half_file() -> Result<()> {
    use tokio::io::AsyncWriteExt;

    let mut server = TestServer::start().await?;
    let http = server.http();
    let (_, token) = http.register("alice", &password_for("alice")).await?;
    let kept: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let kept_mxc = http
        .upload_media_ok(&token, "image/jpeg", Some("kept.jpg"), kept.clone())
        .await?;

    // Half of a 4 MB body, then the server dies mid-upload.
    let addr = server.url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .context("connect for the raw upload")?;
    let head = format!(
        "POST /_matrix/media/v3/upload?filename=half.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: 4000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&vec![7u8; 2_000_000]).await?;
    stream.flush().await?;
    // The server is writing what it received into a temp file: the crash
    // must hit a real half-written upload.
    let media_dir = server.default_media_dir();
    eventually("the half-received upload reaches a temp file", || {
        let media_dir = media_dir.clone();
        async move {
            Ok(bellwire_tests::files_under(&media_dir.join("tmp"))?
                .iter()
                .any(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 0))
        }
    })
    .await?;
    let status = server.kill9().await?;
    ensure!(
        status.signal() == Some(9),
        "the server was not killed by SIGKILL: {status:?}"
    );
    drop(stream);

    server.start_again().await?;
    let http = server.http();
    let media_dir = server.default_media_dir();
    let files = bellwire_tests::files_under(&media_dir)?;
    let sizes: Vec<(String, u64)> = files
        .iter()
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        sizes.iter().all(|(_, len)| *len == kept.len() as u64),
        "after the crash only the acknowledged photo may be on disk, found {sizes:?}"
    );
    ensure!(
        sizes.len() == 1,
        "expected exactly the one acknowledged file, found {sizes:?}"
    );

    let got = http
        .get_bytes(&kept_mxc.download_path(), Some(&token), &[])
        .await?;
    ensure!(
        got.status == 200 && got.body == kept,
        "the acknowledged photo is not served intact after the crash (status {})",
        got.status
    );
    let again = http
        .upload_media_ok(
            &token,
            "text/plain",
            Some("after.txt"),
            b"after the crash".to_vec(),
        )
        .await?;
    let got = http
        .get_bytes(&again.download_path(), Some(&token), &[])
        .await?;
    ensure!(
        got.body == b"after the crash",
        "an upload after the restart does not round-trip"
    );
    Ok(())
}
