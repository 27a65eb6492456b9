//! X-Matrix request authentication: signing outbound server-server requests and checking inbound ones.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
};

use crate::{FederationError, ServerKey};

/// The parsed `Authorization: X-Matrix ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: String,
    /// Optional in old servers' headers; checked against us when present.
    pub destination: Option<String>,
    pub key: String,
    pub sig: String,
}

/// Parses `X-Matrix origin=...,destination=...,key="...",sig="..."`.
/// Values may be quoted (with `\` escapes) or bare tokens.
pub fn parse_x_matrix(header: &str) -> Result<XMatrix, FederationError> {
    let bad = |m: &str| FederationError::BadAuth(m.to_owned());
    let rest = header.trim_start();
    let scheme_len = "X-Matrix".len();
    // `get` rather than indexing: a non-ASCII header must not panic.
    let (Some(scheme), Some(after)) = (rest.get(..scheme_len), rest.get(scheme_len..)) else {
        return Err(bad("not an X-Matrix authorization"));
    };
    if !scheme.eq_ignore_ascii_case("X-Matrix") {
        return Err(bad("not an X-Matrix authorization"));
    }
    let mut params = after.trim_start();
    let (mut origin, mut destination, mut key, mut sig) = (None, None, None, None);
    while !params.is_empty() {
        let eq = params
            .find('=')
            .ok_or_else(|| bad("parameter without '='"))?;
        let name = params[..eq].trim().to_ascii_lowercase();
        params = &params[eq + 1..];
        let value;
        if let Some(quoted) = params.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n)
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end.ok_or_else(|| bad("unterminated quoted value"))?;
            value = out;
            params = &quoted[end + 1..];
        } else {
            let end = params.find(',').unwrap_or(params.len());
            value = params[..end].trim().to_owned();
            params = &params[end..];
        }
        params = params.trim_start();
        params = params.strip_prefix(',').unwrap_or(params).trim_start();
        match name.as_str() {
            "origin" => origin = Some(value),
            "destination" => destination = Some(value),
            "key" => key = Some(value),
            "sig" => sig = Some(value),
            _ => {}
        }
    }
    Ok(XMatrix {
        origin: origin.ok_or_else(|| bad("missing origin"))?,
        destination,
        key: key.ok_or_else(|| bad("missing key"))?,
        sig: sig.ok_or_else(|| bad("missing sig"))?,
    })
}

/// The JSON object a request signature covers.
fn signed_object(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&CanonicalJsonValue>,
) -> CanonicalJsonObject {
    let mut o = CanonicalJsonObject::new();
    o.insert(
        "method".into(),
        CanonicalJsonValue::String(method.to_owned()),
    );
    o.insert("uri".into(), CanonicalJsonValue::String(uri.to_owned()));
    o.insert(
        "origin".into(),
        CanonicalJsonValue::String(origin.to_owned()),
    );
    o.insert(
        "destination".into(),
        CanonicalJsonValue::String(destination.to_owned()),
    );
    if let Some(c) = content {
        o.insert("content".into(), c.clone());
    }
    o
}

/// The `Authorization` header value for a request from `origin` to
/// `destination`; `uri` is the path with its query string.
pub fn sign_request(
    key: &ServerKey,
    origin: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&CanonicalJsonValue>,
) -> Result<String, FederationError> {
    let mut o = signed_object(method, uri, origin, destination, content);
    ruma::signatures::sign_json(origin, key.pair(), &mut o)?;
    let sig = match o.get("signatures").and_then(|s| match s {
        CanonicalJsonValue::Object(m) => m.get(origin),
        _ => None,
    }) {
        Some(CanonicalJsonValue::Object(m)) => match m.get(&key.key_id()) {
            Some(CanonicalJsonValue::String(s)) => s.clone(),
            _ => {
                return Err(FederationError::BadKey(
                    "signature missing after signing".into(),
                ));
            }
        },
        _ => {
            return Err(FederationError::BadKey(
                "signature missing after signing".into(),
            ));
        }
    };
    Ok(format!(
        "X-Matrix origin=\"{}\",destination=\"{}\",key=\"{}\",sig=\"{}\"",
        origin,
        destination,
        key.key_id(),
        sig
    ))
}

