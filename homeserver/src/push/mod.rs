//! Push: each user's push rules, their evaluation for every event (notifications and unread counts), and HTTP pushers.

pub mod evaluate;
pub mod gateway;
pub mod notifications;
pub mod pusher;
pub mod rules;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{EventId, OwnedUserId, UserId, push::Ruleset};

use crate::{
    account_data::AccountData,
    error::Result,
    outbox::{Destination, Item, Outbox},
    storage::Store,
    stream::Write,
};
use evaluate::Decision;

/// Shared by the write path (evaluation) and the API (rule changes).
pub struct Push {
    pub(crate) store: Store,
    pub(crate) account_data: AccountData,
    /// Parsed rulesets, so evaluating an event for many members does not
    /// re-read and re-parse each member's rules.
    cache: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
    outbox: Arc<Outbox>,
}

impl Push {
    pub fn new(store: Store, account_data: AccountData, outbox: Arc<Outbox>) -> Arc<Self> {
        Arc::new(Push {
            store,
            account_data,
            cache: Mutex::new(HashMap::new()),
            outbox,
        })
    }

    pub fn ruleset(&self, user: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(r) = self.cache().get(user) {
            return Ok(r.clone());
        }
        let rules = Arc::new(rules::load(&self.account_data, user)?);
        let mut cache = self.cache();
        if cache.len() > 10_000 {
            cache.clear();
        }
        // An edit that landed while we read wins over what we read.
        Ok(cache.entry(user.to_owned()).or_insert(rules).clone())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUserId, Arc<Ruleset>>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the rules an edit just stored.
    pub(crate) fn cache_rules(&self, user: &UserId, rules: Ruleset) {
        self.cache().insert(user.to_owned(), Arc::new(rules));
    }

    /// The pushes an event's notifications make: one item per notified
    /// user, for each of their pushers. Worked out before the event's write,
    /// which then only stages them ([`Push::stage_pushes`]).
    pub(crate) fn pushes_for(
        &self,
        decisions: &[Decision],
        event_id: &EventId,
    ) -> Result<Vec<(Vec<Destination>, Item)>> {
        let mut out = Vec::new();
        for d in decisions {
            let dests: Vec<Destination> = pusher::list(&self.store, &d.user)?
                .into_iter()
                .map(|p| Destination::Pusher {
                    user: d.user.clone(),
                    app_id: p.app_id,
                    pushkey: p.pushkey,
                })
                .collect();
            if dests.is_empty() {
                continue;
            }
            let item = Item::Push {
                room_id: d.room_id.clone(),
                event_id: event_id.to_owned(),
                actions: d.actions.clone(),
            };
            out.push((dests, item));
        }
        Ok(out)
    }

    /// Queues pushes in the event's own write: a push is never lost to a crash.
    pub(crate) fn stage_pushes(&self, w: &mut Write<'_>, pushes: &[(Vec<Destination>, Item)]) {
        for (dests, item) in pushes {
            self.outbox.stage(w, dests, item);
        }
    }
}
