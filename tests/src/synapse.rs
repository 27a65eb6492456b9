//! A throw-away Synapse (the reference Matrix homeserver) for federation
//! interoperability tests: a real `synapse.app.homeserver` process from the
//! venv that `scripts/install-synapse.sh` makes, on a fresh data directory,
//! federating over TLS with certificates from a [`TestCa`].
//!
//! Each server has two listeners on 127.0.0.1:
//! - a TLS one on port `P` serving the federation, key and client APIs; its
//!   server name is `localhost:P`, so other servers reach it there directly
//!   (no `.well-known`, no SRV), and its certificate comes from the test CA;
//! - a plain-HTTP client listener for the tests' matrix-sdk clients.
//!
//! Outbound federation trusts only the test CA (`federation_custom_ca_list`,
//! certificates verified), may reach loopback addresses (`ip_range_blacklist`
//! emptied, loopback allow-listed), and never asks matrix.org for keys
//! (`trusted_key_servers: []`).
//!
//! Environment:
//! - `BELLWIRE_SYNAPSE_PYTHON`: the venv's python (required; scripts/test.sh
//!   sets it after running scripts/install-synapse.sh).
//! - `BELLWIRE_SYNAPSE_LOG=DEBUG`: Synapse's log level (default INFO).
//! - `BELLWIRE_TEST_KEEP=1`: keep the data directory (printed on drop).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use matrix_sdk::{
    Client,
    config::RequestConfig,
    ruma::{OwnedUserId, UserId},
};
use serde_json::{Value, json};

use crate::{Http, User, password_for, tls::TestCa};

/// How long Synapse may take to answer on both listeners after starting.
pub const SYNAPSE_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long Synapse may take to exit after SIGTERM before it is SIGKILLed.
pub const SYNAPSE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A running Synapse with its own data directory.
pub struct SynapseServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    federation_port: u16,
    client_port: u16,
    server_name: String,
}

