//! Things people and bots do at the same moment: registering one name
//! twice, creating many rooms at once. Each must come out as if done one
//! after the other.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Http, TestServer};
use serde_json::json;

/// Six devices try to register the same new name at once, each with its
/// own password. Exactly one gets the account; the others are told the
/// name is taken, and only the winner's password logs in.
#[tokio::test(flavor = "multi_thread")]
async fn one_name_registered_six_times_at_once_makes_one_account() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    for round in 0..5 {
        let name = format!("carol{round}");
        let tries = (0..6).map(|i| {
            let (http, name) = (http.clone(), name.clone());
            tokio::spawn(async move {
                let password = format!("password-{i}");
                (password.clone(), http.register(&name, &password).await)
            })
        });
        let mut winners = Vec::new();
        for t in tries {
            let (password, outcome) = t.await?;
            match outcome {
                Ok(_) => winners.push(password),
                Err(e) => ensure!(
                    format!("{e:#}").contains("M_USER_IN_USE"),
                    "a losing registration fails with M_USER_IN_USE: {e:#}"
                ),
            }
        }
        ensure!(winners.len() == 1, "round {round}: winners {winners:?}");
        for i in 0..6 {
            let password = format!("password-{i}");
            let login = http.login(&name, &password).await?;
            let should = winners.contains(&password);
            ensure!(
                (login.status == 200) == should,
                "round {round}: login with {password}: {} {}",
                login.status,
                login.text
            );
        }
    }
    Ok(())
}

/// A bridge creates twenty rooms for one user at the same moment, with
/// identical settings. Every call gets a room of its own, and each room
/// holds exactly the invitee asked for.
#[tokio::test(flavor = "multi_thread")]
async fn rooms_created_at_the_same_moment_stay_separate() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let (_, token) = http.register("bridge", "bridge-password").await?;
    let mut invitees = Vec::new();
    for i in 0..20 {
        let (id, _) = http
            .register(&format!("guest{i}"), "guest-password")
            .await?;
        invitees.push(id);
    }
    let creations = invitees.iter().map(|invitee| {
        let (http, token, invitee) = (http.clone(), token.clone(), invitee.clone());
        tokio::spawn(async move {
            let room = http
                .create_room(
                    &token,
                    json!({"preset": "private_chat", "invite": [invitee]}),
                )
                .await;
            (invitee, room)
        })
    });
    let mut rooms = BTreeSet::new();
    for c in creations {
        let (invitee, room) = c.await?;
        let room = room.with_context(|| format!("createRoom for {invitee}"))?;
        ensure!(rooms.insert(room.clone()), "{room} was returned twice");
        let invited = invited_members(&http, &token, &room).await?;
        ensure!(
            invited == BTreeSet::from([invitee.clone()]),
            "{room} should invite only {invitee}: {invited:?}"
        );
    }
    ensure!(rooms.len() == 20);
    Ok(())
}

async fn invited_members(http: &Http, token: &str, room: &str) -> Result<BTreeSet<String>> {
    let r = http
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/members?membership=invite",
                bellwire_tests::enc(room)
            ),
            Some(token),
        )
        .await?;
    r.expect_ok()?;
    Ok(r.json["chunk"]
        .as_array()
        .context("no chunk")?
        .iter()
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect())
}
