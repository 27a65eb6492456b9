//! Media across servers: serving ours as multipart/mixed to other servers, and fetching theirs for our clients (cached locally).

use reqwest::Method;

use super::{Federation, inbound::enc};
use crate::error::{Error, Result};

pub const BOUNDARY: &str = "bellwire-media-boundary-7c1f";

/// The spec's multipart/mixed body: a JSON metadata part, then the bytes.
pub fn multipart_body(content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 256);
    out.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    out
}

/// The media part of a multipart/mixed answer: (content type, bytes).
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Option<(String, Vec<u8>)> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"')
        .to_owned();
    let delim = format!("--{boundary}").into_bytes();
    let parts: Vec<&[u8]> = split_on(body, &delim);
    // parts[0] is the preamble, then metadata, then media.
    let media = parts.get(2)?;
    let media = media.strip_prefix(b"\r\n").unwrap_or(media);
    let header_end = find(media, b"\r\n\r\n")?;
    let headers = String::from_utf8_lossy(&media[..header_end]).into_owned();
    let mut data = &media[header_end + 4..];
    data = data.strip_suffix(b"\r\n").unwrap_or(data);
    let ctype = headers
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    Some((ctype, data.to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_on<'a>(mut hay: &'a [u8], delim: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(hay, delim) {
        out.push(&hay[..i]);
        hay = &hay[i + delim.len()..];
    }
    out.push(hay);
    out
}

impl Federation {
    /// Fetches remote media over federation and keeps a copy, so the next
    /// download is local.
    pub async fn fetch_remote_media(&self, server: &str, media_id: &str) -> Result<()> {
        self.require_enabled()?;
        let uri = format!("/_matrix/federation/v1/media/download/{}", enc(media_id));
        let (ctype, body) = self
            .client
            .send(server, Method::GET, &uri, None, true)
            .await?;
        let ctype = ctype.unwrap_or_default();
        let (media_type, bytes) = if ctype.starts_with("multipart/") {
            parse_multipart(&ctype, &body)
                .ok_or_else(|| Error::Remote(format!("{server} sent unreadable multipart media")))?
        } else {
            (ctype, body)
        };
        self.media
            .store_remote(server, media_id, &media_type, &bytes)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_round_trip() {
        let body = multipart_body("image/png", b"\x89PNG\r\n--not a boundary\r\n");
        let ct = format!("multipart/mixed; boundary={BOUNDARY}");
        let (t, b) = parse_multipart(&ct, &body).unwrap();
        assert_eq!(t, "image/png");
        assert_eq!(b, b"\x89PNG\r\n--not a boundary\r\n");
    }
}
