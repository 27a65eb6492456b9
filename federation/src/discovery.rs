//! Server discovery: where to connect for a server name (explicit port, IP literal, or .well-known delegation).

use serde_json::Value;

pub const DEFAULT_PORT: u16 = 8448;

/// The first step of resolving a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Connect to `host:port`; the TLS name and Host header are `host`
    /// (with the port, if the name had one).
    Direct { host: String, port: u16 },
    /// Fetch `https://host/.well-known/matrix/server`; without a usable
    /// answer, fall back to `host:8448`.
    WellKnown { host: String },
}

/// Splits `host[:port]`, keeping IPv6 literals in brackets.
pub fn split_host_port(name: &str) -> (String, Option<u16>) {
    if let Some(rest) = name.strip_prefix('[')
        && let Some(end) = rest.find(']')
    {
        let host = format!("[{}]", &rest[..end]);
        let port = rest[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok());
        return (host, port);
    }
    match name.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_owned(), Some(port)),
            Err(_) => (name.to_owned(), None),
        },
        _ => (name.to_owned(), None),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Steps 1-3 of the spec's resolution: IP literals and explicit ports are
/// used as they are; a bare hostname asks .well-known first.
pub fn plan(server_name: &str) -> Plan {
    let (host, port) = split_host_port(server_name);
    match port {
        Some(port) => Plan::Direct { host, port },
        None if is_ip_literal(&host) => Plan::Direct {
            host,
            port: DEFAULT_PORT,
        },
        None => Plan::WellKnown { host },
    }
}

/// The delegated server of a `/.well-known/matrix/server` body, resolved
/// to `(host, port)` (SRV records are not consulted).
pub fn from_well_known(body: &Value) -> Option<(String, u16)> {
    let delegated = body.get("m.server")?.as_str()?;
    if delegated.is_empty() || delegated.contains('/') {
        return None;
    }
    let (host, port) = split_host_port(delegated);
    Some((host, port.unwrap_or(DEFAULT_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_resolve_per_the_spec_order() {
        assert_eq!(
            plan("localhost:8481"),
            Plan::Direct {
                host: "localhost".into(),
                port: 8481
            }
        );
        assert_eq!(
            plan("1.2.3.4"),
            Plan::Direct {
                host: "1.2.3.4".into(),
                port: 8448
            }
        );
        assert_eq!(
            plan("[::1]:99"),
            Plan::Direct {
                host: "[::1]".into(),
                port: 99
            }
        );
        assert_eq!(
            plan("[::1]"),
            Plan::Direct {
                host: "[::1]".into(),
                port: 8448
            }
        );
        assert_eq!(
            plan("example.org"),
            Plan::WellKnown {
                host: "example.org".into()
            }
        );
        assert_eq!(
            from_well_known(&json!({"m.server": "matrix.example.org:443"})),
            Some(("matrix.example.org".into(), 443))
        );
        assert_eq!(
            from_well_known(&json!({"m.server": "matrix.example.org"})),
            Some(("matrix.example.org".into(), 8448))
        );
        assert_eq!(from_well_known(&json!({"m.server": 5})), None);
        assert_eq!(from_well_known(&json!({"m.server": "https://x/"})), None);
    }
}
