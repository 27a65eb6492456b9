//! Event relationships (replies, edits, reactions, threads, references): the index kept on write, bundled aggregations, /relations and /threads.

use ruma::{OwnedEventId, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Rooms, pdu::StoredEvent};
use crate::{
    error::{Error, Result},
    storage::{RelationRead, RelationWrite, Txn},
};

/// A child event as the index keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Relation {
    pub event_id: OwnedEventId,
    pub rel_type: String,
    pub event_type: String,
    pub sender: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `(rel_type, parent, key)` of an event's `m.relates_to`, if it has one
/// (plain replies via `m.in_reply_to` are not aggregated and have none).
pub fn relates_to(content: &Value) -> Option<(String, String, Option<String>)> {
    let rel = content.get("m.relates_to")?;
    let rel_type = rel.get("rel_type")?.as_str()?.to_owned();
    let parent = rel.get("event_id")?.as_str()?.to_owned();
    let key = rel.get("key").and_then(Value::as_str).map(str::to_owned);
    Some((rel_type, parent, key))
}

impl Rooms {
    /// Refuses an annotation that repeats one the sender already has on the
    /// same event with the same type and key (M_DUPLICATE_ANNOTATION).
    pub(crate) fn check_annotation(
        &self,
        room: &RoomId,
        sender: &UserId,
        event_type: &str,
        content: &Value,
    ) -> Result<()> {
        let Some((rel_type, parent, Some(key))) = relates_to(content) else {
            return Ok(());
        };
        if rel_type != "m.annotation" {
            return Ok(());
        }
        let dup = self.children(room, &parent)?.into_iter().any(|(_, r)| {
            r.rel_type == "m.annotation"
                && r.sender == sender.as_str()
                && r.event_type == event_type
                && r.key.as_deref() == Some(key.as_str())
        });
        if dup {
            Err(Error::DuplicateAnnotation)
        } else {
            Ok(())
        }
    }

    /// Indexes a new event's relationship in the event's own txn.
    pub(crate) fn stage_relation(
        &self,
        txn: &mut Txn<'_>,
        room: &RoomId,
        event: &StoredEvent,
        sender: &UserId,
        event_type: &str,
        content: &Value,
    ) -> Result<()> {
        let Some((rel_type, parent, key)) = relates_to(content) else {
            return Ok(());
        };
        // A relation to an event of another room (or none we know) is kept
        // as a plain event and aggregated nowhere.
        if self.event(&parent)?.is_none_or(|p| p.room_id != room) {
            return Ok(());
        }
        let rel = Relation {
            event_id: event.event_id.clone(),
            rel_type: rel_type.clone(),
            event_type: event_type.to_owned(),
            sender: sender.to_string(),
            key,
        };
        txn.put_relation(room, &parent, event.pos, &rel);
        if rel_type == "m.thread" {
            let root = OwnedEventId::try_from(parent.as_str())
                .map_err(|e| Error::invalid_param(e.to_string()))?;
            txn.set_thread_activity(room, &root, event.pos)?;
        }
        Ok(())
    }

    /// Removes a redacted event from the aggregations it counted in.
    pub(crate) fn unstage_relation(&self, txn: &mut Txn<'_>, target: &StoredEvent) {
        let content = target.pdu_value()["content"].clone();
        if let Some((_, parent, _)) = relates_to(&content) {
            txn.delete_relation(&target.room_id, &parent, target.pos);
        }
    }

    /// Children of `parent`, oldest first, with their positions.
    pub fn children(&self, room: &RoomId, parent: &str) -> Result<Vec<(u64, Relation)>> {
        Ok(self.store.children(room, parent)?)
    }

