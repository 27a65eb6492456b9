//! Test harness for Bellwire: runs a real `bellwire` process and drives it
//! over HTTP, either with a real Matrix client (`matrix-sdk`) or with raw
//! `reqwest` requests when a test needs to see the exact wire behaviour.
//!
//! Every wait in here is bounded, so a broken server makes a test fail with a
//! message instead of hanging.
//!
//! Environment:
//! - `BELLWIRE_BIN`: path of the server binary. Default: `bellwire` next to
//!   the test binary's parent directory (`target/debug/deps/..`).
//! - `BELLWIRE_TEST_KEEP=1`: keep each test's data directory (printed on drop).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::OpenOptions,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use matrix_sdk::{
    Client, Room,
    config::{RequestConfig, SyncSettings},
    deserialized_responses::TimelineEvent,
    ruma::{
        OwnedRoomId, OwnedUserId, RoomId, UserId,
        api::client::{
            account::register,
            membership::get_member_events,
            uiaa::{AuthData, AuthType, Dummy},
        },
        api::error::ErrorKind,
    },
    sync::SyncResponse,
};
use serde_json::{Value, json};

pub mod federation;
pub mod synapse;
pub mod tls;

/// How long any single "wait until X happens" may take.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long the server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The line prefix the server prints on stdout once it accepts connections.
pub const READY_PREFIX: &str = "bellwire: listening on ";
/// The server name of every test server that does not set
/// [`ServerOptions::server_name`].
pub const SERVER_NAME: &str = "localhost";
/// The line a federating server prints on stdout once its TLS listener is
/// up, before [`READY_PREFIX`].
pub const FEDERATION_READY_PREFIX: &str = "bellwire: federation listening on ";

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// Settings written into the config file of a test server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `server_name`; `None` means [`SERVER_NAME`]. A federating server's
    /// name carries its federation port (`localhost:PORT`).
    pub server_name: Option<String>,
    /// `default_room_version`; `None` leaves the server's own default.
    pub default_room_version: Option<String>,
    /// `max_request_bytes`; `None` leaves the server's own default.
    pub max_request_bytes: Option<u64>,
    /// `[registration] mode`.
    pub registration_mode: String,
    /// `[registration] token`.
    pub registration_token: Option<String>,
    /// TOML appended to the generated config file. Bare `key = value` lines
    /// before its first `[table]` header are placed among the top-level keys
    /// (so they do not land in a harness-written table); everything from the
    /// first header on is appended verbatim. It must not repeat a table the
    /// harness writes itself (`[database]`, `[registration]`, and
    /// `[rate_limits]` unless `rate_limits` is true).
    pub extra_config: String,
    /// Leave the server's rate limiting on. When false (the default) the
    /// harness writes `[rate_limits] enabled = false`, so tests that register
    /// many users and send many messages are not throttled; when true it
    /// writes nothing and `extra_config` may carry its own `[rate_limits]`.
    pub rate_limits: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            server_name: None,
            default_room_version: None,
            max_request_bytes: None,
            registration_mode: "open".to_owned(),
            registration_token: None,
            extra_config: String::new(),
            rate_limits: false,
        }
    }
}

/// A running `bellwire` process with its own fresh data directory.
pub struct TestServer {
    dir: tempfile::TempDir,
    options: ServerOptions,
    child: Option<Child>,
    addr: Option<SocketAddr>,
    /// The address of the federation (TLS) listener the running process
    /// announced, if it federates.
    federation_addr: Option<SocketAddr>,
    starts: u32,
}

/// Where the server binary is: `$BELLWIRE_BIN`, else `target/<profile>/bellwire`
/// next to the `deps/` directory holding the current test executable.
pub fn server_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("BELLWIRE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let exe = std::env::current_exe().context("cannot find the current test executable")?;
            let deps = exe
                .parent()
                .context("test executable has no parent directory")?;
            let profile_dir = deps
                .parent()
                .context("test executable directory has no parent")?;
            profile_dir.join(format!("bellwire{}", std::env::consts::EXE_SUFFIX))
        }
    };
    ensure!(
        path.is_file(),
        "bellwire server binary not found at {}: build it first with `cargo build -p bellwire` \
         (same CARGO_TARGET_DIR and profile as the tests), or point BELLWIRE_BIN at it",
        path.display()
    );
    Ok(path)
}

/// The name inside a TOML table header line (`[a.b]` or `[[a.b]]`, spaces
/// and a trailing comment allowed), or `None` if `line` is not a header.
fn toml_table_header(line: &str) -> Option<String> {
    let line = line.trim();
    let inner = line.strip_prefix("[[").or_else(|| line.strip_prefix('['))?;
    let end = inner.find(']')?;
    let name: String = inner[..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    (!name.is_empty()).then_some(name)
}

/// Splits `extra` into the bare keys before its first table header and the
/// rest (from that header on), and lists the tables it defines (headers plus
/// the first segment of dotted top-level keys such as `presence.enabled`).
fn split_extra_config(extra: &str) -> (String, String, BTreeSet<String>) {
    let mut prelude = String::new();
    let mut rest = String::new();
    let mut tables = BTreeSet::new();
    let mut in_tables = false;
    for line in extra.lines() {
        if let Some(name) = toml_table_header(line) {
            in_tables = true;
            tables.insert(name);
        }
        if in_tables {
            rest.push_str(line);
            rest.push('\n');
        } else {
            let trimmed = line.trim_start();
            if let Some((key, _)) = trimmed.split_once('=')
                && let Some((table, _)) = key.trim().split_once('.')
                && !trimmed.starts_with('#')
            {
                tables.insert(table.trim().to_owned());
            }
            prelude.push_str(line);
            prelude.push('\n');
        }
    }
    (prelude, rest, tables)
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl TestServer {
    /// Starts a server with default options: open registration, server name
    /// `localhost`, a free port on 127.0.0.1.
    pub async fn start() -> Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a server with the given options on a fresh data directory.
    pub async fn start_with(options: ServerOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("bellwire-test-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let mut server = Self {
            dir,
            options,
            child: None,
            addr: None,
            federation_addr: None,
            starts: 0,
        };
        server.write_config()?;
        server.spawn().await?;
        Ok(server)
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`. Changes on every (re)start.
    pub fn url(&self) -> String {
        match self.addr {
            Some(addr) => format!("http://{addr}"),
            None => panic!("the test server is not running"),
        }
    }

    /// This server's name (`server_name` in its config).
    pub fn server_name(&self) -> &str {
        self.options.server_name.as_deref().unwrap_or(SERVER_NAME)
    }

    /// `@localpart:<this server's name>`
    pub fn user_id(&self, localpart: &str) -> OwnedUserId {
        UserId::parse(format!("@{localpart}:{}", self.server_name())).expect("valid user id")
    }

    /// The federation (TLS) listener's address as the running process
    /// announced it; `None` if the server does not federate.
    pub fn federation_addr(&self) -> Option<SocketAddr> {
        self.federation_addr
    }

    /// The options this server was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// The directory holding config, database and logs.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The RocksDB directory.
    pub fn database_dir(&self) -> PathBuf {
        self.dir.path().join("db")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("bellwire.toml")
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout.log")
    }

    /// Everything the server wrote to stderr so far (all runs).
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// The OS process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn write_config(&self) -> Result<()> {
        let o = &self.options;
        let mut cfg = String::new();
        cfg.push_str(&format!("server_name = {}\n", toml_str(self.server_name())));
        cfg.push_str(&format!("listen = {}\n", toml_str("127.0.0.1:0")));
        if let Some(v) = &o.default_room_version {
            cfg.push_str(&format!("default_room_version = {}\n", toml_str(v)));
        }
        if let Some(n) = o.max_request_bytes {
            cfg.push_str(&format!("max_request_bytes = {n}\n"));
        }
        let (prelude, extra_tables, extra_table_names) = split_extra_config(&o.extra_config);
        for table in ["database", "registration"] {
            ensure!(
                !extra_table_names.contains(table),
                "ServerOptions::extra_config must not define [{table}]: the harness writes it \
                 (use the ServerOptions fields instead)"
            );
        }
        ensure!(
            o.rate_limits || !extra_table_names.contains("rate_limits"),
            "ServerOptions::extra_config defines [rate_limits] but `rate_limits` is false, so \
             the harness writes its own `[rate_limits] enabled = false`; set `rate_limits: true`"
        );
        cfg.push_str(&prelude);
        let db = self.database_dir();
        let db = db.to_str().context("data directory path is not UTF-8")?;
        cfg.push_str(&format!("\n[database]\npath = {}\n", toml_str(db)));
        cfg.push_str(&format!(
            "\n[registration]\nmode = {}\n",
            toml_str(&o.registration_mode)
        ));
        if let Some(t) = &o.registration_token {
            cfg.push_str(&format!("token = {}\n", toml_str(t)));
        }
        if !o.rate_limits {
            cfg.push_str("\n[rate_limits]\nenabled = false\n");
        }
        if !extra_tables.is_empty() {
            cfg.push('\n');
            cfg.push_str(&extra_tables);
        }
        std::fs::write(self.config_path(), cfg).context("cannot write the server config file")
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.stderr_log();
        let all: Vec<&str> = log.lines().collect();
        let start = all.len().saturating_sub(lines);
        all[start..].join("\n")
    }

    async fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the server is already running");
        let bin = server_binary()?;
        self.starts += 1;

        let mut stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_path())
            .context("cannot open the server stderr log")?;
        writeln!(stderr, "===== bellwire start #{} =====", self.starts)?;
        let mut stdout_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stdout_path())?;
        writeln!(stdout_log, "===== bellwire start #{} =====", self.starts)?;

        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(self.config_path());
        // Our config file is the whole truth: drop stray BELLWIRE_* settings
        // inherited from the environment of whoever runs the tests. The log
        // filter is not a setting; it passes through for debugging.
        for (key, _) in std::env::vars_os() {
            if let Some(k) = key.to_str()
                && k.starts_with("BELLWIRE_")
                && k != "BELLWIRE_LOG"
            {
                cmd.env_remove(k);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;

        // A thread reads stdout for the ready line and keeps draining it
        // afterwards so the server can never block on a full pipe.
        // The federation listener's line comes before the ready line and is
        // handed over with it.
        let (tx, rx) = tokio::sync::oneshot::channel::<(String, Option<String>)>();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut federation = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(stdout_log, "{line}");
                if let Some(rest) = line.strip_prefix(FEDERATION_READY_PREFIX) {
                    federation = Some(rest.trim().to_owned());
                }
                if let Some(rest) = line.strip_prefix(READY_PREFIX)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((rest.trim().to_owned(), federation.take()));
                }
            }
        });
        self.child = Some(child);

        let (addr, federation_addr) = match tokio::time::timeout(READY_TIMEOUT, rx).await {
            Ok(Ok(lines)) => lines,
            Ok(Err(_)) => {
                // stdout closed without the ready line: the process ended.
                let status = self.wait_exit(Duration::from_secs(5)).await;
                bail!(
                    "bellwire exited before printing {READY_PREFIX:?} (status {status:?}); stderr:\n{}",
                    self.log_tail(200)
                );
            }
            Err(_) => {
                let _ = self.kill9().await;
                bail!(
                    "bellwire did not print {READY_PREFIX:?} within {READY_TIMEOUT:?}; stderr:\n{}",
                    self.log_tail(200)
                );
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("ready line has no socket address: {READY_PREFIX}{addr}"))?;
        self.addr = Some(addr);
        self.federation_addr = match federation_addr {
            Some(a) => Some(a.parse().with_context(|| {
                format!("federation line has no socket address: {FEDERATION_READY_PREFIX}{a}")
            })?),
            None => None,
        };
        Ok(())
    }

    /// Polls the child until it exits or `timeout` passes. Returns the exit
    /// status and forgets the child; `None` if it is still running.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    self.addr = None;
                    self.federation_addr = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(25)).await
                }
                _ => return None,
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit. Returns its
    /// exit status. If it does not exit in time it is SIGKILLed and this fails.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let pid = self.pid().context("the server is not running")?;
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: plain syscall on the PID of a child we own and have not reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        ensure!(
            rc == 0,
            "kill(SIGTERM) failed: {}",
            std::io::Error::last_os_error()
        );
        match self.wait_exit(SHUTDOWN_TIMEOUT).await {
            Some(status) => Ok(status),
            None => {
                let _ = self.kill9().await;
                bail!(
                    "bellwire did not exit within {SHUTDOWN_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                    self.log_tail(100)
                )
            }
        }
    }

    /// Graceful restart: SIGTERM, wait for exit, start again on the same data
    /// directory. Returns the exit status of the old process. The URL changes.
    pub async fn restart(&mut self) -> Result<ExitStatus> {
        let status = self.stop().await?;
        self.spawn().await?;
        Ok(status)
    }

    /// SIGKILL the process (no chance to flush anything) and reap it.
    pub async fn kill9(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("the server is not running")?;
        // Child::kill is SIGKILL on unix, sent to this child's own PID.
        child.kill().context("cannot SIGKILL the server")?;
        self.wait_exit(Duration::from_secs(10))
            .await
            .context("server did not die after SIGKILL")
    }

    /// Starts the server again on the same data directory after `stop` or
    /// `kill9`.
    pub async fn start_again(&mut self) -> Result<()> {
        self.spawn().await
    }

    // ----- clients -----

    /// A raw HTTP helper pointed at this server.
    pub fn http(&self) -> Http {
        Http::new(&self.url()).for_server(self.server_name())
    }

    /// A matrix-sdk client for this server, not logged in, with an in-memory
    /// store. Retries are off so tests see the server's first answer.
    pub async fn sdk_client(&self) -> Result<Client> {
        Client::builder()
            .homeserver_url(self.url())
            .request_config(
                RequestConfig::new()
                    .disable_retry()
                    .timeout(Duration::from_secs(30)),
            )
            .build()
            .await
            .context("cannot build a matrix-sdk client")
    }

    /// Registers `localpart` (password [`password_for`]) with the UIA
    /// `m.login.dummy` flow, then logs in with the password on a fresh client.
    pub async fn new_user(&self, localpart: &str) -> Result<User> {
        let password = password_for(localpart);
        self.register_account(localpart, &password).await?;
        self.login(localpart, &password).await
    }

    /// Registers an account with the UIA `m.login.dummy` flow
    /// ([`register_with_dummy`]).
    pub async fn register_account(&self, localpart: &str, password: &str) -> Result<OwnedUserId> {
        register_with_dummy(&self.sdk_client().await?, localpart, password).await
    }

    /// Logs `user` (localpart or full user id) in with a password on a fresh
    /// client ([`login_with_password`]).
    pub async fn login(&self, user: &str, password: &str) -> Result<User> {
        login_with_password(self.sdk_client().await?, user, password).await
    }
}

