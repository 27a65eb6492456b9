//! A client finding its way: /.well-known/matrix/client points at the URL
//! users should use, and /capabilities tells the truth about what a user
//! may change (clients hide "rename" when it says no).

use anyhow::{Context, Result, ensure};
use bellwire_tests::{Body, ServerOptions, TestServer};

const WELL_KNOWN: &str = "/.well-known/matrix/client";

fn base_url(json: &serde_json::Value) -> Result<&str> {
    json["m.homeserver"]["base_url"]
        .as_str()
        .with_context(|| format!("no m.homeserver.base_url in {json}"))
}

/// An operator behind a TLS proxy sets `public_base_url`: clients are sent
/// there, whatever host they asked.
#[tokio::test(flavor = "multi_thread")]
async fn well_known_announces_the_configured_public_url() -> Result<()> {
    let server = TestServer::start_with(ServerOptions {
        extra_config: "public_base_url = \"https://matrix.example.org/\"\n".into(),
        ..Default::default()
    })
    .await?;
    let r = server.http().get(WELL_KNOWN, None).await?;
    r.expect_ok()?;
    ensure!(
        base_url(&r.json)? == "https://matrix.example.org",
        "{}",
        r.text
    );
    Ok(())
}

/// Without the setting, clients are sent back to the URL they came in on,
/// https when a proxy says the request arrived over TLS.
#[tokio::test(flavor = "multi_thread")]
async fn well_known_falls_back_to_the_request_url() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let plain = http.get(WELL_KNOWN, None).await?;
    plain.expect_ok()?;
    let expected = server.url();
    ensure!(
        base_url(&plain.json)? == expected.trim_end_matches('/'),
        "{} (expected {expected})",
        plain.text
    );
    let proxied = http
        .call_with_headers(
            "GET",
            WELL_KNOWN,
            None,
            &[("x-forwarded-proto", "https"), ("host", "chat.example.org")],
            Body::None,
        )
        .await?;
    proxied.expect_ok()?;
    ensure!(
        base_url(&proxied.json)? == "https://chat.example.org",
        "{}",
        proxied.text
    );
    Ok(())
}

/// Alice's client reads /capabilities before offering "Edit profile": it
/// says she may rename herself, and the rename works.
#[tokio::test(flavor = "multi_thread")]
async fn capabilities_allow_the_profile_changes_that_work() -> Result<()> {
    let server = TestServer::start().await?;
    let alice = server.new_user("alice").await?;
    let caps = alice.client.homeserver_capabilities();
    ensure!(caps.can_change_displayname().await?, "m.set_displayname");
    ensure!(caps.can_change_avatar().await?, "m.set_avatar_url");
    ensure!(
        caps.extended_profile_fields().await?.enabled,
        "m.profile_fields"
    );
    alice
        .client
        .account()
        .set_display_name(Some("Alice Liddell"))
        .await?;
    let name = alice.client.account().get_display_name().await?;
    ensure!(name.as_deref() == Some("Alice Liddell"), "{name:?}");
    Ok(())
}
