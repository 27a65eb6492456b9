//! Typed server configuration: a TOML file overlaid with `BELLWIRE_*` environment variables, validated at start.

use std::{net::SocketAddr, path::PathBuf};

use ruma::{OwnedServerName, RoomVersionId};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration (file or BELLWIRE_* variables): {0}")]
    Toml(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone may register with `m.login.dummy` (local use and tests).
    Open,
    /// Registration needs `m.login.registration_token`.
    Token,
    /// Nobody may register over the API.
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server_name: Option<String>,
    listen: Option<String>,
    public_base_url: Option<String>,
    default_room_version: Option<String>,
    max_request_bytes: Option<u64>,
    worker_threads: Option<u64>,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    registration: RawRegistration,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    presence: RawPresence,
    #[serde(default)]
    user_directory: RawUserDirectory,
    #[serde(default)]
    directory: RawDirectory,
    #[serde(default)]
    media: RawMedia,
    #[serde(default)]
    federation: RawFederation,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    enabled: Option<bool>,
    listen: Option<String>,
    tls_certificate: Option<String>,
    tls_private_key: Option<String>,
    #[serde(default)]
    trusted_ca_certificates: Vec<String>,
    max_backoff_secs: Option<u64>,
    well_known_server: Option<String>,
}

/// The server-server API's settings; `None` in [`Config::federation`] when off.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// The TLS listener other servers reach (it serves the client API too).
    pub listen: SocketAddr,
    pub tls_certificate: PathBuf,
    pub tls_private_key: PathBuf,
    /// Extra roots trusted for outbound requests (a test or private CA).
    pub trusted_ca_certificates: Vec<PathBuf>,
    /// Longest wait between retries to an unreachable server.
    pub max_backoff_secs: u64,
    /// Served as /.well-known/matrix/server (`m.server`), to delegate the
    /// server name to another host and port.
    pub well_known_server: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    path: Option<String>,
    max_upload_bytes: Option<u64>,
    user_quota_bytes: Option<u64>,
    max_image_pixels: Option<u64>,
    legacy_unauthenticated_downloads: Option<bool>,
    url_previews: Option<bool>,
    url_preview_allow_private: Option<bool>,
}

/// The media repository's settings.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub path: PathBuf,
    pub max_upload_bytes: u64,
    /// 0: no quota.
    pub user_quota_bytes: u64,
    pub max_image_pixels: u64,
    pub legacy_unauthenticated_downloads: bool,
    pub url_previews: bool,
    pub url_preview_allow_private: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    enabled: Option<bool>,
    message_per_second: Option<Number>,
    message_burst: Option<Number>,
    login_per_second: Option<Number>,
    login_burst: Option<Number>,
    registration_per_second: Option<Number>,
    registration_burst: Option<Number>,
}

/// A TOML number: `burst = 30` and `burst = 30.0` both mean 30.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn get(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPresence {
    enabled: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserDirectory {
    search_all_users: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    publish: Option<PublishPolicy>,
}

/// Who may list a room in the public room directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishPolicy {
    /// Any joined member.
    Members,
    /// Members whose power level reaches the room's `state_default`.
    Moderators,
}

