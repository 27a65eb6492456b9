//! The media endpoints fed what no well-behaved client sends: missing or odd
//! headers, empty and lying bodies, nonsense thumbnail parameters, path
//! traversal in media ids, garbage Range headers, and chunked uploads that
//! never end. Each answer must be a clean HTTP error (or a sensible
//! success), never a crash, a hang or a file from outside the media store.

use anyhow::{Context, Result, bail, ensure};
use bellwire_tests::{
    MEDIA_V1, MEDIA_V3, Mxc, TestServer, WAIT, enc, files_under, pseudo_random_bytes, raw_status,
    test_image,
};
use image::ImageFormat;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// An upload without Content-Type is stored as application/octet-stream (an
/// attachment) or refused with 400; an empty file is fine or 400; file
/// names with quotes, CR/LF or 4000 characters never break the download's
/// headers.
#[tokio::test(flavor = "multi_thread")]
async fn odd_uploads_are_stored_safely_or_refused() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();

    // No Content-Type at all.
    let bytes = pseudo_random_bytes(1000, 20);
    // (Uploads that may be refused before their body is read each get a
    // client of their own, so the requests after them are not affected by
    // how the server closes that connection.)
    let r = server
        .http()
        .upload_media(&token, None, Some("mystery"), bytes.clone())
        .await?;
    match r.status {
        200 => {
            let mxc = Mxc::parse(r.json()["content_uri"].as_str().context("no content_uri")?)?;
            let d = http
                .get_bytes(&mxc.download_path(), Some(&token), &[])
                .await?;
            d.expect_ok()?;
            ensure!(d.body == bytes, "the untyped upload came back different");
            ensure!(
                d.header("content-type") == Some("application/octet-stream"),
                "an untyped upload must be served as application/octet-stream, got {:?}",
                d.header("content-type")
            );
            let (kind, _) = d.disposition()?;
            ensure!(kind == "attachment", "untyped bytes served {kind}");
        }
        400 => ensure!(
            r.reply().errcode().is_some(),
            "a 400 for a missing Content-Type is not a Matrix error: {}",
            r.preview()
        ),
        other => bail!("upload without Content-Type: {other} {}", r.preview()),
    }

    // An empty file.
    let r = server
        .http()
        .upload_media(&token, Some("text/plain"), Some("empty.txt"), Vec::new())
        .await?;
    match r.status {
        200 => {
            let mxc = Mxc::parse(r.json()["content_uri"].as_str().context("no content_uri")?)?;
            let d = http
                .get_bytes(&mxc.download_path(), Some(&token), &[])
                .await?;
            d.expect_ok()?;
            ensure!(
                d.body.is_empty(),
                "the empty file came back with {} bytes",
                d.body.len()
            );
            ensure!(
                d.header("content-length") == Some("0"),
                "empty file Content-Length {:?}",
                d.header("content-length")
            );
            // Ranges of nothing.
            let d = http
                .get_bytes(
                    &mxc.download_path(),
                    Some(&token),
                    &[("range", "bytes=0-10")],
                )
                .await?;
            ensure!(
                d.status == 416 || (d.status == 200 && d.body.is_empty()),
                "Range on an empty file: {} {}",
                d.status,
                d.preview()
            );
        }
        400 => {}
        other => bail!("empty upload: {other} {}", r.preview()),
    }

    // File names trying to break out of Content-Disposition.
    for name in [
        "a\"; filename=\"evil.html",
        "line\r\nX-Injected: yes",
        "back\\slash;semi=colon",
        "ünïcødé ☃.txt",
        &"n".repeat(4000),
    ] {
        let body = b"plain words".to_vec();
        let r = server
            .http()
            .upload_media(&token, Some("text/plain"), Some(name), body.clone())
            .await?;
        if r.status != 200 {
            ensure!(
                (400..500).contains(&r.status) && r.reply().errcode().is_some(),
                "upload named {name:?}: {} {}",
                r.status,
                r.preview()
            );
            continue;
        }
        let mxc = Mxc::parse(r.json()["content_uri"].as_str().context("no content_uri")?)?;
        let d = http
            .get_bytes(&mxc.download_path(), Some(&token), &[])
            .await?;
        d.expect_ok()
            .with_context(|| format!("download of the upload named {name:?}"))?;
        ensure!(d.body == body, "upload named {name:?} came back different");
        ensure!(
            d.header("x-injected").is_none(),
            "a file name injected a header: {:?}",
            d.headers
        );
        let (kind, filename) = d
            .disposition()
            .with_context(|| format!("download of the upload named {name:?}"))?;
        ensure!(kind == "inline", "text/plain named {name:?} served {kind}");
        if let Some(filename) = filename {
            ensure!(
                filename != "evil.html",
                "the file name {name:?} smuggled another filename parameter: {:?}",
                d.header("content-disposition")
            );
        }
    }
    http.assert_alive().await?;
    Ok(())
}

