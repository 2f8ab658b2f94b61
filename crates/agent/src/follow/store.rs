//! The node-local copy of published revisions, under `--root`:
//!
//! ```text
//! <root>/var/lib/converge/published/
//!   revisions/<rev>/manifests/      the bundle's manifests
//!   revisions/<rev>/templates/      the bundle's templates
//!   revisions/<rev>/revision        its name
//!   revisions/<rev>/checksum        the checksum it was verified against
//!   current -> revisions/<rev>      the revision this node runs
//! ```
//!
//! A revision is unpacked into a staging directory, checked to load for
//! this node, renamed into place, and only then does `current` move, by
//! renaming a new symlink over it: a reader sees the old revision or the
//! new one, whole, never half of either. A bundle that does not load never
//! becomes `current`, so what `current` names is always the last good
//! revision, and a restart comes up on it without asking Consul. The
//! revision `current` replaced is kept beside it; older ones are deleted.

use std::path::{Path, PathBuf};

use crate::inputs::{Inputs, Unpacked};
use crate::revision::Revision;

/// Where a node keeps its published revisions.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    secrets: PathBuf,
}

/// A revision in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Its name.
    pub revision: Revision,
    /// The bundle checksum it was verified against.
    pub checksum: String,
}

impl Store {
    /// The store under `root`; `file:` secrets of its manifests resolve
    /// against `secrets`.
    pub fn new(root: &Path, secrets: PathBuf) -> Self {
        Self {
            dir: root.join("var/lib/converge/published"),
            secrets,
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The inputs of the current revision, through the `current` link, so
    /// they stay the same paths while the revision changes.
    pub fn inputs(&self, catalog: PathBuf, root: PathBuf) -> Inputs {
        self.inputs_at(&self.dir.join("current"), catalog, root)
    }

    fn inputs_at(&self, dir: &Path, catalog: PathBuf, root: PathBuf) -> Inputs {
        Inputs {
            manifests: dir.join("manifests"),
            templates: dir.join("templates"),
            catalog,
            root,
            unpacked: Some(Unpacked {
                revision: dir.join("revision"),
                secrets: self.secrets.clone(),
            }),
        }
    }

    /// The revision `current` names, if any.
    pub fn current(&self) -> Option<Installed> {
        let dir = self.dir.join("current");
        let revision = std::fs::read_to_string(dir.join("revision")).ok()?;
        let checksum = std::fs::read_to_string(dir.join("checksum")).ok()?;
        Some(Installed {
            revision: Revision::parse(revision.trim())?,
            checksum: checksum.trim().to_string(),
        })
    }

    /// Unpacks `files` as `installed` and checks that they load for
    /// `node`; then makes them current. On any failure nothing the node
    /// runs has changed and the error says why.
    pub fn install(
        &self,
        installed: &Installed,
        files: &[(String, Vec<u8>)],
        node: &str,
    ) -> Result<(), String> {
        self.prepare(installed, files, node)?.commit().map(|_| ())
    }

    /// Unpacks `files` as `installed` beside the revisions and checks that
    /// they load for `node`, without switching to them: the rollout takes
    /// its locks between this and [`Prepared::commit`]. Dropping the
    /// result removes what was unpacked.
    pub fn prepare(
        &self,
        installed: &Installed,
        files: &[(String, Vec<u8>)],
        node: &str,
    ) -> Result<Prepared, String> {
        let staging = self
            .dir
            .join("revisions")
            .join(format!(".staging-{}", std::process::id()));
        let mut prepared = Prepared {
            store: self.clone(),
            staging,
            revision: installed.revision.clone(),
            manifest: converge_model::Manifest::default(),
        };
        self.stage(&prepared.staging, installed, files)
            .map_err(|e| format!("cannot unpack into {}: {e}", prepared.staging.display()))?;
        prepared.manifest = self.check(&prepared.staging, node)?;
        Ok(prepared)
    }

    /// Points `current` back at `revision`, the one a switch replaced
    /// (kept beside it), when a new revision failed its health gate.
    pub fn switch_back(&self, revision: &Revision) -> Result<(), String> {
        let name = revision.as_str();
        if !self.dir.join("revisions").join(name).is_dir() {
            return Err(format!("revision {name} is no longer in the store"));
        }
        self.link_current(name)
            .map_err(|e| format!("cannot switch back to revision {name}: {e}"))
    }

    /// Renames a new `current` link to `revisions/<name>` over the old one.
    fn link_current(&self, name: &str) -> std::io::Result<()> {
        let link = self.dir.join(".current.new");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("revisions").join(name), &link)?;
        std::fs::rename(&link, self.dir.join("current"))
    }

    fn stage(
        &self,
        staging: &Path,
        installed: &Installed,
        files: &[(String, Vec<u8>)],
    ) -> std::io::Result<()> {
        if staging.exists() {
            std::fs::remove_dir_all(staging)?;
        }
        for dir in ["manifests", "templates"] {
            std::fs::create_dir_all(staging.join(dir))?;
        }
        for (path, bytes) in files {
            std::fs::write(staging.join(path), bytes)?;
        }
        std::fs::write(staging.join("revision"), installed.revision.as_str())?;
        std::fs::write(staging.join("checksum"), &installed.checksum)?;
        Ok(())
    }

    /// The staged revision loads, and renders a desired state for `node`
    /// (its secrets resolve here).
    fn check(&self, staging: &Path, node: &str) -> Result<converge_model::Manifest, String> {
        let inputs = self.inputs_at(staging, PathBuf::new(), PathBuf::new());
        let (manifests, _) = inputs.load_config().map_err(|e| e.to_string())?;
        manifests.for_node(node).map_err(|e| e.to_string())?;
        Ok(manifests.manifest)
    }

    /// Moves `staging` into place as `revision` and points `current` at
    /// it; deletes every revision but the new one and the one it replaced.
    fn switch(&self, staging: &Path, revision: &Revision) -> Result<(), String> {
        let io = |what: &str, e: std::io::Error| format!("cannot {what}: {e}");
        let name = revision.as_str();
        let revisions = self.dir.join("revisions");
        let target = revisions.join(name);
        let previous = std::fs::read_link(self.dir.join("current")).ok();
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| io("replace the old copy", e))?;
        }
        std::fs::rename(staging, &target).map_err(|e| io("move the revision into place", e))?;
        self.link_current(name)
            .map_err(|e| io("switch to the new revision", e))?;
        let keep = [
            Some(PathBuf::from(name)),
            previous.and_then(|p| p.file_name().map(PathBuf::from)),
        ];
        if let Ok(entries) = std::fs::read_dir(&revisions) {
            for entry in entries.flatten() {
                let file = PathBuf::from(entry.file_name());
                // Another process's staging (a `plan --published` next to
                // the daemon) is its own to remove.
                let staging = entry.file_name().to_string_lossy().starts_with(".staging-");
                if !staging && !keep.contains(&Some(file)) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }
}

/// A revision unpacked and checked, not yet current.
#[derive(Debug)]
pub struct Prepared {
    store: Store,
    staging: PathBuf,
    revision: Revision,
    manifest: converge_model::Manifest,
}

impl Prepared {
    /// The revision's merged manifests (its `rollout:` section decides
    /// how it is taken).
    pub fn manifest(&self) -> &converge_model::Manifest {
        &self.manifest
    }

