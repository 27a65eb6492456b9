//! Several Bellwire processes federating with each other on 127.0.0.1, and
//! the tools to play a hostile remote server against them.
//!
//! A [`Federation`] owns a throw-away certificate authority. Every server it
//! starts gets a free port for its federation (TLS) listener, a server name
//! carrying that port (`localhost:PORT`), a certificate for `localhost` /
//! `127.0.0.1` signed by the CA, and the CA among its trusted roots, so the
//! servers reach each other by name exactly as real ones do. Clients keep
//! talking plain HTTP to each server's client listener ([`TestServer::url`]).
//!
//! For requests no honest server sends, [`Http::federation_call`] signs a
//! request with an `X-Matrix` Authorization header by any key, and
//! [`FakeRemote`] is a stand-in remote server the test controls: it publishes
//! its own signing key at `/_matrix/key/v2/server` (so its signatures can be
//! checked) and answers 404 to everything else. [`message_pdu`] and
//! [`hash_and_sign_pdu`] make PDUs by hand.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use matrix_sdk::ruma::{
    OwnedRoomId, RoomId,
    api::client::room::create_room::{self, v3::RoomPreset},
};

use crate::{
    Body, Http, Reply, ServerOptions, SigningKey, TestServer, User, WAIT, enc,
    tls::{LeafCert, TestCa, free_port},
    toml_str,
};

/// The default `[federation] max_backoff_secs` of test servers: short, so a
/// server that comes back is retried within seconds.
pub const TEST_MAX_BACKOFF_SECS: u64 = 2;

/// A set of federating test servers sharing one certificate authority.
/// Keep it alive as long as its servers: their certificates live in its
/// directory (a restart reads them again).
pub struct Federation {
    ca: TestCa,
    dir: tempfile::TempDir,
    /// `[federation] max_backoff_secs` of the servers started from now on.
    pub max_backoff_secs: u64,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The port in a `localhost:PORT` server name.
pub fn port_of(server_name: &str) -> Result<u16> {
    let (_, port) = server_name
        .rsplit_once(':')
        .with_context(|| format!("server name {server_name:?} has no port"))?;
    port.parse()
        .with_context(|| format!("server name {server_name:?} has no numeric port"))
}

fn https_client(ca: &TestCa) -> Result<reqwest::Client> {
    let ca_cert = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes())
        .context("the test CA certificate does not parse")?;
    reqwest::Client::builder()
        .tls_certs_only([ca_cert])
        .timeout(WAIT)
        .build()
        .context("cannot build a TLS reqwest client")
}

