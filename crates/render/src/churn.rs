//! Test support: a catalog that churns the way a busy datacenter does,
//! for the tests that compare renders reusing kept work (`memo.rs`,
//! `split.rs`) with renders from nothing. One sequence for both, so a
//! case added here is checked by every cache.

use std::collections::BTreeMap;

use converge_model::{Catalog, Health, Instance};

/// Instance `i` of `web`.
fn instance(i: usize, health: Health) -> Instance {
    Instance {
        id: format!("web-{i:02}"),
        node: "n".into(),
        address: format!("10.0.0.{}", i % 7 + 1),
        port: 8000 + u16::try_from(i).expect("a small index"),
        tags: Default::default(),
        meta: Default::default(),
        health,
    }
}

/// 60 catalogs of `web` (40 instances to start with) and `api` (0–3 of
/// web's instances): health flips, removals, additions and moves, one
/// after the other, with the step's number.
pub(crate) fn catalogs() -> impl Iterator<Item = (usize, Catalog)> {
    let mut web: Vec<Instance> = (0..40).map(|i| instance(i, Health::Passing)).collect();
    (0..60).map(move |step| {
        let i = (step * 7) % web.len();
        match step % 5 {
            0 | 1 => {
                web[i].health = match web[i].health {
                    Health::Passing => Health::Critical,
                    _ => Health::Passing,
                }
            }
            2 => {
                web.remove(i);
            }
            3 => web.push(instance(40 + step, Health::Passing)),
            _ => web[i].address = format!("10.1.0.{step}"),
        }
        web.sort();
        let api = web.iter().take(step % 4).cloned().collect();
        let catalog = Catalog::fresh(
            step as u64,
            BTreeMap::from([("web".to_string(), web.clone()), ("api".to_string(), api)]),
        );
        (step, catalog)
    })
}
