//! What changed for a user between two stream positions, collected as typed per-room deltas that any sync API can render.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};

use super::{SyncService, filter::Filter};
use crate::{
    accounts::{Session, now_ms},
    e2ee::device_lists::DeviceListChanges,
    error::Result,
    push::{notifications, notifications::Counts, rules as push_rules},
    rooms::{
        UserRoom,
        pdu::{StoredEvent, client_event, stripped_state},
        snapshots::StateIds,
    },
};

/// The stretch of the stream a sync covers.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// `None`: an initial sync (everything).
    pub since: Option<u64>,
    pub upto: u64,
    /// How far the device's to-device inbox was handed out already.
    pub to_device_acked: u64,
    /// The client wants full state even on an incremental sync.
    pub full_state: bool,
}

impl Window {
    fn since_pos(&self) -> u64 {
        self.since.unwrap_or(0)
    }
    fn initial(&self) -> bool {
        self.since.is_none() || self.full_state
    }
}

/// Everything new for one device in a window, filtered as asked.
#[derive(Debug, Default)]
pub struct SyncDelta {
    pub upto: u64,
    /// How far the to-device inbox is handed out after this sync.
    pub to_device_upto: u64,
    pub joined: BTreeMap<OwnedRoomId, JoinedRoom>,
    /// Stripped state of each new invite.
    pub invited: BTreeMap<OwnedRoomId, Vec<Value>>,
    pub left: BTreeMap<OwnedRoomId, RoomTimeline>,
    pub account_data: Vec<(String, Value)>,
    pub presence: Vec<Value>,
    pub to_device: Vec<Value>,
    pub device_lists: DeviceListChanges,
    pub one_time_key_counts: BTreeMap<String, u64>,
    pub unused_fallback_key_types: Vec<String>,
}

impl SyncDelta {
    /// Whether there is anything a waiting client should be woken for.
    pub fn has_news(&self) -> bool {
        !self.joined.is_empty()
            || !self.invited.is_empty()
            || !self.left.is_empty()
            || !self.account_data.is_empty()
            || !self.presence.is_empty()
            || !self.to_device.is_empty()
            || !self.device_lists.changed.is_empty()
            || !self.device_lists.left.is_empty()
    }
}

/// A room's timeline slice with the state and data that go with it.
#[derive(Debug, Default)]
pub struct RoomTimeline {
    /// Client-format events, oldest first.
    pub events: Vec<Value>,
    pub limited: bool,
    /// The position just before the first event (where to paginate from).
    pub prev_batch: u64,
    /// Client-format state at the start of the timeline (all of it, or
    /// what changed since the last sync).
    pub state: Vec<Value>,
    pub account_data: Vec<(String, Value)>,
    pub summary: Summary,
}

/// What clients name an unnamed room by.
#[derive(Debug, Default)]
pub struct Summary {
    pub heroes: Vec<OwnedUserId>,
    pub joined: usize,
    pub invited: usize,
}

/// A joined room: its timeline plus ephemeral data and unread counts.
#[derive(Debug, Default)]
pub struct JoinedRoom {
    pub timeline: RoomTimeline,
    /// Who is typing now, when that changed.
    pub typing: Option<Vec<OwnedUserId>>,
    /// The `m.receipt` event of receipts the viewer may see, when any changed.
    pub receipts: Option<Value>,
    pub unread: Counts,
    /// Per thread, when the filter asks for it.
    pub unread_threads: Option<BTreeMap<String, Counts>>,
}

/// Per-sync context shared by every room.
struct Viewer<'a> {
    session: &'a Session,
    ignored: BTreeSet<String>,
    now: u64,
}

impl Viewer<'_> {
    fn user(&self) -> &UserId {
        &self.session.user_id
    }
    fn device(&self) -> Option<&str> {
        Some(self.session.device_id.as_str())
    }
}