impl Federation {
    /// A fresh certificate authority in a fresh directory.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bellwire-federation-")
            .tempdir()
            .context("cannot create a directory for certificates")?;
        let ca = TestCa::generate(dir.path())?;
        Ok(Self {
            ca,
            dir,
            max_backoff_secs: TEST_MAX_BACKOFF_SECS,
        })
    }

    /// The certificate authority every server trusts.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Where certificates are written.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `base` with a federation set-up for a server listening on `port`:
    /// server name `localhost:PORT`, a certificate `<stem>.crt.pem`, and the
    /// `[federation]` table (appended to `base.extra_config`, which must not
    /// have one).
    pub fn options_for(&self, stem: &str, port: u16, base: ServerOptions) -> Result<ServerOptions> {
        let LeafCert {
            cert_path,
            key_path,
        } = self.ca.issue_localhost(self.dir.path(), stem)?;
        let path = |p: &Path| -> Result<String> {
            Ok(toml_str(
                p.to_str().context("certificate path is not UTF-8")?,
            ))
        };
        let table = format!(
            "[federation]\nenabled = true\nlisten = {}\ntls_certificate = {}\n\
             tls_private_key = {}\ntrusted_ca_certificates = [{}]\nmax_backoff_secs = {}\n",
            toml_str(&format!("127.0.0.1:{port}")),
            path(&cert_path)?,
            path(&key_path)?,
            path(&self.ca.ca_pem_path())?,
            self.max_backoff_secs,
        );
        let mut options = base;
        ensure!(
            !crate::split_extra_config(&options.extra_config)
                .2
                .contains("federation"),
            "ServerOptions::extra_config must not define [federation]: the harness writes it"
        );
        options.server_name = Some(format!("localhost:{port}"));
        if !options.extra_config.is_empty() && !options.extra_config.ends_with('\n') {
            options.extra_config.push('\n');
        }
        options.extra_config.push_str(&table);
        Ok(options)
    }

    /// Starts a federating server with default options; `stem` names its
    /// certificate files (e.g. `hs1`).
    pub async fn start_server(&self, stem: &str) -> Result<TestServer> {
        self.start_server_with(stem, ServerOptions::default()).await
    }

    /// Starts a federating server with `base` options plus the federation
    /// set-up (see [`Federation::options_for`]) on a free port, and checks
    /// that it announced its federation listener on that port. A port taken
    /// between choosing and binding it is retried with another one.
    pub async fn start_server_with(&self, stem: &str, base: ServerOptions) -> Result<TestServer> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let options = self.options_for(stem, port, base.clone())?;
            let server = match TestServer::start_with(options).await {
                Ok(server) => server,
                Err(e) if attempt < 3 && format!("{e:#}").to_lowercase().contains("in use") => {
                    eprintln!("port {port} was taken before {stem} bound it; trying another");
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("starting federating server {stem} on port {port}")
                    });
                }
            };
            let Some(addr) = server.federation_addr() else {
                bail!(
                    "{stem} ({}) started without printing {:?}: federation is not listening; \
                     stdout:\n{}",
                    server.server_name(),
                    crate::FEDERATION_READY_PREFIX,
                    std::fs::read_to_string(server.stdout_path()).unwrap_or_default()
                );
            };
            ensure!(
                addr.port() == port,
                "{stem} was configured to federate on port {port} but announced {addr}"
            );
            return Ok(server);
        }
    }

    /// A reqwest client that trusts only the test CA.
    pub fn https_client(&self) -> Result<reqwest::Client> {
        https_client(&self.ca)
    }

    /// A raw HTTP helper for `server`'s federation (TLS) listener,
    /// `https://127.0.0.1:PORT`, trusting only the test CA. The client API
    /// is served there too.
    pub fn https(&self, server: &TestServer) -> Result<Http> {
        let port = port_of(server.server_name())?;
        Ok(Http {
            base: format!("https://127.0.0.1:{port}"),
            client: self.https_client()?,
            server_name: server.server_name().to_owned(),
        })
    }

    /// Starts a [`FakeRemote`] with a certificate from this federation's CA.
    pub async fn fake_remote(&self, stem: &str) -> Result<FakeRemote> {
        FakeRemote::start(self, stem).await
    }
}

/// What `bellwire --rotate-signing-key` prints on stdout before the new
/// key id.
pub const ROTATED_KEY_PREFIX: &str = "bellwire: new signing key ";

impl TestServer {
    /// Runs `bellwire --config <its config> --rotate-signing-key` on this
    /// server's data directory, which must not be in use: call it between
    /// [`TestServer::stop`] and [`TestServer::start_again`]. The command must
    /// exit 0 within [`WAIT`] and announce the new key; returns its id
    /// (`ed25519:...`). Its stderr is appended to the server's stderr log,
    /// its stdout to `rotate-stdout.log` in the data directory.
    pub async fn rotate_signing_key(&self) -> Result<String> {
        use std::{fs::OpenOptions, io::Write, process::Stdio};
        ensure!(
            self.pid().is_none(),
            "rotate the signing key of {} while it is stopped",
            self.server_name()
        );
        let bin = crate::server_binary()?;
        let mut stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .context("cannot open the server stderr log")?;
        writeln!(stderr, "===== bellwire --rotate-signing-key =====")?;
        let stdout_path = self.data_dir().join("rotate-stdout.log");
        let stdout = std::fs::File::create(&stdout_path)
            .context("cannot create the stdout file of the rotation")?;
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--rotate-signing-key");
        // As for the server itself: the config file is the whole truth.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && k.starts_with("BELLWIRE_")
                && k != "BELLWIRE_LOG"
            {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("cannot run {} --rotate-signing-key", bin.display()))?;
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                // Our own child, by PID.
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`bellwire --rotate-signing-key` on {} did not exit within {WAIT:?}",
                    self.server_name()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        };
        let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        let log = self.stderr_log();
        let since = log
            .rfind("===== bellwire --rotate-signing-key =====")
            .map_or("", |i| &log[i..]);
        ensure!(
            status.success(),
            "`bellwire --rotate-signing-key` on {} exited with {status}; stdout:\n{out}\nstderr:\n{since}",
            self.server_name()
        );
        let key_id = out
            .lines()
            .find_map(|l| l.strip_prefix(ROTATED_KEY_PREFIX))
            .and_then(|rest| rest.split(';').next())
            .map(|id| id.trim().to_owned())
            .with_context(|| {
                format!(
                    "`bellwire --rotate-signing-key` did not print {ROTATED_KEY_PREFIX:?}; \
                     stdout:\n{out}\nstderr:\n{since}"
                )
            })?;
        ensure!(
            key_id.starts_with("ed25519:") && key_id.len() > "ed25519:".len(),
            "`bellwire --rotate-signing-key` announced a key id that is not ed25519:...: {out}"
        );
        Ok(key_id)
    }
}

