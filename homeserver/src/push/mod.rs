//! Push: each user's push rules, their evaluation for every event (notifications and unread counts), and HTTP pushers.

pub mod evaluate;
pub mod notifications;
pub mod pusher;
pub mod rules;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId, push::Ruleset};
use tokio::sync::mpsc;

use crate::{account_data::AccountData, error::Result, storage::Store};
use pusher::PushJob;

/// Shared by the write path (evaluation) and the API (rule changes).
pub struct Push {
    pub(crate) store: Store,
    pub(crate) account_data: AccountData,
    /// Parsed rulesets, so evaluating an event for many members does not
    /// re-read and re-parse each member's rules.
    cache: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
    queue: mpsc::UnboundedSender<PushJob>,
}

impl Push {
    /// Returns the service and the receiving end of its pusher queue, which
    /// `pusher::run` drains.
    pub fn new(
        store: Store,
        account_data: AccountData,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<PushJob>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Push {
                store,
                account_data,
                cache: Mutex::new(HashMap::new()),
                queue: tx,
            }),
            rx,
        )
    }

    pub fn ruleset(&self, user: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(r) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            return Ok(r.clone());
        }
        let rules = Arc::new(rules::load(&self.account_data, user)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(user.to_owned(), rules.clone());
        Ok(rules)
    }

    pub(crate) fn forget_cached(&self, user: &UserId) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(user);
    }

    pub(crate) fn enqueue(&self, job: PushJob) {
        // The receiver lives as long as the server; if it is gone we are
        // shutting down and the push is moot.
        let _ = self.queue.send(job);
    }
}
