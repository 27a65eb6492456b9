//! The media repository as people use it: pictures sent in a chat come back
//! byte for byte with thumbnails of the right size, voice notes stream with
//! ranges, uploads respect size limits and quotas, hostile files (HTML, SVG,
//! decompression bombs) cannot hurt a viewer or the server, media needs a
//! token on the authenticated endpoints, uploads can be reserved first and
//! filled later, and URL previews never reach private addresses.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bellwire_tests::{
    BytesReply, Http, MEDIA_V1, MEDIA_V3, Mxc, TestServer, User, WAIT, assert_matrix_error,
    declared_dimensions, decode_image, enc, files_under, hand_made_png, jpeg_claiming,
    password_for, pseudo_random_bytes, raw_status, test_image, test_image_colour,
};
use image::{DynamicImage, ImageFormat};
use matrix_sdk::{
    Error as SdkError,
    media::{MediaError, MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{
        UInt, api::client::media::create_content_async, events::room::MediaSource, media::Method,
    },
};

/// The headers that keep a browser from running or sniffing what it
/// downloads from the media repository, whatever the file is.
fn expect_sandboxed(r: &BytesReply, what: &str) -> Result<()> {
    let csp = r
        .expect_header("content-security-policy")
        .with_context(|| what.to_owned())?;
    ensure!(
        csp.starts_with("sandbox; default-src 'none'"),
        "{what}: Content-Security-Policy must start with \"sandbox; default-src 'none'\": {csp:?}"
    );
    let nosniff = r
        .expect_header("x-content-type-options")
        .with_context(|| what.to_owned())?;
    ensure!(
        nosniff.eq_ignore_ascii_case("nosniff"),
        "{what}: X-Content-Type-Options must be nosniff: {nosniff:?}"
    );
    let corp = r
        .expect_header("cross-origin-resource-policy")
        .with_context(|| what.to_owned())?;
    ensure!(
        corp == "cross-origin",
        "{what}: Cross-Origin-Resource-Policy must be cross-origin: {corp:?}"
    );
    Ok(())
}

/// Fails unless `r` is a 200 download of exactly `bytes` as `content_type`
/// with a matching Content-Length.
fn expect_download(r: &BytesReply, bytes: &[u8], content_type: &str, what: &str) -> Result<()> {
    r.expect_ok().with_context(|| what.to_owned())?;
    ensure!(
        r.body == bytes,
        "{what}: the download differs from the upload ({} bytes back, {} sent)",
        r.body.len(),
        bytes.len()
    );
    let ct = r.expect_header("content-type")?;
    ensure!(
        ct == content_type,
        "{what}: Content-Type {ct:?}, uploaded as {content_type:?}"
    );
    let len = r.expect_header("content-length")?;
    ensure!(
        len == bytes.len().to_string(),
        "{what}: Content-Length {len:?} for {} bytes",
        bytes.len()
    );
    Ok(())
}

/// Fails unless the Content-Disposition of `r` is of type `kind` with the
/// file name `filename` (`None`: no file name at all).
fn expect_disposition(
    r: &BytesReply,
    kind: &str,
    filename: Option<&str>,
    what: &str,
) -> Result<()> {
    let (got_kind, got_name) = r.disposition().with_context(|| what.to_owned())?;
    ensure!(
        got_kind == kind && got_name.as_deref() == filename,
        "{what}: Content-Disposition should be {kind} with file name {filename:?}, got {:?}",
        r.header("content-disposition")
    );
    Ok(())
}

/// A fetched thumbnail: the answer and the picture in it.
struct Thumbnail {
    reply: BytesReply,
    image: DynamicImage,
}

impl Thumbnail {
    fn size(&self) -> (u32, u32) {
        (self.image.width(), self.image.height())
    }

    /// Whether pixel (x, y) is within `tolerance` of `want` on every channel.
    fn colour_near(&self, x: u32, y: u32, want: [u8; 3], tolerance: u8) -> Result<()> {
        let got = self.image.to_rgb8().get_pixel(x, y).0;
        ensure!(
            got.iter()
                .zip(want)
                .all(|(g, w)| g.abs_diff(w) <= tolerance),
            "thumbnail pixel ({x}, {y}) is {got:?}, expected about {want:?}: the thumbnail \
             does not show the uploaded picture"
        );
        Ok(())
    }
}

/// GETs a thumbnail at `path` and checks it is a PNG or JPEG picture served
/// inline with the sandbox headers.
async fn thumbnail(http: &Http, path: &str, token: Option<&str>) -> Result<Thumbnail> {
    let reply = http.get_bytes(path, token, &[]).await?;
    reply.expect_ok().with_context(|| format!("GET {path}"))?;
    let ct = reply.expect_header("content-type")?.to_owned();
    let magic_ok = match ct.as_str() {
        "image/png" => reply.body.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => reply.body.starts_with(&[0xFF, 0xD8, 0xFF]),
        other => bail!("GET {path}: a thumbnail must be image/png or image/jpeg, got {other:?}"),
    };
    ensure!(
        magic_ok,
        "GET {path}: the thumbnail's bytes are not the {ct} its Content-Type says"
    );
    let image = decode_image(&reply.body).with_context(|| format!("GET {path}"))?;
    let (kind, _) = reply.disposition().with_context(|| format!("GET {path}"))?;
    ensure!(
        kind == "inline",
        "GET {path}: a thumbnail's Content-Disposition MUST be inline, got {kind:?}"
    );
    expect_sandboxed(&reply, path)?;
    Ok(Thumbnail { reply, image })
}

/// The size a picture of `original` size gets when scaled to fit in
/// `bound`, aspect ratio kept and never enlarged.
fn fit(original: (u32, u32), bound: (u32, u32)) -> (f64, f64) {
    let (w, h) = (f64::from(original.0), f64::from(original.1));
    let scale = (f64::from(bound.0) / w)
        .min(f64::from(bound.1) / h)
        .min(1.0);
    (w * scale, h * scale)
}

/// Fails unless `got` is `want` to within a pixel of rounding.
fn about(got: (u32, u32), want: (f64, f64), what: &str) -> Result<()> {
    ensure!(
        (f64::from(got.0) - want.0).abs() <= 1.0 && (f64::from(got.1) - want.1).abs() <= 1.0,
        "{what}: thumbnail is {}x{}, expected about {:.0}x{:.0}",
        got.0,
        got.1,
        want.0,
        want.1
    );
    Ok(())
}

/// matrix-sdk's request for the whole file behind `mxc`.
fn sdk_file(mxc: &Mxc) -> Result<MediaRequestParameters> {
    Ok(MediaRequestParameters {
        source: MediaSource::Plain(mxc.to_sdk()?),
        format: MediaFormat::File,
    })
}

/// Alice's client uploads a photo and a screenshot; Bob's client downloads
/// both through the authenticated endpoints and gets the same bytes. On the
/// wire each download carries its type, length and the sandbox headers, and
/// is shown inline; a file name given at upload (or in the download path)
/// comes back in Content-Disposition.
#[tokio::test(flavor = "multi_thread")]
async fn png_and_jpeg_round_trip_byte_identical() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let bob_token = bob.access_token();

    let screenshot = test_image(640, 480, ImageFormat::Png)?;
    let photo = test_image(800, 600, ImageFormat::Jpeg)?;
    for (content_type, bytes) in [("image/png", &screenshot), ("image/jpeg", &photo)] {
        let uploaded = alice
            .client
            .media()
            .upload(&content_type.parse()?, bytes.clone(), None)
            .await
            .with_context(|| format!("Alice's client uploading {content_type}"))?;
        let mxc = Mxc::parse(uploaded.content_uri.as_str())?;
        ensure!(
            mxc.server_name == "localhost",
            "content URI of another server: {mxc}"
        );

        let got = bob
            .client
            .media()
            .get_media_content(&sdk_file(&mxc)?, false)
            .await
            .with_context(|| format!("Bob's client downloading {mxc}"))?;
        ensure!(
            got == *bytes,
            "Bob's client got {} bytes for the {content_type} Alice sent ({} bytes), \
             or different ones",
            got.len(),
            bytes.len()
        );

        let what = format!("authenticated download of {content_type} {mxc}");
        let r = http
            .get_bytes(&mxc.download_path(), Some(&bob_token), &[])
            .await?;
        expect_download(&r, bytes, content_type, &what)?;
        expect_sandboxed(&r, &what)?;
        // No file name was given at upload, so none comes back.
        expect_disposition(&r, "inline", None, &what)?;
    }

    // An upload with a file name, downloaded as is and under another name.
    let mxc = http
        .upload_media_ok(
            &alice.access_token(),
            "image/png",
            Some("holiday photo.png"),
            screenshot.clone(),
        )
        .await?;
    let r = http
        .get_bytes(&mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(
        &r,
        &screenshot,
        "image/png",
        "download of holiday photo.png",
    )?;
    expect_disposition(
        &r,
        "inline",
        Some("holiday photo.png"),
        "download of holiday photo.png",
    )?;
    let path = format!("{}/{}", mxc.download_path(), enc("beach.png"));
    let r = http.get_bytes(&path, Some(&bob_token), &[]).await?;
    expect_download(&r, &screenshot, "image/png", &path)?;
    expect_disposition(&r, "inline", Some("beach.png"), &path)?;
    expect_sandboxed(&r, &path)?;
    Ok(())
}

/// A 1000x700 landscape PNG and a 600x900 portrait JPEG get thumbnails of
/// the spec's standard sizes: crops of exactly 32x32, 96x96 and 320x240
/// (the crop's box, not a 320x224 scale), scales that
/// fit the requested box with the aspect ratio kept, nothing ever larger
/// than the original, and each thumbnail still shows the picture (the
/// gradient's colours are where they should be). matrix-sdk's thumbnail
/// request works too, and a thumbnail of a text file is refused.
#[tokio::test(flavor = "multi_thread")]
async fn thumbnails_have_the_requested_size_class() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();

    let originals = [
        (
            "landscape.png",
            "image/png",
            ImageFormat::Png,
            (1000u32, 700u32),
        ),
        ("portrait.jpg", "image/jpeg", ImageFormat::Jpeg, (600, 900)),
    ];
    for (name, content_type, format, (w, h)) in originals {
        let bytes = test_image(w, h, format)?;
        let mxc = http
            .upload_media_ok(&token, content_type, Some(name), bytes)
            .await?;
        // JPEG on both ends blurs colours a little.
        let tolerance = 40;
        let centre = test_image_colour(w / 2, h / 2, w, h);

        for side in [32u32, 96] {
            let query = format!("width={side}&height={side}&method=crop");
            let t = thumbnail(&http, &mxc.thumbnail_path(&query), Some(&token))
                .await
                .with_context(|| format!("{name}: {query}"))?;
            ensure!(
                t.size() == (side, side),
                "{name}: a {side}x{side} crop thumbnail is {:?}",
                t.size()
            );
            t.colour_near(side / 2, side / 2, centre, tolerance)
                .with_context(|| format!("{name}: {query}"))?;
        }

        for bound in [(320u32, 240u32), (640, 480)] {
            let query = format!("width={}&height={}&method=scale", bound.0, bound.1);
            let t = thumbnail(&http, &mxc.thumbnail_path(&query), Some(&token))
                .await
                .with_context(|| format!("{name}: {query}"))?;
            let (tw, th) = t.size();
            ensure!(
                tw <= bound.0 && th <= bound.1 && (tw == bound.0 || th == bound.1),
                "{name}: a scale thumbnail for {bound:?} must fill the box on one side \
                 without overflowing it: got {tw}x{th}"
            );
            about((tw, th), fit((w, h), bound), &format!("{name}: {query}"))?;
            // Top-left is dark blue-ish, bottom-right bright, centre halfway.
            t.colour_near(0, 0, test_image_colour(0, 0, w, h), tolerance)?;
            t.colour_near(
                tw - 1,
                th - 1,
                test_image_colour(w - 1, h - 1, w, h),
                tolerance,
            )?;
            t.colour_near(tw / 2, th / 2, centre, tolerance)?;
        }

        // An odd size: at least what was asked for, at most the original.
        let query = "width=40&height=40&method=crop";
        let t = thumbnail(&http, &mxc.thumbnail_path(query), Some(&token)).await?;
        let (tw, th) = t.size();
        ensure!(
            (40..=w).contains(&tw) && (40..=h).contains(&th),
            "{name}: {query} gave {tw}x{th}: smaller than asked for or larger than the original"
        );

        // Asking for far more than the largest standard size never enlarges.
        let query = "width=5000&height=5000&method=scale";
        let t = thumbnail(&http, &mxc.thumbnail_path(query), Some(&token)).await?;
        let (tw, th) = t.size();
        ensure!(
            tw <= w && th <= h,
            "{name}: {query} gave {tw}x{th}, larger than the {w}x{h} original"
        );
        ensure!(
            (f64::from(tw) / f64::from(th) - f64::from(w) / f64::from(h)).abs() < 0.02,
            "{name}: {query} gave {tw}x{th}, not the {w}x{h} aspect ratio"
        );

        // A still picture asked for as an animated thumbnail is still a picture.
        let query = "width=96&height=96&method=crop&animated=true";
        let t = thumbnail(&http, &mxc.thumbnail_path(query), Some(&token)).await?;
        ensure!(t.size() == (96, 96), "{name}: {query} gave {:?}", t.size());

        // The legacy endpoint needs no token and gives the same size.
        let query = "width=96&height=96&method=crop";
        let t = thumbnail(&http, &mxc.legacy_thumbnail_path(query), None).await?;
        ensure!(
            t.size() == (96, 96),
            "{name}: legacy {query} gave {:?}",
            t.size()
        );
        ensure!(
            t.reply.header("content-length") == Some(t.reply.body.len().to_string().as_str()),
            "{name}: thumbnail Content-Length {:?} for {} bytes",
            t.reply.header("content-length"),
            t.reply.body.len()
        );

        // A crop fills the requested box exactly, also at a size whose
        // standard entry is a scale: "crop" gives the aspect ratio of the
        // request, at least the requested size where the original allows.
        let query = "width=320&height=240&method=crop";
        let t = thumbnail(&http, &mxc.thumbnail_path(query), Some(&token)).await?;
        ensure!(
            t.size() == (320, 240),
            "{name}: a 320x240 crop thumbnail is {:?}, not the 320x240 box asked for",
            t.size()
        );
        t.colour_near(160, 120, centre, tolerance)
            .with_context(|| format!("{name}: {query}"))?;

        // Through matrix-sdk, as a client showing a timeline would ask.
        let request = MediaRequestParameters {
            source: MediaSource::Plain(mxc.to_sdk()?),
            format: MediaFormat::Thumbnail(MediaThumbnailSettings::with_method(
                Method::Crop,
                UInt::from(96u32),
                UInt::from(96u32),
            )),
        };
        let bytes = alice
            .client
            .media()
            .get_media_content(&request, false)
            .await
            .with_context(|| format!("{name}: matrix-sdk thumbnail"))?;
        let img = decode_image(&bytes).with_context(|| format!("{name}: matrix-sdk thumbnail"))?;
        ensure!(
            (img.width(), img.height()) == (96, 96),
            "{name}: matrix-sdk's 96x96 crop thumbnail is {}x{}",
            img.width(),
            img.height()
        );
    }

    // A picture smaller than every standard size is never enlarged.
    let tiny = test_image(50, 40, ImageFormat::Png)?;
    let mxc = http
        .upload_media_ok(&token, "image/png", Some("icon.png"), tiny)
        .await?;
    for query in [
        "width=320&height=240&method=scale",
        "width=96&height=96&method=crop",
    ] {
        let t = thumbnail(&http, &mxc.thumbnail_path(query), Some(&token)).await?;
        let (tw, th) = t.size();
        ensure!(
            tw <= 50 && th <= 40,
            "a 50x40 icon's thumbnail for {query} is {tw}x{th}: enlarged"
        );
    }

    // Text has no thumbnail.
    let notes = http
        .upload_media_ok(
            &token,
            "text/plain",
            Some("notes.txt"),
            b"buy milk".to_vec(),
        )
        .await?;
    let r = http
        .get_bytes(
            &notes.thumbnail_path("width=96&height=96&method=crop"),
            Some(&token),
            &[],
        )
        .await?;
    r.expect_status(400)
        .context("a thumbnail of text/plain must be refused")?;
    ensure!(
        r.reply().errcode().is_some(),
        "the 400 for a text thumbnail is not a Matrix error: {}",
        r.preview()
    );
    Ok(())
}

