//! Outbound server-server requests: resolve the destination, sign with X-Matrix, send over TLS, decode the answer.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bellwire_federation::{ServerKey, discovery, request_auth};
use reqwest::Method;
use ruma::canonical_json::to_canonical_value;
use serde_json::Value;

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    #[error("{server} answered {status}: {body}")]
    Status {
        server: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Status {
                status: 403, body, ..
            } => Error::Forbidden(format!("remote server refused: {body}")),
            RemoteError::Status {
                status: 404, body, ..
            } => Error::NotFound(format!("remote server: {body}")),
            e => Error::Remote(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct FedClient {
    http: reqwest::Client,
    origin: String,
    key: Arc<ServerKey>,
    /// server name -> base URL, from .well-known (an hour).
    resolved: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl FedClient {
    pub fn new(
        origin: String,
        key: Arc<ServerKey>,
        trusted: &[std::path::PathBuf],
    ) -> Result<Self, Error> {
        let mut certs = Vec::new();
        for path in trusted {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Internal(format!("cannot read CA {}: {e}", path.display())))?;
            let list = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Internal(format!("bad CA certificate {}: {e}", path.display()))
            })?;
            certs.extend(list);
        }
        let http = reqwest::Client::builder()
            .tls_certs_merge(certs)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the federation client: {e}")))?;
        Ok(FedClient {
            http,
            origin,
            key,
            resolved: Arc::default(),
        })
    }

    /// `https://host:port` for a server name (spec resolution, no SRV).
    async fn base_url(&self, server: &str) -> String {
        match discovery::plan(server) {
            discovery::Plan::Direct { host, port } => format!("https://{host}:{port}"),
            discovery::Plan::WellKnown { host } => {
                if let Some((url, at)) = self
                    .resolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(server)
                    && at.elapsed() < Duration::from_secs(3600)
                {
                    return url.clone();
                }
                let wk = self
                    .http
                    .get(format!("https://{host}/.well-known/matrix/server"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let delegated = match wk {
                    Ok(r) if r.status().is_success() => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| discovery::from_well_known(&v)),
                    _ => None,
                };
                let url = match delegated {
                    Some((h, p)) => format!("https://{h}:{p}"),
                    None => format!("https://{host}:{}", discovery::DEFAULT_PORT),
                };
                self.resolved
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(server.to_owned(), (url.clone(), Instant::now()));
                url
            }
        }
    }

    fn sign(
        &self,
        dest: &str,
        method: &Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<String, RemoteError> {
        let content = match body {
            Some(b) => Some(
                to_canonical_value(b.clone()).map_err(|e| RemoteError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        request_auth::sign_request(
            &self.key,
            &self.origin,
            dest,
            method.as_str(),
            uri,
            content.as_ref(),
        )
        .map_err(|e| RemoteError::Invalid(e.to_string()))
    }

    /// A signed JSON request; `uri` is the path and query.
    pub async fn json(
        &self,
        dest: &str,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let bytes = self.send(dest, method, uri, body, true).await?.1;
        serde_json::from_slice(&bytes)
            .map_err(|e| RemoteError::Invalid(format!("{dest} sent invalid JSON: {e}")))
    }

    /// An unsigned GET (server keys need no authentication).
    pub async fn get_unsigned(&self, dest: &str, uri: &str) -> Result<Value, RemoteError> {
        let bytes = self.send(dest, Method::GET, uri, None, false).await?.1;
        serde_json::from_slice(&bytes)
            .map_err(|e| RemoteError::Invalid(format!("{dest} sent invalid JSON: {e}")))
    }

    /// A signed request returning the raw body and its content type.
    pub async fn send(
        &self,
        dest: &str,
        method: Method,
        uri: &str,
        body: Option<&Value>,
        signed: bool,
    ) -> Result<(Option<String>, Vec<u8>), RemoteError> {
        let base = self.base_url(dest).await;
        let mut req = self.http.request(method.clone(), format!("{base}{uri}"));
        if signed {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                self.sign(dest, &method, uri, body)?,
            );
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RemoteError::Unreachable(dest.to_owned(), error_chain(&e)))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RemoteError::Unreachable(dest.to_owned(), error_chain(&e)))?;
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
            return Err(RemoteError::Status {
                server: dest.to_owned(),
                status,
                body,
            });
        }
        Ok((content_type, bytes.to_vec()))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