/// Registers an account on `client`'s server with the UIA
/// dance: a first request without auth must answer 401 with a session and
/// an `m.login.dummy` flow; the second completes it.
pub async fn register_with_dummy(
    client: &Client,
    localpart: &str,
    password: &str,
) -> Result<OwnedUserId> {
    let request = |auth: Option<AuthData>| {
        let mut r = register::v3::Request::new();
        r.username = Some(localpart.to_owned());
        r.password = Some(password.to_owned());
        r.initial_device_display_name = Some("bellwire-tests registration".to_owned());
        r.auth = auth;
        r
    };
    let first = client.matrix_auth().register(request(None)).await;
    let err = match first {
        Ok(_) => bail!("registering {localpart} without auth succeeded; expected 401 UIA"),
        Err(err) => err,
    };
    let info = err.as_uiaa_response().with_context(|| {
        format!("registering {localpart}: expected a 401 UIA response, got {err:?}")
    })?;
    ensure!(
        info.flows
            .iter()
            .any(|f| f.stages.contains(&AuthType::Dummy)),
        "registration UIA offers no m.login.dummy flow: {:?}",
        info.flows
    );
    let mut dummy = Dummy::new();
    dummy.session = info.session.clone();
    let response = client
        .matrix_auth()
        .register(request(Some(AuthData::Dummy(dummy))))
        .await
        .with_context(|| format!("registering {localpart} with m.login.dummy"))?;
    Ok(response.user_id)
}

/// Logs `user` (localpart or full user id) in with a password on a fresh
/// `client` and gives it its first sync.
pub async fn login_with_password(client: Client, user: &str, password: &str) -> Result<User> {
    client
        .matrix_auth()
        .login_username(user, password)
        .initial_device_display_name("bellwire-tests")
        .send()
        .await
        .with_context(|| format!("password login as {user}"))?;
    let user_id = client
        .user_id()
        .context("no user id after login")?
        .to_owned();
    let localpart = user_id.localpart().to_owned();
    let user = User {
        client,
        user_id,
        localpart,
        password: password.to_owned(),
        seen: Mutex::new(Seen::default()),
    };
    // A real client syncs right after logging in, and that first sync
    // is when matrix-sdk uploads the device's E2EE keys. Without it a
    // user could send encrypted messages from a device nobody can find,
    // and replies to it would be undecryptable.
    user.sync_once()
        .await
        .with_context(|| format!("first sync of {}'s new device", user.user_id))?;
    Ok(user)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL our own child by PID, then reap it.
            let _ = child.kill();
            let _ = child.wait();
        }
        let keep = std::env::var_os("BELLWIRE_TEST_KEEP").is_some_and(|v| v == "1");
        if std::thread::panicking() {
            eprintln!(
                "---- bellwire stderr ({}), last 120 lines ----\n{}\n---- end of bellwire stderr ----",
                self.stderr_path().display(),
                self.log_tail(120)
            );
        }
        if keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("keeping bellwire test data in {}", dir.keep().display());
        }
    }
}

/// The password every test user gets.
pub fn password_for(localpart: &str) -> String {
    format!("{localpart}-correct-horse-battery")
}

/// `@localpart:localhost`
pub fn mxid(localpart: &str) -> OwnedUserId {
    UserId::parse(format!("@{localpart}:{SERVER_NAME}")).expect("valid user id")
}

// ---------------------------------------------------------------------------
// Logged-in users and bounded sync
// ---------------------------------------------------------------------------

/// A timeline event a user received through /sync.
#[derive(Clone, Debug)]
pub struct SeenEvent {
    pub room_id: OwnedRoomId,
    pub event_id: Option<String>,
    pub sender: String,
    pub event_type: String,
    pub state_key: Option<String>,
    /// The event as the client sees it: for an encrypted event that could be
    /// decrypted, the decrypted event (`type` `m.room.message`, ...).
    pub json: Value,
    /// It arrived as `m.room.encrypted` and the client decrypted it.
    pub decrypted: bool,
    /// It arrived as `m.room.encrypted` and the client could not decrypt it
    /// (then `json` is the encrypted event).
    pub undecryptable: bool,
}

impl SeenEvent {
    /// `content.body` of an `m.room.message`.
    pub fn body(&self) -> Option<&str> {
        if self.event_type != "m.room.message" {
            return None;
        }
        self.json.pointer("/content/body").and_then(Value::as_str)
    }
}

/// Everything a user has learned through /sync so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Timeline events of joined and left rooms, in arrival order.
    pub events: Vec<SeenEvent>,
    /// Invites: room id -> stripped state events.
    pub invites: BTreeMap<OwnedRoomId, Vec<Value>>,
    /// Rooms that appeared in the `leave` section.
    pub left: BTreeSet<OwnedRoomId>,
    /// Rooms that appeared in the `join` section.
    pub joined: BTreeSet<OwnedRoomId>,
    /// Global account data: type -> latest content.
    pub account_data: BTreeMap<String, Value>,
    /// Number of completed sync requests.
    pub syncs: u64,
}

impl Seen {
    /// `(sender, body)` of every text message seen in `room`, in order.
    pub fn texts(&self, room: &RoomId) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| e.room_id == room)
            .filter_map(|e| e.body().map(|b| (e.sender.clone(), b.to_owned())))
            .collect()
    }

    pub fn has_text(&self, room: &RoomId, sender: &UserId, body: &str) -> bool {
        self.events
            .iter()
            .any(|e| e.room_id == room && e.sender == sender.as_str() && e.body() == Some(body))
    }

    /// The timeline event with id `event_id`, if seen.
    pub fn event(&self, event_id: &str) -> Option<&SeenEvent> {
        self.events
            .iter()
            .find(|e| e.event_id.as_deref() == Some(event_id))
    }

    /// Whether `sender`'s text `body` arrived in `room` encrypted and was
    /// decrypted by the client.
    pub fn has_decrypted_text(&self, room: &RoomId, sender: &UserId, body: &str) -> bool {
        self.events.iter().any(|e| {
            e.room_id == room
                && e.sender == sender.as_str()
                && e.decrypted
                && e.body() == Some(body)
        })
    }

    /// Encrypted events of `room` the client could not decrypt.
    pub fn undecryptable(&self, room: &RoomId) -> Vec<&SeenEvent> {
        self.events
            .iter()
            .filter(|e| e.room_id == room && e.undecryptable)
            .collect()
    }

    /// The latest membership of `user` in `room` seen in a timeline.
    pub fn membership(&self, room: &RoomId, user: &UserId) -> Option<String> {
        self.events
            .iter()
            .rev()
            .filter(|e| e.room_id == room && e.event_type == "m.room.member")
            .find(|e| e.state_key.as_deref() == Some(user.as_str()))
            .and_then(|e| {
                e.json
                    .pointer("/content/membership")?
                    .as_str()
                    .map(str::to_owned)
            })
    }
}

fn timeline_json(ev: &TimelineEvent) -> Value {
    serde_json::from_str(ev.raw().json().get()).unwrap_or(Value::Null)
}

fn seen_event(room_id: &RoomId, ev: &TimelineEvent) -> SeenEvent {
    use matrix_sdk::deserialized_responses::TimelineEventKind;
    let json = timeline_json(ev);
    let s = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned);
    SeenEvent {
        room_id: room_id.to_owned(),
        event_id: s("event_id"),
        sender: s("sender").unwrap_or_default(),
        event_type: s("type").unwrap_or_default(),
        state_key: s("state_key"),
        decrypted: matches!(ev.kind, TimelineEventKind::Decrypted(_)),
        undecryptable: matches!(ev.kind, TimelineEventKind::UnableToDecrypt { .. }),
        json,
    }
}