/// Alice records a 2 MB voice note. Bob's player fetches it whole, then
/// seeks: byte ranges come back as 206 with the right Content-Range and
/// exactly those bytes, a suffix range gives the end, and a range past the
/// end is 416. The file is passed through untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_voice_note_streams_with_ranges() -> Result<()> {
    const LEN: usize = 2_000_000;
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let bob_token = bob.access_token();

    let voice = pseudo_random_bytes(LEN, 0x0060_0d5e);
    let mxc = http
        .upload_media_ok(
            &alice.access_token(),
            "audio/ogg",
            Some("voice-note.ogg"),
            voice.clone(),
        )
        .await?;

    let path = mxc.download_path();
    let r = http.get_bytes(&path, Some(&bob_token), &[]).await?;
    expect_download(&r, &voice, "audio/ogg", "the whole voice note")?;
    expect_disposition(&r, "inline", Some("voice-note.ogg"), "the whole voice note")?;
    expect_sandboxed(&r, "the whole voice note")?;
    ensure!(
        r.header("accept-ranges") == Some("bytes"),
        "downloads should advertise Accept-Ranges: bytes, got {:?}",
        r.header("accept-ranges")
    );

    // (Range header, first byte, last byte) of each seek.
    let seeks = [
        ("bytes=1000-1999", 1000usize, 1999usize),
        ("bytes=1999000-", 1_999_000, LEN - 1),
        ("bytes=-500", LEN - 500, LEN - 1),
        ("bytes=0-0", 0, 0),
        // A range running past the end is cut at the end.
        ("bytes=1999990-2999999", 1_999_990, LEN - 1),
    ];
    for (range, first, last) in seeks {
        let r = http
            .get_bytes(&path, Some(&bob_token), &[("range", range)])
            .await?;
        r.expect_status(206)
            .with_context(|| format!("Range: {range}"))?;
        let want_range = format!("bytes {first}-{last}/{LEN}");
        ensure!(
            r.header("content-range") == Some(want_range.as_str()),
            "Range: {range}: Content-Range {:?}, expected {want_range:?}",
            r.header("content-range")
        );
        ensure!(
            r.body == voice[first..=last],
            "Range: {range}: got {} bytes that are not bytes {first}..={last} of the note",
            r.body.len()
        );
        ensure!(
            r.header("content-length") == Some((last - first + 1).to_string().as_str()),
            "Range: {range}: Content-Length {:?} for {} bytes",
            r.header("content-length"),
            last - first + 1
        );
        ensure!(
            r.header("content-type") == Some("audio/ogg"),
            "Range: {range}: Content-Type {:?}",
            r.header("content-type")
        );
    }

    // The legacy endpoint seeks as well.
    let r = http
        .get_bytes(
            &mxc.legacy_download_path(),
            None,
            &[("range", "bytes=1000-1999")],
        )
        .await?;
    r.expect_status(206).context("legacy Range request")?;
    ensure!(
        r.body == voice[1000..2000],
        "legacy Range: wrong bytes ({} of them)",
        r.body.len()
    );

    // Past the end.
    let r = http
        .get_bytes(&path, Some(&bob_token), &[("range", "bytes=3000000-")])
        .await?;
    r.expect_status(416).context("Range: bytes=3000000-")?;
    if let Some(cr) = r.header("content-range") {
        ensure!(
            cr == format!("bytes */{LEN}"),
            "a 416 names the full length as Content-Range: bytes */{LEN}, got {cr:?}"
        );
    }

    // Bob's client gets the same note.
    let got = bob
        .client
        .media()
        .get_media_content(&sdk_file(&mxc)?, false)
        .await
        .context("Bob's client downloading the voice note")?;
    ensure!(got == voice, "Bob's client got a different voice note");
    Ok(())
}

