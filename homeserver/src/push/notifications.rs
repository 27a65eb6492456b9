//! Stored notifications: unread and highlight counts per room (and per thread) for /sync, and the /notifications list.

use std::collections::BTreeMap;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId, push::Action};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::evaluate::Decision;
use crate::{
    ephemeral::receipts::read_positions,
    error::Result,
    storage::{Store, Txn, UserDataRead, UserDataWrite},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub highlight: bool,
    #[serde(default)]
    pub thread: Option<String>,
    pub actions: Vec<Action>,
    pub ts: u64,
}

/// Adds the notifications `decisions` describe to the event's txn.
pub fn stage(txn: &mut Txn<'_>, decisions: &[Decision], pos: u64, ts: u64) {
    for d in decisions {
        let n = Notification {
            event_id: d.event_id.clone(),
            room_id: d.room_id.clone(),
            highlight: d.highlight,
            thread: d.thread.clone(),
            actions: d.actions.clone(),
            ts,
        };
        txn.put_notification(&d.user, &d.room_id, pos, &n);
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub notifications: u64,
    pub highlights: u64,
}

impl Counts {
    pub fn to_json(self) -> Value {
        json!({"notification_count": self.notifications, "highlight_count": self.highlights})
    }
}

/// Unread counts for a room: the whole room, or (when `by_thread`) the main
/// timeline plus one entry per thread with anything unread.
pub fn counts(
    store: &Store,
    user: &UserId,
    room: &RoomId,
    by_thread: bool,
) -> Result<(Counts, BTreeMap<String, Counts>)> {
    let (unthreaded, threads) = read_positions(store, user, room)?;
    let mut main = Counts::default();
    let mut per_thread: BTreeMap<String, Counts> = BTreeMap::new();
    for (pos, n) in store.notifications_from(user, room, unthreaded.saturating_add(1))? {
        let thread_key = n.thread.clone().unwrap_or_else(|| "main".into());
        if threads.get(&thread_key).is_some_and(|read| pos <= *read) {
            continue;
        }
        let bucket = match (&n.thread, by_thread) {
            (Some(t), true) => per_thread.entry(t.clone()).or_default(),
            _ => &mut main,
        };
        bucket.notifications += 1;
        bucket.highlights += u64::from(n.highlight);
    }
    Ok((main, per_thread))
}

/// Every room's unread count summed: the badge number pushers send.
pub fn total_unread(store: &Store, user: &UserId, rooms: &[OwnedRoomId]) -> Result<u64> {
    let mut total = 0;
    for r in rooms {
        total += counts(store, user, r, false)?.0.notifications;
    }
    Ok(total)
}

/// One entry of GET /notifications: the notification and whether it is read.
pub type Listed = (Notification, bool);

/// A page of the user's notifications, newest first, and where the next starts.
pub fn list(
    store: &Store,
    user: &UserId,
    from: Option<u64>,
    limit: usize,
    only_highlight: bool,
) -> Result<(Vec<Listed>, Option<u64>)> {
    let mut out = Vec::new();
    let mut next = None;
    let mut cursor = from.unwrap_or(u64::MAX);
    'pages: loop {
        let page = store.notification_log_before(user, cursor, 100)?;
        if page.is_empty() {
            break;
        }
        for (pos, room) in &page {
            let pos = *pos;
            cursor = pos.saturating_sub(1);
            let Some(n) = store.notification(user, room, pos)? else {
                continue;
            };
            if only_highlight && !n.highlight {
                continue;
            }
            if out.len() == limit {
                next = Some(pos);
                break 'pages;
            }
            let (unthreaded, threads) = read_positions(store, user, room)?;
            let thread_read = threads
                .get(n.thread.as_deref().unwrap_or("main"))
                .copied()
                .unwrap_or(0);
            out.push((n, pos <= unthreaded.max(thread_read)));
            if pos == 0 {
                break 'pages;
            }
        }
        if page.len() < 100 {
            break;
        }
    }
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::counts;
    use crate::{
        rooms::{NewEvent, create::CreateRoom},
        test_support::{text, world},
    };

    #[tokio::test]
    async fn dm_messages_count_mentions_highlight_and_reading_clears() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let req = CreateRoom {
            preset: Some("trusted_private_chat".into()),
            invite: vec![bob.clone()],
            is_direct: true,
            ..Default::default()
        };
        let room = w.s.rooms.create_room(&alice, req).await.unwrap();
        w.s.rooms.join(&bob, &room).await.unwrap();

        w.s.rooms
            .send(&alice, &room, text("one"), None)
            .await
            .unwrap();
        let mention = NewEvent::message(
            "m.room.message",
            json!({"msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [bob]}}),
        );
        let last = w.s.rooms.send(&alice, &room, mention, None).await.unwrap();
        let (c, _) = counts(&w.s.store, &bob, &room, false).unwrap();
        assert_eq!((c.notifications, c.highlights), (2, 1));
        // The sender's own messages never count for the sender.
        assert_eq!(
            counts(&w.s.store, &alice, &room, false)
                .unwrap()
                .0
                .notifications,
            0
        );

        w.s.receipts
            .set(&bob, &room, "m.read.private", last.as_str(), None)
            .await
            .unwrap();
        let (c, _) = counts(&w.s.store, &bob, &room, false).unwrap();
        assert_eq!((c.notifications, c.highlights), (0, 0));
    }

    #[tokio::test]
    async fn the_master_rule_silences_everything() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let req = CreateRoom {
            preset: Some("trusted_private_chat".into()),
            invite: vec![bob.clone()],
            is_direct: true,
            ..Default::default()
        };
        let room = w.s.rooms.create_room(&alice, req).await.unwrap();
        w.s.rooms.join(&bob, &room).await.unwrap();
        w.s.push
            .edit(&bob, |r| {
                r.set_enabled(ruma::push::RuleKind::Override, ".m.rule.master", true)
                    .map_err(crate::error::Error::internal)
            })
            .await
            .unwrap();
        w.s.rooms
            .send(&alice, &room, text("shh"), None)
            .await
            .unwrap();
        assert_eq!(
            counts(&w.s.store, &bob, &room, false)
                .unwrap()
                .0
                .notifications,
            0
        );
    }

    #[tokio::test]
    async fn thread_replies_count_per_thread_and_thread_receipts_clear_only_their_thread() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let req = CreateRoom {
            preset: Some("trusted_private_chat".into()),
            invite: vec![bob.clone()],
            is_direct: true,
            ..Default::default()
        };
        let room = w.s.rooms.create_room(&alice, req).await.unwrap();
        w.s.rooms.join(&bob, &room).await.unwrap();
        let root =
            w.s.rooms
                .send(&alice, &room, text("root"), None)
                .await
                .unwrap();
        let reply = NewEvent::message(
            "m.room.message",
            json!({"msgtype": "m.text", "body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        );
        let reply_id = w.s.rooms.send(&alice, &room, reply, None).await.unwrap();
        let (main, threads) = counts(&w.s.store, &bob, &room, true).unwrap();
        assert_eq!(main.notifications, 1);
        assert_eq!(threads.get(root.as_str()).map(|c| c.notifications), Some(1));

        w.s.receipts
            .set(
                &bob,
                &room,
                "m.read",
                reply_id.as_str(),
                Some(root.as_str()),
            )
            .await
            .unwrap();
        let (main, threads) = counts(&w.s.store, &bob, &room, true).unwrap();
        assert_eq!(main.notifications, 1, "the main timeline is still unread");
        assert!(threads.is_empty());
    }
}