impl SyncService {
    /// Collects what changed for `session` in `window`.
    pub fn collect(&self, session: &Session, window: Window, filter: &Filter) -> Result<SyncDelta> {
        let user = &session.user_id;
        let since_pos = window.since_pos();
        let upto = window.upto;
        let changes = self.account_data.changed_since(user, since_pos, upto)?;
        let viewer = Viewer {
            session,
            ignored: self.account_data.ignored_users(user)?,
            now: now_ms(),
        };
        let mut delta = SyncDelta {
            upto,
            ..Default::default()
        };
        for (room_id, ur) in self.rooms.user_rooms(user)? {
            if !filter.room.allows_room(room_id.as_str()) {
                continue;
            }
            let room_data = changes.rooms.get(&room_id);
            match ur.membership.as_str() {
                "join" => {
                    let full = window.initial() || ur.pos > since_pos;
                    let news = full
                        || self.rooms.has_events_after(&room_id, since_pos)?
                        || room_data.is_some()
                        || self.typing.changed(&room_id, window.since, upto).is_some()
                        || self.receipts.changed(&room_id, user, since_pos, upto)?;
                    if news {
                        let timeline = self.room_timeline(
                            &viewer, &room_id, since_pos, upto, full, filter, room_data,
                        )?;
                        let joined =
                            self.joined_room(&viewer, &room_id, timeline, window, filter)?;
                        delta.joined.insert(room_id, joined);
                    }
                }
                "invite"
                    if (window.since.is_none() || ur.pos > since_pos)
                        && !viewer.ignored.contains(ur.sender.as_str()) =>
                {
                    delta
                        .invited
                        .insert(room_id.clone(), self.invite_state(user, &room_id, &ur)?);
                }
                "leave" | "ban" => {
                    let fresh = window.since.is_some() && ur.pos > since_pos && ur.pos <= upto;
                    if fresh || (filter.room.include_leave && window.initial()) {
                        let timeline = self.room_timeline(
                            &viewer,
                            &room_id,
                            since_pos,
                            ur.pos,
                            window.initial(),
                            filter,
                            room_data,
                        )?;
                        delta.left.insert(room_id, timeline);
                    }
                }
                _ => {}
            }
        }
        let mut global = changes.global;
        // Clients expect push rules from the first sync, stored or not.
        if window.since.is_none() && !global.iter().any(|(k, _)| k == push_rules::EVENT_TYPE) {
            let rules = self.push.ruleset(user)?;
            global.push((
                push_rules::EVENT_TYPE.into(),
                json!({"global": push_rules::to_json(&rules)?}),
            ));
        }
        delta.account_data = global
            .into_iter()
            .filter(|(k, _)| filter.account_data.allows(k, user.as_str(), None))
            .collect();
        delta.presence = self
            .presence
            .sync_events(user, window.since, upto)?
            .into_iter()
            .filter(|e| {
                !viewer
                    .ignored
                    .contains(e["sender"].as_str().unwrap_or_default())
            })
            .filter(|e| {
                filter.presence.allows(
                    e["type"].as_str().unwrap_or_default(),
                    e["sender"].as_str().unwrap_or_default(),
                    None,
                )
            })
            .collect();
        let device = session.device_id.as_str();
        let (to_device, handed_out) =
            self.e2ee
                .pending_to_device(user, device, window.to_device_acked, upto)?;
        delta.to_device = to_device;
        delta.to_device_upto = handed_out;
        if let Some(s) = window.since {
            delta.device_lists = self.e2ee.device_list_changes(user, s, upto)?;
        }
        delta.one_time_key_counts = self.e2ee.one_time_key_counts(user, device)?;
        delta.unused_fallback_key_types = self.e2ee.unused_fallback_key_types(user, device)?;
        Ok(delta)
    }