/// A logged-in user: a matrix-sdk client plus what it has seen via /sync.
pub struct User {
    pub client: Client,
    pub user_id: OwnedUserId,
    pub localpart: String,
    pub password: String,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn access_token(&self) -> String {
        self.client.access_token().expect("logged in")
    }

    /// The device id of this client's session.
    pub fn device_id(&self) -> String {
        self.client
            .device_id()
            .expect("logged in")
            .as_str()
            .to_owned()
    }

    /// The client's view of `room_id` (known after createRoom/join or sync).
    pub fn room(&self, room_id: &RoomId) -> Result<Room> {
        self.client
            .get_room(room_id)
            .with_context(|| format!("{} does not know room {room_id}", self.user_id))
    }

    /// A snapshot of everything seen through sync so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    fn record(&self, resp: &SyncResponse) {
        let mut seen = self.seen.lock().unwrap();
        seen.syncs += 1;
        for (room_id, update) in &resp.rooms.joined {
            seen.joined.insert(room_id.clone());
            for ev in &update.timeline.events {
                seen.events.push(seen_event(room_id, ev));
            }
        }
        for (room_id, update) in &resp.rooms.left {
            seen.left.insert(room_id.clone());
            for ev in &update.timeline.events {
                seen.events.push(seen_event(room_id, ev));
            }
        }
        for (room_id, update) in &resp.rooms.invited {
            let events = update
                .invite_state
                .events
                .iter()
                .map(|e| serde_json::from_str(e.json().get()).unwrap_or(Value::Null))
                .collect();
            seen.invites.insert(room_id.clone(), events);
        }
        for ev in &resp.account_data {
            if let Ok(v) = serde_json::from_str::<Value>(ev.json().get())
                && let Some(t) = v.get("type").and_then(Value::as_str)
            {
                let content = v.get("content").cloned().unwrap_or(Value::Null);
                seen.account_data.insert(t.to_owned(), content);
            }
        }
    }

    /// One /sync round (long-poll of at most 500 ms), recorded. Bounded by
    /// `WAIT`.
    pub async fn sync_once(&self) -> Result<SyncResponse> {
        let settings = SyncSettings::default().timeout(Duration::from_millis(500));
        let resp = tokio::time::timeout(WAIT, self.client.sync_once(settings))
            .await
            .map_err(|_| anyhow!("{}: /sync did not answer within {WAIT:?}", self.user_id))?
            .with_context(|| format!("{}: /sync failed", self.user_id))?;
        self.record(&resp);
        Ok(resp)
    }

    /// Waits until sync has delivered `sender`'s text `body` in `room` as an
    /// encrypted event that this client decrypted.
    pub async fn wait_for_decrypted_text(
        &self,
        room: &RoomId,
        sender: &UserId,
        body: &str,
    ) -> Result<()> {
        self.sync_until(
            &format!("encrypted message {body:?} from {sender} in {room}, decrypted"),
            |s| s.has_decrypted_text(room, sender, body),
        )
        .await
        .with_context(|| {
            format!(
                "undecryptable events seen in {room}: {:#?}",
                self.seen().undecryptable(room)
            )
        })
    }

    /// Syncs until `done` holds for what this user has seen, or fails after
    /// `WAIT` with a message naming `what`.
    pub async fn sync_until(&self, what: &str, mut done: impl FnMut(&Seen) -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if done(&self.seen.lock().unwrap()) {
                return Ok(());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let seen = self.seen();
                bail!(
                    "{}: gave up after {WAIT:?} waiting for {what}; {} syncs, joined {:?}, \
                     invited {:?}, left {:?}, last events: {:#?}",
                    self.user_id,
                    seen.syncs,
                    seen.joined,
                    seen.invites.keys().collect::<Vec<_>>(),
                    seen.left,
                    seen.events.iter().rev().take(5).collect::<Vec<_>>()
                );
            }
            let settings = SyncSettings::default().timeout(Duration::from_millis(500));
            // A 500 ms long-poll gets a few seconds even when less of WAIT
            // is left, so a slow last round ends in "gave up ..." with what
            // was seen, not in a /sync said to hang.
            let bound = remaining.max(Duration::from_secs(5));
            let resp = tokio::time::timeout(bound, self.client.sync_once(settings))
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: /sync hung for {bound:?} while waiting for {what}",
                        self.user_id
                    )
                })?
                .with_context(|| {
                    format!("{}: /sync failed while waiting for {what}", self.user_id)
                })?;
            self.record(&resp);
        }
    }

    /// Waits until sync has delivered an invite to `room`; returns its
    /// stripped state.
    pub async fn wait_for_invite(&self, room: &RoomId) -> Result<Vec<Value>> {
        self.sync_until(&format!("an invite to {room}"), |s| {
            s.invites.contains_key(room)
        })
        .await?;
        Ok(self.seen().invites[room].clone())
    }

    /// Waits until sync has delivered the text `body` sent by `sender` in `room`.
    pub async fn wait_for_text(&self, room: &RoomId, sender: &UserId, body: &str) -> Result<()> {
        self.sync_until(&format!("message {body:?} from {sender} in {room}"), |s| {
            s.has_text(room, sender, body)
        })
        .await
        .with_context(|| {
            let seen = self.seen();
            let undecryptable = seen.undecryptable(room);
            if undecryptable.is_empty() {
                String::from("no undecryptable events were seen")
            } else {
                format!("undecryptable events seen in {room}: {undecryptable:#?}")
            }
        })
    }

    /// Joins `room` (by id) through the SDK; the room must be known, e.g. from
    /// a synced invite.
    pub async fn join(&self, room: &RoomId) -> Result<Room> {
        self.client
            .join_room_by_id(room)
            .await
            .with_context(|| format!("{} joining {room}", self.user_id))
    }

    /// Sends a plain text message; returns its event id.
    pub async fn send_text(&self, room: &RoomId, body: &str) -> Result<String> {
        use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
        let r = self.room(room)?;
        let res = r
            .send(RoomMessageEventContent::text_plain(body))
            .await
            .with_context(|| format!("{} sending {body:?} to {room}", self.user_id))?;
        Ok(res.response.event_id.to_string())
    }

    /// Server's membership list for `room` (GET /members, as this user):
    /// user id -> membership.
    pub async fn memberships(&self, room: &RoomId) -> Result<BTreeMap<String, String>> {
        let resp = self
            .client
            .send(get_member_events::v3::Request::new(room.to_owned()))
            .await
            .with_context(|| format!("{} GET /members of {room}", self.user_id))?;
        let mut out = BTreeMap::new();
        for ev in resp.chunk {
            let v: Value = serde_json::from_str(ev.json().get())?;
            let user = v["state_key"]
                .as_str()
                .context("member event without state_key")?;
            let membership = v
                .pointer("/content/membership")
                .and_then(Value::as_str)
                .context("no membership")?;
            out.insert(user.to_owned(), membership.to_owned());
        }
        Ok(out)
    }

    /// The users whose membership in `room` is `join`, per the server.
    pub async fn joined_members(&self, room: &RoomId) -> Result<BTreeSet<String>> {
        Ok(self
            .memberships(room)
            .await?
            .into_iter()
            .filter(|(_, m)| m == "join")
            .map(|(u, _)| u)
            .collect())
    }
}

// ---------------------------------------------------------------------------
// Errors from the SDK
// ---------------------------------------------------------------------------

/// `(HTTP status, errcode)` of a Matrix error answer, if `err` is one.
pub fn matrix_error(err: &matrix_sdk::Error) -> Option<(u16, String)> {
    let api = err.as_client_api_error()?;
    let code = api
        .error_kind()
        .map(|k: &ErrorKind| k.errcode().as_str().to_owned());
    Some((api.status_code.as_u16(), code.unwrap_or_default()))
}