// ---------------------------------------------------------------------------
// X-Matrix request signing
// ---------------------------------------------------------------------------

/// The `Authorization` header value of a federation request: `X-Matrix`
/// with `origin`, `destination`, `key` and `sig`, the signature being
/// `key`'s over the canonical JSON of `{method, uri, origin, destination,
/// content?}` (`uri`: path and query as sent).
pub fn x_matrix_authorization(
    origin: &str,
    destination: &str,
    key: &SigningKey,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> Result<String> {
    let mut signed = json!({
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    });
    if let Some(content) = content {
        signed["content"] = content.clone();
    }
    let sig = key.signature(&signed)?;
    Ok(format!(
        "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{}\",sig=\"{sig}\"",
        key.key_id()
    ))
}

impl Http {
    /// Sends a federation request `method path` (with JSON `body`) as
    /// server `origin`, signed with `key` for `destination`.
    pub async fn federation_call(
        &self,
        origin: &str,
        key: &SigningKey,
        destination: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply> {
        let auth = x_matrix_authorization(origin, destination, key, method, path, body.as_ref())?;
        let body = match body {
            Some(v) => Body::Json(v),
            None => Body::None,
        };
        self.call_with_headers(method, path, None, &[("authorization", &auth)], body)
            .await
    }

    /// PUT /_matrix/federation/v1/send/{txn} with `pdus` as server `origin`,
    /// signed with `key`.
    pub async fn send_transaction(
        &self,
        origin: &str,
        key: &SigningKey,
        destination: &str,
        txn: &str,
        pdus: Vec<Value>,
    ) -> Result<Reply> {
        let body = json!({
            "origin": origin,
            "origin_server_ts": now_ms(),
            "pdus": pdus,
            "edus": [],
        });
        self.federation_call(
            origin,
            key,
            destination,
            "PUT",
            &format!("/_matrix/federation/v1/send/{}", crate::enc(txn)),
            Some(body),
        )
        .await
    }
}

// ---------------------------------------------------------------------------
// Hand-made PDUs
// ---------------------------------------------------------------------------

/// A room version this module can make events for (3 and later, where
/// event ids are reference hashes), as a number.
fn room_version_number(version: &str) -> Result<u32> {
    let n: u32 = version
        .parse()
        .with_context(|| format!("room version {version:?} is not one of the numbered ones"))?;
    ensure!(
        (3..=12).contains(&n),
        "room version {version} is not supported here (3 to 12 are)"
    );
    Ok(n)
}

/// The redacted form of `event` under room version `version`'s redaction
/// algorithm: the top-level keys every version keeps (plus `origin`,
/// `membership` and `prev_state` before v11), and of the content only what
/// the event's type keeps.
pub fn redact(event: &Value, version: &str) -> Result<Value> {
    let v = room_version_number(version)?;
    let object = event.as_object().context("a PDU is a JSON object")?;
    let mut keep_top = vec![
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    ];
    if v < 11 {
        keep_top.extend(["origin", "membership", "prev_state"]);
    }
    let mut out = serde_json::Map::new();
    for (k, val) in object {
        if keep_top.contains(&k.as_str()) {
            out.insert(k.clone(), val.clone());
        }
    }
    let content = object
        .get("content")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let ty = object.get("type").and_then(Value::as_str).unwrap_or("");
    let keep_content: Vec<&str> = match ty {
        "m.room.member" => {
            let mut keys = vec!["membership"];
            if v >= 9 {
                keys.push("join_authorised_via_users_server");
            }
            keys
        }
        "m.room.create" if v >= 11 => content.keys().map(String::as_str).collect(),
        "m.room.create" => vec!["creator"],
        "m.room.join_rules" if v >= 8 => vec!["join_rule", "allow"],
        "m.room.join_rules" => vec!["join_rule"],
        "m.room.power_levels" => {
            let mut keys = vec![
                "ban",
                "events",
                "events_default",
                "kick",
                "redact",
                "state_default",
                "users",
                "users_default",
            ];
            if v >= 11 {
                keys.push("invite");
            }
            keys
        }
        "m.room.history_visibility" => vec!["history_visibility"],
        "m.room.redaction" if v >= 11 => vec!["redacts"],
        "m.room.aliases" if v < 6 => vec!["aliases"],
        _ => vec![],
    };
    let mut kept = serde_json::Map::new();
    for k in keep_content {
        if let Some(val) = content.get(k) {
            kept.insert(k.to_owned(), val.clone());
        }
    }
    if ty == "m.room.member"
        && v >= 11
        && let Some(signed) = content
            .get("third_party_invite")
            .and_then(|t| t.get("signed"))
    {
        kept.insert("third_party_invite".to_owned(), json!({"signed": signed}));
    }
    out.insert("content".to_owned(), Value::Object(kept));
    Ok(Value::Object(out))
}

fn canonical(value: &Value) -> Result<String> {
    let canonical = matrix_sdk::ruma::CanonicalJsonValue::try_from(value.clone())
        .context("value cannot be turned into canonical JSON")?;
    Ok(canonical.to_string())
}

/// The sha256 content hash of a PDU (unpadded base64): over its canonical
/// JSON without `unsigned`, `signatures` and `hashes`.
pub fn content_hash(event: &Value) -> Result<String> {
    let mut v = event.clone();
    let object = v.as_object_mut().context("a PDU is a JSON object")?;
    for k in ["unsigned", "signatures", "hashes"] {
        object.remove(k);
    }
    let digest = Sha256::digest(canonical(&v)?.as_bytes());
    Ok(base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest))
}

/// The event id of a PDU (room versions 3 and later): `$` and the unpadded
/// base64 (URL-safe from v4) of the sha256 reference hash, i.e. of the
/// redacted event without `signatures` and `unsigned`.
pub fn reference_event_id(event: &Value, version: &str) -> Result<String> {
    let mut redacted = redact(event, version)?;
    let object = redacted.as_object_mut().expect("an object");
    object.remove("signatures");
    object.remove("unsigned");
    object.remove("event_id");
    let digest = Sha256::digest(canonical(&redacted)?.as_bytes());
    let id = if room_version_number(version)? >= 4 {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    };
    Ok(format!("${id}"))
}

/// An `m.room.message` PDU (no hashes or signatures yet) from `sender` in
/// `room_id` after `prev_events`, authorised by `auth_events`.
pub fn message_pdu(
    room_id: &str,
    sender: &str,
    body: &str,
    prev_events: &[String],
    auth_events: &[String],
    depth: u64,
) -> Value {
    json!({
        "room_id": room_id,
        "sender": sender,
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": body},
        "origin_server_ts": now_ms(),
        "depth": depth,
        "prev_events": prev_events,
        "auth_events": auth_events,
    })
}

/// Adds `server`'s signature by `key` of the redacted `event` (room
/// version `version`), keeping signatures already there.
pub fn sign_pdu(event: &mut Value, version: &str, server: &str, key: &SigningKey) -> Result<()> {
    let signature = key.signature(&redact(event, version)?)?;
    let object = event.as_object_mut().context("a PDU is a JSON object")?;
    let signatures = object.entry("signatures").or_insert_with(|| json!({}));
    signatures
        .as_object_mut()
        .context("`signatures` is not an object")?
        .entry(server)
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("`signatures.<server>` is not an object")?
        .insert(key.key_id().to_owned(), Value::String(signature));
    Ok(())
}

/// Sets the content hash of `event`, then signs it as `server` with `key`
/// (see [`sign_pdu`]). Returns the event id.
pub fn hash_and_sign_pdu(
    event: &mut Value,
    version: &str,
    server: &str,
    key: &SigningKey,
) -> Result<String> {
    let hash = content_hash(event)?;
    event["hashes"] = json!({"sha256": hash});
    sign_pdu(event, version, server, key)?;
    reference_event_id(event, version)
}

// ---------------------------------------------------------------------------
// A stand-in remote server
// ---------------------------------------------------------------------------

/// One request a [`FakeRemote`] received: method and path (with query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRequest {
    pub method: String,
    pub path: String,
}

