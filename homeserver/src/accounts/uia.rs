//! User-interactive authentication: the 401 flow dance for register, password change and device deletion.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The `auth` object a client sends to complete a stage.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthData {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub session: Option<String>,
    pub password: Option<String>,
    pub identifier: Option<Identifier>,
    /// Deprecated top-level user field some clients still send.
    pub user: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: Option<String>,
}

impl AuthData {
    pub fn user(&self) -> Option<&str> {
        self.identifier
            .as_ref()
            .filter(|i| i.kind == "m.id.user")
            .and_then(|i| i.user.as_deref())
            .or(self.user.as_deref())
    }
}

/// Open UIA sessions. Kept in memory: an interrupted flow simply restarts.
#[derive(Clone, Default)]
pub struct UiaSessions {
    inner: Arc<Mutex<HashMap<String, Instant>>>,
}

const SESSION_TTL: Duration = Duration::from_secs(15 * 60);

impl UiaSessions {
    /// The 401 answer that starts (or repeats) a flow with a single stage.
    pub fn challenge(&self, stage: &str, error: Option<&str>) -> Error {
        let session = super::random_string(24);
        if let Ok(mut map) = self.inner.lock() {
            map.retain(|_, t| t.elapsed() < SESSION_TTL);
            map.insert(session.clone(), Instant::now());
        }
        let mut body = json!({
            "flows": [{"stages": [stage]}],
            "params": {},
            "session": session,
        });
        if let (Some(e), Some(obj)) = (error, body.as_object_mut()) {
            obj.insert("errcode".into(), Value::from("M_FORBIDDEN"));
            obj.insert("error".into(), Value::from(e));
        }
        Error::Uia(body)
    }

    /// Ends a session once its flow completed, so it cannot be replayed.
    pub fn finish(&self, session: Option<&str>) {
        if let (Some(s), Ok(mut map)) = (session, self.inner.lock()) {
            map.remove(s);
        }
    }

    /// Whether `session` was issued by us and is still live. A client may
    /// skip the first round trip and send the auth at once; that is allowed.
    pub fn check_session(&self, session: Option<&str>) -> Result<()> {
        match session {
            None => Ok(()),
            Some(s) => {
                let live = self
                    .inner
                    .lock()
                    .map(|m| m.get(s).is_some_and(|t| t.elapsed() < SESSION_TTL))
                    .unwrap_or(false);
                if live {
                    Ok(())
                } else {
                    Err(Error::forbidden("unknown or expired UIA session"))
                }
            }
        }
    }
}
