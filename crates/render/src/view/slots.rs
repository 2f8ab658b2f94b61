//! Runtime-API slots: which serving instance sits in which fixed server
//! line of a backend, so a membership change is an address or state
//! change HAProxy can take over its stats socket; the instances beyond
//! them get lines of their own, which HAProxy takes as dynamic servers.

use converge_model::manifest::{Backend, Balance};
use converge_model::{identity, Health, Instance};

use super::{endpoint, instance_server, ServerView, EMPTY_SLOT};

/// The server lines of a runtime-API backend: `slots` lines named
/// `<backend>-s1`.., each holding one serving instance or empty (disabled),
/// then, named by their [`identity::name`], the instances that found no
/// free slot (every instance, with no slots). The two kinds of name cannot
/// collide: an identity name always holds a `:`, a slot name never does.
/// Those join and leave at runtime as dynamic servers where HAProxy allows
/// it; a backend where it does not (a sticky cookie, `balance source` or
/// `first`) is warned about, as each of their changes costs a reload.
///
/// Each instance prefers the slot its identity name hashes to and takes
/// the next free one after it; instances are placed in identity order. So the layout is a pure
/// function of the instance set (invariant 3), and an instance keeps its
/// slot when others come and go unless it had been pushed along by a
/// collision. Filling slots in sorted order would instead shift every later
/// instance one slot when an earlier one leaves, turning one removal into
/// an address change on many slots, each inheriting the previous
/// instance's check state.
pub(super) fn slot_servers(
    backend: &str,
    b: &Backend,
    slots: u32,
    serving: &[&Instance],
    warnings: &mut Vec<String>,
) -> Vec<ServerView> {
    let n = slots as usize;
    let mut table: Vec<Option<&Instance>> = vec![None; n];
    let mut overflow = Vec::new();
    for inst in serving {
        if n == 0 {
            overflow.push(*inst);
            continue;
        }
        let start = (fnv1a(identity::name(inst).as_bytes()) % n as u64) as usize;
        match (0..n)
            .map(|k| (start + k) % n)
            .find(|&s| table[s].is_none())
        {
            Some(s) => table[s] = Some(inst),
            None => overflow.push(*inst),
        }
    }
    let mut out: Vec<ServerView> = table
        .iter()
        .enumerate()
        .map(|(k, slot)| {
            let name = format!("{backend}-s{}", k + 1);
            match slot {
                Some(i) => ServerView {
                    name,
                    ..instance_server(i)
                },
                None => ServerView {
                    name,
                    instance: None,
                    address: EMPTY_SLOT.0.to_string(),
                    port: EMPTY_SLOT.1,
                    endpoint: endpoint(EMPTY_SLOT.0, EMPTY_SLOT.1),
                    health: Health::Critical,
                    disabled: true,
                },
            }
        })
        .collect();
    let extra: Vec<ServerView> = overflow.iter().map(|i| instance_server(i)).collect();
    let why = if b.sticky.is_some() {
        Some("a sticky cookie")
    } else {
        match b.balance {
            Balance::Source => Some("`balance source`"),
            Balance::First => Some("`balance first`"),
            Balance::Roundrobin | Balance::Leastconn => None,
        }
    };
    if let (false, Some(why)) = (extra.is_empty(), why) {
        let names: Vec<&str> = extra.iter().map(|s| s.name.as_str()).collect();
        warnings.push(format!(
            "backend {backend}: {} serving instances but {n} runtime-API slots; {} served \
             as extra servers, whose changes need a reload (HAProxy adds no server at \
             runtime to a backend with {why}): {}",
            serving.len(),
            overflow.len(),
            names.join(", ")
        ));
    }
    out.extend(extra);
    out
}

/// 64-bit FNV-1a: a fixed hash, so slot placement does not change with the
/// Rust version or the platform.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::test_instance as inst;
    use super::*;

    fn ids(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|i| inst(&format!("web-{i}"), 8000 + i as u16, Health::Passing))
            .collect()
    }

    /// Slot name → instance id, for every filled slot.
    fn layout(servers: &[ServerView]) -> BTreeMap<String, String> {
        servers
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.instance.clone()?)))
            .collect()
    }

    fn slots(n: u32, instances: &[Instance]) -> (Vec<ServerView>, Vec<String>) {
        slots_of(&backend(""), n, instances)
    }

    fn backend(extra: &str) -> Backend {
        serde_norway::from_str(&format!("service: web\n{extra}")).expect("backend")
    }

    fn slots_of(b: &Backend, n: u32, instances: &[Instance]) -> (Vec<ServerView>, Vec<String>) {
        let refs: Vec<&Instance> = instances.iter().collect();
        let mut warnings = Vec::new();
        let servers = slot_servers("web", b, n, &refs, &mut warnings);
        (servers, warnings)
    }

    #[test]
    fn every_slot_is_rendered_and_the_empty_ones_are_disabled_placeholders() {
        let (servers, warnings) = slots(4, &ids(2));
        assert!(warnings.is_empty(), "{warnings:?}");
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web-s1", "web-s2", "web-s3", "web-s4"]);
        assert_eq!(servers.iter().filter(|s| !s.disabled).count(), 2);
        for s in &servers {
            assert_eq!(s.disabled, s.instance.is_none());
            if s.disabled {
                assert_eq!(s.endpoint, "127.0.0.1:1");
            }
        }
        let used: Vec<String> = layout(&servers).into_values().collect();
        assert_eq!(used, ["web-0:n", "web-1:n"].map(String::from).to_vec());
    }

    #[test]
    fn the_layout_depends_only_on_the_instance_set() {
        let all = ids(6);
        let mut reversed = all.clone();
        reversed.reverse();
        reversed.sort();
        assert_eq!(layout(&slots(8, &all).0), layout(&slots(8, &reversed).0));
    }

    #[test]
    fn an_instance_leaving_frees_its_slot_without_moving_the_others_it_did_not_push() {
        let all = ids(5);
        let before = layout(&slots(16, &all).0);
        for gone in 0..all.len() {
            let rest: Vec<Instance> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, x)| x.clone())
                .collect();
            let after = layout(&slots(16, &rest).0);
            let moved: Vec<_> = after
                .iter()
                .filter(|(slot, id)| before.get(*slot) != Some(id))
                .collect();
            // Only an instance that had probed past the freed slot may move.
            for (slot, id) in &moved {
                let preferred = (fnv1a(id.as_bytes()) % 16) as usize + 1;
                assert_ne!(
                    format!("web-s{preferred}"),
                    **slot,
                    "{id} moved although it sat in its own slot"
                );
            }
            assert_eq!(after.len(), before.len() - 1);
        }
    }

    #[test]
    fn instances_beyond_the_slots_are_served_as_servers_of_their_own() {
        let (servers, warnings) = slots(2, &ids(3));
        assert_eq!(servers.len(), 3);
        assert!(servers.iter().all(|s| !s.disabled));
        assert_eq!(servers[2].name, servers[2].instance.clone().expect("id"));
        assert!(warnings.is_empty(), "dynamic servers: {warnings:?}");
        let (servers, _) = slots(0, &ids(3));
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web-0:n", "web-1:n", "web-2:n"], "no slots");
        for (extra, why) in [
            ("sticky: {cookie: srv}\n", "a sticky cookie"),
            ("balance: source\n", "`balance source`"),
        ] {
            let (_, warnings) = slots_of(&backend(extra), 2, &ids(3));
            assert!(
                warnings.len() == 1
                    && warnings[0].contains("3 serving instances but 2")
                    && warnings[0].contains(why),
                "{warnings:?}"
            );
        }
    }
}