/// Asserts that `result` failed with the given HTTP status and errcode.
#[track_caller]
pub fn assert_matrix_error<T: std::fmt::Debug>(
    result: &std::result::Result<T, matrix_sdk::Error>,
    status: u16,
    errcode: &str,
) {
    match result {
        Ok(v) => panic!("expected {status} {errcode}, but the request succeeded: {v:?}"),
        Err(err) => match matrix_error(err) {
            Some((s, c)) => assert!(
                s == status && c == errcode,
                "expected {status} {errcode}, got {s} {c} ({err:?})"
            ),
            None => panic!("expected {status} {errcode}, got a non-Matrix error: {err:?}"),
        },
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------

/// Percent-encodes one path segment (everything but RFC 3986 unreserved).
pub fn enc(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An HTTP answer: status, raw text and the body parsed as JSON (or Null).
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub json: Value,
    /// Response headers, names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn errcode(&self) -> Option<&str> {
        self.json.get("errcode").and_then(Value::as_str)
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Fails unless this is `status` with one of `errcodes` (a spec that
    /// leaves the exact code open, e.g. `M_INVALID_PARAM` or `M_BAD_JSON`).
    pub fn expect_error_in(&self, status: u16, errcodes: &[&str]) -> Result<&Self> {
        ensure!(
            self.status == status && self.errcode().is_some_and(|c| errcodes.contains(&c)),
            "expected {status} with one of {errcodes:?}, got {} {}",
            self.status,
            self.text
        );
        Ok(self)
    }

    /// Fails unless this is exactly `status` with `errcode`.
    pub fn expect_error(&self, status: u16, errcode: &str) -> Result<&Self> {
        ensure!(
            self.status == status && self.errcode() == Some(errcode),
            "expected {status} {errcode}, got {} {}",
            self.status,
            self.text
        );
        ensure!(
            self.json.get("error").is_none_or(Value::is_string),
            "`error` must be a string when present: {}",
            self.text
        );
        Ok(self)
    }

    /// Fails unless the status is 200.
    pub fn expect_ok(&self) -> Result<&Self> {
        ensure!(
            self.status == 200,
            "expected 200, got {} {}",
            self.status,
            self.text
        );
        Ok(self)
    }
}

/// Minimal raw Client-Server API client.
#[derive(Clone, Debug)]
pub struct Http {
    pub base: String,
    client: reqwest::Client,
    /// The name of the server behind `base`: uploads must answer content
    /// URIs on it. [`SERVER_NAME`] unless set with [`Http::for_server`].
    pub server_name: String,
}

/// A raw request body.
pub enum Body {
    None,
    Json(Value),
    /// Bytes sent as-is with `Content-Type: application/json`.
    Raw(Vec<u8>),
}

impl Http {
    pub fn new(base: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(WAIT)
            .build()
            .expect("reqwest client");
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client,
            server_name: SERVER_NAME.to_owned(),
        }
    }

    /// The same helper for a server named `server_name`.
    pub fn for_server(mut self, server_name: &str) -> Self {
        self.server_name = server_name.to_owned();
        self
    }

    /// Sends `method path` (path starting with `/_matrix/...`).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> Result<Reply> {
        self.call_with_headers(method, path, token, &[], body).await
    }

    /// Like [`Http::call`], with extra request headers (e.g. `Origin`).
    pub async fn call_with_headers(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Reply> {
        let mut req = self.request(method, path, token, headers)?;
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header("content-type", "application/json")
                .body(v.to_string()),
            Body::Raw(b) => req.header("content-type", "application/json").body(b),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = header_list(&resp);
        let text = resp
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading body"))?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            text,
            json,
            headers,
        })
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.call("GET", path, token, Body::None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Reply> {
        self.call("POST", path, token, Body::Json(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Result<Reply> {
        self.call("PUT", path, token, Body::Json(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.call("DELETE", path, token, Body::None).await
    }

    /// POST /join/{roomIdOrAlias} with an empty body; fails unless 200.
    pub async fn join(&self, token: &str, room_id_or_alias: &str) -> Result<()> {
        self.post(
            &format!("/_matrix/client/v3/join/{}", enc(room_id_or_alias)),
            Some(token),
            json!({}),
        )
        .await?
        .expect_ok()
        .with_context(|| format!("joining {room_id_or_alias}"))?;
        Ok(())
    }

    /// PUT /send/{event_type}/{txn} with `content` under a fresh transaction
    /// id; fails unless 200; returns the event id.
    pub async fn send_event(
        &self,
        token: &str,
        room: &str,
        event_type: &str,
        content: Value,
    ) -> Result<String> {
        static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{}/bellwire-tests-{n}",
            enc(room),
            enc(event_type)
        );
        let r = self.put(&path, Some(token), content).await?;
        r.expect_ok().with_context(|| format!("PUT {path}"))?;
        Ok(r.json["event_id"]
            .as_str()
            .with_context(|| format!("PUT {path}: no event_id in {}", r.text))?
            .to_owned())
    }

    /// PUT global account data `ty` for `user`; fails unless 200.
    pub async fn put_account_data(
        &self,
        token: &str,
        user: &str,
        ty: &str,
        content: Value,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/user/{}/account_data/{}",
            enc(user),
            enc(ty)
        );
        self.put(&path, Some(token), content)
            .await?
            .expect_ok()
            .with_context(|| format!("PUT {path}"))?;
        Ok(())
    }

    /// Full UIA registration (`m.login.dummy`); returns (user_id, access_token).
    pub async fn register(&self, localpart: &str, password: &str) -> Result<(String, String)> {
        let first = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": localpart, "password": password}),
            )
            .await?;
        ensure!(
            first.status == 401,
            "register step 1: expected 401 UIA, got {} {}",
            first.status,
            first.text
        );
        let session = first.json.get("session").cloned().unwrap_or(Value::Null);
        let done = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({
                    "username": localpart,
                    "password": password,
                    "auth": {"type": "m.login.dummy", "session": session},
                }),
            )
            .await?;
        done.expect_ok()?;
        let user_id = done.json["user_id"]
            .as_str()
            .context("no user_id")?
            .to_owned();
        let token = done.json["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned();
        Ok((user_id, token))
    }

    /// POST /login with `m.login.password` and an `m.id.user` identifier.
    pub async fn login(&self, user: &str, password: &str) -> Result<Reply> {
        self.post(
            "/_matrix/client/v3/login",
            None,
            json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            }),
        )
        .await
    }

    /// GET /versions answers 200 with a `versions` array.
    pub async fn assert_alive(&self) -> Result<()> {
        let r = self
            .get("/_matrix/client/versions", None)
            .await
            .context("server is not answering")?;
        r.expect_ok()?;
        ensure!(
            r.json["versions"].is_array(),
            "/versions has no versions array: {}",
            r.text
        );
        Ok(())
    }

    /// Creates a room; returns its id.
    pub async fn create_room(&self, token: &str, body: Value) -> Result<String> {
        let r = self
            .post("/_matrix/client/v3/createRoom", Some(token), body)
            .await?;
        r.expect_ok()?;
        Ok(r.json["room_id"].as_str().context("no room_id")?.to_owned())
    }

    /// PUT /send/m.room.message with a fresh txn id; returns the reply.
    pub async fn send_text(&self, token: &str, room: &str, txn: &str, body: &str) -> Result<Reply> {
        self.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(room),
                enc(txn)
            ),
            Some(token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// `/rooms/{room}/state/{type}/{key}`; for an empty key the form without
    /// the trailing slash (the spec allows both, see `state_path_with_slash`).
    pub fn state_path(room: &str, ty: &str, key: &str) -> String {
        let mut path = format!("/_matrix/client/v3/rooms/{}/state/{}", enc(room), enc(ty));
        if !key.is_empty() {
            path.push('/');
            path.push_str(&enc(key));
        }
        path
    }

    /// `/rooms/{room}/state/{type}/{key}` always with the key segment, i.e.
    /// with a trailing slash for an empty key (what ruma / matrix-sdk send).
    pub fn state_path_with_slash(room: &str, ty: &str, key: &str) -> String {
        format!(
            "/_matrix/client/v3/rooms/{}/state/{}/{}",
            enc(room),
            enc(ty),
            enc(key)
        )
    }

    /// GET /rooms/{room}/state/{type}/{key}
    pub async fn state(&self, token: &str, room: &str, ty: &str, key: &str) -> Result<Reply> {
        self.get(&Self::state_path(room, ty, key), Some(token))
            .await
    }

    /// GET /rooms/{room}/event/{event}
    pub async fn event(&self, token: &str, room: &str, event_id: &str) -> Result<Reply> {
        self.get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(room),
                enc(event_id)
            ),
            Some(token),
        )
        .await
    }

    /// GET /joined_rooms as a list.
    pub async fn joined_rooms(&self, token: &str) -> Result<Vec<String>> {
        let r = self
            .get("/_matrix/client/v3/joined_rooms", Some(token))
            .await?;
        r.expect_ok()?;
        Ok(r.json["joined_rooms"]
            .as_array()
            .context("no joined_rooms array")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// All `m.room.message` events of `room`, oldest first, collected by
    /// paginating /messages backwards from the end (bounded).
    pub async fn all_messages(&self, token: &str, room: &str) -> Result<Vec<Value>> {
        let mut from: Option<String> = None;
        let mut out = Vec::new();
        for _ in 0..1000 {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
                enc(room)
            );
            if let Some(f) = &from {
                path.push_str(&format!("&from={}", enc(f)));
            }
            let r = self.get(&path, Some(token)).await?;
            r.expect_ok()?;
            let chunk = r.json["chunk"].as_array().context("no chunk")?;
            for ev in chunk {
                if ev["type"] == "m.room.message" {
                    out.push(ev.clone());
                }
            }
            match r.json.get("end").and_then(Value::as_str) {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => {
                    out.reverse();
                    return Ok(out);
                }
            }
        }
        bail!("/messages pagination of {room} did not end after 1000 pages")
    }
}

/// Runs `f` until it returns `Ok(true)`, at most `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last_err = None;
    while Instant::now() < deadline {
        match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("gave up after {WAIT:?} waiting for {what} (last error: {last_err:?})")
}

// ---------------------------------------------------------------------------
// Raw /sync
// ---------------------------------------------------------------------------

/// A raw `/sync` loop for one access token, for tests that need the exact
/// JSON (ephemeral events, unread counts, presence, room account data). It
/// keeps `next_batch` and every response it received.
#[derive(Debug)]
pub struct RawSync {
    http: Http,
    token: String,
    who: String,
    since: Option<String>,
    filter: Option<String>,
    set_presence: Option<String>,
    /// Every response received so far, oldest first.
    pub responses: Vec<Value>,
}

impl RawSync {
    /// A sync loop for `token`; `who` names the user in error messages. The
    /// first request is an initial sync (no `since`).
    pub fn new(http: &Http, token: &str, who: &str) -> Self {
        Self {
            http: http.clone(),
            token: token.to_owned(),
            who: who.to_owned(),
            since: None,
            filter: None,
            set_presence: None,
            responses: Vec::new(),
        }
    }

    /// Sends `filter` inline (as the `filter` query parameter) on every request.
    pub fn with_filter(mut self, filter: Value) -> Self {
        self.filter = Some(filter.to_string());
        self
    }

    /// Sends `set_presence=<presence>` on every request.
    pub fn with_set_presence(mut self, presence: &str) -> Self {
        self.set_presence = Some(presence.to_owned());
        self
    }

    /// The `since` token the next request will use.
    pub fn since(&self) -> Option<&str> {
        self.since.as_deref()
    }

    /// Sets the `since` token of the next request, e.g. to repeat a request
    /// whose answer the client did not acknowledge.
    pub fn set_since(&mut self, since: Option<String>) {
        self.since = since;
    }

    /// One /sync request long-polling at most `timeout_ms`; advances `since`
    /// and records the response.
    pub async fn once(&mut self, timeout_ms: u64) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(since) = &self.since {
            path.push_str(&format!("&since={}", enc(since)));
        }
        if let Some(filter) = &self.filter {
            path.push_str(&format!("&filter={}", enc(filter)));
        }
        if let Some(p) = &self.set_presence {
            path.push_str(&format!("&set_presence={}", enc(p)));
        }
        let r = self
            .http
            .get(&path, Some(&self.token))
            .await
            .with_context(|| format!("{}: raw /sync", self.who))?;
        r.expect_ok()
            .with_context(|| format!("{}: raw /sync", self.who))?;
        let next = r.json["next_batch"].as_str().with_context(|| {
            format!("{}: /sync answer without next_batch: {}", self.who, r.text)
        })?;
        self.since = Some(next.to_owned());
        self.responses.push(r.json.clone());
        Ok(r.json)
    }

    /// Catches up: syncs with `timeout=0` so later requests only see what
    /// happens from now on.
    pub async fn catch_up(&mut self) -> Result<()> {
        self.once(0).await.map(drop)
    }

    /// Syncs (500 ms long-polls) until `find` returns `Some` for a response,
    /// and returns that. Fails after [`WAIT`] with a message naming `what`.
    pub async fn until<T>(
        &mut self,
        what: &str,
        mut find: impl FnMut(&Value) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let resp = self.once(500).await?;
            if let Some(found) = find(&resp) {
                return Ok(found);
            }
        }
        let last: Vec<&Value> = self.responses.iter().rev().take(3).collect();
        bail!(
            "{}: gave up after {WAIT:?} waiting in /sync for {what}; last responses: {last:#?}",
            self.who
        )
    }

    /// `rooms.join.<room>` of a sync response, if present.
    pub fn joined_room<'a>(resp: &'a Value, room: &str) -> Option<&'a Value> {
        resp.get("rooms")?.get("join")?.get(room)
    }

    fn room_events<'a>(resp: &'a Value, room: &str, section: &str) -> Vec<&'a Value> {
        Self::joined_room(resp, room)
            .and_then(|r| r.get(section))
            .and_then(|s| s.get("events"))
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    /// Timeline events of joined `room` in one response.
    pub fn timeline<'a>(resp: &'a Value, room: &str) -> Vec<&'a Value> {
        Self::room_events(resp, room, "timeline")
    }

    /// Ephemeral events of type `ty` of joined `room` in one response.
    pub fn ephemeral<'a>(resp: &'a Value, room: &str, ty: &str) -> Vec<&'a Value> {
        Self::room_events(resp, room, "ephemeral")
            .into_iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }

    /// `content.user_ids` of the last `m.typing` event for `room` in `resp`.
    pub fn typing_users(resp: &Value, room: &str) -> Option<Vec<String>> {
        let ev = Self::ephemeral(resp, room, "m.typing").pop()?;
        Some(
            ev.pointer("/content/user_ids")?
                .as_array()?
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// `user`'s `m.read` receipt for `event` in the `m.receipt` events of
    /// `room` in `resp`.
    pub fn read_receipt(resp: &Value, room: &str, event: &str, user: &str) -> Option<Value> {
        Self::ephemeral(resp, room, "m.receipt")
            .into_iter()
            .find_map(|ev| {
                ev.get("content")?
                    .get(event)?
                    .get("m.read")?
                    .get(user)
                    .cloned()
            })
    }

    /// Room account data events of type `ty` of joined `room` in one response.
    pub fn room_account_data<'a>(resp: &'a Value, room: &str, ty: &str) -> Vec<&'a Value> {
        Self::room_events(resp, room, "account_data")
            .into_iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }

    /// `m.presence` events about `user` in one response.
    pub fn presence_of<'a>(resp: &'a Value, user: &str) -> Vec<&'a Value> {
        resp.pointer("/presence/events")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|e| e["type"] == "m.presence" && e["sender"] == user)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `rooms.join.<room>.unread_notifications.<field>`; an absent field in a
    /// present room counts as 0, an absent room as `None`.
    pub fn unread(resp: &Value, room: &str, field: &str) -> Option<u64> {
        let r = Self::joined_room(resp, room)?;
        Some(
            r.get("unread_notifications")
                .and_then(|u| u.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0),
        )
    }
}