/// With a 1 MiB upload limit and a 3 MB quota per user: the config
/// endpoints announce the limit; a declared 2 MiB upload is M_TOO_LARGE
/// before its body is sent, and matrix-sdk refuses one byte over by itself;
/// nothing is left on disk; a file of exactly the limit is fine. Alice's
/// third 1 MiB file would pass her quota and is refused with M_FORBIDDEN,
/// while Bob, who has his own quota, goes on uploading and Alice can still
/// send a small file that fits. Clients that push an over-limit body in
/// full still read the 413.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_limit_are_m_too_large() -> Result<()> {
    const MAX: usize = 1_048_576;
    let server =
        TestServer::start_with_media("max_upload_bytes = 1048576\nuser_quota_bytes = 3000000")
            .await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());
    let media_dir = server.default_media_dir();

    for path in [format!("{MEDIA_V1}/config"), format!("{MEDIA_V3}/config")] {
        let r = http.get(&path, Some(&alice_token)).await?;
        r.expect_ok().with_context(|| format!("GET {path}"))?;
        ensure!(
            r.json["m.upload.size"] == MAX,
            "GET {path} should announce m.upload.size {MAX}: {}",
            r.text
        );
    }
    http.get(&format!("{MEDIA_V1}/config"), None)
        .await?
        .expect_error(401, "M_MISSING_TOKEN")
        .context("the authenticated media config needs a token")?;

    // A 2 MiB file is refused from its declared length alone: the server
    // answers before any of the body has arrived.
    let answer = http
        .raw_exchange(
            &format!(
                "POST {MEDIA_V3}/upload?filename=clip.mp4 HTTP/1.1\r\nhost: localhost\r\n\
                 authorization: Bearer {alice_token}\r\ncontent-type: video/mp4\r\n\
                 content-length: {}\r\n\r\n",
                2 * MAX
            ),
            &[],
        )
        .await
        .context("a 2 MiB upload whose body is never sent: the server waits for it")?;
    ensure!(
        raw_status(&answer)? == 413 && answer.contains("M_TOO_LARGE"),
        "a declared 2 MiB upload should be 413 M_TOO_LARGE before the body: {:?}",
        answer.chars().take(400).collect::<String>()
    );
    // Alice's client knows the limit from the config endpoint and does not
    // even try (or, if it did, the server would say M_TOO_LARGE).
    let too_big = alice
        .client
        .media()
        .upload(
            &"application/octet-stream".parse()?,
            pseudo_random_bytes(MAX + 1, 2),
            None,
        )
        .await;
    match &too_big {
        Err(SdkError::Media(MediaError::MediaTooLargeToUpload { max, .. })) => ensure!(
            *max == UInt::from(MAX as u32),
            "matrix-sdk learned the limit {max} instead of {MAX}"
        ),
        _ => assert_matrix_error(&too_big, 413, "M_TOO_LARGE"),
    }
    let left = files_under(&media_dir)?;
    ensure!(
        left.is_empty(),
        "refused uploads left files in {}: {left:?}",
        media_dir.display()
    );

    // Exactly the limit is allowed: Alice has used 1 MiB of her 3 MB.
    let first = pseudo_random_bytes(MAX, 3);
    let mxc = http
        .upload_media_ok(
            &alice_token,
            "application/octet-stream",
            None,
            first.clone(),
        )
        .await
        .context("an upload of exactly max_upload_bytes")?;
    let r = http
        .get_bytes(&mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(&r, &first, "application/octet-stream", "the 1 MiB file")?;
    ensure!(
        !files_under(&media_dir)?.is_empty(),
        "the stored upload is not under {}: is the default media path not beside the \
         database?",
        media_dir.display()
    );

    // Bob's uploads do not count against Alice.
    http.upload_media_ok(
        &bob_token,
        "application/octet-stream",
        None,
        pseudo_random_bytes(MAX, 4),
    )
    .await
    .context("Bob's first 1 MiB")?;
    // Alice's second: 2 MiB used.
    http.upload_media_ok(
        &alice_token,
        "application/octet-stream",
        None,
        pseudo_random_bytes(MAX, 5),
    )
    .await
    .context("Alice's second 1 MiB (2 MiB of her 3 MB quota)")?;
    // Her third would make 3 MiB > 3 MB. (Requests the server refuses
    // before reading their body go through a client of their own, so that
    // the checks after them do not depend on how the refused connection is
    // closed; the end of this test checks that.)
    let r = server
        .http()
        .upload_media(
            &alice_token,
            Some("application/octet-stream"),
            None,
            pseudo_random_bytes(MAX, 6),
        )
        .await?;
    r.expect_error(403, "M_FORBIDDEN")
        .context("Alice's third 1 MiB upload goes over her 3 MB quota")?;
    // Bob is unaffected by Alice's quota.
    http.upload_media_ok(
        &bob_token,
        "application/octet-stream",
        None,
        pseudo_random_bytes(MAX, 7),
    )
    .await
    .context("Bob's second 1 MiB while Alice is at her quota")?;
    // The refused upload did not count: 500 kB still fit in Alice's quota.
    http.upload_media_ok(
        &alice_token,
        "text/plain",
        Some("small.txt"),
        pseudo_random_bytes(500_000, 8),
    )
    .await
    .context("Alice's 500 kB upload with 2 MiB of her 3 MB used")?;

    // Clients that send an over-limit body in full anyway (a stale config)
    // still read the 413, and go on using the same client afterwards: the
    // server must not reset the connection under them (RFC 9112 section
    // 9.6: drain the refused body, bounded, or close lingeringly, and never
    // leave a connection that looks reusable but is closed). Nothing of it
    // is stored.
    let stored = files_under(&media_dir)?;
    let client = server.http();
    for round in 1..=3 {
        for (len, seed) in [(MAX + 1, 30 + round), (2 * MAX, 40 + round)] {
            client
                .upload_media(
                    &bob_token,
                    Some("video/mp4"),
                    Some("clip.mp4"),
                    pseudo_random_bytes(len, seed),
                )
                .await
                .with_context(|| {
                    format!(
                        "round {round}: a {len} byte upload over the 1 MiB limit: the client \
                         could not read the server's answer (the connection was closed while \
                         the body was still being sent)"
                    )
                })?
                .expect_error(413, "M_TOO_LARGE")
                .with_context(|| format!("round {round}: a {len} byte upload"))?;
            client
                .get(&format!("{MEDIA_V1}/config"), Some(&bob_token))
                .await
                .with_context(|| {
                    format!(
                        "round {round}: the same client's next request after a refused \
                         {len} byte upload failed: the server closed a connection it had \
                         left open for reuse"
                    )
                })?
                .expect_ok()?;
        }
    }
    ensure!(
        files_under(&media_dir)? == stored,
        "refused uploads changed the files in {}",
        media_dir.display()
    );
    Ok(())
}