    /// The timeline of `(since, upto]` (or the newest events when `full`),
    /// the state at its start, and the room's account data and summary.
    #[allow(clippy::too_many_arguments)]
    fn room_timeline(
        &self,
        viewer: &Viewer<'_>,
        room_id: &RoomId,
        since_pos: u64,
        upto: u64,
        full: bool,
        filter: &Filter,
        room_data: Option<&Vec<(String, Value)>>,
    ) -> Result<RoomTimeline> {
        let limit = filter
            .room
            .timeline
            .limit
            .map(|l| l.clamp(1, 1000) as usize)
            .unwrap_or(self.default_limit);
        // History visibility: a "joined" room shows nothing from before the join.
        let earliest = self
            .rooms
            .visible_from(viewer.user(), room_id)?
            .saturating_sub(1);
        let lo = if full { 0 } else { since_pos }.max(earliest);
        let mut newest = self
            .rooms
            .timeline_range(room_id, lo, upto, true, limit + 1)?;
        let limited = newest.len() > limit;
        newest.truncate(limit);
        newest.reverse();
        let start_pos = newest
            .first()
            .map(|e| e.pos)
            .unwrap_or(upto.saturating_add(1));

        // Each event is turned into client format once; filters, senders
        // and state keys are read off that.
        let formatted: Vec<Value> = newest
            .iter()
            .map(|e| {
                self.rooms
                    .client_event_for(e, viewer.user(), viewer.device(), upto, viewer.now)
            })
            .collect();
        let senders: BTreeSet<String> = formatted
            .iter()
            .filter_map(|e| e["sender"].as_str().map(str::to_owned))
            .chain(std::iter::once(viewer.user().to_string()))
            .collect();
        let events: Vec<Value> = formatted
            .into_iter()
            .filter(|e| filter.room.timeline.allows_event(e))
            // Ignored users' messages vanish; their state changes still apply.
            .filter(|e| {
                e.get("state_key").is_some()
                    || !viewer
                        .ignored
                        .contains(e["sender"].as_str().unwrap_or_default())
            })
            .collect();

        let at_start = self.state_at(room_id, newest.first(), upto)?;
        // All of the state when the client has none; otherwise only the
        // entries that changed in the gap a limited timeline skipped.
        let gap_changes = if !full && limited {
            self.state_keys_changed(room_id, since_pos, start_pos.saturating_sub(1))?
        } else {
            BTreeSet::new()
        };
        let lazy = filter.room.state.lazy_load_members;
        let mut state = Vec::new();
        for (key, id) in &at_start {
            // Lazy-loading clients get exactly the members they will display.
            let include = if lazy && key.0 == "m.room.member" {
                senders.contains(&key.1)
            } else {
                full || gap_changes.contains(key)
            };
            if !include {
                continue;
            }
            if let Some(ev) = self.rooms.event(id.as_str())? {
                let ce = client_event(
                    &ev,
                    viewer.device(),
                    self.rooms.prev_content(&ev),
                    viewer.now,
                );
                if filter.room.state.allows_event(&ce) {
                    state.push(ce);
                }
            }
        }
        Ok(RoomTimeline {
            events,
            limited,
            prev_batch: start_pos.saturating_sub(1),
            state,
            account_data: room_data.cloned().unwrap_or_default(),
            summary: self.summary(room_id, viewer.user())?,
        })
    }

    /// The room state just before `first` (the first event of a timeline),
    /// or at `upto` when the timeline is empty: from the state snapshots
    /// kept for every event, so merged branches come out as resolved.
    /// Events from before snapshots existed (and backfilled ones) fall back
    /// to rolling the current state back along the timeline.
    fn state_at(
        &self,
        room_id: &RoomId,
        first: Option<&StoredEvent>,
        upto: u64,
    ) -> Result<StateIds> {
        let snapshot = match first {
            Some(e) => self.rooms.state_before_event(&e.event_id)?,
            None => match self
                .rooms
                .timeline_range(room_id, 0, upto, true, 1)?
                .first()
            {
                Some(last) => self.rooms.state_after(&last.event_id)?,
                None => None,
            },
        };
        match snapshot {
            Some(s) => Ok(s),
            None => {
                let pos = first.map_or(upto.saturating_add(1), |e| e.pos);
                self.rooms.state_before(room_id, pos)
            }
        }
    }

