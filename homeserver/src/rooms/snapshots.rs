//! Room state at every event: the state before each event kept as delta snapshots, and state resolution v2 where branches of the room's graph meet.

use std::collections::{HashMap, HashSet};

use ruma::{
    EventId, OwnedEventId, RoomId, events::StateEventType, room_version_rules::RoomVersionRules,
    state_res::utils::event_id_set::EventIdSet,
};
use serde::{Deserialize, Serialize};

use super::{
    Rooms,
    pdu::{Pdu, StoredEvent},
};
use crate::{
    error::{Error, Result},
    storage::{RoomStateRead, RoomStateWrite, Txn},
};

/// `(type, state_key) -> event ID`.
pub type StateIds = crate::storage::StateMap;

/// A state row and what it becomes (`None`: removed).
pub type StateChange = ((String, String), Option<OwnedEventId>);

/// A snapshot is its parent plus a few changes; every `FULL_EVERY` links
/// one is stored whole, so loading one never walks a long chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub parent: Option<u64>,
    pub chain: u32,
    pub changes: Vec<(String, String, OwnedEventId)>,
}

const FULL_EVERY: u32 = 64;

impl Rooms {
    /// The last snapshot ID in use, for the counter at start-up.
    pub(crate) fn last_snapshot_id(store: &crate::storage::Store) -> Result<u64> {
        Ok(store.last_snapshot_id()?)
    }

    pub fn load_snapshot(&self, id: u64) -> Result<StateIds> {
        let mut chain = Vec::new();
        let mut cur = Some(id);
        while let Some(i) = cur {
            let snap = self
                .store
                .snapshot(i)?
                .ok_or_else(|| Error::Internal(format!("state snapshot {i} is missing")))?;
            cur = snap.parent;
            chain.push(snap);
            if chain.len() > FULL_EVERY as usize + 1 {
                return Err(Error::Internal("state snapshot chain too long".into()));
            }
        }
        let mut state = StateIds::new();
        for snap in chain.into_iter().rev() {
            for (t, k, id) in snap.changes {
                state.insert((t, k), id);
            }
        }
        Ok(state)
    }

    /// Stores `state` as a snapshot (a delta from `parent` when that is
    /// short) in `txn`; returns its ID.
    pub(crate) fn stage_snapshot(
        &self,
        txn: &mut Txn<'_>,
        parent: Option<(u64, &StateIds)>,
        state: &StateIds,
    ) -> Result<u64> {
        let id = self
            .snapshot_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let snap = match parent {
            Some((pid, pstate)) => {
                let p = self.store.snapshot(pid)?;
                let chain = p.map_or(FULL_EVERY, |p| p.chain + 1);
                let removed = pstate.keys().any(|k| !state.contains_key(k));
                if chain >= FULL_EVERY || removed {
                    full(state)
                } else {
                    let changes = state
                        .iter()
                        .filter(|(k, v)| pstate.get(*k) != Some(*v))
                        .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
                        .collect();
                    Snapshot {
                        parent: Some(pid),
                        chain,
                        changes,
                    }
                }
            }
            None => full(state),
        };
        txn.put_snapshot(id, &snap);
        Ok(id)
    }

    /// The state just before `event_id`, when this server recorded it.
    pub fn state_before_event(&self, event_id: &EventId) -> Result<Option<StateIds>> {
        match self.store.snapshot_before(event_id)? {
            Some(snap) => Ok(Some(self.load_snapshot(snap)?)),
            None => Ok(None),
        }
    }

    /// The state just before `ev` (as [`Rooms::state_before_event`]); for
    /// events from before snapshots existed, or backfilled ones, the
    /// current state rolled back along the timeline.
    pub fn state_before_stored(&self, ev: &StoredEvent) -> Result<StateIds> {
        match self.state_before_event(&ev.event_id)? {
            Some(s) => Ok(s),
            None if ev.pos == 0 => self.current_state_ids(&ev.room_id),
            None => self.state_before(&ev.room_id, ev.pos),
        }
    }

