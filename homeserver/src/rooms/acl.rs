//! Server ACLs (m.room.server_acl): which servers a room refuses to hear from.

use ruma::RoomId;
use serde_json::Value;

use super::Rooms;
use crate::error::Result;

impl Rooms {
    /// Whether the room's server ACL lets `server` take part. Rooms
    /// without an ACL allow everyone.
    pub fn server_allowed(&self, room_id: &RoomId, server: &str) -> Result<bool> {
        Ok(
            match self.state_content(room_id, "m.room.server_acl", "")? {
                Some(acl) => acl_allows(&acl, server),
                None => true,
            },
        )
    }
}

/// The spec's ACL check: the port is ignored; IP literals need
/// `allow_ip_literals`; a `deny` match refuses; otherwise an `allow` match
/// is needed.
pub fn acl_allows(acl: &Value, server: &str) -> bool {
    let host = host_of(server);
    let is_ip = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
    if is_ip && acl.get("allow_ip_literals").and_then(Value::as_bool) == Some(false) {
        return false;
    }
    let globs = |field: &str| -> Vec<String> {
        acl.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_owned))
            .collect()
    };
    if globs("deny").iter().any(|g| glob_match(g, host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_match(g, host))
}

fn host_of(server: &str) -> &str {
    if server.starts_with('[') {
        return server.find(']').map_or(server, |i| &server[..=i]);
    }
    server.rsplit_once(':').map_or(server, |(h, _)| h)
}

/// `*` matches any run of characters, `?` any one character.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut gi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ti;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while gi < g.len() && g[gi] == '*' {
        gi += 1;
    }
    gi == g.len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn globs_and_the_acl_rules() {
        assert!(glob_match("*", "anything.example"));
        assert!(glob_match("*.example.org", "a.b.example.org"));
        assert!(!glob_match("*.example.org", "example.org"));
        assert!(glob_match("ex?mple.org", "example.org"));
        assert!(!glob_match("ex?mple.org", "exaample.org"));

        let acl = json!({"allow": ["*"], "deny": ["evil.example", "*.spam.example"], "allow_ip_literals": false});
        assert!(acl_allows(&acl, "good.example:8448"));
        assert!(
            !acl_allows(&acl, "evil.example:8448"),
            "the port is ignored"
        );
        assert!(!acl_allows(&acl, "x.spam.example"));
        assert!(!acl_allows(&acl, "1.2.3.4:8448"));
        assert!(!acl_allows(&acl, "[::1]:8448"));
        // Nothing allowed when `allow` is missing or empty.
        assert!(!acl_allows(&json!({"deny": []}), "good.example"));
        assert!(acl_allows(
            &json!({"allow": ["localhost"]}),
            "localhost:8481"
        ));
    }
}
