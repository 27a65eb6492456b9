//! Handlers for the media repository: uploads (plain and async), authenticated and legacy downloads with ranges, thumbnails, URL previews, config.

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    api::{
        AppState,
        extract::{Auth, P, Q},
    },
    error::{Error, Result},
    media::{ChunkSource, Media, MediaRecord, preview, thumbnail::Method},
};

/// Types a browser may render in place; everything else downloads, so an
/// uploaded HTML or SVG file can never run script in the server's origin.
const INLINE_TYPES: [&str; 14] = [
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/apng",
    "image/avif",
    "text/plain",
    "text/csv",
    "application/json",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "application/ld+json",
];

fn inline_ok(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&base.as_str())
        || (base.starts_with("audio/") && base != "audio/x-mpegurl")
}

struct BodyChunks(Body);

impl ChunkSource for BodyChunks {
    async fn next_chunk(&mut self) -> Result<Option<axum::body::Bytes>> {
        loop {
            match self.0.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::Unknown(format!("reading the upload failed: {e}")));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// How much of a refused upload is read and thrown away so the client gets
/// to see the error instead of a broken pipe (RFC 9112 section 9.6); past
/// this the connection is simply closed.
const DRAIN_CAP: usize = 64 * 1024 * 1024;

async fn drain(mut chunks: BodyChunks) {
    let mut seen = 0;
    while let Ok(Some(c)) = chunks.next_chunk().await {
        seen += c.len();
        if seen > DRAIN_CAP {
            break;
        }
    }
}

/// Answers a refused upload at once, while a background task reads and
/// discards what the client still sends (bounded in size and time), so
/// the client sees the error and not a broken pipe.
fn refuse(e: Error, chunks: BodyChunks) -> Response {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), drain(chunks)).await;
    });
    let mut resp = e.into_response();
    // The body is being drained, so the connection stays usable.
    resp.headers_mut().remove(header::CONNECTION);
    resp
}

/// Stores the request body as media, or refuses it (see `refuse`).
async fn receive(
    s: &AppState,
    user: &ruma::UserId,
    id: Option<&str>,
    filename: Option<String>,
    req: Request,
) -> std::result::Result<String, Response> {
    let ct = content_type(req.headers());
    let declared = declared_length(req.headers());
    let mut chunks = BodyChunks(req.into_body());
    if let Err(e) = s.media.check_declared(user, declared) {
        return Err(refuse(e, chunks));
    }
    s.media
        .store_upload(user, id, ct, filename, &mut chunks)
        .await
        .map_err(|e| refuse(e, chunks))
}

#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|s| !s.is_empty() && s.len() <= 255)
}

fn check_filename(name: &Option<String>) -> Result<()> {
    if name
        .as_ref()
        .is_some_and(|n| n.len() > 255 || n.contains(['/', '\\', '\0']))
    {
        return Err(Error::invalid_param(
            "filename must be at most 255 bytes without slashes",
        ));
    }
    Ok(())
}

pub async fn upload(
    State(s): State<AppState>,
    Auth(session): Auth,
    Q(q): Q<UploadQuery>,
    req: Request,
) -> Response {
    if let Err(e) = check_filename(&q.filename) {
        return refuse(e, BodyChunks(req.into_body()));
    }
    match receive(&s, &session.user_id, None, q.filename, req).await {
        Ok(id) => Json(json!({"content_uri": format!("mxc://{}/{id}", s.media.server_name())}))
            .into_response(),
        Err(resp) => resp,
    }
}

pub async fn create(State(s): State<AppState>, Auth(session): Auth) -> Result<Json<Value>> {
    let (id, expires) = s.media.create(&session.user_id).await?;
    Ok(Json(
        json!({"content_uri": format!("mxc://{}/{id}", s.media.server_name()), "unused_expires_at": expires}),
    ))
}

pub async fn upload_to(
    State(s): State<AppState>,
    Auth(session): Auth,
    P((server, id)): P<(String, String)>,
    Q(q): Q<UploadQuery>,
    req: Request,
) -> Response {
    if let Err(e) = check_filename(&q.filename) {
        return refuse(e, BodyChunks(req.into_body()));
    }
    // Two racing PUTs into one ID must not both land: the second is told
    // the ID is taken while the first is still receiving.
    let claimed = s.media.claim_upload(&id);
    let check = match &claimed {
        Some(_) => s.media.check_reserved(&session.user_id, &server, &id),
        None => Err(Error::CannotOverwriteMedia),
    };
    if let Err(e) = check {
        return refuse(e, BodyChunks(req.into_body()));
    }
    match receive(&s, &session.user_id, Some(&id), q.filename, req).await {
        Ok(_) => Json(json!({})).into_response(),
        Err(resp) => resp,
    }
}