/// A remote "homeserver" the test controls, named `localhost:PORT`, with a
/// TLS listener (certificate from the federation's CA). It publishes its
/// signing key at `GET /_matrix/key/v2/server`, so servers can check what it
/// signs, and takes transactions (`PUT /send`, answered `{"pdus": {}}`);
/// every other request is answered 404 `M_UNRECOGNIZED`. All are recorded.
pub struct FakeRemote {
    name: String,
    key: SigningKey,
    requests: Arc<Mutex<Vec<RemoteRequest>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRemote")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeRemote {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The signed `/_matrix/key/v2/server` answer of `server_name` for `key`.
pub fn server_key_response(server_name: &str, key: &SigningKey) -> Result<Value> {
    let mut body = json!({
        "server_name": server_name,
        "valid_until_ts": now_ms() + 24 * 3600 * 1000,
        "verify_keys": {key.key_id(): {"key": key.public_key()}},
        "old_verify_keys": {},
    });
    key.sign(server_name, &mut body)?;
    Ok(body)
}

/// Reads one HTTP/1.1 request head (and its Content-Length body, dropped)
/// from `stream`; returns the request line's method and target.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .context("fake remote: client went quiet mid-request")??;
        ensure!(n > 0, "fake remote: connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
        ensure!(buf.len() < 1 << 20, "fake remote: request head too large");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end - 4;
    while have < length {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .context("fake remote: client went quiet mid-body")??;
        ensure!(n > 0, "fake remote: connection closed mid-body");
        have += n;
    }
    Ok((method, path))
}

async fn serve_fake_remote<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    name: &str,
    key: &SigningKey,
    requests: &Mutex<Vec<RemoteRequest>>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let (method, path) = read_request(&mut stream).await?;
    requests.lock().unwrap().push(RemoteRequest {
        method: method.clone(),
        path: path.clone(),
    });
    let bare = path.split('?').next().unwrap_or_default();
    let (status, body) = if method == "GET"
        && (bare == "/_matrix/key/v2/server" || bare.starts_with("/_matrix/key/v2/server/"))
    {
        ("200 OK", server_key_response(name, key)?)
    } else if method == "PUT" && bare.starts_with("/_matrix/federation/v1/send/") {
        // Transactions are taken (and ignored), so a server sharing a room
        // with this one is not left retrying.
        ("200 OK", json!({"pdus": {}}))
    } else {
        (
            "404 Not Found",
            json!({"errcode": "M_UNRECOGNIZED", "error": "a test stand-in serves only its key"}),
        )
    };
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

impl FakeRemote {
    /// Binds 127.0.0.1 on a free port with a certificate from `federation`'s
    /// CA and starts answering as `localhost:PORT`.
    pub async fn start(federation: &Federation, stem: &str) -> Result<Self> {
        use tokio_rustls::rustls::{
            ServerConfig,
            pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        };
        let leaf = federation.ca.issue_localhost(federation.dir(), stem)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&leaf.cert_path)
            .context("reading the fake remote's certificate")?
            .collect::<Result<_, _>>()
            .context("parsing the fake remote's certificate")?;
        let private = PrivateKeyDer::from_pem_file(&leaf.key_path)
            .context("reading the fake remote's private key")?;
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .context("fake remote TLS configuration")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("fake remote: cannot bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let name = format!("localhost:{port}");
        let key = SigningKey::named("ed25519:fake");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (name, key, requests) = (name.clone(), key.clone(), requests.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, name, key, requests) = (
                        acceptor.clone(),
                        name.clone(),
                        key.clone(),
                        requests.clone(),
                    );
                    tokio::spawn(async move {
                        let result = async {
                            let tls = tokio::time::timeout(WAIT, acceptor.accept(tcp))
                                .await
                                .context("TLS handshake timed out")??;
                            serve_fake_remote(tls, &name, &key, &requests).await
                        }
                        .await;
                        if let Err(e) = result {
                            eprintln!("fake remote {name}: {e:#}");
                        }
                    });
                }
            })
        };
        Ok(Self {
            name,
            key,
            requests,
            accept,
        })
    }

    /// Its server name, `localhost:PORT`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signing key it publishes.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// `@localpart:<its name>`
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RemoteRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Sends a federation request to `https` (the server named
    /// `destination`) as this server.
    pub async fn call(
        &self,
        https: &Http,
        destination: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply> {
        https
            .federation_call(&self.name, &self.key, destination, method, path, body)
            .await
    }

    /// Joins its user `localpart` to the public room `room_id` through the
    /// server at `https` (named `destination`), as a joining server does:
    /// `make_join` for a template, then the signed event to `send_join`.
    /// Returns the join event's id and the room version.
    pub async fn join(
        &self,
        https: &Http,
        destination: &str,
        room_id: &str,
        localpart: &str,
    ) -> Result<(String, String)> {
        let user = self.user_id(localpart);
        let versions: String = (3..=12).map(|v| format!("&ver={v}")).collect();
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            crate::enc(room_id),
            crate::enc(&user),
            &versions[1..]
        );
        let r = self.call(https, destination, "GET", &path, None).await?;
        r.expect_ok().with_context(|| format!("GET {path}"))?;
        let version = r.json["room_version"]
            .as_str()
            .with_context(|| format!("make_join answer without room_version: {}", r.text))?
            .to_owned();
        let mut event = r.json["event"].clone();
        ensure!(
            event["type"] == "m.room.member"
                && event["state_key"] == user
                && event["content"]["membership"] == "join",
            "make_join template is not a join of {user}: {}",
            r.text
        );
        event["origin_server_ts"] = json!(now_ms());
        if event.get("origin").is_some() {
            event["origin"] = json!(self.name);
        }
        let event_id = hash_and_sign_pdu(&mut event, &version, &self.name, &self.key)?;
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            crate::enc(room_id),
            crate::enc(&event_id)
        );
        let r = self
            .call(https, destination, "PUT", &path, Some(event))
            .await?;
        r.expect_ok().with_context(|| format!("PUT {path}"))?;
        Ok((event_id, version))
    }
}

