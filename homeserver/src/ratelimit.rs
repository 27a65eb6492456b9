//! Token-bucket rate limits on message sends, logins and registrations (M_LIMIT_EXCEEDED with retry_after_ms).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::{
    config::{Rate, RateLimits},
    error::{Error, Result},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Message,
    Login,
    Registration,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One bucket per (action, key); keys are user IDs or client addresses.
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(Action, String), Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self, action: Action) -> Rate {
        match action {
            Action::Message => self.limits.message,
            Action::Login => self.limits.login,
            Action::Registration => self.limits.registration,
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, action: Action, key: &str) -> Result<()> {
        self.check_at(action, key, Instant::now())
    }

    fn check_at(&self, action: Action, key: &str, now: Instant) -> Result<()> {
        if !self.limits.enabled {
            return Ok(());
        }
        let rate = self.rate(action);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Full buckets carry no information; dropping them bounds the map by
        // the number of recently active keys.
        if buckets.len() > 10_000 {
            buckets.retain(|(a, _), b| {
                let r = self.rate(*a);
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * r.per_second
                    < r.burst
            });
        }
        let bucket = buckets.entry((action, key.to_owned())).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate.per_second);
        Err(Error::LimitExceeded {
            retry_after_ms: (wait.as_millis() as u64).max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(enabled: bool) -> RateLimiter {
        let r = Rate {
            per_second: 1.0,
            burst: 2.0,
        };
        RateLimiter::new(RateLimits {
            enabled,
            message: r,
            login: r,
            registration: r,
        })
    }

    #[test]
    fn burst_then_refusal_then_recovery() {
        let l = limiter(true);
        let t0 = Instant::now();
        assert!(l.check_at(Action::Message, "@a:x", t0).is_ok());
        assert!(l.check_at(Action::Message, "@a:x", t0).is_ok());
        match l.check_at(Action::Message, "@a:x", t0) {
            Err(Error::LimitExceeded { retry_after_ms }) => {
                assert!((900..=1000).contains(&retry_after_ms))
            }
            other => panic!("expected a limit, got {other:?}"),
        }
        // Other keys and other actions have their own buckets.
        assert!(l.check_at(Action::Message, "@b:x", t0).is_ok());
        assert!(l.check_at(Action::Login, "@a:x", t0).is_ok());
        assert!(
            l.check_at(Action::Message, "@a:x", t0 + Duration::from_millis(1001))
                .is_ok()
        );
    }

    #[test]
    fn disabled_never_limits() {
        let l = limiter(false);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.check_at(Action::Registration, "127.0.0.1", t0).is_ok());
        }
    }
}