impl std::fmt::Debug for SynapseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynapseServer")
            .field("server_name", &self.server_name)
            .field("client_port", &self.client_port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// The python of the Synapse venv, from `BELLWIRE_SYNAPSE_PYTHON`.
pub fn synapse_python() -> Result<PathBuf> {
    let Some(python) = std::env::var_os("BELLWIRE_SYNAPSE_PYTHON") else {
        bail!(
            "Synapse is not installed: BELLWIRE_SYNAPSE_PYTHON is not set. Run \
             scripts/install-synapse.sh and export \
             BELLWIRE_SYNAPSE_PYTHON=~/.cache/bellwire/synapse-venv/bin/python \
             (scripts/test.sh does both; if it printed that Synapse could not be installed, \
             see the pip output above it)"
        );
    };
    let python = PathBuf::from(python);
    ensure!(
        python.is_file(),
        "Synapse is not installed: BELLWIRE_SYNAPSE_PYTHON={} does not exist (run \
         scripts/install-synapse.sh)",
        python.display()
    );
    Ok(python)
}

/// A random-enough secret for Synapse's config (macaroons, forms, shared
/// registration secret): 32 bytes from the OS, hex.
fn secret() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl SynapseServer {
    /// Starts a fresh Synapse whose TLS certificate comes from `ca` and which
    /// trusts `ca` for outbound federation. Waits until both listeners
    /// answer; fails loudly (with the log tail) if it cannot.
    pub async fn start(ca: &TestCa) -> Result<SynapseServer> {
        let python = synapse_python()?;
        let dir = tempfile::Builder::new()
            .prefix("bellwire-synapse-")
            .tempdir()
            .context("cannot create a temporary Synapse data directory")?;
        let federation_port = crate::tls::free_port();
        let mut client_port = crate::tls::free_port();
        while client_port == federation_port {
            client_port = crate::tls::free_port();
        }
        let mut server = SynapseServer {
            server_name: format!("localhost:{federation_port}"),
            dir,
            child: None,
            federation_port,
            client_port,
        };
        server.write_config(ca)?;
        server
            .generate_keys(&python)
            .map_err(|e| server.failed(e))?;
        server
            .spawn(&python, ca)
            .await
            .map_err(|e| server.failed(e))?;
        Ok(server)
    }

    /// Wraps a start-up error with the loud prefix and the logs.
    fn failed(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!(
            "Synapse failed to start: {err:#}\n---- Synapse stdout/stderr ({}) ----\n{}\n\
             ---- Synapse homeserver.log ({}), last 60 lines ----\n{}\n---- end ----",
            self.stdout_path().display(),
            tail(
                &std::fs::read_to_string(self.stdout_path()).unwrap_or_default(),
                40
            ),
            self.log_path().display(),
            self.log_tail(60)
        )
    }

    /// `localhost:P`, where P is the TLS (federation) port.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// `@localpart:localhost:P`
    pub fn user_id(&self, localpart: &str) -> OwnedUserId {
        UserId::parse(format!("@{localpart}:{}", self.server_name)).expect("valid user id")
    }

    /// The plain-HTTP client API, e.g. `http://127.0.0.1:41234`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The TLS listener other servers reach, `https://localhost:P`.
    pub fn federation_url(&self) -> String {
        format!("https://localhost:{}", self.federation_port)
    }

    /// A raw HTTP helper pointed at the plain client listener.
    pub fn http(&self) -> Http {
        Http::new(&self.client_url()).for_server(&self.server_name)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("homeserver.yaml")
    }

    /// Synapse's own log (`homeserver.log` in the data directory).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("homeserver.log")
    }

    /// What the process wrote to stdout and stderr.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// Everything in `homeserver.log` so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of `homeserver.log`.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Lines of `homeserver.log` containing `needle`, e.g. a server name or a
    /// federation path, to quote when a federation step fails.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The OS process id of the running Synapse.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn write_config(&self, ca: &TestCa) -> Result<()> {
        let dir = self.dir.path();
        let leaf = ca
            .issue_localhost(dir, "synapse")
            .context("issuing Synapse's TLS certificate")?;
        let level = std::env::var("BELLWIRE_SYNAPSE_LOG").unwrap_or_else(|_| "INFO".to_owned());
        // A plain, unbuffered file handler: the log is complete the moment a
        // test fails.
        let log_config = json!({
            "version": 1,
            "formatters": {"precise": {"format":
                "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}},
            "handlers": {"file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": path_str(&self.log_path())?,
                "encoding": "utf8",
            }},
            // DEBUG here would log access tokens.
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": level, "handlers": ["file"]},
            "disable_existing_loggers": false,
        });
        let log_config_path = dir.join("log.yaml");
        // JSON is YAML: Synapse reads both files with yaml.safe_load.
        std::fs::write(&log_config_path, serde_json::to_string_pretty(&log_config)?)
            .context("cannot write Synapse's log config")?;

        let high = json!({"per_second": 100000, "burst_count": 100000});
        let listener = |port: u16, tls: bool, names: &[&str]| {
            json!({
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": tls,
                "x_forwarded": false,
                "resources": [{"names": names, "compress": false}],
            })
        };
        let config = json!({
            "server_name": self.server_name,
            "pid_file": path_str(&dir.join("homeserver.pid"))?,
            "listeners": [
                listener(self.federation_port, true, &["client", "federation", "keys"]),
                listener(self.client_port, false, &["client"]),
            ],
            "tls_certificate_path": path_str(&leaf.cert_path)?,
            "tls_private_key_path": path_str(&leaf.key_path)?,
            // Outbound federation: verify certificates, against the test CA.
            "federation_verify_certificates": true,
            "federation_custom_ca_list": [path_str(&ca.ca_pem_path())?],
            // Every test server lives on loopback, which Synapse blocks by
            // default (ip_range_blacklist covers 127.0.0.0/8 and ::1).
            "ip_range_blacklist": [],
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            // Never contact matrix.org (or anyone else) for keys.
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "database": {"name": "sqlite3", "args": {
                "database": path_str(&dir.join("homeserver.db"))?,
            }},
            "log_config": path_str(&log_config_path)?,
            "media_store_path": path_str(&dir.join("media_store"))?,
            "signing_key_path": path_str(&dir.join("signing.key"))?,
            "registration_shared_secret": secret()?,
            "macaroon_secret_key": secret()?,
            "form_secret": secret()?,
            "report_stats": false,
            "enable_registration": true,
            "enable_registration_without_verification": true,
            "presence": {"enabled": true},
            "url_preview_enabled": false,
            "enable_metrics": false,
        });
        // Rate limits out of the way (tests register users and send bursts;
        // retries would only hide the interesting failure).
        let rate_limits = json!({
            "rc_message": high,
            "rc_registration": high,
            "rc_registration_token_validity": high,
            "rc_login": {"address": high, "account": high, "failed_attempts": high},
            "rc_joins": {"local": high, "remote": high},
            "rc_joins_per_room": high,
            "rc_invites": {"per_room": high, "per_user": high, "per_issuer": high},
            "rc_room_creation": high,
            "rc_presence": {"per_user": high},
            "rc_key_requests": high,
            "rc_3pid_validation": high,
            "rc_third_party_invite": high,
            "rc_media_create": high,
            "rc_delayed_event_mgmt": high,
            "rc_reports": high,
            "rc_user_directory": high,
            "rc_profile": high,
            "rc_federation": {
                "window_size": 1000,
                "sleep_limit": 100000,
                "sleep_delay": 1,
                "reject_limit": 100000,
                "concurrent": 100000,
            },
        });
        let mut config = config;
        if let (Some(config), Value::Object(limits)) = (config.as_object_mut(), rate_limits) {
            config.extend(limits);
        }
        std::fs::write(self.config_path(), serde_json::to_string_pretty(&config)?)
            .context("cannot write Synapse's config")
    }

    /// A Synapse command with this server's config and a clean environment:
    /// no proxies (everything is on loopback), cwd = data directory.
    fn command(&self, python: &Path) -> Command {
        let mut cmd = Command::new(python);
        cmd.arg("-m")
            .arg("synapse.app.homeserver")
            .arg("--config-path")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
            "SYNAPSE_CONFIG_PATH",
            "SYNAPSE_CONFIG_DIR",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// `--generate-keys`: writes the signing key the config names.
    fn generate_keys(&self, python: &Path) -> Result<()> {
        let out = self
            .command(python)
            .arg("--generate-keys")
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        ensure!(
            out.status.success() && self.dir.path().join("signing.key").is_file(),
            "`synapse.app.homeserver --generate-keys` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    async fn spawn(&mut self, python: &Path, ca: &TestCa) -> Result<()> {
        let stdout = File::create(self.stdout_path()).context("cannot create stdout.log")?;
        let stderr = stdout.try_clone()?;
        let child = self
            .command(python)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        self.child = Some(child);

        // Ready when the client listener answers and the TLS listener serves
        // our server's keys over a connection that trusts only the test CA.
        let ca_cert = reqwest::Certificate::from_pem(ca.ca_pem().as_bytes())
            .context("the test CA certificate does not parse")?;
        let tls_client = reqwest::Client::builder()
            .tls_certs_only([ca_cert])
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .context("cannot build a TLS client")?;
        let plain_client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .context("cannot build an HTTP client")?;
        let versions = format!("{}/_matrix/client/versions", self.client_url());
        let keys = format!("{}/_matrix/key/v2/server", self.federation_url());
        let deadline = Instant::now() + SYNAPSE_READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("the Synapse process exited during start-up ({status})");
            }
            let last = match plain_client.get(&versions).send().await {
                Ok(r) if r.status().is_success() => match tls_client.get(&keys).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.context("key answer is not JSON")?;
                        ensure!(
                            body["server_name"] == self.server_name.as_str(),
                            "{keys} names server {} rather than {}",
                            body["server_name"],
                            self.server_name
                        );
                        return Ok(());
                    }
                    Ok(r) => format!("GET {keys}: {}", r.status()),
                    Err(e) => format!("GET {keys}: {e:?}"),
                },
                Ok(r) => format!("GET {versions}: {}", r.status()),
                Err(e) => format!("GET {versions}: {e}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "Synapse did not answer within {SYNAPSE_READY_TIMEOUT:?} (last: {last}); \
                     killing PID {:?}",
                    self.pid()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // ----- clients -----

    /// A matrix-sdk client for the plain client listener, not logged in,
    /// with an in-memory store and retries off (like
    /// [`crate::TestServer::sdk_client`]).
    pub async fn sdk_client(&self) -> Result<Client> {
        Client::builder()
            .homeserver_url(self.client_url())
            .request_config(
                RequestConfig::new()
                    .disable_retry()
                    .timeout(Duration::from_secs(30)),
            )
            .build()
            .await
            .context("cannot build a matrix-sdk client for Synapse")
    }

    /// Registers `localpart` on Synapse (password [`password_for`], UIA
    /// `m.login.dummy`), then logs in on a fresh client, which syncs once
    /// (uploading its E2EE keys), like [`crate::TestServer::new_user`].
    pub async fn new_user(&self, localpart: &str) -> Result<User> {
        let password = password_for(localpart);
        self.register_account(localpart, &password).await?;
        self.login(localpart, &password).await
    }

    /// Registration with the UIA `m.login.dummy` flow
    /// ([`crate::register_with_dummy`]).
    pub async fn register_account(&self, localpart: &str, password: &str) -> Result<OwnedUserId> {
        crate::register_with_dummy(&self.sdk_client().await?, localpart, password)
            .await
            .context("registering on Synapse")
    }

    /// Logs `user` in with a password on a fresh client, which syncs once
    /// ([`crate::login_with_password`]).
    pub async fn login(&self, user: &str, password: &str) -> Result<User> {
        crate::login_with_password(self.sdk_client().await?, user, password)
            .await
            .context("logging in on Synapse")
    }

    // ----- shutdown -----

    /// SIGTERM to our child's PID, then SIGKILL if it has not exited within
    /// [`SYNAPSE_SHUTDOWN_TIMEOUT`]; reaps it.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain syscall on the PID of a child we own and have not
            // reaped, so the PID cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + SYNAPSE_SHUTDOWN_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "Synapse PID {} did not exit within {SYNAPSE_SHUTDOWN_TIMEOUT:?} of SIGTERM; SIGKILL",
            child.id()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for SynapseServer {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!(
                "---- Synapse {} homeserver.log ({}), last 150 lines ----\n{}\n\
                 ---- end of Synapse log ----",
                self.server_name,
                self.log_path().display(),
                self.log_tail(150)
            );
        }
        let keep = std::env::var_os("BELLWIRE_TEST_KEEP").is_some_and(|v| v == "1");
        if keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("keeping Synapse test data in {}", dir.keep().display());
        }
    }
}