/// A server name on 127.0.0.1 where nothing listens (a port that was free
/// a moment ago): its keys cannot be fetched.
pub fn unreachable_server_name() -> String {
    format!("localhost:{}", free_port())
}

// ---------------------------------------------------------------------------
// Scenes the federation scenarios share
// ---------------------------------------------------------------------------

/// A federation of two servers, hs1 and hs2.
pub async fn two_servers() -> Result<(Federation, TestServer, TestServer)> {
    let federation = Federation::new()?;
    let hs1 = federation.start_server("hs1").await?;
    let hs2 = federation.start_server("hs2").await?;
    ensure!(
        hs1.server_name() != hs2.server_name(),
        "two servers with one name: {}",
        hs1.server_name()
    );
    Ok((federation, hs1, hs2))
}

/// Alice (on hs1) and Bob (on hs2), each registered on their own server.
pub async fn alice_and_bob(hs1: &TestServer, hs2: &TestServer) -> Result<(User, User)> {
    let alice = hs1.new_user("alice").await?;
    let bob = hs2.new_user("bob").await?;
    ensure!(
        alice.user_id == hs1.user_id("alice") && bob.user_id == hs2.user_id("bob"),
        "user ids carry their server's name: {} and {}",
        alice.user_id,
        bob.user_id
    );
    Ok((alice, bob))
}