pub async fn config(State(s): State<AppState>, Auth(_session): Auth) -> Json<Value> {
    Json(json!({"m.upload.size": s.media.config.max_upload_bytes}))
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    timeout_ms: Option<u64>,
}

/// The record of a media ID that exists (or, if reserved, once uploaded).
async fn find(
    media: &Media,
    server: &str,
    id: &str,
    timeout_ms: Option<u64>,
) -> Result<MediaRecord> {
    if server != media.server_name() {
        // Remote media was fetched (or not) before we got here.
        return media
            .record(server, id)?
            .ok_or_else(|| Error::not_found("no such media"));
    }
    let timeout = Duration::from_millis(timeout_ms.unwrap_or(20_000).min(120_000));
    media.wait_uploaded(server, id, timeout).await
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The headers every piece of media is served with.
fn safe_headers(h: &mut HeaderMap, content_type: &str, filename: Option<&str>) {
    let put = |h: &mut HeaderMap, k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(h, header::CONTENT_TYPE, content_type);
    put(
        h,
        header::CONTENT_SECURITY_POLICY,
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
    );
    put(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    put(
        h,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "cross-origin",
    );
    put(
        h,
        header::CACHE_CONTROL,
        "private, max-age=31536000, immutable",
    );
    let disposition = if inline_ok(content_type) {
        "inline"
    } else {
        "attachment"
    };
    let value = match filename {
        Some(f) => format!("{disposition}; filename*=utf-8''{}", percent_encode(f)),
        None => disposition.to_owned(),
    };
    put(h, header::CONTENT_DISPOSITION, &value);
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `len` bytes.
/// `Ok(None)` means "send it all" (no or unusable header, or several ranges).
fn parse_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        (Ok(start), Err(_)) if b.is_empty() => (start, len.saturating_sub(1)),
        (Err(_), Ok(n)) if a.is_empty() && n > 0 => (len.saturating_sub(n), len.saturating_sub(1)),
        _ => return Ok(None),
    };
    if range.0 >= len {
        return Err(Error::RangeNotSatisfiable);
    }
    Ok(Some(range))
}

async fn serve_file(
    media: &Media,
    server: &str,
    id: &str,
    rec: &MediaRecord,
    filename: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = media.file_path(server, id);
    let io = |e: std::io::Error| Error::Internal(format!("media file: {e}"));
    let content_type = rec
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let name = filename.or(rec.filename.as_deref());
    let range = match parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        rec.size,
    ) {
        Ok(r) => r,
        Err(e) => {
            let mut resp = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", rec.size)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let (status, body) = match range {
        None => (StatusCode::OK, tokio::fs::read(&path).await.map_err(io)?),
        Some((start, end)) => {
            let mut f = tokio::fs::File::open(&path).await.map_err(io)?;
            f.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
            let mut buf = vec![0; (end - start + 1) as usize];
            f.read_exact(&mut buf).await.map_err(io)?;
            (StatusCode::PARTIAL_CONTENT, buf)
        }
    };
    let len = body.len();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    safe_headers(h, &content_type, name);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Some((start, end)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{}", rec.size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// Another server's media is fetched over federation on first request.
async fn fetch_if_remote(s: &AppState, server: &str, id: &str) -> Result<()> {
    if server == s.config.server_name.as_str()
        || !crate::media::valid_media_id(id)
        || s.media.record(server, id)?.is_some()
    {
        return Ok(());
    }
    if ruma::ServerName::parse(server).is_err() {
        return Err(Error::not_found("no such media"));
    }
    s.federation
        .fetch_remote_media(server, id)
        .await
        .map_err(|e| match e {
            Error::Remote(m) => Error::NotFound(format!("remote media unavailable: {m}")),
            e => e,
        })
}

async fn download_inner(
    s: &AppState,
    server: &str,
    id: &str,
    filename: Option<&str>,
    q: &DownloadQuery,
    headers: &HeaderMap,
    legacy: bool,
) -> Result<Response> {
    fetch_if_remote(s, server, id).await?;
    let rec = find(&s.media, server, id, q.timeout_ms).await?;
    if legacy && !rec.legacy_ok {
        return Err(Error::not_found(
            "this media is only served by the authenticated endpoints",
        ));
    }
    serve_file(&s.media, server, id, &rec, filename, headers).await
}

pub async fn download(
    State(s): State<AppState>,
    Auth(_session): Auth,
    P((server, id)): P<(String, String)>,
    Q(q): Q<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    download_inner(&s, &server, &id, None, &q, &headers, false).await
}

pub async fn download_named(
    State(s): State<AppState>,
    Auth(_session): Auth,
    P((server, id, name)): P<(String, String, String)>,
    Q(q): Q<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    download_inner(&s, &server, &id, Some(&name), &q, &headers, false).await
}

pub async fn legacy_download(
    State(s): State<AppState>,
    P((server, id)): P<(String, String)>,
    Q(q): Q<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    download_inner(&s, &server, &id, None, &q, &headers, true).await
}

pub async fn legacy_download_named(
    State(s): State<AppState>,
    P((server, id, name)): P<(String, String, String)>,
    Q(q): Q<DownloadQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    download_inner(&s, &server, &id, Some(&name), &q, &headers, true).await
}

#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: Option<String>,
    height: Option<String>,
    method: Option<String>,
    animated: Option<String>,
    timeout_ms: Option<u64>,
}

fn dimension(v: Option<&str>, name: &str) -> Result<u32> {
    let v = v.ok_or_else(|| Error::MissingParam(format!("{name} is required")))?;
    match v.parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err(Error::invalid_param(format!(
            "{name} must be a positive integer"
        ))),
    }
}

async fn thumbnail_inner(
    s: &AppState,
    server: &str,
    id: &str,
    q: &ThumbnailQuery,
    legacy: bool,
) -> Result<Response> {
    let w = dimension(q.width.as_deref(), "width")?;
    let h = dimension(q.height.as_deref(), "height")?;
    let method = Method::parse(q.method.as_deref().unwrap_or("scale"))?;
    // Animated thumbnails are optional in the spec; the flag must still be a boolean.
    if q.animated
        .as_deref()
        .is_some_and(|a| a != "true" && a != "false")
    {
        return Err(Error::invalid_param("animated must be true or false"));
    }
    fetch_if_remote(s, server, id).await?;
    let rec = find(&s.media, server, id, q.timeout_ms).await?;
    if legacy && !rec.legacy_ok {
        return Err(Error::not_found(
            "this media is only served by the authenticated endpoints",
        ));
    }
    let (bytes, mime) = s.media.thumbnail(server, id, &rec, w, h, method).await?;
    let mut resp = bytes.into_response();
    safe_headers(resp.headers_mut(), &mime, None);
    Ok(resp)
}

pub async fn thumbnail(
    State(s): State<AppState>,
    Auth(_session): Auth,
    P((server, id)): P<(String, String)>,
    Q(q): Q<ThumbnailQuery>,
) -> Result<Response> {
    thumbnail_inner(&s, &server, &id, &q, false).await
}

pub async fn legacy_thumbnail(
    State(s): State<AppState>,
    P((server, id)): P<(String, String)>,
    Q(q): Q<ThumbnailQuery>,
) -> Result<Response> {
    thumbnail_inner(&s, &server, &id, &q, true).await
}

#[derive(Deserialize)]
pub struct PreviewQuery {
    url: String,
    #[allow(dead_code)]
    ts: Option<u64>,
}

pub async fn preview_url(
    State(s): State<AppState>,
    Auth(_session): Auth,
    Q(q): Q<PreviewQuery>,
) -> Result<Json<Value>> {
    if !s.media.config.url_previews {
        return Err(Error::forbidden("URL previews are disabled on this server"));
    }
    Ok(Json(
        preview::fetch(&q.url, s.media.config.url_preview_allow_private).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range(Some("bytes=90-"), 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range(Some("bytes=-10"), 100).unwrap(), Some((90, 99)));
        assert_eq!(
            parse_range(Some("bytes=50-500"), 100).unwrap(),
            Some((50, 99))
        );
        assert!(parse_range(Some("bytes=100-"), 100).is_err());
        assert_eq!(parse_range(Some("garbage"), 100).unwrap(), None);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100).unwrap(), None);
        assert_eq!(parse_range(None, 100).unwrap(), None);
    }

    #[test]
    fn only_safe_types_render_inline() {
        for t in [
            "image/png",
            "audio/ogg",
            "audio/webm; codecs=opus",
            "text/plain; charset=utf-8",
            "video/mp4",
        ] {
            assert!(inline_ok(t), "{t}");
        }
        for t in [
            "text/html",
            "image/svg+xml",
            "application/octet-stream",
            "application/javascript",
            "text/xml",
        ] {
            assert!(!inline_ok(t), "{t}");
        }
    }
}