/// Crafted images whose headers claim billions of pixels (a few hundred
/// bytes to kilobytes on the wire) upload fine, as they are only bytes, but
/// thumbnailing them is refused, even several at once, and the server
/// stays up with its memory peak well below what decoding would take. A
/// small PNG made the same way thumbnails fine, so the refusals are about
/// the size.
#[tokio::test(flavor = "multi_thread")]
async fn a_decompression_bomb_is_refused_without_exhausting_memory() -> Result<()> {
    const PEAK_LIMIT_KIB: u64 = 500 * 1024;
    let mut server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let rss_before = server.peak_rss_kib()?;

    // The same hand-made encoding at a sane size is a valid picture.
    let sane = hand_made_png(64, 64);
    let mxc = http
        .upload_media_ok(&token, "image/png", Some("sane.png"), sane)
        .await?;
    let t = thumbnail(
        &http,
        &mxc.thumbnail_path("width=32&height=32&method=crop"),
        Some(&token),
    )
    .await
    .context("thumbnail of a small hand-made PNG")?;
    ensure!(
        t.size() == (32, 32),
        "hand-made PNG thumbnail is {:?}",
        t.size()
    );

    let bombs = [
        (
            "PNG claiming 100000x100000",
            "image/png",
            hand_made_png(100_000, 100_000),
            (100_000u32, 100_000u32),
        ),
        // 2^16 * 2^16 pixels is 0 in 32-bit arithmetic.
        (
            "PNG claiming 65536x65536",
            "image/png",
            hand_made_png(65_536, 65_536),
            (65_536, 65_536),
        ),
        // Each side is modest, the product is over the 33554432 pixel limit.
        (
            "PNG claiming 1x40000000",
            "image/png",
            hand_made_png(1, 40_000_000),
            (1, 40_000_000),
        ),
        (
            "JPEG claiming 65000x65000",
            "image/jpeg",
            jpeg_claiming(65_000, 65_000)?,
            (65_000, 65_000),
        ),
    ];
    let mut thumbnail_paths = Vec::new();
    for (what, content_type, bytes, claimed) in &bombs {
        ensure!(
            declared_dimensions(bytes)? == *claimed,
            "{what}: the crafted header does not read as {claimed:?}"
        );
        let mxc = http
            .upload_media_ok(&token, content_type, Some("bomb"), bytes.clone())
            .await
            .with_context(|| format!("{what}: the upload itself is just bytes"))?;
        let r = http
            .get_bytes(&mxc.download_path(), Some(&token), &[])
            .await?;
        expect_download(&r, bytes, content_type, what)?;
        for query in [
            "width=96&height=96&method=crop",
            "width=800&height=600&method=scale",
        ] {
            thumbnail_paths.push((what.to_string(), mxc.thumbnail_path(query)));
        }
        thumbnail_paths.push((
            what.to_string(),
            mxc.legacy_thumbnail_path("width=320&height=240&method=scale"),
        ));
    }

    // All at once, as a hostile client would.
    let mut tasks = Vec::new();
    for (what, path) in thumbnail_paths {
        let (http, token) = (http.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let r = http.get_bytes(&path, Some(&token), &[]).await;
            (what, path, r)
        }));
    }
    for task in tasks {
        let (what, path, r) = task.await?;
        let r = r.with_context(|| format!("{what}: GET {path} got no answer"))?;
        // Bellwire answers 400; the spec's 413 M_TOO_LARGE ("too large to
        // thumbnail") is as good a refusal.
        let refused = (r.status == 400 && r.reply().errcode().is_some())
            || r.expect_error(413, "M_TOO_LARGE").is_ok();
        ensure!(
            refused,
            "{what}: GET {path} should be refused with 400, got {} {}",
            r.status,
            r.preview()
        );
    }

    http.assert_alive()
        .await
        .context("the server after the bombs")?;
    ensure!(server.is_running(), "the server process died");
    let peak = server.peak_rss_kib()?;
    eprintln!("server peak RSS: {rss_before} KiB before the bombs, {peak} KiB after");
    ensure!(
        peak < PEAK_LIMIT_KIB,
        "the server's peak RSS reached {peak} KiB (limit {PEAK_LIMIT_KIB} KiB): it decoded \
         (part of) a decompression bomb"
    );
    // Still working normally.
    let t = thumbnail(
        &http,
        &mxc.thumbnail_path("width=32&height=32&method=crop"),
        Some(&token),
    )
    .await
    .context("a normal thumbnail after the bombs")?;
    ensure!(
        t.size() == (32, 32),
        "thumbnail after the bombs is {:?}",
        t.size()
    );
    Ok(())
}

