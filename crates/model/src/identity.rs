//! Instance identity, and the one name every rendered identifier is
//! derived from.
//!
//! Consul makes a service id unique per Consul *node*, not per service: a
//! service registered without an `ID` gets `ID == Name` on every node, so
//! three `web` instances on three nodes all have the id `web`. Real tools
//! also pick ids with characters no config format accepts in a name:
//! Patroni registers `SCOPE/MEMBER` (`pgdrill/pg1`), Nomad
//! `_nomad-task-<alloc>-<task>-<service>-<port>`, others use `@` or `:`. So
//! an instance is identified by the pair (Consul node, service id), and the
//! names converge writes into configs (HAProxy server names, cookie values)
//! are derived from that pair by [`name`], never taken from the id as is.
//!
//! The mapping escapes each part and joins the two with `:`:
//!
//! - bytes of `[A-Za-z0-9.-]` stand for themselves;
//! - `_` becomes `__`;
//! - every other byte becomes `_` and two lowercase hex digits (`/` → `_2f`,
//!   `:` → `_3a`, `@` → `_40`, a UTF-8 `é` → `_c3_a9`).
//!
//! So `web` on node `app1` is `web:app1`, Patroni's `pgdrill/pg1` on node
//! `db1` is `pgdrill_2fpg1:db1`, Nomad's `_nomad-task-1a2b-web-http` is
//! `__nomad-task-1a2b-web-http:n1`.
//!
//! Why it cannot collide: the escape is injective (a `_` is always followed
//! by either `_` or two hex digits, so an escaped string decodes back
//! unambiguously: the tests' `decode` inverts it), and neither escaped part
//! contains a `:`, so the one `:` splits the name back into exactly the
//! pair it came from. Distinct identities therefore get distinct names, and
//! the output alphabet, `[A-Za-z0-9._:-]`, is exactly what HAProxy accepts
//! in a server name and is safe as a cookie value, so no catalog id is ever
//! refused for its characters and none can break out of its field.

use crate::catalog::Instance;

/// The name every rendered identifier of `inst` is derived from: its
/// escaped id and escaped node, joined by `:`.
pub fn name(inst: &Instance) -> String {
    let mut out = String::with_capacity(inst.id.len() + inst.node.len() + 1);
    escape_into(&inst.id, &mut out);
    out.push(':');
    escape_into(&inst.node, &mut out);
    out
}

/// Whether `c` may appear in a derived name: the output alphabet, for
/// checking a name where it lands.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')
}

fn escape_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' => out.push(char::from(b)),
            b'_' => out.push_str("__"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push('_');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Health;

    fn inst(id: &str, node: &str) -> Instance {
        Instance {
            id: id.into(),
            node: node.into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: Default::default(),
            meta: Default::default(),
            health: Health::Passing,
        }
    }

    /// The inverse of the escape, to show it loses nothing.
    fn decode(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            if b != b'_' {
                out.push(b);
                continue;
            }
            match bytes.next()? {
                b'_' => out.push(b'_'),
                hi => {
                    let lo = bytes.next()?;
                    let hex = [hi, lo];
                    out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                }
            }
        }
        Some(out)
    }

    #[test]
    fn real_tools_ids_map_to_readable_names() {
        assert_eq!(name(&inst("web", "app1")), "web:app1");
        assert_eq!(name(&inst("pgdrill/pg1", "db1")), "pgdrill_2fpg1:db1");
        assert_eq!(
            name(&inst("_nomad-task-1a2b-web-http", "n1")),
            "__nomad-task-1a2b-web-http:n1"
        );
        assert_eq!(name(&inst("web@eu:8080", "n")), "web_40eu_3a8080:n");
    }

    #[test]
    fn the_default_id_on_several_nodes_gives_distinct_names() {
        let names: Vec<String> = ["app1", "app2", "app3"]
            .iter()
            .map(|n| name(&inst("web", n)))
            .collect();
        assert_eq!(names, ["web:app1", "web:app2", "web:app3"]);
    }

    #[test]
    fn the_name_splits_back_into_exactly_the_pair_it_came_from() {
        // Pairs built to collide under a naive join or a lossy escape.
        let tricky = [
            ("a:b", "c"),
            ("a", "b:c"),
            ("a_3ab", "c"),
            ("a_", "_b"),
            ("a__", "b"),
            ("a/b", "c"),
            ("a_2fb", "c"),
            ("é", "n"),
            ("", "n"),
            ("x", ""),
        ];
        let mut seen = BTreeMap::new();
        for (id, node) in tricky {
            let n = name(&inst(id, node));
            assert!(n.chars().all(is_name_char), "{n}");
            let (a, b) = n.split_once(':').expect("one separator");
            assert!(!b.contains(':'), "{n}");
            assert_eq!(decode(a).as_deref(), Some(id.as_bytes()), "{n}");
            assert_eq!(decode(b).as_deref(), Some(node.as_bytes()), "{n}");
            assert_eq!(seen.insert(n.clone(), (id, node)), None, "{n} collides");
        }
    }

    #[test]
    fn every_byte_round_trips_through_the_escape() {
        let all: Vec<u8> = (0u8..=127).collect();
        let id = String::from_utf8(all.clone()).expect("ascii");
        let n = name(&inst(&id, "n"));
        assert!(n.chars().all(is_name_char), "{n}");
        let (a, _) = n.rsplit_once(':').expect("separator");
        assert_eq!(decode(a), Some(all));
    }
}