/// A token bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    pub enabled: bool,
    pub message: Rate,
    pub login: Rate,
    pub registration: Rate,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: Option<String>,
    sync_writes: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    mode: Option<RegistrationMode>,
    token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    max_timeout_ms: Option<u64>,
    default_timeline_limit: Option<u64>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server_name: OwnedServerName,
    pub listen: SocketAddr,
    /// Where clients reach the server (`https://matrix.example.org`), for
    /// /.well-known/matrix/client; `None`: the URL the request came in on.
    pub public_base_url: Option<String>,
    pub default_room_version: RoomVersionId,
    pub max_request_bytes: usize,
    /// Threads running requests; 0 in the file means one fewer than the
    /// machine has cores (at least one), the rest left to RocksDB, the
    /// blocking pool (password hashing, thumbnails) and the kernel.
    pub worker_threads: usize,
    pub database_path: PathBuf,
    /// fsync the write-ahead log on every write (power-loss durability); a
    /// process crash (`kill -9`) loses nothing acknowledged either way.
    pub sync_writes: bool,
    pub registration_mode: RegistrationMode,
    pub registration_token: Option<String>,
    pub sync_max_timeout_ms: u64,
    pub sync_default_timeline_limit: usize,
    pub rate_limits: RateLimits,
    /// Whether presence is shared at all.
    pub presence_enabled: bool,
    /// User directory searches every local user, not only those the searcher shares a room with.
    pub user_directory_search_all: bool,
    pub publish_policy: PublishPolicy,
    pub media: MediaConfig,
    pub federation: Option<FederationConfig>,
}

/// `BELLWIRE_*` variables that are not config keys: the log filter, and
/// what the scripts and tests use to find the config file and binary.
const RESERVED_ENV: [&str; 3] = ["LOG", "CONFIG", "BIN"];

pub const SUPPORTED_ROOM_VERSIONS: [&str; 3] = ["10", "11", "12"];