    /// The spec's bundled aggregations (`unsigned.m.relations`) for an event
    /// as `viewer` sees it: the latest edit, the thread summary, references.
    pub fn bundle(
        &self,
        event: &StoredEvent,
        viewer: &UserId,
        visible_until: u64,
        format: &dyn Fn(&StoredEvent) -> Value,
    ) -> Result<Option<Value>> {
        let children = self.children(&event.room_id, event.event_id.as_str())?;
        if children.is_empty() {
            return Ok(None);
        }
        let v = event.pdu_value();
        let original_sender = v["sender"].as_str().unwrap_or_default();
        let mut out = serde_json::Map::new();
        let visible = children.iter().filter(|(pos, _)| *pos <= visible_until);

        // Only the original sender may edit; the newest valid edit wins.
        let edit = visible.clone().rfind(|(_, r)| {
            r.rel_type == "m.replace" && r.sender == original_sender && v.get("state_key").is_none()
        });
        if let Some((_, r)) = edit
            && let Some(e) = self.event(r.event_id.as_str())?
        {
            out.insert("m.replace".into(), format(&e));
        }

        let replies: Vec<&(u64, Relation)> = visible
            .clone()
            .filter(|(_, r)| r.rel_type == "m.thread")
            .collect();
        if let Some((_, last)) = replies.last()
            && let Some(latest) = self.event(last.event_id.as_str())?
        {
            let participated = original_sender == viewer.as_str()
                || replies.iter().any(|(_, r)| r.sender == viewer.as_str());
            out.insert(
                    "m.thread".into(),
                    json!({"latest_event": format(&latest), "count": replies.len(), "current_user_participated": participated}),
                );
        }

        let refs: Vec<Value> = visible
            .filter(|(_, r)| r.rel_type == "m.reference")
            .map(|(_, r)| json!({"event_id": r.event_id}))
            .collect();
        if !refs.is_empty() {
            out.insert("m.reference".into(), json!({"chunk": refs}));
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }

    /// A page of `parent`'s children matching the filters. `from` is a
    /// position (inclusive); the returned token continues past the page.
    #[allow(clippy::too_many_arguments)]
    pub fn relations_page(
        &self,
        room: &RoomId,
        parent: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
        forwards: bool,
        limit: usize,
        visible_until: u64,
    ) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let mut children: Vec<(u64, Relation)> = self
            .children(room, parent)?
            .into_iter()
            .filter(|(pos, r)| {
                *pos <= visible_until
                    && rel_type.is_none_or(|t| t == r.rel_type)
                    && event_type.is_none_or(|t| t == r.event_type)
            })
            .collect();
        if !forwards {
            children.reverse();
        }
        let in_range = |pos: u64| -> bool {
            if forwards {
                from.is_none_or(|f| pos >= f) && to.is_none_or(|t| pos < t)
            } else {
                from.is_none_or(|f| pos <= f) && to.is_none_or(|t| pos > t)
            }
        };
        let mut out = Vec::new();
        let mut next = None;
        for (pos, r) in children.into_iter().filter(|(p, _)| in_range(*p)) {
            if out.len() == limit {
                next = Some(pos);
                break;
            }
            if let Some(e) = self.event(r.event_id.as_str())? {
                out.push(e);
            }
        }
        Ok((out, next))
    }

    /// Thread roots by most recent reply, newest first; `from` is an
    /// activity position (inclusive).
    pub fn threads_page(
        &self,
        room: &RoomId,
        viewer: &UserId,
        participated_only: bool,
        from: Option<u64>,
        limit: usize,
        visible_until: u64,
    ) -> Result<(Vec<StoredEvent>, Option<u64>)> {
        let start = from.unwrap_or(u64::MAX).min(visible_until);
        let mut out = Vec::new();
        let mut next = None;
        for (pos, root) in self.store.threads_by_activity(room, start)? {
            let Some(ev) = self.event(root.as_str())? else {
                continue;
            };
            if participated_only {
                let mine = ev.pdu_value()["sender"].as_str() == Some(viewer.as_str())
                    || self
                        .children(room, root.as_str())?
                        .iter()
                        .any(|(_, r)| r.rel_type == "m.thread" && r.sender == viewer.as_str());
                if !mine {
                    continue;
                }
            }
            if out.len() == limit {
                next = Some(pos);
                break;
            }
            out.push(ev);
        }
        Ok((out, next))
    }
}

