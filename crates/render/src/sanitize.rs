//! Catalog data can never inject config (invariant 6).
//!
//! One rule serves all three output formats, because the formats' dangerous
//! characters overlap: HAProxy splits on whitespace and starts comments at
//! `#`; PgBouncer's ini values end at a newline and its connect strings split
//! on spaces and `=`; keepalived splits on whitespace and opens blocks with
//! `{`. So every catalog string that reaches a template must be a single
//! token of a conservative charset, checked per field:
//!
//! | field | accepted |
//! |---|---|
//! | id, node | any text, 1–512 bytes: they never reach a template as they are, only through [`converge_model::identity::name`], whose alphabet is safe everywhere |
//! | address | an IP address, or a DNS name (labels `[A-Za-z0-9-]`, ≤ 253) |
//! | port | 1–65535 |
//! | tag | `[A-Za-z0-9_.:=/@+-]`, 1–128 |
//! | meta key | `[A-Za-z0-9_-]`, 1–128 |
//! | meta value | printable ASCII except space, `"'#\;{}`, ≤ 512 |
//!
//! An instance with any field outside its rule is left out of the render
//! entirely (a half-trusted instance is not trusted), and a [`Rejection`]
//! naming service, instance, node, field and an escaped copy of the value
//! is reported; the rest of the render goes on. Nothing is escaped in
//! place: rejecting is simpler to reason about than per-format quoting, and
//! real registrations never need these characters in these fields. Ids are
//! the exception because real tools do use such characters there (Patroni's
//! `scope/member`), and a name can be derived from them where a value
//! cannot.

use converge_model::{Instance, Rejection};

const MAX_SHOWN: usize = 64;

/// Longest id or node name taken; far beyond any real registration, short
/// enough that a derived name stays a reasonable config token.
const MAX_NAME: usize = 512;

/// Checks every field of `inst`; the first offending field is reported.
pub fn check(service: &str, inst: &Instance) -> Result<(), Box<Rejection>> {
    let reject = |field: &str, value: &str, reason: &str| {
        Box::new(rejection(service, inst, field, value, reason))
    };
    if !token(&inst.id, MAX_NAME, |_| true) {
        return Err(reject(
            "id",
            &inst.id,
            "instance ids must be 1 to 512 bytes",
        ));
    }
    if !token(&inst.node, MAX_NAME, |_| true) {
        return Err(reject(
            "node",
            &inst.node,
            "node names must be 1 to 512 bytes",
        ));
    }
    if !address(&inst.address) {
        return Err(reject(
            "address",
            &inst.address,
            "not an IP address or DNS name",
        ));
    }
    if inst.port == 0 {
        return Err(reject("port", "0", "port 0 cannot be connected to"));
    }
    for tag in &inst.tags {
        if !token(tag, 128, |c| {
            c.is_ascii_alphanumeric() || "_.:=/@+-".contains(c)
        }) {
            return Err(reject(
                "tags",
                tag,
                "tags must match [A-Za-z0-9_.:=/@+-]{1,128}",
            ));
        }
    }
    for (k, v) in &inst.meta {
        if !token(k, 128, |c| c.is_ascii_alphanumeric() || "_-".contains(c)) {
            return Err(reject(
                "meta",
                k,
                "meta keys must match [A-Za-z0-9_-]{1,128}",
            ));
        }
        if !v.is_empty() && !token(v, 512, |c| c.is_ascii_graphic() && !"\"'#\\;{}".contains(c)) {
            return Err(reject(
                &format!("meta.{k}"),
                v,
                "meta values must be printable ASCII without spaces, quotes, #, \\, ; or braces (≤ 512)",
            ));
        }
    }
    Ok(())
}

/// A [`Rejection`] of `inst` for `field`, with the values escaped for
/// display; also how the view reports an instance it leaves out for
/// another reason.
pub fn rejection(
    service: &str,
    inst: &Instance,
    field: &str,
    value: &str,
    reason: &str,
) -> Rejection {
    Rejection {
        service: service.to_string(),
        instance: shown(&inst.id),
        node: shown(&inst.node),
        field: field.to_string(),
        value: shown(value),
        reason: reason.to_string(),
    }
}

fn token(s: &str, max: usize, ok: impl Fn(char) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(ok)
}

fn address(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// An escaped, truncated copy for messages: control characters visible.
fn shown(s: &str) -> String {
    let escaped: String = s.escape_debug().collect();
    if escaped.chars().count() > MAX_SHOWN {
        let cut: String = escaped.chars().take(MAX_SHOWN).collect();
        format!("{cut}… ({} bytes)", s.len())
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use converge_model::Health;

    fn inst() -> Instance {
        Instance {
            id: "web-1".into(),
            node: "app1".into(),
            address: "10.0.1.11".into(),
            port: 8080,
            tags: ["prod".to_string()].into(),
            meta: [("weight".to_string(), "10".to_string())].into(),
            health: Health::Passing,
        }
    }

    #[test]
    fn a_normal_instance_passes() {
        assert!(check("web", &inst()).is_ok());
        let mut i = inst();
        i.address = "app-1.internal.example".into();
        assert!(check("web", &i).is_ok());
        i.address = "fd00::1".into();
        assert!(check("web", &i).is_ok());
    }

    #[test]
    fn each_hostile_field_is_rejected_and_named() {
        type Mutation = Box<dyn Fn(&mut Instance)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "address",
                Box::new(|i| i.address = "10.0.0.1\n    server evil 6.6.6.6:80".into()),
            ),
            (
                "address",
                Box::new(|i| i.address = "10.0.0.1 backup".into()),
            ),
            ("address", Box::new(|i| i.address = "a".repeat(300))),
            ("id", Box::new(|i| i.id = String::new())),
            ("id", Box::new(|i| i.id = "w\n".repeat(300))),
            ("node", Box::new(|i| i.node = String::new())),
            (
                "tags",
                Box::new(|i| {
                    i.tags.insert("primary\nmaster".into());
                }),
            ),
            (
                "meta.weight",
                Box::new(|i| {
                    i.meta.insert("weight".into(), "1 backup".into());
                }),
            ),
            (
                "meta",
                Box::new(|i| {
                    i.meta.insert("k ey".into(), "v".into());
                }),
            ),
            ("port", Box::new(|i| i.port = 0)),
        ];
        for (field, mutate) in cases {
            let mut i = inst();
            mutate(&mut i);
            let r = check("web", &i).expect_err(field);
            assert_eq!(r.field, field);
            assert_eq!(r.service, "web");
            assert!(
                !r.value.contains('\n'),
                "value must be escaped: {}",
                r.value
            );
        }
    }

    #[test]
    fn ids_and_nodes_real_tools_write_are_accepted() {
        // Patroni, Nomad, Consul's default (id == service name), and the
        // characters the old charset refused.
        for id in [
            "pgdrill/pg1",
            "_nomad-task-0b9e-web-http-8080",
            "web",
            "web@eu:8080",
            "web #1 \"quoted\"\n",
        ] {
            let mut i = inst();
            i.id = id.into();
            i.node = "node with spaces/and;more".into();
            assert!(check("web", &i).is_ok(), "{id}");
        }
    }

    #[test]
    fn long_values_are_truncated_in_messages() {
        let mut i = inst();
        i.address = "x".repeat(1000);
        let r = check("web", &i).expect_err("too long");
        assert!(r.value.len() < 100, "{}", r.value);
        assert!(r.value.ends_with("(1000 bytes)"));
    }
}