impl User {
    /// A raw HTTP helper pointed at this user's homeserver.
    pub fn http(&self) -> Http {
        Http::new(self.client.homeserver().as_str()).for_server(self.user_id.server_name().as_str())
    }

    /// A raw /sync loop with this user's access token.
    pub fn raw_sync(&self) -> RawSync {
        RawSync::new(&self.http(), &self.access_token(), self.user_id.as_str())
    }

    /// Creates a room through matrix-sdk with `name` and preset
    /// `private_chat`, invites `members`, and has each of them accept through
    /// their own client (sync for the invite, then join). Returns the room id.
    pub async fn create_room_with(&self, name: &str, members: &[&User]) -> Result<OwnedRoomId> {
        use matrix_sdk::ruma::api::client::room::create_room::{self, v3::RoomPreset};
        let mut request = create_room::v3::Request::new();
        request.name = Some(name.to_owned());
        request.preset = Some(RoomPreset::PrivateChat);
        request.invite = members.iter().map(|m| m.user_id.clone()).collect();
        let room = self
            .client
            .create_room(request)
            .await
            .with_context(|| format!("{} creating room {name:?}", self.user_id))?;
        let room_id = room.room_id().to_owned();
        for member in members {
            member.wait_for_invite(&room_id).await?;
            member.join(&room_id).await?;
        }
        Ok(room_id)
    }
}

// ---------------------------------------------------------------------------
// End-to-end encryption: several clients syncing together, hand-made keys
// ---------------------------------------------------------------------------

/// Syncs every client in `users` in turn (each a long-poll of at most 500 ms,
/// so their outgoing E2EE requests go out too) until `check` returns
/// `Ok(true)`; `check` runs before the first round. Fails after [`WAIT`]
/// naming `what` and the last error `check` returned. For flows where each
/// step needs the other side's reaction (verification, key sharing).
pub async fn sync_all_until<F, Fut>(users: &[&User], what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    sync_all_until_some(users, what, || {
        let done = check();
        async move { Ok(done.await?.then_some(())) }
    })
    .await
}

/// Like [`sync_all_until`], for a `check` that yields a value once ready
/// (`Ok(Some(value))`); returns that value.
pub async fn sync_all_until_some<T, F, Fut>(users: &[&User], what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            let who: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
            bail!(
                "gave up after {WAIT:?} syncing {who:?} waiting for {what} (last error: {last_err:?})"
            );
        }
        for user in users {
            user.sync_once().await?;
        }
    }
}

/// The bytes a Matrix signature covers: the canonical JSON (sorted keys, no
/// insignificant whitespace) of `value` without `signatures` and `unsigned`.
pub fn signable_json(value: &Value) -> Result<String> {
    let mut value = value.clone();
    if let Some(object) = value.as_object_mut() {
        object.remove("signatures");
        object.remove("unsigned");
    }
    let canonical = matrix_sdk::ruma::CanonicalJsonValue::try_from(value)
        .context("value cannot be turned into canonical JSON")?;
    Ok(canonical.to_string())
}

/// An ed25519 key pair with the key id it signs under (`ed25519:<device id>`
/// for a device key, `ed25519:<public key>` for a cross-signing key).
#[derive(Clone)]
pub struct SigningKey {
    keypair: matrix_sdk::encryption::vodozemac::Ed25519Keypair,
    key_id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh device signing key, `ed25519:<device_id>`.
    pub fn for_device(device_id: &str) -> Self {
        Self {
            keypair: matrix_sdk::encryption::vodozemac::Ed25519Keypair::new(),
            key_id: format!("ed25519:{device_id}"),
        }
    }

    /// A fresh key signing under `key_id` (`ed25519:<name>`), e.g. a
    /// server's signing key.
    pub fn named(key_id: &str) -> Self {
        Self {
            keypair: matrix_sdk::encryption::vodozemac::Ed25519Keypair::new(),
            key_id: key_id.to_owned(),
        }
    }

    /// A fresh cross-signing key, `ed25519:<its own public key>`.
    pub fn cross_signing() -> Self {
        let keypair = matrix_sdk::encryption::vodozemac::Ed25519Keypair::new();
        let key_id = format!("ed25519:{}", keypair.public_key().to_base64());
        Self { keypair, key_id }
    }

    /// Unpadded base64 of the public key.
    pub fn public_key(&self) -> String {
        self.keypair.public_key().to_base64()
    }

    /// `ed25519:<id>`
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The signature of `value` (see [`signable_json`]), unpadded base64.
    pub fn signature(&self, value: &Value) -> Result<String> {
        let bytes = signable_json(value)?;
        Ok(self.keypair.sign(bytes.as_bytes()).to_base64())
    }

    /// Adds this key's signature of `value` as `signatures.<user>.<key id>`,
    /// keeping any signatures already there.
    pub fn sign(&self, user: &str, value: &mut Value) -> Result<()> {
        let signature = self.signature(value)?;
        let object = value
            .as_object_mut()
            .context("only objects can be signed")?;
        let signatures = object.entry("signatures").or_insert_with(|| json!({}));
        let by_user = signatures
            .as_object_mut()
            .context("`signatures` is not an object")?
            .entry(user)
            .or_insert_with(|| json!({}));
        by_user
            .as_object_mut()
            .context("`signatures.<user>` is not an object")?
            .insert(self.key_id.clone(), Value::String(signature));
        Ok(())
    }
}

/// A cross-signing key object: `user_id`, `usage: [usage]`, `keys` with
/// `key`'s public key, signed by `signer` (if any).
pub fn cross_signing_key(
    user: &str,
    usage: &str,
    key: &SigningKey,
    signer: Option<&SigningKey>,
) -> Result<Value> {
    let mut value = json!({
        "user_id": user,
        "usage": [usage],
        "keys": {key.key_id(): key.public_key()},
    });
    if let Some(signer) = signer {
        signer.sign(user, &mut value)?;
    }
    Ok(value)
}

/// A user's three cross-signing keys, generated locally.
#[derive(Clone, Debug)]
pub struct CrossSigningKeys {
    pub master: SigningKey,
    pub self_signing: SigningKey,
    pub user_signing: SigningKey,
}

impl Default for CrossSigningKeys {
    fn default() -> Self {
        Self::generate()
    }
}

impl CrossSigningKeys {
    pub fn generate() -> Self {
        Self {
            master: SigningKey::cross_signing(),
            self_signing: SigningKey::cross_signing(),
            user_signing: SigningKey::cross_signing(),
        }
    }

    /// The master key object (unsigned).
    pub fn master_key(&self, user: &str) -> Result<Value> {
        cross_signing_key(user, "master", &self.master, None)
    }

    /// The self-signing key object, signed by the master key.
    pub fn self_signing_key(&self, user: &str) -> Result<Value> {
        cross_signing_key(user, "self_signing", &self.self_signing, Some(&self.master))
    }

    /// The user-signing key object, signed by the master key.
    pub fn user_signing_key(&self, user: &str) -> Result<Value> {
        cross_signing_key(user, "user_signing", &self.user_signing, Some(&self.master))
    }

    /// A `/keys/device_signing/upload` body with all three keys.
    pub fn upload_body(&self, user: &str) -> Result<Value> {
        Ok(json!({
            "master_key": self.master_key(user)?,
            "self_signing_key": self.self_signing_key(user)?,
            "user_signing_key": self.user_signing_key(user)?,
        }))
    }
}

/// A device logged in over raw HTTP with keys made by the test (no Olm
/// machine behind it): for checking the key endpoints' exact behaviour.
#[derive(Clone, Debug)]
pub struct FakeDevice {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
    /// The device's ed25519 key, `ed25519:<device_id>`.
    pub signing: SigningKey,
    /// Unpadded base64 of the device's curve25519 identity key.
    pub curve25519: String,
}

/// Unpadded base64 of a fresh random curve25519 public key.
pub fn random_curve25519_key() -> String {
    use matrix_sdk::encryption::vodozemac::{Curve25519PublicKey, Curve25519SecretKey};
    Curve25519PublicKey::from(&Curve25519SecretKey::new()).to_base64()
}

impl FakeDevice {
    /// Logs `localpart` (password [`password_for`]) in over raw HTTP as a new
    /// device and makes keys for it (nothing is uploaded yet).
    pub async fn login(http: &Http, localpart: &str) -> Result<Self> {
        let r = http.login(localpart, &password_for(localpart)).await?;
        r.expect_ok()
            .with_context(|| format!("raw login as {localpart}"))?;
        let s = |k: &str| {
            r.json[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("/login answer without {k}: {}", r.text))
        };
        let device_id = s("device_id")?;
        Ok(Self {
            user_id: s("user_id")?,
            signing: SigningKey::for_device(&device_id),
            device_id,
            token: s("access_token")?,
            curve25519: random_curve25519_key(),
        })
    }