    /// The room state once the timeline reached `pos`: the state after the
    /// last event at or before it.
    pub fn state_at_pos(&self, room_id: &RoomId, pos: u64) -> Result<StateIds> {
        let last = self.timeline_range(room_id, 0, pos, true, 1)?;
        let snapshot = match last.first() {
            Some(ev) => self.state_after(&ev.event_id)?,
            None => None,
        };
        match snapshot {
            Some(s) => Ok(s),
            None => self.state_before(room_id, pos.saturating_add(1)),
        }
    }

    /// The state after `event_id` (its state before, plus itself if it is
    /// a state event), when this server knows it.
    pub fn state_after(&self, event_id: &EventId) -> Result<Option<StateIds>> {
        let Some(snap) = self.store.snapshot_before(event_id)? else {
            return Ok(None);
        };
        let mut state = self.load_snapshot(snap)?;
        if let Some(ev) = self.event(event_id.as_str())?
            && !ev.rejected
            && let Ok(p) = ev.parse()
            && let Some(k) = p.state_key
        {
            state.insert((p.kind.to_string(), k), event_id.to_owned());
        }
        Ok(Some(state))
    }

    fn snapshot_chain(&self, id: u64) -> Result<u32> {
        Ok(self.store.snapshot(id)?.map_or(FULL_EVERY, |s| s.chain))
    }

