//! Per-user wake-ups: a sync waiting for news sleeps on its user's notifier.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId};
use tokio::sync::Notify;

/// One `Notify` per user with a sync waiting; writers wake exactly the users
/// an update concerns, so idle users cost nothing.
#[derive(Default)]
pub struct Notifier {
    waiters: Mutex<HashMap<OwnedUserId, Arc<Notify>>>,
}

impl Notifier {
    pub fn handle(&self, user: &UserId) -> Arc<Notify> {
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Drop handles nobody holds any more, so the map tracks live syncs only.
        if map.len() > 1024 {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(user.to_owned()).or_default().clone()
    }

    pub fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for u in users {
            if let Some(n) = map.get(u) {
                n.notify_waiters();
            }
        }
    }
}