/// `owner` creates a private room named `name` and invites `guest` (on
/// another server) with /invite; `guest` sees the invite through sync and
/// joins through their own server; `owner` then sees the join.
pub async fn share_room(owner: &User, guest: &User, name: &str) -> Result<OwnedRoomId> {
    share_room_with_preset(owner, guest, name, RoomPreset::PrivateChat).await
}

/// [`share_room`] for a room created with `preset`.
pub async fn share_room_with_preset(
    owner: &User,
    guest: &User,
    name: &str,
    preset: RoomPreset,
) -> Result<OwnedRoomId> {
    let mut request = create_room::v3::Request::new();
    request.name = Some(name.to_owned());
    request.preset = Some(preset);
    let room = owner
        .client
        .create_room(request)
        .await
        .with_context(|| format!("{} creating room {name:?}", owner.user_id))?;
    let room_id = room.room_id().to_owned();
    room.invite_user_by_id(&guest.user_id)
        .await
        .with_context(|| {
            format!(
                "{} inviting {} over federation",
                owner.user_id, guest.user_id
            )
        })?;
    guest
        .wait_for_invite(&room_id)
        .await
        .context("the invite crosses to the guest's server")?;
    guest
        .join(&room_id)
        .await
        .context("the guest joins through their own server")?;
    owner
        .sync_until(&format!("{}'s join", guest.user_id), |s| {
            s.membership(&room_id, &guest.user_id).as_deref() == Some("join")
        })
        .await?;
    Ok(room_id)
}