impl Config {
    /// Loads `path` (if any), then applies `BELLWIRE_*` overrides from `env`.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Toml(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("BELLWIRE_") else {
                continue;
            };
            if rest.is_empty() || RESERVED_ENV.contains(&rest) || rest.starts_with("TEST_") {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            set_path(&mut table, &keys, env_value(&value)).map_err(|message| {
                ConfigError::Invalid {
                    key: keys.join("."),
                    message,
                }
            })?;
        }
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Toml(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let server_name = raw.server_name.unwrap_or_else(|| "localhost".into());
        let server_name = OwnedServerName::try_from(server_name.as_str())
            .map_err(|e| invalid("server_name", format!("not a valid server name: {e}")))?;
        let listen = raw.listen.unwrap_or_else(|| "127.0.0.1:8008".into());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| invalid("listen", format!("expected ADDRESS:PORT: {e}")))?;
        let public_base_url = match raw.public_base_url.filter(|u| !u.is_empty()) {
            Some(u) => {
                let u = u.trim_end_matches('/').to_owned();
                let host = u
                    .strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"));
                if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                    return Err(invalid(
                        "public_base_url",
                        "expected an http:// or https:// URL".into(),
                    ));
                }
                Some(u)
            }
            None => None,
        };
        let version = raw.default_room_version.unwrap_or_else(|| "12".into());
        if !SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
            return Err(invalid(
                "default_room_version",
                format!("{version} is not one of {SUPPORTED_ROOM_VERSIONS:?}"),
            ));
        }
        let default_room_version = RoomVersionId::try_from(version.as_str())
            .map_err(|e| invalid("default_room_version", e.to_string()))?;
        let worker_threads = match raw.worker_threads.unwrap_or(0) {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n if n <= 1024 => n as usize,
            _ => {
                return Err(invalid(
                    "worker_threads",
                    "must be 0 (automatic) to 1024".into(),
                ));
            }
        };
        let max_request_bytes = raw.max_request_bytes.unwrap_or(1024 * 1024);
        if max_request_bytes < 4096 {
            return Err(invalid("max_request_bytes", "must be at least 4096".into()));
        }
        let mode = raw.registration.mode.unwrap_or(RegistrationMode::Token);
        let token = raw.registration.token.filter(|t| !t.is_empty());
        if let Some(t) = &token
            && (t.len() > 64
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c)))
        {
            return Err(invalid(
                "registration.token",
                "1-64 characters of [A-Za-z0-9._~-] (the spec's token alphabet)".into(),
            ));
        }
        let timeline_limit = raw.sync.default_timeline_limit.unwrap_or(20);
        if timeline_limit == 0 || timeline_limit > 1000 {
            return Err(invalid(
                "sync.default_timeline_limit",
                "must be 1..=1000".into(),
            ));
        }
        let rl = &raw.rate_limits;
        let rate = |key: &str,
                    per_second: Option<Number>,
                    burst: Option<Number>,
                    d: (f64, f64)|
         -> Result<Rate, ConfigError> {
            let r = Rate {
                per_second: per_second.map_or(d.0, Number::get),
                burst: burst.map_or(d.1, Number::get),
            };
            if !(r.per_second > 0.0
                && r.per_second.is_finite()
                && r.burst >= 1.0
                && r.burst.is_finite())
            {
                return Err(invalid(
                    &format!("rate_limits.{key}"),
                    "per_second must be > 0 and burst >= 1".into(),
                ));
            }
            Ok(r)
        };
        let rate_limits = RateLimits {
            enabled: rl.enabled.unwrap_or(true),
            message: rate(
                "message",
                rl.message_per_second,
                rl.message_burst,
                (10.0, 30.0),
            )?,
            login: rate("login", rl.login_per_second, rl.login_burst, (0.5, 5.0))?,
            registration: rate(
                "registration",
                rl.registration_per_second,
                rl.registration_burst,
                (0.2, 5.0),
            )?,
        };
        let database_path = PathBuf::from(
            raw.database
                .path
                .clone()
                .unwrap_or_else(|| "./data/bellwire.db".into()),
        );
        let m = &raw.media;
        let media_path = match &m.path {
            Some(p) => PathBuf::from(p),
            // Beside the database, so one data directory holds everything.
            None => database_path
                .parent()
                .map(|p| p.join("media"))
                .unwrap_or_else(|| PathBuf::from("./data/media")),
        };
        let max_upload_bytes = m.max_upload_bytes.unwrap_or(50 * 1024 * 1024);
        if max_upload_bytes == 0 {
            return Err(invalid("media.max_upload_bytes", "must be positive".into()));
        }
        let media = MediaConfig {
            path: media_path,
            max_upload_bytes,
            user_quota_bytes: m.user_quota_bytes.unwrap_or(0),
            max_image_pixels: m.max_image_pixels.unwrap_or(32 * 1024 * 1024),
            legacy_unauthenticated_downloads: m.legacy_unauthenticated_downloads.unwrap_or(true),
            url_previews: m.url_previews.unwrap_or(false),
            url_preview_allow_private: m.url_preview_allow_private.unwrap_or(false),
        };
        let f = &raw.federation;
        let federation = if f.enabled.unwrap_or(false) {
            let listen = f.listen.clone().unwrap_or_else(|| "0.0.0.0:8448".into());
            let listen: SocketAddr = listen
                .parse()
                .map_err(|e| invalid("federation.listen", format!("expected ADDRESS:PORT: {e}")))?;
            let need = |key: &str, v: &Option<String>| {
                v.clone()
                    .map(PathBuf::from)
                    .ok_or_else(|| invalid(key, "required when federation is enabled".into()))
            };
            Some(FederationConfig {
                listen,
                tls_certificate: need("federation.tls_certificate", &f.tls_certificate)?,
                tls_private_key: need("federation.tls_private_key", &f.tls_private_key)?,
                trusted_ca_certificates: f
                    .trusted_ca_certificates
                    .iter()
                    .map(PathBuf::from)
                    .collect(),
                max_backoff_secs: f.max_backoff_secs.unwrap_or(600).max(1),
                well_known_server: f.well_known_server.clone().filter(|w| !w.is_empty()),
            })
        } else {
            None
        };
        Ok(Config {
            federation,
            media,
            rate_limits,
            presence_enabled: raw.presence.enabled.unwrap_or(true),
            user_directory_search_all: raw.user_directory.search_all_users.unwrap_or(false),
            publish_policy: raw.directory.publish.unwrap_or(PublishPolicy::Members),
            server_name,
            listen,
            public_base_url,
            worker_threads,
            default_room_version,
            max_request_bytes: usize::try_from(max_request_bytes)
                .map_err(|_| invalid("max_request_bytes", "too large".into()))?,
            database_path,
            sync_writes: raw.database.sync_writes.unwrap_or(false),
            registration_mode: mode,
            registration_token: token,
            sync_max_timeout_ms: raw.sync.max_timeout_ms.unwrap_or(60_000),
            sync_default_timeline_limit: timeline_limit as usize,
        })
    }
}

