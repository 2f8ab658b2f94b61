//! Builders for rendered sets rooted in a per-test temp dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use converge_model::manifest::Validator;
use converge_model::{Layout, ReloadAction, RenderedFile, RenderedSet, Secret};
use tempfile::TempDir;

/// A temp root and a set rendered into it.
pub(crate) struct Fixture {
    pub dir: TempDir,
    pub set: RenderedSet,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let set = RenderedSet {
            node: "lb1".into(),
            layout: Layout::new(dir.path()),
            files: BTreeMap::new(),
            rejections: Vec::new(),
            warnings: Vec::new(),
            secrets: Vec::new(),
        };
        Self { dir, set }
    }

    /// Adds a target writing `bytes` to `abs` (rooted), mode 0644, no
    /// validator, no reload, alone in its bundle, 3 backups.
    pub fn add(&mut self, target: &str, abs: &str, bytes: &str) -> &mut RenderedFile {
        let file = RenderedFile {
            target: target.into(),
            destination: self.set.layout.path(abs),
            bytes: bytes.as_bytes().to_vec(),
            mode: 0o644,
            owner: None,
            group: None,
            validate: Validator::None,
            reload: ReloadAction::None,
            bundle: target.into(),
            secret: false,
            backups: 3,
        };
        self.set.files.insert(target.into(), file);
        self.file(target)
    }

    pub fn file(&mut self, target: &str) -> &mut RenderedFile {
        self.set.files.get_mut(target).expect("target exists")
    }

    pub fn secret(&mut self, value: &str) {
        self.set.secrets.push(Secret::new(value));
    }

    /// A rooted path.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.set.layout.path(abs)
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Every path under `root` with its kind, size, mode and mtime: a
/// fingerprint that changes if anything is created, removed or written.
pub(crate) fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let meta = entry.path().symlink_metadata().expect("meta");
            out.push(format!(
                "{} {:o} {} {}.{} {}",
                entry.path().display(),
                meta.mode(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ino()
            ));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Names in `dir` that look like staged candidates.
pub(crate) fn staged_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".converge-stage."))
        .collect()
}