    /// This device's `device_keys` object, self-signed.
    pub fn device_keys(&self) -> Result<Value> {
        let mut keys = json!({
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{}", self.device_id): self.curve25519,
                self.signing.key_id(): self.signing.public_key(),
            },
        });
        self.signing.sign(&self.user_id, &mut keys)?;
        Ok(keys)
    }

    /// A fresh `signed_curve25519` key object signed by this device; a
    /// fallback key when `fallback`.
    pub fn signed_curve25519(&self, fallback: bool) -> Result<Value> {
        let mut key = json!({"key": random_curve25519_key()});
        if fallback {
            key["fallback"] = json!(true);
        }
        self.signing.sign(&self.user_id, &mut key)?;
        Ok(key)
    }

    /// `{"signed_curve25519:<id>": key, ...}` with a fresh key per id.
    pub fn one_time_keys(&self, ids: &[&str]) -> Result<Value> {
        let mut map = serde_json::Map::new();
        for id in ids {
            map.insert(
                format!("signed_curve25519:{id}"),
                self.signed_curve25519(false)?,
            );
        }
        Ok(Value::Object(map))
    }

    /// POST /keys/upload as this device.
    pub async fn upload(&self, http: &Http, body: Value) -> Result<Reply> {
        http.upload_keys(&self.token, body).await
    }

    /// The unclaimed one-time key counts from an empty /keys/upload
    /// (an absent algorithm counts as 0, per the spec).
    pub async fn one_time_key_count(&self, http: &Http, algorithm: &str) -> Result<u64> {
        let r = self.upload(http, json!({})).await?;
        r.expect_ok().context("empty /keys/upload")?;
        let counts = r.json.get("one_time_key_counts").with_context(|| {
            format!(
                "/keys/upload answer without one_time_key_counts: {}",
                r.text
            )
        })?;
        Ok(counts.get(algorithm).and_then(Value::as_u64).unwrap_or(0))
    }
}

impl Http {
    /// POST /keys/upload
    pub async fn upload_keys(&self, token: &str, body: Value) -> Result<Reply> {
        self.post("/_matrix/client/v3/keys/upload", Some(token), body)
            .await
    }

    /// POST /keys/query for all devices of `users`.
    pub async fn query_keys(&self, token: &str, users: &[&str]) -> Result<Reply> {
        let device_keys: serde_json::Map<String, Value> =
            users.iter().map(|u| (u.to_string(), json!([]))).collect();
        self.post(
            "/_matrix/client/v3/keys/query",
            Some(token),
            json!({"device_keys": device_keys}),
        )
        .await
    }

    /// POST /keys/query for all devices of `users`; fails unless 200.
    /// Returns the answer's JSON.
    pub async fn query_keys_ok(&self, token: &str, users: &[&str]) -> Result<Value> {
        let r = self.query_keys(token, users).await?;
        r.expect_ok()
            .with_context(|| format!("POST /keys/query for {users:?}"))?;
        Ok(r.json)
    }

    /// POST /keys/claim for one key of `algorithm` of `user`'s `device`.
    pub async fn claim_key(
        &self,
        token: &str,
        user: &str,
        device: &str,
        algorithm: &str,
    ) -> Result<Reply> {
        self.post(
            "/_matrix/client/v3/keys/claim",
            Some(token),
            json!({"one_time_keys": {user: {device: algorithm}}}),
        )
        .await
    }

    /// PUT /sendToDevice/{type}/{txn} with `{"messages": messages}`.
    pub async fn send_to_device(
        &self,
        token: &str,
        event_type: &str,
        txn: &str,
        messages: Value,
    ) -> Result<Reply> {
        self.put(
            &format!(
                "/_matrix/client/v3/sendToDevice/{}/{}",
                enc(event_type),
                enc(txn)
            ),
            Some(token),
            json!({"messages": messages}),
        )
        .await
    }

    /// The `auth` object of an `m.login.password` UIA stage.
    pub fn password_auth(user: &str, password: &str, session: Option<&str>) -> Value {
        let mut auth = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        });
        if let Some(session) = session {
            auth["session"] = json!(session);
        }
        auth
    }

    /// Sends `method path` with `body` as `token`; if the server answers
    /// 401 with UIA flows, checks that `m.login.password` is offered and
    /// retries once with `user`'s password in `auth` (keeping the session).
    /// Returns the final answer.
    pub async fn call_with_password_uia(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
        user: &str,
        password: &str,
    ) -> Result<Reply> {
        let first = self
            .call(method, path, Some(token), Body::Json(body.clone()))
            .await?;
        if first.status != 401 {
            return Ok(first);
        }
        let offers_password = first.json["flows"].as_array().is_some_and(|flows| {
            flows
                .iter()
                .any(|f| f["stages"] == json!(["m.login.password"]))
        });
        ensure!(
            offers_password,
            "{method} {path}: 401 without a single-stage m.login.password flow: {}",
            first.text
        );
        let session = first.json["session"].as_str();
        let mut body = body;
        body["auth"] = Self::password_auth(user, password, session);
        self.call(method, path, Some(token), Body::Json(body)).await
    }

    /// DELETE /devices/{device} as `token`, completing UIA with `user`'s
    /// password; fails unless the deletion succeeds.
    pub async fn delete_device(
        &self,
        token: &str,
        device: &str,
        user: &str,
        password: &str,
    ) -> Result<()> {
        let path = format!("/_matrix/client/v3/devices/{}", enc(device));
        self.call_with_password_uia("DELETE", &path, token, json!({}), user, password)
            .await?
            .expect_ok()
            .with_context(|| format!("DELETE {path} with password UIA"))?;
        Ok(())
    }
}

/// Checks that `value` carries a valid signature `signatures.<user>.<key_id>`
/// by the ed25519 key `public_key` (unpadded base64).
pub fn verify_signature(value: &Value, user: &str, key_id: &str, public_key: &str) -> Result<()> {
    use matrix_sdk::encryption::vodozemac::{Ed25519PublicKey, Ed25519Signature};
    let signature = value["signatures"][user][key_id]
        .as_str()
        .with_context(|| format!("no signature {user} {key_id} in {value}"))?;
    let signature = Ed25519Signature::from_base64(signature)
        .with_context(|| format!("signature {user} {key_id} is not ed25519 base64: {signature}"))?;
    let key = Ed25519PublicKey::from_base64(public_key)
        .with_context(|| format!("{public_key:?} is not an ed25519 public key"))?;
    key.verify(signable_json(value)?.as_bytes(), &signature)
        .with_context(|| format!("signature {user} {key_id} does not verify on {value}"))
}

/// The single `ed25519:<key>` entry of a key object's `keys`: (key id, key).
pub fn only_ed25519_key(key_object: &Value) -> Result<(String, String)> {
    let keys = key_object["keys"]
        .as_object()
        .with_context(|| format!("key object without `keys`: {key_object}"))?;
    let mut ed = keys.iter().filter(|(id, _)| id.starts_with("ed25519:"));
    let (id, key) = ed
        .next()
        .with_context(|| format!("no ed25519 key in {key_object}"))?;
    ensure!(
        ed.next().is_none(),
        "more than one ed25519 key in {key_object}"
    );
    let key = key
        .as_str()
        .with_context(|| format!("key {id} is not a string"))?;
    Ok((id.clone(), key.to_owned()))
}