    /// `(type, state_key)` of the state events in `(lo, hi]`.
    fn state_keys_changed(
        &self,
        room_id: &RoomId,
        lo: u64,
        hi: u64,
    ) -> Result<BTreeSet<(String, String)>> {
        let gap = self
            .rooms
            .timeline_range(room_id, lo, hi, false, usize::MAX)?;
        Ok(gap
            .iter()
            .filter_map(|e| {
                let p = e.parse().ok()?;
                Some((p.kind.to_string(), p.state_key?))
            })
            .collect())
    }

    /// Typing, receipts and unread counts on top of a joined room's timeline.
    fn joined_room(
        &self,
        viewer: &Viewer<'_>,
        room_id: &RoomId,
        timeline: RoomTimeline,
        window: Window,
        filter: &Filter,
    ) -> Result<JoinedRoom> {
        let wants = |kind: &str| {
            filter
                .room
                .ephemeral
                .allows(kind, "", Some(room_id.as_str()))
        };
        let typing = if wants("m.typing") {
            self.typing
                .changed(room_id, window.since, window.upto)
                .map(|users| {
                    users
                        .into_iter()
                        .filter(|u| !viewer.ignored.contains(u.as_str()))
                        .collect()
                })
        } else {
            None
        };
        let receipts = if wants("m.receipt") {
            let is_ignored = |u: &UserId| viewer.ignored.contains(u.as_str());
            self.receipts.sync_event(
                room_id,
                viewer.user(),
                window.since,
                window.upto,
                &is_ignored,
            )?
        } else {
            None
        };
        let by_thread = filter.room.timeline.unread_thread_notifications;
        let (unread, threads) =
            notifications::counts(&self.store, viewer.user(), room_id, by_thread)?;
        Ok(JoinedRoom {
            timeline,
            typing,
            receipts,
            unread,
            unread_threads: by_thread.then_some(threads),
        })
    }

    /// Heroes and member counts, which clients use to name unnamed rooms.
    fn summary(&self, room_id: &RoomId, user: &UserId) -> Result<Summary> {
        let joined = self.rooms.members_with(room_id, &["join"])?;
        let invited = self.rooms.members_with(room_id, &["invite"])?;
        let heroes = joined
            .iter()
            .chain(invited.iter())
            .filter(|u| u.as_str() != user.as_str())
            .take(5)
            .cloned()
            .collect();
        Ok(Summary {
            heroes,
            joined: joined.len(),
            invited: invited.len(),
        })
    }

    /// What an invitee sees of the room: the invite's stripped state plus
    /// the room's name, avatar, encryption and the inviter's membership.
    fn invite_state(&self, user: &UserId, room_id: &RoomId, ur: &UserRoom) -> Result<Vec<Value>> {
        let mut events: BTreeMap<(String, String), Value> = BTreeMap::new();
        if let Some(stripped) = self.rooms.invite_state(user, room_id)? {
            for (i, ev) in stripped.into_iter().enumerate() {
                let kind = ev["type"].as_str().unwrap_or_default().to_owned();
                events.insert((kind, format!("~{i}")), ev);
            }
        }
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ] {
            if let Some(ev) = self.rooms.state_event(room_id, kind, "")? {
                events.insert((kind.into(), String::new()), stripped_state(&ev));
            }
        }
        let inviter = ur.sender.to_string();
        if let Some(ev) = self.rooms.state_event(room_id, "m.room.member", &inviter)? {
            events.insert(("m.room.member".into(), inviter), stripped_state(&ev));
        }
        if let Some(ev) = self.rooms.event(ur.event_id.as_str())? {
            events.insert(("m.room.member".into(), "self".into()), stripped_state(&ev));
        }
        Ok(events.into_values().collect())
    }
}