/// Environment values are strings; numbers and booleans are recognised so
/// that `BELLWIRE_MAX_REQUEST_BYTES=65536` means the integer.
fn env_value(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(f) = value.parse::<f64>()
        && f.is_finite()
        && value.contains('.')
    {
        return toml::Value::Float(f);
    }
    match value {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(value.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut cur = table;
    for k in parents {
        let entry = cur
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a table"))?;
    }
    // A numeric-looking value for a string key (e.g. a token) stays a string.
    let value = match (&value, last.as_str()) {
        (
            toml::Value::Integer(i),
            "server_name" | "token" | "default_room_version" | "path" | "listen",
        ) => toml::Value::String(i.to_string()),
        _ => value,
    };
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_nested_keys() {
        let env = vec![
            ("BELLWIRE_SERVER_NAME".to_owned(), "example.org".to_owned()),
            ("BELLWIRE_DATABASE__PATH".to_owned(), "/tmp/x".to_owned()),
            ("BELLWIRE_MAX_REQUEST_BYTES".to_owned(), "65536".to_owned()),
            ("BELLWIRE_DEFAULT_ROOM_VERSION".to_owned(), "11".to_owned()),
        ];
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.server_name.as_str(), "example.org");
        assert_eq!(c.database_path, PathBuf::from("/tmp/x"));
        assert_eq!(c.max_request_bytes, 65536);
        assert_eq!(c.default_room_version, RoomVersionId::V11);
    }

    #[test]
    fn reserved_variables_are_not_config_keys() {
        let env = vec![
            ("BELLWIRE_LOG".to_owned(), "debug".to_owned()),
            ("BELLWIRE_BIN".to_owned(), "/x/bellwire".to_owned()),
            ("BELLWIRE_CONFIG".to_owned(), "c.toml".to_owned()),
        ];
        assert!(Config::load(None, env).is_ok());
        let env = vec![("BELLWIRE_NOT_A_KEY".to_owned(), "1".to_owned())];
        assert!(
            Config::load(None, env)
                .unwrap_err()
                .to_string()
                .contains("not_a_key")
        );
    }

    #[test]
    fn federation_settings_need_tls_files() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(
            Config::load(None, env(&[])).unwrap().federation.is_none(),
            "federation is off by default"
        );
        let err = Config::load(None, env(&[("BELLWIRE_FEDERATION__ENABLED", "true")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("federation.tls_certificate"), "{err}");
        let c = Config::load(
            None,
            env(&[
                ("BELLWIRE_FEDERATION__ENABLED", "true"),
                ("BELLWIRE_FEDERATION__TLS_CERTIFICATE", "/c.pem"),
                ("BELLWIRE_FEDERATION__TLS_PRIVATE_KEY", "/k.pem"),
                (
                    "BELLWIRE_FEDERATION__WELL_KNOWN_SERVER",
                    "matrix.example.org:443",
                ),
            ]),
        )
        .unwrap();
        let f = c.federation.unwrap();
        assert_eq!(f.listen.port(), 8448);
        assert_eq!(f.max_backoff_secs, 600);
        assert_eq!(
            f.well_known_server.as_deref(),
            Some("matrix.example.org:443")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let env = vec![("BELLWIRE_DEFAULT_ROOM_VERSION".to_owned(), "3".to_owned())];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("default_room_version"), "{err}");
        let env = vec![("BELLWIRE_LISTEN".to_owned(), "nowhere".to_owned())];
        assert!(
            Config::load(None, env)
                .unwrap_err()
                .to_string()
                .contains("listen")
        );
    }
}