/// What hs1 holds about a room, read by a member: the ids of the create
/// and power levels events and of memberships, the latest event, and the
/// room version. Clients do not see depths: `depth` is a number above any
/// the short histories here reach.
pub struct RoomFacts {
    pub create: String,
    pub power_levels: String,
    pub members: std::collections::BTreeMap<String, String>,
    pub latest: String,
    pub depth: u64,
    pub version: String,
}

impl RoomFacts {
    /// The `auth_events` of a message by `sender`: create (before v12,
    /// where the room id stands for it), power levels, the sender's
    /// membership if they have one.
    pub fn auth_events_for(&self, sender: &str) -> Result<Vec<String>> {
        let version: u32 = self
            .version
            .parse()
            .with_context(|| format!("room version {:?} is not a number", self.version))?;
        let mut out = Vec::new();
        if version < 12 {
            out.push(self.create.clone());
        }
        out.push(self.power_levels.clone());
        out.extend(self.members.get(sender).cloned());
        Ok(out)
    }
}

pub async fn room_facts(user: &User, room: &RoomId) -> Result<RoomFacts> {
    let http = user.http();
    let token = user.access_token();
    let r = http
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room.as_str())),
            Some(&token),
        )
        .await?;
    r.expect_ok().context("GET /state")?;
    let state = r.json.as_array().context("/state is not an array")?;
    let find = |ty: &str| -> Result<&Value> {
        state
            .iter()
            .find(|e| e["type"] == ty && e["state_key"] == "")
            .with_context(|| format!("no {ty} in the room state: {}", r.text))
    };
    let id = |e: &Value| -> Result<String> {
        Ok(e["event_id"]
            .as_str()
            .context("state event without id")?
            .to_owned())
    };
    let create = find("m.room.create")?;
    let version = create["content"]["room_version"]
        .as_str()
        .unwrap_or("1")
        .to_owned();
    let mut members = std::collections::BTreeMap::new();
    for e in state.iter().filter(|e| e["type"] == "m.room.member") {
        let key = e["state_key"]
            .as_str()
            .context("member without state_key")?;
        members.insert(key.to_owned(), id(e)?);
    }
    let r = http
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
                enc(room.as_str())
            ),
            Some(&token),
        )
        .await?;
    r.expect_ok().context("GET /messages")?;
    let latest = r.json["chunk"][0]["event_id"]
        .as_str()
        .with_context(|| format!("no latest event: {}", r.text))?
        .to_owned();
    Ok(RoomFacts {
        create: id(create)?,
        power_levels: id(find("m.room.power_levels")?)?,
        members,
        latest,
        depth: 100,
        version,
    })
}

