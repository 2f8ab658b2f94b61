//! Where a node's desired state comes from: the manifests and templates
//! directories (and the catalog file, when that is the source), loaded,
//! checked and fingerprinted. Every manifest and template problem is found
//! in one load, so one run shows them all.

use std::path::PathBuf;

use converge_model::{Layout, Manifests};
use converge_render::Templates;

use crate::error::AgentError;
use crate::pass::Prepared;
use crate::revision::Revision;

/// Where the inputs come from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Manifests directory.
    pub manifests: PathBuf,
    /// Templates directory.
    pub templates: PathBuf,
    /// Catalog file (the embedded default source).
    pub catalog: PathBuf,
    /// Prefix for every destination, pidfile and socket.
    pub root: PathBuf,
    /// Set when the directories are a published revision unpacked on
    /// this node (`--published`), not a directory the operator keeps.
    pub unpacked: Option<Unpacked>,
}

/// What a published revision unpacked on a node needs besides its two
/// directories: its name, which its files alone cannot give (the
/// publisher's Git commit is not in the bundle), and where the secret
/// files its manifests reference are, since the bundle never holds them.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// File holding the revision's name.
    pub revision: PathBuf,
    /// Directory `file:` secret references resolve against on this node.
    pub secrets: PathBuf,
}

impl Inputs {
    /// Loads and checks manifests and templates. Every manifest problem is
    /// reported at once.
    pub fn prepare(&self) -> Result<Prepared, AgentError> {
        // Named before reading, so an edit while loading can only make the
        // name older than the files, never newer.
        let revision = self.revision();
        let (manifests, templates) = self.load_config()?;
        Ok(Prepared {
            manifests,
            templates,
            layout: Layout::new(&self.root),
            revision,
        })
    }

    /// The revision of these manifests and templates: the published name
    /// of an [`Unpacked`] revision, else their Git commit, else a content hash of [`fingerprint`](Self::fingerprint). `None`
    /// only when a directory cannot be read (then loading fails too, and
    /// says why).
    pub fn revision(&self) -> Option<Revision> {
        if let Some(u) = &self.unpacked {
            let name = std::fs::read_to_string(&u.revision).ok()?;
            return Revision::parse(name.trim());
        }
        Revision::git(&self.manifests, &self.templates)
            .or_else(|| self.fingerprint().map(|d| Revision::content(&d)))
    }

    /// A digest of every file directly in the manifests and templates
    /// directories, names and bytes: equal digests mean
    /// [`load_config`](Self::load_config) would read the same inputs. Reading
    /// and hashing the files is cheap next to parsing them, which the
    /// daemon would otherwise repeat on every pass. `None` when a directory
    /// cannot be read (then the caller loads, and reports the error).
    ///
    /// Only file names count, not where the directories are, so the same
    /// files give the same digest on every machine: the content-hash
    /// [`Revision`] is built from it.
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for (tag, dir) in [(b'm', &self.manifests), (b't', &self.templates)] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            hash.update([tag]);
            for path in files {
                let bytes = std::fs::read(&path).ok()?;
                let name = path.file_name().unwrap_or_default().as_encoded_bytes();
                hash.update((name.len() as u64).to_le_bytes());
                hash.update(name);
                hash.update((bytes.len() as u64).to_le_bytes());
                hash.update(&bytes);
            }
        }
        Some(hash.finalize().into())
    }

    /// Loads and validates manifests and parses templates: the desired
    /// state without the catalog. Templates parse without manifests, so
    /// both are checked and every problem in either is reported at once; a
    /// syntax error names the targets using the broken template whenever
    /// the manifests could be read.
    pub fn load_config(&self) -> Result<(Manifests, Templates), AgentError> {
        let loaded = Manifests::load(&self.manifests).map(|mut m| {
            if let Some(u) = &self.unpacked {
                m.dir = u.secrets.clone();
            }
            m
        });
        let templates = Templates::load(&self.templates).map_err(|e| match &loaded {
            Ok(m) => e.name_targets(&m.manifest),
            Err(_) => e,
        });
        let manifests = loaded.and_then(|m| m.validate().map(|()| m));
        match (manifests, templates) {
            (Ok(manifests), Ok(templates)) => Ok((manifests, templates)),
            (Err(problems), Ok(_)) => Err(AgentError::Manifest(problems)),
            (Ok(_), Err(e)) => Err(e.into()),
            (Err(manifests), Err(templates)) => Err(AgentError::Inputs {
                manifests,
                templates,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &std::path::Path) -> Inputs {
        Inputs {
            manifests: dir.join("manifests"),
            templates: dir.join("templates"),
            catalog: dir.join("catalog.yaml"),
            root: dir.join("root"),
            unpacked: None,
        }
    }

    #[test]
    fn the_fingerprint_follows_every_byte_and_file_of_both_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let i = inputs(dir.path());
        std::fs::create_dir_all(&i.manifests).expect("mkdir");
        std::fs::create_dir_all(&i.templates).expect("mkdir");
        std::fs::write(i.manifests.join("site.yaml"), "nodes: {}\n").expect("write");
        std::fs::write(i.templates.join("a.tera"), "x\n").expect("write");
        let first = i.fingerprint().expect("fingerprint");
        assert_eq!(i.fingerprint(), Some(first), "nothing changed");

        // Same length, other bytes.
        std::fs::write(i.templates.join("a.tera"), "y\n").expect("write");
        let edited = i.fingerprint().expect("fingerprint");
        assert_ne!(edited, first);

        // A new file, then the same bytes moved to the other directory.
        std::fs::write(i.manifests.join("more.yaml"), "").expect("write");
        let added = i.fingerprint().expect("fingerprint");
        assert_ne!(added, edited);
        std::fs::remove_file(i.manifests.join("more.yaml")).expect("rm");
        std::fs::write(i.templates.join("more.yaml"), "").expect("write");
        assert_ne!(i.fingerprint().expect("fingerprint"), added);

        // The same files elsewhere: the same digest.
        let moved = tempfile::tempdir().expect("tempdir");
        let there = inputs(moved.path());
        for (from, to) in [
            (&i.manifests, &there.manifests),
            (&i.templates, &there.templates),
        ] {
            std::fs::create_dir_all(to).expect("mkdir");
            for e in std::fs::read_dir(from).expect("read_dir") {
                let p = e.expect("entry").path();
                std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
            }
        }
        assert_eq!(there.fingerprint(), i.fingerprint(), "another directory");

        std::fs::remove_dir_all(&i.templates).expect("rm");
        assert_eq!(i.fingerprint(), None, "an unreadable directory");
    }
}