impl Rooms {
    /// An event in client format with its bundled aggregations, as `viewer`
    /// sees it at stream position `until`.
    pub fn client_event_for(
        &self,
        event: &StoredEvent,
        viewer: &UserId,
        device: Option<&str>,
        until: u64,
        now: u64,
    ) -> Value {
        let mut v = super::pdu::client_event(event, device, self.prev_content(event), now);
        let format = |e: &StoredEvent| super::pdu::client_event(e, device, None, now);
        match self.bundle(event, viewer, until, &format) {
            Ok(Some(b)) => {
                if let Some(u) = v.get_mut("unsigned").and_then(Value::as_object_mut) {
                    u.insert("m.relations".into(), b);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("aggregations for {}: {e}", event.event_id),
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{
        error::Error,
        rooms::NewEvent,
        test_support::{text, world},
    };

    fn reaction(target: &str, key: &str) -> NewEvent {
        NewEvent::message(
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}}),
        )
    }

    #[tokio::test]
    async fn edits_bundle_only_from_the_original_sender_and_duplicates_are_refused() {
        let w = world();
        let (alice, bob) = (w.user("alice").await, w.user("bob").await);
        let room = w.room(&alice, "12", "public_chat").await;
        w.s.rooms.join(&bob, &room).await.unwrap();
        let msg =
            w.s.rooms
                .send(&alice, &room, text("hello"), None)
                .await
                .unwrap();
        let edit = |by: &str| {
            NewEvent::message(
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("* {by}"), "m.new_content": {"msgtype": "m.text", "body": by},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": msg}}),
            )
        };
        let good =
            w.s.rooms
                .send(&alice, &room, edit("alice"), None)
                .await
                .unwrap();
        w.s.rooms
            .send(&bob, &room, edit("bob"), None)
            .await
            .unwrap();
        let r1 =
            w.s.rooms
                .send(&bob, &room, reaction(msg.as_str(), "👍"), None)
                .await
                .unwrap();
        assert!(matches!(
            w.s.rooms
                .send(&bob, &room, reaction(msg.as_str(), "👍"), None)
                .await,
            Err(Error::DuplicateAnnotation)
        ));

        let ev = w.s.rooms.event(msg.as_str()).unwrap().unwrap();
        let v = w.s.rooms.client_event_for(&ev, &bob, None, u64::MAX, 0);
        assert_eq!(
            v["unsigned"]["m.relations"]["m.replace"]["event_id"],
            good.as_str(),
            "bob's edit of alice's message is not an edit"
        );
        assert!(
            v["unsigned"]["m.relations"].get("m.annotation").is_none(),
            "the spec does not bundle annotations"
        );

        // Redacting the reaction frees its key again.
        let redact = NewEvent {
            kind: "m.room.redaction".into(),
            content: json!({}),
            state_key: None,
            redacts: Some(r1),
        };
        w.s.rooms.send(&bob, &room, redact, None).await.unwrap();
        w.s.rooms
            .send(&bob, &room, reaction(msg.as_str(), "👍"), None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn threads_order_by_latest_reply() {
        let w = world();
        let alice = w.user("alice").await;
        let room = w.room(&alice, "12", "private_chat").await;
        let a =
            w.s.rooms
                .send(&alice, &room, text("a"), None)
                .await
                .unwrap();
        let b =
            w.s.rooms
                .send(&alice, &room, text("b"), None)
                .await
                .unwrap();
        let reply = |root: &str| {
            NewEvent::message(
                "m.room.message",
                json!({"msgtype": "m.text", "body": "r", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
            )
        };
        w.s.rooms
            .send(&alice, &room, reply(a.as_str()), None)
            .await
            .unwrap();
        w.s.rooms
            .send(&alice, &room, reply(b.as_str()), None)
            .await
            .unwrap();
        w.s.rooms
            .send(&alice, &room, reply(a.as_str()), None)
            .await
            .unwrap();
        let (roots, next) =
            w.s.rooms
                .threads_page(&room, &alice, false, None, 10, u64::MAX)
                .unwrap();
        let ids: Vec<&str> = roots.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, [a.as_str(), b.as_str()]);
        assert!(next.is_none());
        let ev = w.s.rooms.event(a.as_str()).unwrap().unwrap();
        let v = w.s.rooms.client_event_for(&ev, &alice, None, u64::MAX, 0);
        assert_eq!(v["unsigned"]["m.relations"]["m.thread"]["count"], 2);
        assert_eq!(
            v["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
            true
        );
    }
}