/// `pdus.<event_id>` of a /send answer: `Some(Some(error))` for a refused
/// PDU, `Some(None)` for one taken, `None` if the answer does not mention it.
pub fn pdu_result(reply: &Value, event_id: &str) -> Option<Option<String>> {
    let entry = reply.get("pdus")?.get(event_id)?;
    Some(
        entry
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify_signature;

    #[test]
    fn x_matrix_header_signs_the_request_description() {
        let key = SigningKey::named("ed25519:k1");
        let content = json!({"pdus": [], "origin": "a:1"});
        let header = x_matrix_authorization(
            "a:1",
            "b:2",
            &key,
            "PUT",
            "/_matrix/federation/v1/send/t1",
            Some(&content),
        )
        .unwrap();
        let rest = header.strip_prefix("X-Matrix ").unwrap();
        let params: std::collections::BTreeMap<&str, &str> = rest
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k, v.trim_matches('"'))
            })
            .collect();
        assert_eq!(params["origin"], "a:1");
        assert_eq!(params["destination"], "b:2");
        assert_eq!(params["key"], "ed25519:k1");
        let mut signed = json!({
            "method": "PUT",
            "uri": "/_matrix/federation/v1/send/t1",
            "origin": "a:1",
            "destination": "b:2",
            "content": content,
        });
        signed["signatures"] = json!({"a:1": {"ed25519:k1": params["sig"]}});
        verify_signature(&signed, "a:1", "ed25519:k1", &key.public_key()).unwrap();
    }

    /// The definitions hold for PDUs made here: the hash ignores
    /// `signatures`/`unsigned`, the event id ignores the content (redacted
    /// away) and `unsigned`, and the signature verifies on the redacted
    /// event.
    #[test]
    fn pdu_hashes_and_signatures_follow_the_definitions() {
        let key = SigningKey::named("ed25519:k1");
        let mut a = message_pdu("!r:x", "@u:x", "hello", &["$p".into()], &["$c".into()], 5);
        let id = hash_and_sign_pdu(&mut a, "11", "x", &key).unwrap();
        assert!(id.starts_with('$') && !id.contains('=') && !id.contains('+'));
        assert_eq!(a["hashes"]["sha256"], content_hash(&a).unwrap());
        let mut with_unsigned = a.clone();
        with_unsigned["unsigned"] = json!({"age": 5});
        assert_eq!(
            content_hash(&with_unsigned).unwrap(),
            content_hash(&a).unwrap()
        );
        assert_eq!(reference_event_id(&with_unsigned, "11").unwrap(), id);
        let redacted = redact(&a, "11").unwrap();
        verify_signature(&redacted, "x", "ed25519:k1", &key.public_key()).unwrap();
        let mut b = a.clone();
        b["content"]["body"] = json!("tampered");
        assert_ne!(content_hash(&b).unwrap(), content_hash(&a).unwrap());
        assert_eq!(
            reference_event_id(&b, "11").unwrap(),
            id,
            "content is redacted away"
        );
        assert_eq!(port_of("localhost:8448").unwrap(), 8448);

        // Membership survives redaction; `origin` only before v11.
        let member = json!({
            "type": "m.room.member", "state_key": "@u:x", "sender": "@u:x", "origin": "x",
            "content": {"membership": "join", "displayname": "U",
                        "join_authorised_via_users_server": "@a:x"},
        });
        let r11 = redact(&member, "11").unwrap();
        assert_eq!(
            r11["content"],
            json!({"membership": "join", "join_authorised_via_users_server": "@a:x"})
        );
        assert!(r11.get("origin").is_none());
        let r8 = redact(&member, "8").unwrap();
        assert_eq!(r8["content"], json!({"membership": "join"}));
        assert_eq!(r8["origin"], "x");
        assert!(redact(&member, "2").is_err());
    }

    /// The spec's worked example of a signed event (Appendices, "Signing
    /// Events"; also in ruma-signatures' documentation): our content hash and
    /// redaction give the published hash, and its signature verifies on our
    /// redacted form.
    #[test]
    fn the_spec_example_event_hashes_and_verifies() {
        let event = json!({
            "auth_events": [],
            "content": {},
            "depth": 3,
            "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
            "origin": "domain",
            "origin_server_ts": 1000000,
            "prev_events": [],
            "room_id": "!x:domain",
            "sender": "@a:domain",
            "signatures": {"domain": {"ed25519:1":
                "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"}},
            "type": "X",
            "unsigned": {"age_ts": 1000000},
        });
        assert_eq!(
            content_hash(&event).unwrap(),
            "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
        );
        // (The example predates v11: `origin` survives redaction.)
        let redacted = redact(&event, "10").unwrap();
        verify_signature(
            &redacted,
            "domain",
            "ed25519:1",
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI",
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_fake_remote_publishes_its_signed_key_over_tls() {
        let federation = Federation::new().unwrap();
        let remote = federation.fake_remote("remote").await.unwrap();
        let port = port_of(remote.name()).unwrap();
        let client = federation.https_client().unwrap();
        let r = client
            .get(format!("https://127.0.0.1:{port}/_matrix/key/v2/server"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["server_name"], remote.name());
        let public = body["verify_keys"]["ed25519:fake"]["key"].as_str().unwrap();
        verify_signature(&body, remote.name(), "ed25519:fake", public).unwrap();
        let r = client
            .get(format!(
                "https://localhost:{port}/_matrix/federation/v1/version"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(
            remote.requests(),
            vec![
                RemoteRequest {
                    method: "GET".into(),
                    path: "/_matrix/key/v2/server".into()
                },
                RemoteRequest {
                    method: "GET".into(),
                    path: "/_matrix/federation/v1/version".into()
                },
            ]
        );
    }
}
