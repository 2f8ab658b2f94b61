//! A plan between two renders of one node, instead of a render and the
//! live files: what `converge fleet plan` shows a reviewer for each node
//! (the published revision's render before, the proposed one after).
//!
//! Only the comparison differs from [`plan`](super::plan): the same
//! [`assemble`] classifies the result, so diffs, the runtime API's share,
//! reloads and settings that need a restart are decided exactly as on a
//! node. Nothing is read from disk, so the answer does not depend on the
//! machine it runs on; pending reloads of an interrupted apply, and drift
//! of live files, are a node's business and never show here.

use std::path::PathBuf;

use converge_model::rendered::Redactor;
use converge_model::{RenderedFile, RenderedSet, Secret};
use serde::Serialize;

use super::{assemble, Compared, Plan};
use crate::live::{self, Change, MODE_MASK};

/// What `apply` would do on `after.node` if its files were `before`'s
/// render (`None`: nothing rendered yet, every target new). A target is
/// matched by name; one whose destination moved is new at its new place.
/// Diffs are masked with the secrets of both renders, so neither the old
/// nor the new value of a rotated secret shows.
pub fn plan_between(before: Option<&RenderedSet>, after: &RenderedSet) -> Plan {
    let compared = after
        .files
        .values()
        .map(|file| {
            let old = before
                .and_then(|b| b.files.get(&file.target))
                .filter(|old| old.destination == file.destination);
            let (change, metadata) = compare(file, old);
            Compared {
                file,
                old: old.map(|o| o.bytes.clone()),
                change,
                metadata,
            }
        })
        .collect();
    let sets = before.into_iter().chain([after]);
    let redactor = Redactor::new(
        sets.clone()
            .flat_map(|s| s.secrets.iter().map(Secret::expose)),
        sets.flat_map(|s| s.files.values().map(|f| f.bytes.as_slice())),
    );
    assemble(after, compared, Vec::new(), &redactor)
}

/// A target an earlier render had and a later one does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Target name.
    pub target: String,
    /// Where its file is: `apply` leaves it there, untouched.
    pub destination: PathBuf,
}

/// Targets `before` renders that `after` no longer does (by name).
pub fn dropped(before: &RenderedSet, after: &RenderedSet) -> Vec<Dropped> {
    before
        .files
        .values()
        .filter(|f| !after.files.contains_key(&f.target))
        .map(|f| Dropped {
            target: f.target.clone(),
            destination: f.destination.clone(),
        })
        .collect()
}

/// How `file` compares with the same target's earlier render, as
/// [`live::compare`] compares it with a live file: mode and the owner and
/// group names converge would set.
fn compare(file: &RenderedFile, old: Option<&RenderedFile>) -> (Change, Vec<String>) {
    let Some(old) = old else {
        return (Change::New, Vec::new());
    };
    let mut drift = Vec::new();
    let (was, is) = (old.mode & MODE_MASK, file.mode & MODE_MASK);
    if was != is {
        drift.push(format!("mode {was:04o} -> {is:04o}"));
    }
    let name = |n: &Option<String>| n.clone().unwrap_or_else(|| "(unset)".into());
    if old.owner != file.owner {
        drift.push(format!(
            "owner {} -> {}",
            name(&old.owner),
            name(&file.owner)
        ));
    }
    if old.group != file.group {
        drift.push(format!(
            "group {} -> {}",
            name(&old.group),
            name(&file.group)
        ));
    }
    (live::classify(old.bytes == file.bytes, &drift), drift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Fixture;

    #[test]
    fn two_renders_compare_like_a_render_and_its_live_files() {
        let mut before = Fixture::new();
        before.add("app", "/etc/app.cfg", "a\nb\n");
        before.add("same", "/etc/same.cfg", "x\n");
        before.add("gone", "/etc/gone.cfg", "g\n");
        before.add("moved", "/etc/moved.cfg", "m\n");
        let mut after = Fixture::new();
        // Both rendered under one root, as `fleet plan` renders them.
        after.set.layout = before.set.layout.clone();
        after.add("app", "/etc/app.cfg", "a\nc\n");
        after.add("same", "/etc/same.cfg", "x\n").mode = 0o600;
        after.add("fresh", "/etc/fresh.cfg", "f\n");
        after.add("moved", "/etc/elsewhere.cfg", "m\n");

        let plan = plan_between(Some(&before.set), &after.set);
        let change = |t: &str| {
            plan.files
                .iter()
                .find(|f| f.target == t)
                .map(|f| f.change)
                .expect(t)
        };
        assert_eq!(change("app"), Change::Changed);
        assert_eq!(change("same"), Change::Metadata);
        assert_eq!(change("fresh"), Change::New);
        assert_eq!(change("moved"), Change::New, "a new destination");
        let app = plan.files.iter().find(|f| f.target == "app").expect("app");
        assert!(app.diff.contains("-b\n+c\n"), "{}", app.diff);
        let same = plan
            .files
            .iter()
            .find(|f| f.target == "same")
            .expect("same");
        assert_eq!(same.metadata, ["mode 0644 -> 0600"]);
        let gone = dropped(&before.set, &after.set);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].target, "gone");

        let nothing = plan_between(None, &after.set);
        assert!(nothing.files.iter().all(|f| f.change == Change::New));
        let unchanged = plan_between(Some(&after.set), &after.set);
        assert!(!unchanged.has_changes(), "{unchanged}");
    }

    #[test]
    fn the_old_and_the_new_secret_are_both_masked() {
        let mut before = Fixture::new();
        before.add("vrrp", "/etc/k.conf", "auth_pass old-secret\n");
        before.secret("old-secret");
        let mut after = Fixture::new();
        after.set.layout = before.set.layout.clone();
        after.add("vrrp", "/etc/k.conf", "auth_pass new-secret\n");
        after.secret("new-secret");
        let plan = plan_between(Some(&before.set), &after.set);
        let diff = &plan.files[0].diff;
        assert!(!diff.contains("old-secret"), "{diff}");
        assert!(!diff.contains("new-secret"), "{diff}");
        assert!(diff.contains("auth_pass ********"), "{diff}");
    }
}