/// Mallory uploads an HTML page with a script and an SVG with one. They
/// come back with their types, but as attachments inside a sandbox a
/// browser will not sniff or run; a type in capitals is not a way around
/// that. Plain text is shown inline, unknown bytes are attachments.
#[tokio::test(flavor = "multi_thread")]
async fn html_and_svg_are_served_as_attachments() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let mallory = server.new_user("mallory").await?;
    let alice = server.new_user("alice").await?;
    let (mallory_token, alice_token) = (mallory.access_token(), alice.access_token());

    let html = b"<!doctype html><html><body><script>fetch('/_matrix/client/v3/account/whoami')\
                 </script></body></html>"
        .to_vec();
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(document.cookie)\">\
                <script>alert(1)</script><rect width=\"10\" height=\"10\"/></svg>"
        .to_vec();
    // (content type, file name, bytes, expected disposition)
    let files = [
        ("text/html", "prize.html", html.clone(), "attachment"),
        ("image/svg+xml", "logo.svg", svg, "attachment"),
        ("Text/HTML", "shouty.html", html, "attachment"),
        (
            "application/octet-stream",
            "blob.bin",
            pseudo_random_bytes(3000, 9),
            "attachment",
        ),
        ("text/plain", "readme.txt", b"just words".to_vec(), "inline"),
    ];
    for (content_type, name, bytes, disposition) in files {
        let mxc = http
            .upload_media_ok(&mallory_token, content_type, Some(name), bytes.clone())
            .await?;
        let downloads = [
            (mxc.download_path(), Some(alice_token.as_str())),
            (mxc.legacy_download_path(), None),
        ];
        for (path, token) in downloads {
            let what = format!("{content_type} {name} via {path}");
            let r = http.get_bytes(&path, token, &[]).await?;
            r.expect_ok().with_context(|| what.clone())?;
            ensure!(r.body == bytes, "{what}: different bytes came back");
            let ct = r.expect_header("content-type")?;
            ensure!(
                ct.eq_ignore_ascii_case(content_type),
                "{what}: Content-Type {ct:?}, uploaded as {content_type:?}"
            );
            expect_disposition(&r, disposition, Some(name), &what)?;
            expect_sandboxed(&r, &what)?;
        }
    }
    Ok(())
}