    /// Records the state before `event` and returns the snapshot of the
    /// room's state after it (the resolved `new_state` when branches met).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stage_state_snapshots(
        &self,
        txn: &mut Txn<'_>,
        room_id: &RoomId,
        record: Option<&super::RoomRecord>,
        event_id: &OwnedEventId,
        pdu: &Pdu,
        state_before: Option<&StateIds>,
        new_state: Option<&StateIds>,
    ) -> Result<u64> {
        let (before, before_map) = match state_before {
            Some(map) => (self.stage_snapshot(txn, None, map)?, Some(map.clone())),
            None => match record.and_then(|r| r.snapshot) {
                Some(id) => (id, None),
                None => {
                    let current = self.current_state_ids(room_id)?;
                    (self.stage_snapshot(txn, None, &current)?, Some(current))
                }
            },
        };
        txn.put_snapshot_before(event_id, before);
        let after = match &pdu.state_key {
            None => before,
            Some(k) => {
                let slot = (pdu.kind.to_string(), k.clone());
                // How many links the snapshot is from a whole one (only
                // state events add a link).
                let chain = match &before_map {
                    Some(_) => 0,
                    None => self.snapshot_chain(before)?,
                };
                if before_map.is_none() && chain + 1 < FULL_EVERY {
                    // The common case: one more link, nothing loaded.
                    let id = self
                        .snapshot_seq
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        + 1;
                    let snap = Snapshot {
                        parent: Some(before),
                        chain: chain + 1,
                        changes: vec![(slot.0, slot.1, event_id.clone())],
                    };
                    txn.put_snapshot(id, &snap);
                    id
                } else {
                    let mut map = match before_map {
                        Some(m) => m,
                        None => self.load_snapshot(before)?,
                    };
                    map.insert(slot, event_id.clone());
                    self.stage_snapshot(txn, None, &map)?
                }
            }
        };
        match new_state {
            Some(resolved) => self.stage_snapshot(txn, None, resolved),
            None => Ok(after),
        }
    }

    /// Which current state rows change when the state becomes `target`.
    pub(crate) fn state_diff(
        &self,
        room_id: &RoomId,
        target: &StateIds,
    ) -> Result<Vec<StateChange>> {
        let current = self.current_state_ids(room_id)?;
        let mut out = Vec::new();
        for (k, v) in target {
            if current.get(k) != Some(v) {
                out.push((k.clone(), Some(v.clone())));
            }
        }
        for k in current.keys() {
            if !target.contains_key(k) {
                out.push((k.clone(), None));
            }
        }
        Ok(out)
    }

    /// State resolution v2 (v2.1 in room v12) of several state sets.
    /// `pending`: an event being accepted, not yet stored, that the sets
    /// may name.
    pub fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        maps: &[StateIds],
        pending: Option<&Pdu>,
    ) -> Result<StateIds> {
        if maps.is_empty() {
            return Ok(StateIds::new());
        }
        if maps.iter().all(|m| *m == maps[0]) {
            return Ok(maps[0].clone());
        }
        let v2 = rules
            .state_res
            .v2_rules()
            .ok_or(Error::UnsupportedRoomVersion)?;
        let ruma_maps: Vec<HashMap<(StateEventType, String), OwnedEventId>> = maps
            .iter()
            .map(|m| {
                m.iter()
                    .map(|((t, k), id)| ((StateEventType::from(t.as_str()), k.clone()), id.clone()))
                    .collect()
            })
            .collect();
        let mut auth_chains = Vec::new();
        for m in maps {
            let mut ids: Vec<OwnedEventId> = m.values().cloned().collect();
            // The pending event is not stored: walk from its auth events.
            if let Some(p) = pending.filter(|p| ids.contains(&p.event_id)) {
                ids.extend(p.auth_events.iter().cloned());
            }
            let chain: EventIdSet<OwnedEventId> = self
                .auth_chain(&ids)?
                .into_iter()
                .map(|e| e.event_id)
                .collect();
            auth_chains.push(chain);
        }
        let fetch = |id: &EventId| -> Option<Pdu> {
            if let Some(p) = pending.filter(|p| p.event_id == id) {
                return Some(p.clone());
            }
            self.event(id.as_str()).ok().flatten()?.parse().ok()
        };
        let subgraph = |conflicted: &HashMap<(StateEventType, String), Vec<OwnedEventId>>| -> Option<EventIdSet<OwnedEventId>> {
            let set: Vec<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            Some(self.conflicted_subgraph(&set).into_iter().collect())
        };
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            v2,
            ruma_maps.iter(),
            auth_chains,
            fetch,
            subgraph,
        )
        .map_err(|e| Error::Internal(format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((t, k), id)| ((t.to_string(), k), id))
            .collect())
    }

    /// The conflicted state subgraph (room v12): events on an auth path
    /// from one conflicted event to another, the conflicted ones included.
    fn conflicted_subgraph(&self, conflicted: &[OwnedEventId]) -> HashSet<OwnedEventId> {
        let targets: HashSet<&OwnedEventId> = conflicted.iter().collect();
        // reaches[x]: x reaches a conflicted event through its auth events.
        let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
        let mut out = HashSet::new();
        for start in conflicted {
            self.mark_reaching(start, &targets, &mut reaches, 0);
            out.insert(start.clone());
        }
        // Keep the ancestors of conflicted events that themselves reach one.
        let mut todo: Vec<OwnedEventId> = conflicted.to_vec();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(p) = self
                .event(id.as_str())
                .ok()
                .flatten()
                .and_then(|e| e.parse().ok())
            else {
                continue;
            };
            for a in p.auth_events {
                if reaches.get(&a).copied().unwrap_or(false) || targets.contains(&a) {
                    out.insert(a.clone());
                }
                todo.push(a);
            }
        }
        out
    }

    fn mark_reaching(
        &self,
        id: &OwnedEventId,
        targets: &HashSet<&OwnedEventId>,
        memo: &mut HashMap<OwnedEventId, bool>,
        depth: usize,
    ) -> bool {
        if let Some(r) = memo.get(id) {
            return *r;
        }
        memo.insert(id.clone(), false);
        if depth > 10_000 {
            return false;
        }
        let Some(p) = self
            .event(id.as_str())
            .ok()
            .flatten()
            .and_then(|e| e.parse().ok())
        else {
            return false;
        };
        let mut r = false;
        for a in &p.auth_events {
            if targets.contains(a) || self.mark_reaching(a, targets, memo, depth + 1) {
                r = true;
            }
        }
        memo.insert(id.clone(), r);
        r
    }

    /// The state before a new event whose prev events are `prevs`: the
    /// current state when it extends the current forward extremities,
    /// otherwise the resolution of the states after each known prev event.
    /// `None` means "the current state".
    pub(crate) fn state_before_prevs(
        &self,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        prevs: &[OwnedEventId],
    ) -> Result<Option<StateIds>> {
        let record = self
            .room(room_id)?
            .ok_or_else(|| Error::not_found("unknown room"))?;
        let mut a: Vec<&OwnedEventId> = prevs.iter().collect();
        let mut b: Vec<&OwnedEventId> = record.extremities.iter().collect();
        a.sort();
        b.sort();
        if a == b {
            return Ok(None);
        }
        let mut maps = Vec::new();
        for p in prevs {
            if let Some(s) = self.state_after(p)? {
                maps.push(s);
            }
        }
        if maps.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.resolve_states(rules, &maps, None)?))
    }
}