/// `device_keys.<user>` of a /keys/query answer: device id -> keys
/// (empty if the user is absent).
pub fn queried_devices(query: &Value, user: &str) -> BTreeMap<String, Value> {
    query["device_keys"][user]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// `to_device.events` of a raw /sync response.
pub fn to_device_events(resp: &Value) -> Vec<&Value> {
    resp.pointer("/to_device/events")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// `device_lists.<field>` (`changed` or `left`) of a raw /sync response.
pub fn device_list(resp: &Value, field: &str) -> Vec<String> {
    resp.get("device_lists")
        .and_then(|d| d.get(field))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// A push gateway the test runs itself
// ---------------------------------------------------------------------------

/// One HTTP request a [`PushGateway`] received.
#[derive(Clone, Debug)]
pub struct PushRequest {
    pub method: String,
    pub path: String,
    /// The body parsed as JSON (Null if it was not JSON).
    pub body: Value,
    /// The status the gateway answered (503 while it was out of order).
    pub answered: u16,
}

impl PushRequest {
    /// `notification.event_id`, if any.
    pub fn event_id(&self) -> Option<&str> {
        self.body
            .pointer("/notification/event_id")
            .and_then(Value::as_str)
    }

    /// `notification.devices[0].pushkey`, if any.
    pub fn pushkey(&self) -> Option<&str> {
        self.body
            .pointer("/notification/devices/0/pushkey")
            .and_then(Value::as_str)
    }
}

/// A minimal HTTP/1.1 push gateway on 127.0.0.1 (a free port): records every
/// request and answers `200 {"rejected":[]}` (or 503 while out of order).
/// Keep-alive and chunked request bodies are supported. Stops accepting
/// when dropped.
pub struct PushGateway {
    addr: SocketAddr,
    received: std::sync::Arc<Mutex<Vec<PushRequest>>>,
    out_of_order: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PushGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushGateway")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for PushGateway {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads more bytes from `stream` into `buf`; `false` at end of stream.
async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
        .await
        .map_err(|_| anyhow!("push gateway: client went quiet mid-request"))??;
    buf.extend_from_slice(&chunk[..n]);
    ensure!(buf.len() <= 4 << 20, "push gateway: request too large");
    Ok(n > 0)
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// Reads one request from a connection; `None` when the peer closed it
/// cleanly between requests. Returns the request and whether to keep the
/// connection open.
async fn read_push_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<(PushRequest, bool)>> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if !read_more(stream, buf).await? {
            ensure!(buf.is_empty(), "push gateway: connection closed mid-header");
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut content_length = None;
    let mut chunked = false;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => content_length = Some(value.parse::<usize>()?),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find_crlf(buf, 0) {
                    break p;
                }
                ensure!(
                    read_more(stream, buf).await?,
                    "push gateway: eof in chunk size"
                );
            };
            let size_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .with_context(|| format!("push gateway: bad chunk size {size_line:?}"))?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (ignored) up to an empty line.
                loop {
                    let end = loop {
                        if let Some(p) = find_crlf(buf, 0) {
                            break p;
                        }
                        ensure!(
                            read_more(stream, buf).await?,
                            "push gateway: eof in trailers"
                        );
                    };
                    buf.drain(..end + 2);
                    if end == 0 {
                        break;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                ensure!(read_more(stream, buf).await?, "push gateway: eof in chunk");
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
        body
    } else {
        let len = content_length.unwrap_or(0);
        while buf.len() < len {
            ensure!(read_more(stream, buf).await?, "push gateway: eof in body");
        }
        buf.drain(..len).collect()
    };
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Some((
        PushRequest {
            method,
            path,
            body,
            answered: 0,
        },
        !close,
    )))
}

async fn serve_push_connection(
    mut stream: tokio::net::TcpStream,
    received: std::sync::Arc<Mutex<Vec<PushRequest>>>,
    out_of_order: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::new();
    while let Some((mut request, keep_alive)) = read_push_request(&mut stream, &mut buf).await? {
        let (status, body) = if out_of_order.load(std::sync::atomic::Ordering::SeqCst) {
            ("503 Service Unavailable", r#"{"error":"out of order"}"#)
        } else {
            ("200 OK", r#"{"rejected":[]}"#)
        };
        request.answered = status[..3].parse().unwrap_or(0);
        received.lock().unwrap().push(request);
        let connection = if keep_alive { "keep-alive" } else { "close" };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: {connection}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
        if !keep_alive {
            break;
        }
    }
    Ok(())
}

impl PushGateway {
    /// Binds 127.0.0.1 on a free port and starts answering.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("push gateway: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let received = std::sync::Arc::new(Mutex::new(Vec::new()));
        let out_of_order = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, broken) = (received.clone(), out_of_order.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (sink, broken) = (sink.clone(), broken.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_push_connection(stream, sink, broken).await {
                        eprintln!("push gateway connection error: {e:#}");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            received,
            out_of_order,
            accept,
        })
    }

    /// While out of order, every request is recorded and answered 503, as a
    /// gateway that is down for maintenance would.
    pub fn set_out_of_order(&self, broken: bool) {
        self.out_of_order
            .store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    /// The URL to register as a pusher's `data.url`.
    pub fn notify_url(&self) -> String {
        format!("http://{}/_matrix/push/v1/notify", self.addr)
    }

    /// Everything received so far, in arrival order.
    pub fn requests(&self) -> Vec<PushRequest> {
        self.received.lock().unwrap().clone()
    }

    /// Waits (at most [`WAIT`]) for a request matching `pred`; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        mut pred: impl FnMut(&PushRequest) -> bool,
    ) -> Result<PushRequest> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.requests().into_iter().find(|r| pred(r)) {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                bail!(
                    "push gateway: gave up after {WAIT:?} waiting for {what}; received: {:#?}",
                    self.requests()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Media repository: raw bytes over HTTP, mxc URIs, test images
// ---------------------------------------------------------------------------

/// Prefix of the authenticated media endpoints (download, thumbnail, config,
/// preview_url).
pub const MEDIA_V1: &str = "/_matrix/client/v1/media";
/// Prefix of the legacy media endpoints (upload, unauthenticated download).
pub const MEDIA_V3: &str = "/_matrix/media/v3";

/// An HTTP answer whose body is kept as raw bytes (downloads, thumbnails).
#[derive(Clone, Debug)]
pub struct BytesReply {
    pub status: u16,
    /// Response headers, names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BytesReply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (Null if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body for error messages: text cut at 300 bytes, or the first
    /// bytes in hex when it is binary.
    pub fn preview(&self) -> String {
        let cut = self.body.len().min(300);
        let head = &self.body[..cut];
        let text = match std::str::from_utf8(head) {
            Ok(text) => text.to_owned(),
            // A multi-byte character cut in two is still text.
            Err(e) if e.valid_up_to() + 4 > cut && e.error_len().is_none() => {
                String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned()
            }
            Err(_) => {
                let n = cut.min(16);
                return format!(
                    "<{} bytes of binary, starting {:02x?}>",
                    self.body.len(),
                    &self.body[..n]
                );
            }
        };
        if cut < self.body.len() {
            format!("{text}... ({} bytes in all)", self.body.len())
        } else {
            text
        }
    }

    /// The answer as a [`Reply`] (body as lossy UTF-8 text and JSON).
    pub fn reply(&self) -> Reply {
        Reply {
            status: self.status,
            text: String::from_utf8_lossy(&self.body).into_owned(),
            json: self.json(),
            headers: self.headers.clone(),
        }
    }

    /// Fails unless this is exactly `status` with `errcode` (see
    /// [`Reply::expect_error`]).
    pub fn expect_error(&self, status: u16, errcode: &str) -> Result<&Self> {
        self.reply().expect_error(status, errcode)?;
        Ok(self)
    }

    /// Fails unless this is `status` with one of `errcodes`.
    pub fn expect_error_in(&self, status: u16, errcodes: &[&str]) -> Result<&Self> {
        self.reply().expect_error_in(status, errcodes)?;
        Ok(self)
    }

    /// Fails unless the status is `status`.
    pub fn expect_status(&self, status: u16) -> Result<&Self> {
        ensure!(
            self.status == status,
            "expected {status}, got {} {}",
            self.status,
            self.preview()
        );
        Ok(self)
    }

    /// Fails unless the status is 200.
    pub fn expect_ok(&self) -> Result<&Self> {
        self.expect_status(200)
    }

    /// Fails unless header `name` is present; returns its value.
    pub fn expect_header(&self, name: &str) -> Result<&str> {
        self.header(name).with_context(|| {
            format!(
                "no {name} header in the {} answer; headers: {:?}",
                self.status, self.headers
            )
        })
    }
}

/// An `mxc://<server name>/<media id>` content URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mxc {
    pub server_name: String,
    pub media_id: String,
}

impl std::fmt::Display for Mxc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mxc://{}/{}", self.server_name, self.media_id)
    }
}

impl Mxc {
    /// Parses `mxc://server/id`; the media id must be the spec's
    /// `[A-Za-z0-9_-]+`.
    pub fn parse(uri: &str) -> Result<Self> {
        let rest = uri
            .strip_prefix("mxc://")
            .with_context(|| format!("{uri:?} is not an mxc:// URI"))?;
        let (server_name, media_id) = rest
            .split_once('/')
            .with_context(|| format!("{uri:?} has no media id"))?;
        ensure!(!server_name.is_empty(), "{uri:?} has no server name");
        ensure!(
            !media_id.is_empty()
                && media_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "media id {media_id:?} of {uri:?} is not [A-Za-z0-9_-]+"
        );
        Ok(Self {
            server_name: server_name.to_owned(),
            media_id: media_id.to_owned(),
        })
    }

    /// A made-up id on `localhost` that no upload produced.
    pub fn unknown() -> Self {
        Self {
            server_name: SERVER_NAME.to_owned(),
            media_id: "bellwireTestsNoSuchMedia0123456789".to_owned(),
        }
    }

    /// `{serverName}/{mediaId}`, each segment percent-encoded.
    pub fn segments(&self) -> String {
        format!("{}/{}", enc(&self.server_name), enc(&self.media_id))
    }

    /// The authenticated download path.
    pub fn download_path(&self) -> String {
        format!("{MEDIA_V1}/download/{}", self.segments())
    }

    /// The legacy (unauthenticated) download path.
    pub fn legacy_download_path(&self) -> String {
        format!("{MEDIA_V3}/download/{}", self.segments())
    }

    /// The authenticated thumbnail path with `query` (e.g.
    /// `width=96&height=96&method=crop`).
    pub fn thumbnail_path(&self, query: &str) -> String {
        format!("{MEDIA_V1}/thumbnail/{}?{query}", self.segments())
    }

    /// The legacy thumbnail path with `query`.
    pub fn legacy_thumbnail_path(&self, query: &str) -> String {
        format!("{MEDIA_V3}/thumbnail/{}?{query}", self.segments())
    }

    /// The matrix-sdk form of this URI.
    pub fn to_sdk(&self) -> Result<matrix_sdk::ruma::OwnedMxcUri> {
        let uri: matrix_sdk::ruma::OwnedMxcUri = self.to_string().into();
        uri.validate()
            .with_context(|| format!("matrix-sdk refuses {self}"))?;
        Ok(uri)
    }
}

impl Http {
    /// A request to `path` on this server with the token and extra headers set.
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Ok(req)
    }

    /// Sends `method path` with `body` as raw bytes and exactly the given
    /// extra `headers` (no Content-Type unless one is among them), keeping
    /// the answer's body as bytes.
    pub async fn call_bytes(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<BytesReply> {
        let mut req = self.request(method, path, token, headers)?;
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = header_list(&resp);
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: reading body"))?
            .to_vec();
        Ok(BytesReply {
            status,
            headers,
            body,
        })
    }

    /// GET `path` with extra `headers` (e.g. `Range`), body kept as bytes.
    pub async fn get_bytes(
        &self,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<BytesReply> {
        self.call_bytes("GET", path, token, headers, None).await
    }

    /// POST /_matrix/media/v3/upload with `bytes`, `content_type` as the
    /// Content-Type (`None`: no such header) and `filename` as the query
    /// parameter.
    pub async fn upload_media(
        &self,
        token: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<BytesReply> {
        let mut path = format!("{MEDIA_V3}/upload");
        if let Some(name) = filename {
            path.push_str(&format!("?filename={}", enc(name)));
        }
        let headers: Vec<(&str, &str)> = content_type
            .map(|ct| vec![("content-type", ct)])
            .unwrap_or_default();
        self.call_bytes("POST", &path, Some(token), &headers, Some(bytes))
            .await
    }

    /// Like [`Http::upload_media`] with a Content-Type, failing unless the
    /// server answers 200 with a `content_uri` on this server; returns it.
    pub async fn upload_media_ok(
        &self,
        token: &str,
        content_type: &str,
        filename: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<Mxc> {
        let len = bytes.len();
        let r = self
            .upload_media(token, Some(content_type), filename, bytes)
            .await?;
        r.expect_ok()
            .with_context(|| format!("uploading {len} bytes of {content_type} as {filename:?}"))?;
        let json = r.json();
        let uri = json["content_uri"]
            .as_str()
            .with_context(|| format!("upload answer without content_uri: {}", r.preview()))?;
        let mxc = Mxc::parse(uri)?;
        ensure!(
            mxc.server_name == self.server_name,
            "an upload to {} got a content URI of another server: {uri}",
            self.server_name
        );
        Ok(mxc)
    }
}

impl Http {
    /// Writes `head` (a raw HTTP/1.1 request line and headers, ending with
    /// an empty line) and then `body` on a fresh TCP connection to this
    /// server, and returns everything that came back until the server closed
    /// the connection or went quiet for a second after answering. For
    /// framing no HTTP client library sends (chunked bodies that never end,
    /// lying Content-Length, no body at all). Write errors are ignored: the
    /// server may answer and close before reading everything. Fails if
    /// nothing at all comes back within [`WAIT`].
    pub async fn raw_exchange(&self, head: &str, body: &[u8]) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .base
            .strip_prefix("http://")
            .with_context(|| format!("not an http:// base URL: {}", self.base))?;
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let (mut reader, mut writer) = stream.split();
        let read = async {
            let mut got = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                let idle = if got.is_empty() {
                    WAIT
                } else {
                    Duration::from_secs(1)
                };
                match tokio::time::timeout(idle, reader.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                    Err(_) if got.is_empty() => {
                        bail!("raw request: no answer within {WAIT:?}")
                    }
                    Err(_) => break,
                }
            }
            Ok(got)
        };
        let write = async {
            if writer.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for part in body.chunks(16 * 1024) {
                if writer.write_all(part).await.is_err() {
                    return;
                }
            }
            let _ = writer.flush().await;
        };
        let (got, ()) = tokio::join!(read, write);
        Ok(String::from_utf8_lossy(&got?).into_owned())
    }
}

/// The status code of a raw HTTP/1.1 answer (see [`Http::raw_exchange`]).
pub fn raw_status(answer: &str) -> Result<u16> {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 answer: {answer:?}"))
}

impl TestServer {
    /// Starts a server whose config has a `[media]` table with `settings`
    /// (TOML lines such as `max_upload_bytes = 1048576`).
    pub async fn start_with_media(settings: &str) -> Result<Self> {
        Self::start_with(ServerOptions {
            extra_config: format!("[media]\n{settings}\n"),
            ..Default::default()
        })
        .await
    }

    /// Where the server keeps media files when the config sets no
    /// `[media] path`: a `media` directory beside the database directory.
    pub fn default_media_dir(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    /// Peak resident set size (`VmHWM` of `/proc/<pid>/status`) of the
    /// running server, in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("the server is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .with_context(|| format!("no VmHWM line in /proc/{pid}/status"))?;
        line.trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot parse {line:?}"))
    }
}

/// Regular files under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", d.display())),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `len` deterministic pseudo-random bytes (xorshift64*) from `seed`: a
/// payload no codec would compress or mistake for anything.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The colour of pixel (x, y) of [`test_image`]: red grows left to right,
/// green top to bottom, blue is constant.
pub fn test_image_colour(x: u32, y: u32, width: u32, height: u32) -> [u8; 3] {
    let r = (u64::from(x) * 255 / u64::from(width.max(2) - 1)).min(255) as u8;
    let g = (u64::from(y) * 255 / u64::from(height.max(2) - 1)).min(255) as u8;
    [r, g, 128]
}

/// A `width`x`height` RGB gradient (see [`test_image_colour`]) encoded as
/// PNG or JPEG.
pub fn test_image(width: u32, height: u32, format: image::ImageFormat) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb(test_image_colour(x, y, width, height))
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .with_context(|| format!("encoding a {width}x{height} {format:?}"))?;
    Ok(out.into_inner())
}

/// Decodes a PNG or JPEG (format from its magic bytes).
pub fn decode_image(bytes: &[u8]) -> Result<image::DynamicImage> {
    image::load_from_memory(bytes).with_context(|| {
        format!(
            "not a decodable PNG/JPEG ({} bytes, starting {:02x?})",
            bytes.len(),
            &bytes[..bytes.len().min(16)]
        )
    })
}

/// CRC-32 (IEEE, as PNG chunks use it).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(
        &u32::try_from(data.len())
            .expect("small chunk")
            .to_be_bytes(),
    );
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG built by hand whose header declares `width`x`height` 8-bit RGBA
/// pixels, with correct CRCs. Its IDAT is one stored (uncompressed) zlib
/// block of zero bytes: the whole image when that fits in 65535 bytes (so a
/// small size gives a valid, fully transparent picture), otherwise only the
/// first 65535 bytes: a few hundred bytes on the wire whose header asks a
/// naive decoder for `width * height * 4` bytes of memory.
pub fn hand_made_png(width: u32, height: u32) -> Vec<u8> {
    let row = 1 + 4 * u64::from(width);
    let raw_len = (row * u64::from(height)).min(65_535) as usize;
    let raw = vec![0u8; raw_len];
    // zlib: CMF/FLG (deflate, 32K window, no dictionary, check bits ok),
    // one final stored block, then the Adler-32 of the raw bytes.
    let mut zlib = vec![0x78, 0x01, 0x01];
    let len = u16::try_from(raw_len).expect("stored block length");
    zlib.extend_from_slice(&len.to_le_bytes());
    zlib.extend_from_slice(&(!len).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // bit depth 8, colour type 6 (RGBA), deflate, adaptive filter, no interlace
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(&mut png, b"IDAT", &zlib);
    png_chunk(&mut png, b"IEND", &[]);
    png
}

/// A real baseline JPEG (a small [`test_image`]) whose SOF0 header is
/// patched to declare `width`x`height`: the decoder's first look says
/// "huge", the data behind it is small.
pub fn jpeg_claiming(width: u16, height: u16) -> Result<Vec<u8>> {
    let mut jpeg = test_image(64, 48, image::ImageFormat::Jpeg)?;
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .context("the encoded JPEG has no baseline SOF0 marker")?;
    // FF C0, length (2), precision (1), height (2), width (2)
    ensure!(jpeg.len() > sof + 9, "truncated SOF0 segment");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    Ok(jpeg)
}

/// The dimensions an image's header declares, read without decoding it.
pub fn declared_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()?
        .into_dimensions()
        .context("cannot read the image header")
}

/// Splits a header value at `;` outside double quotes.
fn split_header_params(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        let current = parts.last_mut().expect("never empty");
        if escaped {
            escaped = false;
            current.push(c);
        } else if quoted && c == '\\' {
            escaped = true;
            current.push(c);
        } else if c == '"' {
            quoted = !quoted;
            current.push(c);
        } else if c == ';' && !quoted {
            parts.push(String::new());
        } else {
            current.push(c);
        }
    }
    parts.into_iter().map(|p| p.trim().to_owned()).collect()
}

/// Decodes `%XX` escapes (RFC 5987 `ext-value` payloads).
fn percent_decode(s: &str) -> Result<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .with_context(|| format!("truncated %-escape in {s:?}"))?;
            out.push(
                u8::from_str_radix(hex, 16).with_context(|| format!("bad %-escape in {s:?}"))?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parses a `Content-Disposition` value into its lower-cased type (`inline`,
/// `attachment`) and its file name: `filename*` (RFC 6266 / 5987, UTF-8)
/// when present, else the (possibly quoted) `filename`.
pub fn parse_content_disposition(value: &str) -> Result<(String, Option<String>)> {
    let parts = split_header_params(value);
    let kind = parts[0].to_ascii_lowercase();
    ensure!(
        !kind.is_empty() && !kind.contains('='),
        "Content-Disposition {value:?} does not start with a disposition type"
    );
    let (mut plain, mut extended) = (None, None);
    for param in &parts[1..] {
        if param.is_empty() {
            continue;
        }
        let (name, raw) = param
            .split_once('=')
            .with_context(|| format!("parameter {param:?} of {value:?} has no value"))?;
        let (name, raw) = (name.trim().to_ascii_lowercase(), raw.trim());
        match name.as_str() {
            "filename" => {
                let unquoted = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
                    Some(inner) => {
                        let mut out = String::new();
                        let mut chars = inner.chars();
                        while let Some(c) = chars.next() {
                            if c == '\\' {
                                out.extend(chars.next());
                            } else {
                                out.push(c);
                            }
                        }
                        out
                    }
                    None => raw.to_owned(),
                };
                plain = Some(unquoted);
            }
            "filename*" => {
                let (charset, rest) = raw
                    .split_once('\'')
                    .with_context(|| format!("filename* of {value:?} has no charset"))?;
                ensure!(
                    charset.eq_ignore_ascii_case("utf-8"),
                    "filename* of {value:?} is not UTF-8"
                );
                let (_language, encoded) = rest
                    .split_once('\'')
                    .with_context(|| format!("filename* of {value:?} has no language part"))?;
                let decoded = String::from_utf8(percent_decode(encoded)?)
                    .with_context(|| format!("filename* of {value:?} is not UTF-8"))?;
                extended = Some(decoded);
            }
            _ => {}
        }
    }
    Ok((kind, extended.or(plain)))
}

impl BytesReply {
    /// The parsed `Content-Disposition` header: (type, file name); fails if
    /// the header is missing or malformed.
    pub fn disposition(&self) -> Result<(String, Option<String>)> {
        parse_content_disposition(self.expect_header("content-disposition")?)
    }
}

/// A response's headers as `(lower-case name, value)` pairs, in order.
fn header_list(resp: &reqwest::Response) -> Vec<(String, String)> {
    resp.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// End-to-end encryption, as clients see it
// ---------------------------------------------------------------------------

/// The Megolm algorithm name rooms and events carry.
pub const MEGOLM: &str = "m.megolm.v1.aes-sha2";

/// Syncs `user` until their client has the device keys of `owner`'s
/// `device` (learned through device list updates and /keys/query; for a
/// remote owner, across federation).
pub async fn wait_until_device_known(user: &User, owner: &UserId, device: &str) -> Result<()> {
    let device_id = <&matrix_sdk::ruma::DeviceId>::from(device);
    sync_all_until(
        &[user],
        &format!(
            "{}'s client to know {owner}'s device {device}",
            user.user_id
        ),
        || async {
            Ok(user
                .client
                .encryption()
                .get_device(owner, device_id)
                .await?
                .is_some())
        },
    )
    .await
}

/// The event as `user`'s server holds it is an `m.room.encrypted` megolm
/// event without `plaintext` anywhere in it.
pub async fn assert_encrypted_on_the_wire(
    user: &User,
    room: &RoomId,
    event_id: &str,
    plaintext: &str,
) -> Result<()> {
    let r = user
        .http()
        .event(&user.access_token(), room.as_str(), event_id)
        .await?;
    r.expect_ok()
        .with_context(|| format!("GET event {event_id} on {}'s server", user.user_id))?;
    ensure!(
        r.json["type"] == "m.room.encrypted"
            && r.json["content"]["algorithm"] == MEGOLM
            && r.json["content"]["ciphertext"].is_string(),
        "event {event_id} on {}'s server is not a megolm m.room.encrypted event: {}",
        user.user_id,
        r.text
    );
    ensure!(
        !r.text.contains(plaintext),
        "the plaintext {plaintext:?} is readable on {}'s server: {}",
        user.user_id,
        r.text
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_is_split_at_its_first_table() {
        let extra = "presence.enabled = false\n# a comment = with an equals sign\n\
                     [rate_limits] # trailing comment\nmessage_burst = 3\n\n[ user_directory ]\n\
                     search_all_users = true\n";
        let (prelude, rest, tables) = split_extra_config(extra);
        assert_eq!(
            prelude,
            "presence.enabled = false\n# a comment = with an equals sign\n"
        );
        assert!(rest.starts_with("[rate_limits] # trailing comment\n"));
        assert!(rest.ends_with("search_all_users = true\n"));
        let want: BTreeSet<String> = ["presence", "rate_limits", "user_directory"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(tables, want);
        assert_eq!(toml_table_header("[[a.b]]").as_deref(), Some("a.b"));
        assert_eq!(toml_table_header("key = [1, 2]"), None);
    }

    #[test]
    fn content_disposition_is_parsed() {
        let (kind, name) = parse_content_disposition("inline; filename=\"cat.png\"").unwrap();
        assert_eq!(
            (kind.as_str(), name.as_deref()),
            ("inline", Some("cat.png"))
        );
        let (kind, name) =
            parse_content_disposition("Attachment; filename=\"a\\\"; b.html\"").unwrap();
        assert_eq!(
            (kind.as_str(), name.as_deref()),
            ("attachment", Some("a\"; b.html"))
        );
        let (_, name) = parse_content_disposition(
            "inline; filename=\"caf.png\"; filename*=UTF-8''caf%C3%A9.png",
        )
        .unwrap();
        assert_eq!(name.as_deref(), Some("café.png"));
        let (kind, name) = parse_content_disposition("attachment").unwrap();
        assert_eq!((kind.as_str(), name), ("attachment", None));
        assert!(parse_content_disposition("filename=x").is_err());
    }

    #[test]
    fn hand_made_pngs_are_valid_images() {
        let png = hand_made_png(64, 48);
        let img = decode_image(&png).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
        let bomb = hand_made_png(100_000, 100_000);
        assert!(bomb.len() < 70_000);
        assert_eq!(declared_dimensions(&bomb).unwrap(), (100_000, 100_000));
        let jpeg = jpeg_claiming(65_000, 65_000).unwrap();
        assert_eq!(declared_dimensions(&jpeg).unwrap(), (65_000, 65_000));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[tokio::test]
    async fn a_second_rate_limits_table_is_refused_before_starting() {
        let options = ServerOptions {
            extra_config: "[rate_limits]\nmessage_burst = 3\n".to_owned(),
            ..Default::default()
        };
        let err = TestServer::start_with(options)
            .await
            .err()
            .expect("a duplicate [rate_limits] table must be refused");
        assert!(
            err.to_string().contains("rate_limits: true"),
            "unexpected error: {err:#}"
        );
    }
}
