//! Presence (online / unavailable / offline, status message, last activity), shared only with users who share a room and never for users who hide it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    account_data::AccountData,
    accounts::now_ms,
    error::{Error, Result},
    rooms::Rooms,
    storage::{Store, UserDataRead, UserDataWrite},
    stream::Stream,
};

/// The global account data event with which a user hides their presence.
pub const HIDE_EVENT: &str = "io.bellwire.presence";
/// Activity within this window counts as `currently_active`.
const ACTIVE_WINDOW_MS: u64 = 60_000;
/// An online user with no activity this long becomes `unavailable`.
const IDLE_AFTER_MS: u64 = 5 * 60_000;
/// An online user with no sync running this long becomes `offline`.
const OFFLINE_AFTER_MS: u64 = 30_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceRecord {
    pub presence: String,
    #[serde(default)]
    pub status_msg: Option<String>,
    pub last_active_ts: u64,
    pub pos: u64,
}

#[derive(Default)]
struct Liveness {
    /// Syncs currently waiting, per user.
    syncing: HashMap<OwnedUserId, (u32, u64)>,
}

#[derive(Clone)]
pub struct Presence {
    store: Store,
    stream: Arc<Stream>,
    rooms: Rooms,
    account_data: AccountData,
    enabled: bool,
    live: Arc<Mutex<Liveness>>,
}

pub fn valid_state(s: &str) -> bool {
    matches!(s, "online" | "unavailable" | "offline")
}

impl Presence {
    pub fn new(
        store: Store,
        stream: Arc<Stream>,
        rooms: Rooms,
        account_data: AccountData,
        enabled: bool,
    ) -> Self {
        Presence {
            store,
            stream,
            rooms,
            account_data,
            enabled,
            live: Default::default(),
        }
    }

    fn hidden(&self, user: &UserId) -> Result<bool> {
        if !self.enabled {
            return Ok(true);
        }
        let flag = self.account_data.get(user, None, HIDE_EVENT)?;
        Ok(flag
            .and_then(|c| c.get("hidden").and_then(Value::as_bool))
            .unwrap_or(false))
    }

    pub fn record(&self, user: &UserId) -> Result<Option<PresenceRecord>> {
        Ok(self.store.presence(user)?)
    }

    /// Sets presence and, if what others see changed, publishes it.
    pub async fn set(
        &self,
        user: &UserId,
        presence: &str,
        status_msg: Option<Option<String>>,
    ) -> Result<()> {
        if !valid_state(presence) {
            return Err(Error::invalid_param(format!(
                "unknown presence state {presence}"
            )));
        }
        let now = now_ms();
        let mut wake = self.rooms.sharers(user)?;
        wake.insert(user.to_owned());
        let written = self
            .stream
            .write(|w| {
                let old = w.presence(user)?;
                let status = match status_msg {
                    Some(s) => s,
                    None => old.as_ref().and_then(|o| o.status_msg.clone()),
                };
                let last_active_ts = if presence == "online" {
                    now
                } else {
                    old.as_ref().map_or(now, |o| o.last_active_ts)
                };
                let unchanged = old.as_ref().is_some_and(|o| {
                    o.presence == presence
                        && o.status_msg == status
                        && now.saturating_sub(o.last_active_ts) < ACTIVE_WINDOW_MS
                });
                if unchanged {
                    return Ok(None);
                }
                let pos = w.next_pos();
                let record = PresenceRecord {
                    presence: presence.to_owned(),
                    status_msg: status.clone(),
                    last_active_ts,
                    pos,
                };
                w.put_presence(user, old.as_ref(), &record);
                w.wake(wake.iter().map(|u| u.as_ref()));
                Ok(Some((status, last_active_ts)))
            })
            .await?;
        if let Some((status, last_active_ts)) = written
            && user.server_name() == self.rooms.server_name
            && self.enabled
            && !self.hidden(user)?
        {
            self.announce_remote(user, presence, &status, now.saturating_sub(last_active_ts))?;
        }
        Ok(())
    }

    /// Tells the servers sharing a room with a local user about their presence.
    fn announce_remote(
        &self,
        user: &UserId,
        presence: &str,
        status_msg: &Option<String>,
        last_active_ago: u64,
    ) -> Result<()> {
        let mut servers = std::collections::BTreeSet::new();
        for room in self.rooms.joined_rooms(user)? {
            servers.extend(self.rooms.remote_servers(&room)?);
        }
        if servers.is_empty() {
            return Ok(());
        }
        let mut p = serde_json::json!({
            "user_id": user,
            "presence": presence,
            "last_active_ago": last_active_ago,
            "currently_active": presence == "online",
        });
        if let Some(s) = status_msg {
            p["status_msg"] = Value::from(s.as_str());
        }
        let edu = serde_json::json!({"edu_type": "m.presence", "content": {"push": [p]}});
        self.rooms.outbox.push_to_servers(
            &servers.into_iter().collect::<Vec<_>>(),
            crate::outbox::Item::Edu(edu),
        )
    }

