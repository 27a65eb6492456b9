//! Push rule storage (the `m.push_rules` account data event) and the edits /pushrules makes to it.

use ruma::{
    OwnedRoomId, OwnedUserId, UserId,
    push::{
        Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
        NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
    },
};
use serde_json::{Value, json};

use super::Push;
use crate::{
    account_data::AccountData,
    error::{Error, Result},
};

pub const EVENT_TYPE: &str = "m.push_rules";

/// The user's rules: what they stored, with any server-default rule this
/// version knows and the stored copy lacks added back.
pub fn load(account_data: &AccountData, user: &UserId) -> Result<Ruleset> {
    from_stored(account_data.get(user, None, EVENT_TYPE)?, user)
}

fn from_stored(content: Option<Value>, user: &UserId) -> Result<Ruleset> {
    let Some(content) = content else {
        return Ok(Ruleset::server_default(user));
    };
    match serde_json::from_value::<Ruleset>(content.get("global").cloned().unwrap_or(Value::Null)) {
        Ok(mut rules) => {
            rules.update_with_server_default(Ruleset::server_default(user));
            Ok(rules)
        }
        Err(e) => {
            tracing::warn!("stored push rules of {user} unreadable ({e}); using the defaults");
            Ok(Ruleset::server_default(user))
        }
    }
}

/// The ruleset as the spec shows it, with every kind present even when empty.
pub fn to_json(rules: &Ruleset) -> Result<Value> {
    let mut v = serde_json::to_value(rules).map_err(Error::internal)?;
    if let Some(o) = v.as_object_mut() {
        for kind in ["override", "content", "room", "sender", "underride"] {
            o.entry(kind).or_insert_with(|| json!([]));
        }
    }
    Ok(v)
}

pub fn parse_kind(kind: &str) -> Result<RuleKind> {
    Ok(match kind {
        "override" => RuleKind::Override,
        "underride" => RuleKind::Underride,
        "sender" => RuleKind::Sender,
        "room" => RuleKind::Room,
        "content" => RuleKind::Content,
        _ => {
            return Err(Error::invalid_param(format!(
                "unknown push rule kind {kind}"
            )));
        }
    })
}

/// One rule as JSON, looked up in the serialized ruleset (the shape the
/// spec's GET returns).
pub fn find(rules: &Ruleset, kind: &str, rule_id: &str) -> Result<Value> {
    parse_kind(kind)?;
    let all = to_json(rules)?;
    all.get(kind)
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|r| r["rule_id"] == rule_id))
        .cloned()
        .ok_or_else(|| Error::not_found("no such push rule"))
}

/// The body of PUT /pushrules/global/{kind}/{ruleId}.
#[derive(Debug, serde::Deserialize)]
pub struct NewRuleBody {
    pub actions: Vec<Action>,
    #[serde(default)]
    pub conditions: Option<Vec<PushCondition>>,
    #[serde(default)]
    pub pattern: Option<String>,
}

pub fn new_rule(kind: &str, rule_id: &str, body: NewRuleBody) -> Result<NewPushRule> {
    Ok(match parse_kind(kind)? {
        RuleKind::Override => NewPushRule::Override(NewConditionalPushRule::new(
            rule_id.into(),
            body.conditions.unwrap_or_default(),
            body.actions,
        )),
        RuleKind::Underride => NewPushRule::Underride(NewConditionalPushRule::new(
            rule_id.into(),
            body.conditions.unwrap_or_default(),
            body.actions,
        )),
        RuleKind::Content => {
            let pattern = body
                .pattern
                .ok_or_else(|| Error::MissingParam("content rules need a pattern".into()))?;
            NewPushRule::Content(NewPatternedPushRule::new(
                rule_id.into(),
                pattern,
                body.actions,
            ))
        }
        RuleKind::Room => {
            let room = OwnedRoomId::try_from(rule_id)
                .map_err(|_| Error::invalid_param("room rules are named by room ID"))?;
            NewPushRule::Room(NewSimplePushRule::new(room, body.actions))
        }
        RuleKind::Sender => {
            let user = OwnedUserId::try_from(rule_id)
                .map_err(|_| Error::invalid_param("sender rules are named by user ID"))?;
            NewPushRule::Sender(NewSimplePushRule::new(user, body.actions))
        }
        _ => return Err(Error::invalid_param("unknown push rule kind")),
    })
}

impl Push {
    /// Applies `edit` to the user's rules and stores the result.
    pub async fn edit(
        &self,
        user: &UserId,
        edit: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        // Read, edit and store in one write: two edits at once both stay.
        let written = self
            .account_data
            .stream()
            .write(|w| {
                let stored = self.account_data.get_in(&**w, user, None, EVENT_TYPE)?;
                let mut rules = from_stored(stored, user)?;
                edit(&mut rules)?;
                crate::account_data::stage(
                    w,
                    user,
                    None,
                    EVENT_TYPE,
                    json!({"global": to_json(&rules)?}),
                );
                Ok(rules)
            })
            .await?;
        self.cache_rules(user, written);
        Ok(())
    }
}

pub fn insert_error(e: InsertPushRuleError) -> Error {
    match e {
        InsertPushRuleError::UnknownRuleId => Error::not_found(e.to_string()),
        other => Error::invalid_param(other.to_string()),
    }
}

pub fn remove_error(e: RemovePushRuleError) -> Error {
    match e {
        RemovePushRuleError::NotFound => Error::not_found("no such push rule"),
        other => Error::invalid_param(other.to_string()),
    }
}