fn full(state: &StateIds) -> Snapshot {
    Snapshot {
        parent: None,
        chain: 0,
        changes: state
            .iter()
            .map(|((t, k), v)| (t.clone(), k.clone(), v.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{rooms::NewEvent, test_support::world};

    /// Bob renames the room here while, on another branch, Alice demotes
    /// him. When the branches meet, state resolution applies the demotion
    /// first, and Bob's rename no longer passes the auth rules.
    #[tokio::test]
    async fn a_concurrent_demotion_undoes_the_demoted_users_change() {
        for version in ["11", "12"] {
            let w = world();
            let (alice, bob) = (w.user("alice").await, w.user("bob").await);
            let room = w.room(&alice, version, "public_chat").await;
            w.s.rooms.join(&bob, &room).await.unwrap();
            let mut pl =
                w.s.rooms
                    .state_content(&room, "m.room.power_levels", "")
                    .unwrap()
                    .unwrap();
            pl["users"][bob.as_str()] = json!(50);
            w.s.rooms
                .send(
                    &alice,
                    &room,
                    NewEvent::state("m.room.power_levels", "", pl.clone()),
                    None,
                )
                .await
                .unwrap();

            pl["users"][bob.as_str()] = json!(0);
            let (demotion, v) =
                w.s.rooms
                    .event_template(
                        &room,
                        &alice,
                        &NewEvent::state("m.room.power_levels", "", pl),
                    )
                    .unwrap();
            w.s.rooms
                .send(
                    &bob,
                    &room,
                    NewEvent::state("m.room.name", "", json!({"name": "Bob's"})),
                    None,
                )
                .await
                .unwrap();
            assert_eq!(
                w.s.rooms
                    .state_content(&room, "m.room.name", "")
                    .unwrap()
                    .unwrap()["name"],
                "Bob's"
            );

            let (object, id) = w.s.rooms.sign_template(demotion, &v).unwrap();
            w.s.rooms
                .accept_remote(&room, &object, &id, Vec::new())
                .await
                .unwrap();
            let rules = ruma::RoomVersionId::try_from(version)
                .unwrap()
                .rules()
                .unwrap();
            assert_eq!(
                w.s.rooms.user_power(&room, &bob, &rules).unwrap(),
                0,
                "v{version}: the demotion stands"
            );
            assert!(
                w.s.rooms
                    .state_content(&room, "m.room.name", "")
                    .unwrap()
                    .is_none(),
                "v{version}: Bob's rename is undone"
            );
            assert_eq!(
                w.s.rooms.room(&room).unwrap().unwrap().extremities.len(),
                2,
                "both branches are forward extremities"
            );

            // The next event joins the branches, on the resolved state.
            let next =
                w.s.rooms
                    .send(&alice, &room, crate::test_support::text("merged"), None)
                    .await
                    .unwrap();
            assert_eq!(
                w.s.rooms.room(&room).unwrap().unwrap().extremities,
                vec![next]
            );
        }
    }

    #[tokio::test]
    async fn snapshots_record_the_state_before_each_event() {
        let w = world();
        let alice = w.user("alice").await;
        let room = w.room(&alice, "12", "private_chat").await;
        let before_rename =
            w.s.rooms
                .send(&alice, &room, crate::test_support::text("hi"), None)
                .await
                .unwrap();
        let rename =
            w.s.rooms
                .send(
                    &alice,
                    &room,
                    NewEvent::state("m.room.name", "", json!({"name": "x"})),
                    None,
                )
                .await
                .unwrap();
        let after = w.s.rooms.state_after(&before_rename).unwrap().unwrap();
        assert!(!after.contains_key(&("m.room.name".to_owned(), String::new())));
        let after = w.s.rooms.state_after(&rename).unwrap().unwrap();
        assert_eq!(
            after.get(&("m.room.name".to_owned(), String::new())),
            Some(&rename)
        );
        assert_eq!(after, w.s.rooms.current_state_ids(&room).unwrap());
    }
}