    /// Makes the revision current. Returns the revision it replaced.
    pub fn commit(self) -> Result<Option<Installed>, String> {
        let previous = self.store.current();
        self.store.switch(&self.staging, &self.revision)?;
        Ok(previous)
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.staging.exists() {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(note: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            (
                "manifests/site.yaml".into(),
                format!(
                    "# {note}\nnodes:\n  lb1: {{}}\ntargets:\n  app:\n    template: app.tera\n    \
                     destination: /etc/app.conf\n    validate: none\n"
                )
                .into_bytes(),
            ),
            ("templates/app.tera".into(), b"x\n".to_vec()),
        ]
    }

    fn installed(rev: &str) -> Installed {
        Installed {
            revision: Revision::parse(rev).expect("rev"),
            checksum: format!("sha256:{rev}"),
        }
    }

    #[test]
    fn a_revision_becomes_current_only_when_it_loads_and_the_one_before_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path(), dir.path().join("secrets"));
        assert_eq!(store.current(), None);
        for rev in ["a1", "b2", "c3"] {
            store
                .install(&installed(rev), &files(rev), "lb1")
                .expect(rev);
            assert_eq!(store.current(), Some(installed(rev)));
        }
        let left: Vec<String> = std::fs::read_dir(store.dir().join("revisions"))
            .expect("revisions")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 2, "current and the one before: {left:?}");

        let mut broken = files("d4");
        broken[0].1 = b"nodes: [\n".to_vec();
        let err = store
            .install(&installed("d4"), &broken, "lb1")
            .expect_err("broken");
        assert!(err.contains("site.yaml"), "{err}");
        assert_eq!(
            store.current(),
            Some(installed("c3")),
            "stays on the last good"
        );
        let err = store
            .install(&installed("e5"), &files("e5"), "lb9")
            .expect_err("not a node of it");
        assert!(err.contains("lb9"), "{err}");
        assert_eq!(store.current(), Some(installed("c3")));
        let inputs = store.inputs(PathBuf::new(), PathBuf::new());
        assert_eq!(inputs.revision(), Revision::parse("c3"));

        let previous = store
            .prepare(&installed("f6"), &files("f6"), "lb1")
            .expect("prepared")
            .commit()
            .expect("switched");
        assert_eq!(previous, Some(installed("c3")));
        store.switch_back(&installed("c3").revision).expect("back");
        assert_eq!(
            store.current(),
            Some(installed("c3")),
            "a failed gate goes back"
        );
        assert!(
            store.switch_back(&installed("a1").revision).is_err(),
            "deleted long ago"
        );
    }
}