/// Thumbnail sizes and methods that make no sense are 400 with a Matrix
/// error; a sensible request still works afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn nonsense_thumbnail_parameters_are_400() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let mxc = http
        .upload_media_ok(
            &token,
            "image/png",
            Some("pic.png"),
            test_image(200, 150, ImageFormat::Png)?,
        )
        .await?;
    for query in [
        "width=0&height=96&method=crop",
        "width=96&height=0&method=scale",
        "width=abc&height=96&method=crop",
        "width=-5&height=96&method=crop",
        "width=96.5&height=96&method=crop",
        "width=99999999999999999999&height=96&method=crop",
        "width=96&height=96&method=bogus",
        "height=96&method=crop",
        "width=96&method=crop",
        "width=96&height=96&method=crop&animated=maybe",
    ] {
        for path in [mxc.thumbnail_path(query), mxc.legacy_thumbnail_path(query)] {
            let r = http.get_bytes(&path, Some(&token), &[]).await?;
            ensure!(
                r.status == 400 && r.reply().errcode().is_some(),
                "GET {path} should be a 400 Matrix error, got {} {}",
                r.status,
                r.preview()
            );
        }
    }
    let r = http
        .get_bytes(
            &mxc.thumbnail_path("width=96&height=96&method=crop"),
            Some(&token),
            &[],
        )
        .await?;
    r.expect_ok()
        .context("a sensible thumbnail after the nonsense")?;
    Ok(())
}

/// Media ids and server names with `..`, encoded slashes and backslashes,
/// NUL bytes, absolute paths or a real id with something appended are 400
/// or 404 on every media endpoint, and never return the server's config
/// file, its database, /etc/passwd or another file of the store.
#[tokio::test(flavor = "multi_thread")]
async fn path_traversal_in_media_ids_reads_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    // Something in the store, with a cached thumbnail beside it.
    let real = http
        .upload_media_ok(
            &token,
            "image/png",
            Some("a.png"),
            test_image(200, 150, ImageFormat::Png)?,
        )
        .await?;
    http.get_bytes(
        &real.thumbnail_path("width=96&height=96&method=crop"),
        Some(&token),
        &[],
    )
    .await?
    .expect_ok()?;

    let mut ids = vec![
        "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd".to_owned(),
        "%2Fetc%2Fpasswd".to_owned(),
        "..%5C..%5Cbellwire.toml".to_owned(),
        "a%00b".to_owned(),
        "%00".to_owned(),
        "...".to_owned(),
        "x".repeat(2000),
    ];
    // Names around a real media id: another rendition of it, its place
    // in a sharded folder, a dot segment after it.
    let id = &real.media_id;
    ids.extend([
        format!("{id}.96x96-crop"),
        format!("{id}%2E96x96-crop"),
        format!("{id}.png"),
        format!("{id}%2F..%2F{id}"),
        format!("{}%2F{}%2F{id}", &id[..2], &id[2..4]),
        format!("..%2F..%2F{}%2F{}%2F{id}", &id[..2], &id[2..4]),
        format!("{id}%00"),
    ]);
    // The config file is `../bellwire.toml` from the default media folder;
    // try every depth a sharded layout might add.
    for depth in 1..=5 {
        ids.push(format!("{}bellwire.toml", "..%2F".repeat(depth)));
        ids.push(format!("{}db%2FCURRENT", "..%2F".repeat(depth)));
    }
    let mut paths = Vec::new();
    for id in &ids {
        let segments = format!("localhost/{id}");
        paths.push((
            format!("{MEDIA_V1}/download/{segments}"),
            Some(token.as_str()),
        ));
        paths.push((
            format!("{MEDIA_V1}/download/{segments}/x.txt"),
            Some(token.as_str()),
        ));
        paths.push((
            format!("{MEDIA_V1}/thumbnail/{segments}?width=32&height=32&method=crop"),
            Some(token.as_str()),
        ));
        paths.push((format!("{MEDIA_V3}/download/{segments}"), None));
    }
    // The server name as the way out.
    for server_name in ["..", "..%2F..", "localhost%2F..%2F.."] {
        paths.push((
            format!("{MEDIA_V1}/download/{server_name}/bellwire.toml"),
            Some(token.as_str()),
        ));
    }
    for (path, token) in paths {
        let r = http.get_bytes(&path, token, &[]).await?;
        ensure!(
            r.status == 400 || r.status == 404,
            "GET {path} should be 400 or 404, got {} {}",
            r.status,
            r.preview()
        );
        let text = String::from_utf8_lossy(&r.body);
        for secret in ["server_name", "[database]", "root:", "MANIFEST-"] {
            ensure!(
                !text.contains(secret),
                "GET {path} returned a file from outside the media store: {}",
                r.preview()
            );
        }
    }
    http.assert_alive().await?;
    Ok(())
}

