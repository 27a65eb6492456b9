//! Sync: collecting what changed for a user between two positions (`collect.rs`), rendering it (`render_v3.rs`), and the long-poll that waits for news.

pub mod collect;
pub mod filter;
pub mod render_v3;

use std::{sync::Arc, time::Duration};

use serde_json::Value;

use crate::{
    account_data::AccountData,
    accounts::Session,
    e2ee::E2ee,
    ephemeral::{presence::Presence, receipts::Receipts, typing::Typing},
    error::{Error, Result},
    push::Push,
    rooms::Rooms,
    storage::Store,
    stream::Stream,
};
use collect::Window;
use filter::Filter;

pub struct SyncRequest {
    pub since: Option<String>,
    pub timeout_ms: u64,
    pub full_state: bool,
    pub filter: Filter,
    /// `set_presence`: online (the default), unavailable or offline.
    pub set_presence: String,
}

/// Parses a `since`/`from` token: `s<pos>` (sync) or `t<pos>` (pagination).
/// A sync token may carry `_<pos>`, how far this device's to-device inbox
/// was handed out when that was less than everything.
pub fn parse_token(token: &str) -> Result<u64> {
    Ok(parse_sync_token(token)?.0)
}

/// `(stream position, to-device position)` of a sync token.
pub fn parse_sync_token(token: &str) -> Result<(u64, u64)> {
    let body = token
        .strip_prefix('s')
        .or_else(|| token.strip_prefix('t'))
        .unwrap_or(token);
    let bad = || Error::invalid_param("invalid stream token");
    match body.split_once('_') {
        None => {
            let pos = body.parse().map_err(|_| bad())?;
            Ok((pos, pos))
        }
        Some((pos, td)) => {
            let pos: u64 = pos.parse().map_err(|_| bad())?;
            let td: u64 = td.parse().map_err(|_| bad())?;
            Ok((pos, td.min(pos)))
        }
    }
}

#[derive(Clone)]
pub struct SyncService {
    pub(crate) rooms: Rooms,
    pub(crate) account_data: AccountData,
    pub(crate) typing: Typing,
    pub(crate) receipts: Receipts,
    pub(crate) presence: Presence,
    pub(crate) push: Arc<Push>,
    pub(crate) e2ee: E2ee,
    pub(crate) store: Store,
    pub(crate) stream: Arc<Stream>,
    pub(crate) default_limit: usize,
    pub(crate) max_timeout_ms: u64,
}

impl SyncService {
    /// Answers at once when there is news (or on an initial sync); otherwise
    /// sleeps until the user's notifier fires or the timeout passes.
    pub async fn sync(&self, session: &Session, req: SyncRequest) -> Result<Value> {
        let tokens = req.since.as_deref().map(parse_sync_token).transpose()?;
        let since = tokens.map(|t| t.0);
        let to_device_acked = tokens.map_or(0, |t| t.1);
        // Syncing with a token acknowledges the to-device messages it covered.
        if tokens.is_some() {
            self.e2ee.ack_to_device(
                &session.user_id,
                session.device_id.as_str(),
                to_device_acked,
            )?;
        }
        self.presence
            .sync_started(&session.user_id, &req.set_presence)
            .await?;
        let result = self.sync_inner(session, since, to_device_acked, &req).await;
        self.presence.sync_finished(&session.user_id);
        result
    }

    async fn sync_inner(
        &self,
        session: &Session,
        since: Option<u64>,
        to_device_acked: u64,
        req: &SyncRequest,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(req.timeout_ms.min(self.max_timeout_ms));
        let notify = self.stream.notifier().handle(&session.user_id);
        let window = |upto| Window {
            since,
            upto,
            to_device_acked,
            full_state: req.full_state,
        };
        loop {
            // Register interest before looking, so a write between the look
            // and the wait still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let delta = self.collect(session, window(self.stream.current()), &req.filter)?;
            if delta.has_news()
                || since.is_none()
                || req.full_state
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(render_v3::render(delta));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let delta = self.collect(session, window(self.stream.current()), &req.filter)?;
                    return Ok(render_v3::render(delta));
                }
            }
        }
    }
}