    /// The presence content `viewer` may see of `user` (offline with nothing
    /// else for hidden users).
    pub fn content_for(&self, viewer: &UserId, user: &UserId) -> Result<Value> {
        let record = self.record(user)?;
        if viewer != user && self.hidden(user)? {
            return Ok(json!({"presence": "offline"}));
        }
        let Some(r) = record else {
            return Ok(json!({"presence": "offline"}));
        };
        let ago = now_ms().saturating_sub(r.last_active_ts);
        let mut c = json!({
            "presence": r.presence,
            "last_active_ago": ago,
            "currently_active": r.presence == "online" && ago < ACTIVE_WINDOW_MS,
        });
        if let Some(m) = &r.status_msg {
            c["status_msg"] = Value::from(m.as_str());
        }
        if let Some(member) = self.rooms.profile_of(user)? {
            c["displayname"] = member.0;
            c["avatar_url"] = member.1;
        }
        Ok(c)
    }

    /// Presence events for /sync: every room-sharing user's on an initial
    /// sync, the ones that changed in `(since, upto]` otherwise.
    pub fn sync_events(
        &self,
        viewer: &UserId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Value>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let users: Vec<OwnedUserId> = match since {
            None => {
                let mut all: Vec<OwnedUserId> = self.rooms.sharers(viewer)?.into_iter().collect();
                all.push(viewer.to_owned());
                all.into_iter()
                    .filter(|u| self.record(u).ok().flatten().is_some_and(|r| r.pos <= upto))
                    .collect()
            }
            Some(s) => {
                let mut out = Vec::new();
                for u in self.store.presence_log(s, upto)? {
                    if self.rooms.shares_room(viewer, &u)? {
                        out.push(u);
                    }
                }
                out
            }
        };
        let mut events = Vec::new();
        for u in users {
            if u != viewer && self.hidden(&u)? {
                continue;
            }
            events.push(json!({"type": "m.presence", "sender": u, "content": self.content_for(viewer, &u)?}));
        }
        Ok(events)
    }

    /// A sync started: the user is around, in the state the client asked for.
    pub async fn sync_started(&self, user: &UserId, set_presence: &str) -> Result<()> {
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            let e = live.syncing.entry(user.to_owned()).or_insert((0, 0));
            e.0 += 1;
            e.1 = now_ms();
        }
        if set_presence == "offline" {
            return Ok(());
        }
        let current = self.record(user)?;
        let stale = current.as_ref().is_none_or(|r| {
            r.presence != set_presence
                || (set_presence == "online"
                    && now_ms().saturating_sub(r.last_active_ts) >= ACTIVE_WINDOW_MS)
        });
        if stale {
            self.set(user, set_presence, None).await?;
        }
        Ok(())
    }

    pub fn sync_finished(&self, user: &UserId) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = live.syncing.get_mut(user) {
            e.0 = e.0.saturating_sub(1);
            e.1 = now_ms();
        }
    }

    /// Runs forever: online users who went quiet become unavailable, and
    /// those whose clients stopped syncing become offline.
    pub async fn sweep_forever(self) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Err(e) = self.sweep().await {
                tracing::warn!("presence sweep: {e}");
            }
        }
    }

    async fn sweep(&self) -> Result<()> {
        let now = now_ms();
        let candidates: Vec<(OwnedUserId, u32, u64)> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.syncing
                .iter()
                .map(|(u, (n, at))| (u.clone(), *n, *at))
                .collect()
        };
        for (user, running, last_seen) in candidates {
            let Some(r) = self.record(&user)? else {
                continue;
            };
            if r.presence != "offline"
                && running == 0
                && now.saturating_sub(last_seen) >= OFFLINE_AFTER_MS
            {
                self.set(&user, "offline", None).await?;
                let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
                if live.syncing.get(&user).is_some_and(|e| e.0 == 0) {
                    live.syncing.remove(&user);
                }
            } else if r.presence == "online"
                && now.saturating_sub(r.last_active_ts) >= IDLE_AFTER_MS
            {
                self.set(&user, "unavailable", None).await?;
            }
        }
        Ok(())
    }
}