/// The authenticated endpoints want a valid token; unknown media is
/// M_NOT_FOUND everywhere; the legacy endpoint serves anyone. After the
/// admin turns legacy downloads off and restarts, older media stays on the
/// legacy endpoint (frozen) and everything still downloads with a token,
/// but new uploads are only on the authenticated endpoints, which is what
/// matrix-sdk uses.
#[tokio::test(flavor = "multi_thread")]
async fn authentication_and_unknown_media() -> Result<()> {
    let mut server =
        TestServer::start_with_media("legacy_unauthenticated_downloads = true").await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());

    let r = server
        .http()
        .call_bytes(
            "POST",
            &format!("{MEDIA_V3}/upload"),
            None,
            &[("content-type", "text/plain")],
            Some(b"anonymous".to_vec()),
        )
        .await?;
    r.expect_error(401, "M_MISSING_TOKEN")
        .context("an upload without a token")?;

    let old = b"uploaded while legacy downloads were on".to_vec();
    let old_mxc = http
        .upload_media_ok(&alice_token, "text/plain", Some("old.txt"), old.clone())
        .await?;
    let old_png = test_image(200, 150, ImageFormat::Png)?;
    let old_png_mxc = http
        .upload_media_ok(&alice_token, "image/png", Some("old.png"), old_png)
        .await?;

    let thumb_query = "width=96&height=96&method=crop";
    http.get_bytes(&old_mxc.download_path(), None, &[])
        .await?
        .expect_error(401, "M_MISSING_TOKEN")
        .context("authenticated download without a token")?;
    http.get_bytes(&old_mxc.download_path(), Some("not-a-real-token"), &[])
        .await?
        .expect_error(401, "M_UNKNOWN_TOKEN")
        .context("authenticated download with a made-up token")?;
    http.get_bytes(&old_png_mxc.thumbnail_path(thumb_query), None, &[])
        .await?
        .expect_error(401, "M_MISSING_TOKEN")
        .context("authenticated thumbnail without a token")?;
    let r = http
        .get_bytes(&old_mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(&r, &old, "text/plain", "Bob downloads Alice's file")?;
    let r = http
        .get_bytes(&old_mxc.legacy_download_path(), None, &[])
        .await?;
    expect_download(&r, &old, "text/plain", "legacy download without a token")?;

    let unknown = Mxc::unknown();
    for path in [
        unknown.download_path(),
        unknown.thumbnail_path(thumb_query),
        format!("{}/{}", unknown.download_path(), enc("x.txt")),
    ] {
        http.get_bytes(&path, Some(&bob_token), &[])
            .await?
            .expect_error(404, "M_NOT_FOUND")
            .with_context(|| format!("GET {path} of media nobody uploaded"))?;
    }
    for path in [
        unknown.legacy_download_path(),
        unknown.legacy_thumbnail_path(thumb_query),
    ] {
        http.get_bytes(&path, None, &[])
            .await?
            .expect_error(404, "M_NOT_FOUND")
            .with_context(|| format!("GET {path} of media nobody uploaded"))?;
    }

    // The admin turns the legacy endpoints off and restarts.
    server.stop().await?;
    let config_path = server.config_path();
    let config = std::fs::read_to_string(&config_path)?;
    ensure!(
        config.contains("legacy_unauthenticated_downloads = true"),
        "the config file does not carry the setting written by this test:\n{config}"
    );
    std::fs::write(
        &config_path,
        config.replace(
            "legacy_unauthenticated_downloads = true",
            "legacy_unauthenticated_downloads = false",
        ),
    )?;
    server.start_again().await?;
    let http = server.http();
    let alice = server.login("alice", &password_for("alice")).await?;
    let bob = server.login("bob", &password_for("bob")).await?;
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());

    let new = b"uploaded after legacy downloads were turned off".to_vec();
    let new_mxc = http
        .upload_media_ok(&alice_token, "text/plain", Some("new.txt"), new.clone())
        .await?;
    let new_png = test_image(200, 150, ImageFormat::Png)?;
    let new_png_mxc = http
        .upload_media_ok(&alice_token, "image/png", Some("new.png"), new_png.clone())
        .await?;
    for path in [
        new_mxc.legacy_download_path(),
        format!("{}/{}", new_mxc.legacy_download_path(), enc("new.txt")),
        new_png_mxc.legacy_thumbnail_path(thumb_query),
    ] {
        http.get_bytes(&path, None, &[])
            .await?
            .expect_error(404, "M_NOT_FOUND")
            .with_context(|| format!("legacy GET {path} of media uploaded while it is off"))?;
    }
    let r = http
        .get_bytes(&new_mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(
        &r,
        &new,
        "text/plain",
        "authenticated download of new media",
    )?;
    thumbnail(
        &http,
        &new_png_mxc.thumbnail_path(thumb_query),
        Some(&bob_token),
    )
    .await
    .context("authenticated thumbnail of new media")?;
    expect_sdk_download(&bob, &new_png_mxc, &new_png).await?;

    // Media from before is frozen as it was, and survived the restart.
    let r = http
        .get_bytes(&old_mxc.legacy_download_path(), None, &[])
        .await?;
    expect_download(
        &r,
        &old,
        "text/plain",
        "legacy download of media from before",
    )?;
    let r = http
        .get_bytes(&old_mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(
        &r,
        &old,
        "text/plain",
        "authenticated download after the restart",
    )?;
    Ok(())
}

/// Bob's client fetches `mxc` and gets `bytes`.
async fn expect_sdk_download(bob: &User, mxc: &Mxc, bytes: &[u8]) -> Result<()> {
    let got = bob
        .client
        .media()
        .get_media_content(&sdk_file(mxc)?, false)
        .await
        .with_context(|| format!("{}'s client downloading {mxc}", bob.user_id))?;
    ensure!(
        got == bytes,
        "{}'s client got {} bytes for {mxc}, not the {} uploaded",
        bob.user_id,
        got.len(),
        bytes.len()
    );
    Ok(())
}

/// Alice reserves a content URI before her voice note is recorded (e.g. to
/// send the event early). Until she uploads, a download is
/// M_NOT_YET_UPLOADED; Bob cannot fill her reservation; she fills it once
/// and cannot overwrite it. A download already waiting when the bytes
/// arrive gets them. matrix-sdk's create/upload_preallocated does the same.
#[tokio::test(flavor = "multi_thread")]
async fn async_upload_create_then_put() -> Result<()> {
    let server = TestServer::start().await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let bob = server.new_user("bob").await?;
    let (alice_token, bob_token) = (alice.access_token(), bob.access_token());
    let create = "/_matrix/media/v1/create";
    let put_path = |mxc: &Mxc, name: &str| {
        format!(
            "{MEDIA_V3}/upload/{}?filename={}",
            mxc.segments(),
            enc(name)
        )
    };
    let put = |mxc: &Mxc, token: &str, bytes: Vec<u8>| {
        // A client per PUT: several are refused before their body is read.
        let (http, path, token) = (server.http(), put_path(mxc, "voice.ogg"), token.to_owned());
        async move {
            http.call_bytes(
                "PUT",
                &path,
                Some(&token),
                &[("content-type", "audio/ogg")],
                Some(bytes),
            )
            .await
        }
    };

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let r = http
        .post(create, Some(&alice_token), serde_json::json!({}))
        .await?;
    r.expect_ok().context("POST /media/v1/create")?;
    let mxc = Mxc::parse(
        r.json["content_uri"]
            .as_str()
            .with_context(|| format!("create answer without content_uri: {}", r.text))?,
    )?;
    let expires = r.json["unused_expires_at"]
        .as_u64()
        .with_context(|| format!("create answer without unused_expires_at: {}", r.text))?;
    ensure!(
        u128::from(expires) > now_ms,
        "unused_expires_at {expires} is not in the future (now {now_ms})"
    );

    // Nothing there yet.
    let started = Instant::now();
    let r = http
        .get_bytes(
            &format!("{}?timeout_ms=500", mxc.download_path()),
            Some(&bob_token),
            &[],
        )
        .await?;
    r.expect_error(504, "M_NOT_YET_UPLOADED")
        .context("download of a reserved, empty content URI")?;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "timeout_ms=500 took {:?} to answer",
        started.elapsed()
    );

    // Not Bob's to fill.
    let voice = pseudo_random_bytes(300_000, 10);
    put(&mxc, &bob_token, pseudo_random_bytes(1000, 11))
        .await?
        .expect_error(403, "M_FORBIDDEN")
        .context("Bob filling Alice's reserved content URI")?;
    // Alice fills it.
    let r = put(&mxc, &alice_token, voice.clone()).await?;
    r.expect_ok()
        .context("Alice filling her reserved content URI")?;
    ensure!(
        r.json() == serde_json::json!({}),
        "PUT answers {{}}, got {}",
        r.preview()
    );
    let r = http
        .get_bytes(&mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(&r, &voice, "audio/ogg", "the filled content URI")?;
    expect_disposition(&r, "inline", Some("voice.ogg"), "the filled content URI")?;
    // Once only.
    put(&mxc, &alice_token, pseudo_random_bytes(1000, 12))
        .await?
        .expect_error(409, "M_CANNOT_OVERWRITE_MEDIA")
        .context("a second PUT to the same content URI")?;
    let r = http
        .get_bytes(&mxc.download_path(), Some(&bob_token), &[])
        .await?;
    expect_download(&r, &voice, "audio/ogg", "after the refused overwrite")?;

    // A content URI nobody reserved cannot be filled.
    put(&Mxc::unknown(), &alice_token, pseudo_random_bytes(1000, 13))
        .await?
        .expect_error(404, "M_NOT_FOUND")
        .context("PUT to a content URI that was never created")?;

    // Bob is already waiting when Alice's bytes arrive.
    let r = http
        .post(create, Some(&alice_token), serde_json::json!({}))
        .await?;
    r.expect_ok()?;
    let late = Mxc::parse(r.json["content_uri"].as_str().context("no content_uri")?)?;
    let waiting = {
        let (http, path, token) = (
            http.clone(),
            format!("{}?timeout_ms=10000", late.download_path()),
            bob_token.clone(),
        );
        tokio::spawn(async move { http.get_bytes(&path, Some(&token), &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late_voice = pseudo_random_bytes(50_000, 14);
    put(&late, &alice_token, late_voice.clone())
        .await?
        .expect_ok()
        .context("Alice filling the content URI Bob waits for")?;
    let r = tokio::time::timeout(WAIT, waiting)
        .await
        .context("Bob's waiting download never answered")???;
    if r.status == 504 {
        // The spec lets the server answer before the timeout; then the
        // client retries.
        r.expect_error(504, "M_NOT_YET_UPLOADED")?;
        eprintln!("note: the waiting download was answered 504 early instead of waiting");
        let r = http
            .get_bytes(&late.download_path(), Some(&bob_token), &[])
            .await?;
        expect_download(&r, &late_voice, "audio/ogg", "the retried download")?;
    } else {
        expect_download(&r, &late_voice, "audio/ogg", "the download that waited")?;
    }

    // The same through matrix-sdk.
    let media = alice.client.media();
    let reserved = media
        .create_content_uri()
        .await
        .context("matrix-sdk create_content_uri")?;
    let reserved_mxc = Mxc::parse(reserved.uri.as_str())?;
    let photo = test_image(320, 240, ImageFormat::Jpeg)?;
    media
        .upload_preallocated(reserved, &"image/jpeg".parse()?, photo.clone())
        .await
        .context("matrix-sdk upload_preallocated")?;
    expect_sdk_download(&bob, &reserved_mxc, &photo).await?;
    // Filling it again through the client's request type is refused too.
    let mut again =
        create_content_async::v3::Request::from_url(&reserved_mxc.to_sdk()?, vec![1, 2, 3])?;
    again.content_type = Some("image/jpeg".to_owned());
    let again: Result<_, SdkError> = alice.client.send(again).await.map_err(Into::into);
    assert_matrix_error(&again, 409, "M_CANNOT_OVERWRITE_MEDIA");
    expect_sdk_download(&bob, &reserved_mxc, &photo).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// URL previews
// ---------------------------------------------------------------------------

/// A web page on 127.0.0.1 that counts who fetches it.
struct PageServer {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    hits: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

const RELEASE_NOTES: &str = "<!doctype html><html><head>\
    <title>Release notes (plain title)</title>\
    <meta property=\"og:title\" content=\"Bellwire 1.0 is out\">\
    <meta property=\"og:description\" content=\"Media, thumbnails and previews.\">\
    </head><body><h1>Bellwire 1.0</h1><p>Lots of things.</p></body></html>";

impl PageServer {
    async fn start(html: &'static str) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (log, count) = (requests.clone(), hits.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().unwrap().push(line);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(Self {
            addr,
            requests,
            hits,
            accept,
        })
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn preview_path(url: &str) -> String {
    format!("{MEDIA_V1}/preview_url?url={}", enc(url))
}

/// URL previews are off by default, and when on they never fetch private
/// addresses (in any spelling of 127.0.0.1) unless the admin explicitly
/// allows it: the page server sees no request at all. When allowed, a page's
/// OpenGraph title and description come back; non-HTTP URLs never do.
#[tokio::test(flavor = "multi_thread")]
async fn url_previews_refuse_private_addresses() -> Result<()> {
    let page = PageServer::start(RELEASE_NOTES).await?;
    let port = page.port();
    let page_url = format!("http://127.0.0.1:{port}/release-notes");

    // Off: private addresses would be allowed, but previews are not.
    let server =
        TestServer::start_with_media("url_previews = false\nurl_preview_allow_private = true")
            .await?;
    let alice = server.new_user("alice").await?;
    let r = server
        .http()
        .get(&preview_path(&page_url), Some(&alice.access_token()))
        .await?;
    r.expect_error_in(404, &["M_UNRECOGNIZED"])
        .or_else(|_| r.expect_error(403, "M_FORBIDDEN"))
        .context("preview_url with url_previews = false")?;
    ensure!(
        page.hits() == 0,
        "with previews off the server still fetched the page: {:?}",
        page.requests()
    );
    drop(alice);
    drop(server);

    // On, private addresses refused.
    let server =
        TestServer::start_with_media("url_previews = true\nurl_preview_allow_private = false")
            .await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    http.get(&preview_path(&page_url), None)
        .await?
        .expect_error(401, "M_MISSING_TOKEN")
        .context("preview_url without a token")?;
    for url in [
        page_url.clone(),
        format!("http://localhost:{port}/release-notes"),
    ] {
        http.get(&preview_path(&url), Some(&token))
            .await?
            .expect_error(403, "M_FORBIDDEN")
            .with_context(|| format!("preview of {url} with private addresses refused"))?;
    }
    // Other spellings of loopback and "this host".
    for host in [
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "127.0.0.1.",
    ] {
        let url = format!("http://{host}:{port}/release-notes");
        let r = http.get(&preview_path(&url), Some(&token)).await?;
        ensure!(
            (r.status == 403 || r.status == 400) && r.errcode().is_some(),
            "preview of {url} must be refused (403, or 400 if unparsable), got {} {}",
            r.status,
            r.text
        );
    }
    ensure!(
        page.hits() == 0,
        "the server fetched a loopback page although private addresses are refused: {:?}",
        page.requests()
    );
    drop(alice);
    drop(server);

    // On, private addresses allowed (a test setup).
    let server =
        TestServer::start_with_media("url_previews = true\nurl_preview_allow_private = true")
            .await?;
    let http = server.http();
    let alice = server.new_user("alice").await?;
    let token = alice.access_token();
    let r = http.get(&preview_path(&page_url), Some(&token)).await?;
    r.expect_ok().context("preview of the release notes page")?;
    ensure!(
        r.json["og:title"] == "Bellwire 1.0 is out",
        "og:title should be the page's og:title: {}",
        r.text
    );
    ensure!(
        r.json["og:description"] == "Media, thumbnails and previews.",
        "og:description should be the page's og:description: {}",
        r.text
    );
    ensure!(
        page.hits() >= 1
            && page
                .requests()
                .iter()
                .any(|l| l.starts_with("GET /release-notes ")),
        "the page server saw no GET /release-notes: {:?}",
        page.requests()
    );
    // Only web pages: never local files.
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/",
        "gopher://127.0.0.1:70/",
    ] {
        let r = http.get(&preview_path(url), Some(&token)).await?;
        ensure!(
            (400..500).contains(&r.status) && r.errcode().is_some(),
            "preview of {url} must be refused with a 4xx Matrix error, got {} {}",
            r.status,
            r.text
        );
        ensure!(
            !r.text.contains("root:"),
            "preview of {url} leaked a local file: {}",
            r.text
        );
    }
    let r = http.get(&preview_path("not a url"), Some(&token)).await?;
    ensure!(
        (400..500).contains(&r.status),
        "preview of a non-URL must be a 4xx, got {} {}",
        r.status,
        r.text
    );
    http.assert_alive().await?;
    Ok(())
}