/// Range headers that do not parse, are reversed, use another unit or
/// overflow give the whole file (200) or 416, never an error page or a
/// crash.
#[tokio::test(flavor = "multi_thread")]
async fn garbage_range_headers_give_the_file_or_416() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let bytes = pseudo_random_bytes(10_000, 21);
    let mxc = http
        .upload_media_ok(&token, "audio/ogg", None, bytes.clone())
        .await?;
    for range in [
        "bytes=abc",
        "lines=0-5",
        "bytes=5-2",
        "bytes=--1",
        "bytes=",
        "bytes=-",
        "bytes=99999999999999999999999-",
        "bytes=0-99999999999999999999999",
        "bytes=-99999999999999999999999",
        "bytes = 0 - 5",
        "bytes=0-1,5-6,9-",
        "😀",
    ] {
        let r = http
            .get_bytes(&mxc.download_path(), Some(&token), &[("range", range)])
            .await?;
        match r.status {
            200 => ensure!(
                r.body == bytes,
                "Range {range:?}: a 200 must carry the whole file, got {} bytes",
                r.body.len()
            ),
            416 => {}
            // Several ranges may be honoured; the bytes must then be right.
            206 if range.contains(',') => {}
            206 => {
                let cr = r.expect_header("content-range")?;
                bail!("Range {range:?} is not valid, yet the answer is 206 {cr:?}")
            }
            other => bail!("Range {range:?}: {other} {}", r.preview()),
        }
    }
    http.assert_alive().await?;
    Ok(())
}