/// Checks an inbound request's signature against the origin's public key
/// (unpadded base64) for `auth.key`. `destination` is this server's name.
pub fn verify_request(
    auth: &XMatrix,
    public_key_b64: &str,
    destination: &str,
    method: &str,
    uri: &str,
    content: Option<&CanonicalJsonValue>,
) -> Result<(), FederationError> {
    if let Some(d) = &auth.destination
        && d != destination
    {
        return Err(FederationError::BadAuth(format!(
            "request is for {d}, not {destination}"
        )));
    }
    let mut o = signed_object(method, uri, &auth.origin, destination, content);
    let mut sigs = CanonicalJsonObject::new();
    let mut by_origin = CanonicalJsonObject::new();
    by_origin.insert(
        auth.key.clone(),
        CanonicalJsonValue::String(auth.sig.clone()),
    );
    sigs.insert(auth.origin.clone(), CanonicalJsonValue::Object(by_origin));
    o.insert("signatures".into(), CanonicalJsonValue::Object(sigs));
    let public =
        Base64::parse(public_key_b64).map_err(|e| FederationError::BadKey(e.to_string()))?;
    let mut set = PublicKeySet::new();
    set.insert(auth.key.clone(), public);
    let mut map = PublicKeyMap::new();
    map.insert(auth.origin.clone(), set);
    ruma::signatures::verify_json(&map, &o)
        .map_err(|e| FederationError::BadAuth(format!("bad request signature: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> CanonicalJsonValue {
        ruma::canonical_json::to_canonical_value(json!({"pdus": [], "edus": []})).unwrap()
    }

    #[test]
    fn signed_request_verifies_and_tampering_fails() {
        let key = ServerKey::generate("k1").unwrap();
        let header = sign_request(
            &key,
            "a.example:8448",
            "b.example",
            "PUT",
            "/_matrix/federation/v1/send/1",
            Some(&body()),
        )
        .unwrap();
        let auth = parse_x_matrix(&header).unwrap();
        assert_eq!(auth.origin, "a.example:8448");
        assert_eq!(auth.destination.as_deref(), Some("b.example"));
        assert_eq!(auth.key, "ed25519:k1");
        let pk = key.public_key_base64();
        verify_request(
            &auth,
            &pk,
            "b.example",
            "PUT",
            "/_matrix/federation/v1/send/1",
            Some(&body()),
        )
        .unwrap();
        // Another path, method, body or destination breaks it.
        assert!(
            verify_request(
                &auth,
                &pk,
                "b.example",
                "PUT",
                "/_matrix/federation/v1/send/2",
                Some(&body())
            )
            .is_err()
        );
        assert!(
            verify_request(
                &auth,
                &pk,
                "b.example",
                "POST",
                "/_matrix/federation/v1/send/1",
                Some(&body())
            )
            .is_err()
        );
        assert!(
            verify_request(
                &auth,
                &pk,
                "b.example",
                "PUT",
                "/_matrix/federation/v1/send/1",
                None
            )
            .is_err()
        );
        assert!(
            verify_request(
                &auth,
                &pk,
                "c.example",
                "PUT",
                "/_matrix/federation/v1/send/1",
                Some(&body())
            )
            .is_err()
        );
        let other = ServerKey::generate("k1").unwrap();
        assert!(
            verify_request(
                &auth,
                &other.public_key_base64(),
                "b.example",
                "PUT",
                "/_matrix/federation/v1/send/1",
                Some(&body())
            )
            .is_err()
        );
    }

    #[test]
    fn header_parsing_accepts_bare_and_quoted_values() {
        let a = parse_x_matrix(
            r#"X-Matrix origin=origin.example,key="ed25519:1",sig="ABC\"D", destination="x""#,
        )
        .unwrap();
        assert_eq!(a.origin, "origin.example");
        assert_eq!(a.sig, "ABC\"D");
        assert_eq!(a.destination.as_deref(), Some("x"));
        assert!(parse_x_matrix("Bearer abc").is_err());
        assert!(parse_x_matrix("X-Matrix origin=a").is_err());
        assert!(parse_x_matrix(r#"X-Matrix origin="a,key=1"#).is_err());
        assert!(parse_x_matrix("X-Matri\u{e9} origin=a").is_err());
        assert!(parse_x_matrix("\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}").is_err());
    }
}
