//! Filter-chain selection, with Envoy's precedence: among the chains of a
//! listener, narrow by destination port, then server name (exact, then the
//! longest `*.` wildcard), then transport protocol, then application
//! protocols; at each step a chain that names a matching value beats one
//! that leaves the field unset, and a chain that names other values is out.
//! When nothing is left, the listener's default chain applies.

use crate::state::listener::{FilterChain, Listener};

/// What the proxy learnt about a connection before choosing a chain.
#[derive(Clone, Debug, Default)]
pub struct Sniffed<'a> {
    /// A TLS ClientHello was seen (`transport_protocol: tls`).
    pub tls: bool,
    /// Its SNI.
    pub sni: Option<&'a str>,
    /// Its ALPN list, or for plain-text HTTP `http/1.1` / `h2c`.
    pub alpn: Vec<&'a str>,
}

impl Sniffed<'static> {
    /// Plain-text HTTP (`h2`: prior-knowledge HTTP/2).
    pub fn http(h2: bool) -> Self {
        Self {
            tls: false,
            sni: None,
            alpn: vec![if h2 { "h2c" } else { "http/1.1" }],
        }
    }

    /// Opaque TCP.
    pub fn tcp() -> Self {
        Self::default()
    }
}

/// The chain for a connection to `dst_port` (`None`: unknown).
pub fn select<'l>(
    listener: &'l Listener,
    dst_port: Option<u16>,
    sniffed: &Sniffed<'_>,
) -> Option<&'l crate::state::listener::FilterChain> {
    let mut cands: Vec<&FilterChain> = listener.filter_chains.iter().collect();
    narrow(&mut cands, |c| match c.matcher.destination_port {
        None => Some(0),
        Some(p) if Some(p) == dst_port => Some(1),
        Some(_) => None,
    });
    narrow(&mut cands, |c| {
        server_name_rank(&c.matcher.server_names, sniffed.sni)
    });
    let transport = if sniffed.tls { "tls" } else { "raw_buffer" };
    narrow(&mut cands, |c| match &c.matcher.transport_protocol {
        None => Some(0),
        Some(t) if t == transport => Some(1),
        Some(_) => None,
    });
    narrow(&mut cands, |c| {
        let protos = &c.matcher.application_protocols;
        if protos.is_empty() {
            Some(0)
        } else if protos.iter().any(|p| sniffed.alpn.contains(&p.as_str())) {
            Some(1)
        } else {
            None
        }
    });
    cands.first().copied().or(listener.default_chain.as_ref())
}

/// Keeps the candidates of the best rank (`None`: excluded).
fn narrow<F: Fn(&FilterChain) -> Option<usize>>(cands: &mut Vec<&FilterChain>, rank: F) {
    let best = cands.iter().filter_map(|c| rank(c)).max();
    match best {
        Some(b) => cands.retain(|c| rank(c) == Some(b)),
        None => cands.clear(),
    }
}

/// 0 for no names; exact match ranks above every wildcard, a longer
/// wildcard above a shorter one.
fn server_name_rank(names: &[String], sni: Option<&str>) -> Option<usize> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            let n = n.to_ascii_lowercase();
            if n == sni {
                Some(usize::MAX)
            } else if let Some(suffix) = n.strip_prefix('*')
                && sni.len() > suffix.len()
                && sni.ends_with(suffix)
            {
                Some(1 + suffix.len())
            } else {
                None
            }
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::listener::{ChainAction, ChainMatch, Direction, Inspectors};

    fn chain(name: &str, m: ChainMatch) -> FilterChain {
        FilterChain {
            name: name.into(),
            matcher: m,
            tls: None,
            action: ChainAction::Tcp {
                cluster: name.into(),
                stat_prefix: name.into(),
            },
        }
    }

    fn listener(chains: Vec<FilterChain>, default: Option<FilterChain>) -> Listener {
        Listener {
            name: "l".into(),
            address: "0.0.0.0:443".parse().expect("addr"),
            use_original_dst: false,
            bind_to_port: true,
            direction: Direction::Outbound,
            inspectors: Inspectors::default(),
            filter_chains: chains,
            default_chain: default,
        }
    }

    fn names(names: &[&str]) -> ChainMatch {
        ChainMatch {
            server_names: names.iter().map(|s| s.to_string()).collect(),
            ..ChainMatch::default()
        }
    }

    fn pick<'a>(l: &'a Listener, port: Option<u16>, s: &Sniffed<'_>) -> Option<&'a str> {
        select(l, port, s).map(|c| c.name.as_str())
    }

    #[test]
    fn sni_exact_beats_wildcard_and_longer_wildcard_wins() {
        let l = listener(
            vec![
                chain("any", ChainMatch::default()),
                chain("wild", names(&["*.example.com"])),
                chain("deeper", names(&["*.api.example.com"])),
                chain("exact", names(&["www.example.com"])),
            ],
            None,
        );
        let tls = |sni| Sniffed {
            tls: true,
            sni: Some(sni),
            alpn: vec![],
        };
        assert_eq!(pick(&l, Some(443), &tls("www.example.com")), Some("exact"));
        assert_eq!(
            pick(&l, Some(443), &tls("v1.api.example.com")),
            Some("deeper")
        );
        assert_eq!(pick(&l, Some(443), &tls("shop.example.com")), Some("wild"));
        assert_eq!(pick(&l, Some(443), &tls("other.org")), Some("any"));
        assert_eq!(pick(&l, Some(443), &Sniffed::tcp()), Some("any"));
    }

    #[test]
    fn destination_port_then_transport_then_alpn() {
        let m = |port, transport: Option<&str>, alpn: &[&str]| ChainMatch {
            destination_port: port,
            transport_protocol: transport.map(str::to_string),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..ChainMatch::default()
        };
        let l = listener(
            vec![
                chain("9080-http", m(Some(9080), None, &["http/1.1", "h2c"])),
                chain("9080-tcp", m(Some(9080), None, &[])),
                chain("tls", m(None, Some("tls"), &[])),
            ],
            Some(chain("catchall", ChainMatch::default())),
        );
        assert_eq!(
            pick(&l, Some(9080), &Sniffed::http(false)),
            Some("9080-http")
        );
        assert_eq!(
            pick(&l, Some(9080), &Sniffed::http(true)),
            Some("9080-http")
        );
        assert_eq!(pick(&l, Some(9080), &Sniffed::tcp()), Some("9080-tcp"));
        let tls = Sniffed {
            tls: true,
            sni: None,
            alpn: vec!["h2"],
        };
        assert_eq!(pick(&l, Some(443), &tls), Some("tls"));
        assert_eq!(pick(&l, Some(3306), &Sniffed::tcp()), Some("catchall"));
        assert_eq!(pick(&l, None, &Sniffed::tcp()), Some("catchall"));
    }

    #[test]
    fn named_servers_never_match_without_sni() {
        let l = listener(vec![chain("only", names(&["a.example"]))], None);
        assert_eq!(pick(&l, Some(443), &Sniffed::tcp()), None);
    }
}