/// `bytes` as HTTP/1.1 chunks of 16 KiB, with the final empty chunk.
fn chunked(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in bytes.chunks(16 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// With a 64 KiB limit, an upload that declares no length (chunked) and
/// sends 1 MiB is cut off with 413 M_TOO_LARGE and leaves no file behind;
/// a body shorter than its Content-Length stores nothing; a small chunked
/// upload works.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_and_lying_uploads_are_bounded() -> Result<()> {
    let server = TestServer::start_with_media("max_upload_bytes = 65536").await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let media_dir = server.default_media_dir();
    let head = |framing: &str| {
        format!(
            "POST {MEDIA_V3}/upload?filename=stream.bin HTTP/1.1\r\nhost: localhost\r\n\
             authorization: Bearer {token}\r\ncontent-type: application/octet-stream\r\n\
             {framing}\r\nconnection: close\r\n\r\n"
        )
    };

    let answer = http
        .raw_exchange(
            &head("transfer-encoding: chunked"),
            &chunked(&pseudo_random_bytes(1 << 20, 22)),
        )
        .await
        .context("a 1 MiB chunked upload over a 64 KiB limit")?;
    ensure!(
        raw_status(&answer)? == 413 && answer.contains("M_TOO_LARGE"),
        "a chunked upload over the limit should be 413 M_TOO_LARGE: {:?}",
        answer.chars().take(400).collect::<String>()
    );

    // Declares 1000 bytes, sends 10, then stops writing.
    let addr = server.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await?;
    stream
        .write_all(head("content-length: 1000").as_bytes())
        .await?;
    stream.write_all(b"0123456789").await?;
    stream.shutdown().await?;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .context("the server kept a half-closed, short upload open")?
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    if !answer.is_empty() {
        let status = raw_status(&answer)?;
        ensure!(
            (400..500).contains(&status),
            "a body shorter than its Content-Length got {status}: {answer:?}"
        );
    }

    http.assert_alive().await?;
    let left = files_under(&media_dir)?;
    ensure!(
        left.is_empty(),
        "refused uploads left files in {}: {left:?}",
        media_dir.display()
    );

    // A chunked upload within the limit is fine.
    let small = pseudo_random_bytes(40_000, 23);
    let answer = http
        .raw_exchange(&head("transfer-encoding: chunked"), &chunked(&small))
        .await
        .context("a 40 kB chunked upload")?;
    ensure!(
        raw_status(&answer)? == 200,
        "a chunked upload within the limit: {answer:?}"
    );
    let body_start = answer.find("\r\n\r\n").context("no end of headers")? + 4;
    let json: serde_json::Value = match serde_json::from_str(&answer[body_start..]) {
        Ok(json) => json,
        // The answer itself may be chunked: take the JSON object inside.
        Err(_) => {
            let text = &answer[body_start..];
            let (start, end) = (
                text.find('{').context("no JSON in the answer")?,
                text.rfind('}').context("no JSON in the answer")?,
            );
            serde_json::from_str(&text[start..=end])?
        }
    };
    let mxc = Mxc::parse(json["content_uri"].as_str().context("no content_uri")?)?;
    let r = http
        .get_bytes(&mxc.download_path(), Some(&token), &[])
        .await?;
    r.expect_ok()?;
    ensure!(r.body == small, "the chunked upload came back different");
    Ok(())
}

/// Async uploads without a token, into another server's name, or over the
/// size limit are refused cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn async_upload_misuse_is_refused() -> Result<()> {
    let server = TestServer::start_with_media("max_upload_bytes = 65536").await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let create = "/_matrix/media/v1/create";

    http.post(create, None, serde_json::json!({}))
        .await?
        .expect_error(401, "M_MISSING_TOKEN")
        .context("create without a token")?;
    let r = http
        .post(create, Some(&token), serde_json::json!({}))
        .await?;
    r.expect_ok()?;
    let mxc = Mxc::parse(r.json["content_uri"].as_str().context("no content_uri")?)?;
    let put = |path: String, token: Option<String>, bytes: Vec<u8>| {
        // A client per PUT: most are refused before their body is read.
        let http = server.http();
        async move {
            http.call_bytes(
                "PUT",
                &path,
                token.as_deref(),
                &[("content-type", "text/plain")],
                Some(bytes),
            )
            .await
        }
    };
    let own = format!("{MEDIA_V3}/upload/{}", mxc.segments());

    put(own.clone(), None, b"x".to_vec())
        .await?
        .expect_error(401, "M_MISSING_TOKEN")
        .context("PUT without a token")?;
    let r = put(
        format!("{MEDIA_V3}/upload/example.org/{}", enc(&mxc.media_id)),
        Some(token.clone()),
        b"x".to_vec(),
    )
    .await?;
    ensure!(
        matches!(r.status, 400 | 403 | 404) && r.reply().errcode().is_some(),
        "PUT into another server's media: {} {}",
        r.status,
        r.preview()
    );
    put(
        own.clone(),
        Some(token.clone()),
        pseudo_random_bytes(100_000, 24),
    )
    .await?
    .expect_error(413, "M_TOO_LARGE")
    .context("PUT over max_upload_bytes")?;
    // The reservation is still there to fill properly.
    put(own, Some(token.clone()), b"fits".to_vec())
        .await?
        .expect_ok()
        .context("PUT within the limit after a refused one")?;
    let r = http
        .get_bytes(&mxc.download_path(), Some(&token), &[])
        .await?;
    r.expect_ok()?;
    ensure!(
        r.body == b"fits",
        "the reserved media holds {:?}",
        r.preview()
    );
    Ok(())
}
