//! URL previews: fetch a page (never from private or loopback addresses unless configured), within size and time limits, and read its OpenGraph tags.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

const MAX_BYTES: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses a preview must never reach: the server's own network.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let seg = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg & 0xfe00) == 0xfc00 // unique local
                || (seg & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// Fetches `url` and returns its preview (`og:*` keys, `og:title` falling
/// back to `<title>`).
pub async fn fetch(url: &str, allow_private: bool) -> Result<Value> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| Error::invalid_param(format!("invalid URL: {e}")))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(Error::invalid_param(
            "only http and https URLs can be previewed",
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::invalid_param("URL has no host"))?
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| Error::not_found(format!("cannot resolve {host}: {e}")))?
            .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| Error::not_found(format!("{host} has no address")))?;
    if !allow_private && addrs.iter().any(|a| is_private(a.ip())) {
        return Err(Error::forbidden(
            "this URL points at a private address and is not previewed",
        ));
    }
    // Connect to the address just checked, never to a second lookup's answer,
    // and follow no redirects (each would need the same check).
    let client = reqwest::Client::builder()
        .resolve(&host, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .build()
        .map_err(Error::internal)?;
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| Error::not_found(format!("fetching the page failed: {e}")))?;
    if !resp.status().is_success() {
        return Err(Error::not_found(format!(
            "the page answered {}",
            resp.status()
        )));
    }
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Error::not_found(format!("reading the page failed: {e}")))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BYTES {
            body.truncate(MAX_BYTES);
            break;
        }
    }
    if !content_type.starts_with("text/html") {
        return Ok(Value::Object(Map::new()));
    }
    Ok(Value::Object(opengraph(&String::from_utf8_lossy(&body))))
}

/// `og:*` meta tags and the `<title>`, read with a plain scan (no HTML
/// parser: previews need a handful of attributes, not a DOM).
pub fn opengraph(html: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<meta") {
        let start = at + i;
        let Some(end) = lower[start..].find('>').map(|e| start + e) else {
            break;
        };
        let tag = &html[start..end];
        if let (Some(prop), Some(content)) = (
            attr(tag, "property").or_else(|| attr(tag, "name")),
            attr(tag, "content"),
        ) && prop.starts_with("og:")
            && !out.contains_key(&prop)
        {
            out.insert(prop, Value::from(content));
        }
        at = end;
    }
    if !out.contains_key("og:title")
        && let (Some(s), Some(e)) = (lower.find("<title>"), lower.find("</title>"))
        && s + 7 <= e
    {
        out.insert("og:title".into(), Value::from(html[s + 7..e].trim()));
    }
    out
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let pat = format!("{name}=");
    let i = lower.find(&pat)? + pat.len();
    let rest = &tag[i..];
    let quote = rest.chars().next()?;
    if quote == '"' || quote == '\'' {
        let end = rest[1..].find(quote)?;
        Some(rest[1..1 + end].to_owned())
    } else {
        Some(
            rest.split_whitespace()
                .next()?
                .trim_end_matches('/')
                .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn opengraph_tags_and_title() {
        let html = r#"<html><head><title> Page </title><meta property="og:description" content="About it"><META name='og:image' content='mxc://x/y'/></head></html>"#;
        let og = opengraph(html);
        assert_eq!(og["og:title"], "Page");
        assert_eq!(og["og:description"], "About it");
        assert_eq!(og["og:image"], "mxc://x/y");
    }
}
