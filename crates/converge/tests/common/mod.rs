//! Shared set-up for the end-to-end tests: a private copy of the example
//! repository per test, and a way to run the built `converge` binary in it.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A test's own copy of manifests, templates and catalog, plus a root.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// Copies the shipped examples into a fresh temp dir.
    pub fn examples() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = repo();
        copy_dir(&repo.join("manifests"), &dir.path().join("manifests"));
        copy_dir(&repo.join("templates"), &dir.path().join("templates"));
        std::fs::copy(
            repo.join("examples/catalog.yaml"),
            dir.path().join("catalog.yaml"),
        )
        .expect("copy catalog");
        std::fs::create_dir_all(dir.path().join("root")).expect("root");
        Self { dir }
    }

    /// Shipped templates, with the given manifest and catalog text.
    pub fn custom(manifest: &str, catalog: &str) -> Self {
        let ws = Self::examples();
        std::fs::remove_dir_all(ws.path("manifests")).expect("clear manifests");
        ws.write("manifests/site.yaml", manifest);
        ws.write("catalog.yaml", catalog);
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read")
    }

    /// Runs `converge ARGS` with this workspace's inputs.
    pub fn converge(&self, args: &[&str]) -> Output {
        self.converge_env(args, &[])
    }

    /// Runs `converge ARGS` with extra environment variables.
    pub fn converge_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_converge"));
        cmd.args(args)
            .arg("--manifests")
            .arg(self.path("manifests"))
            .arg("--templates")
            .arg(self.path("templates"))
            .arg("--catalog")
            .arg(self.path("catalog.yaml"))
            .arg("--root")
            .arg(self.root())
            .env_remove("CONVERGE_FAILPOINT")
            .env_remove("RUST_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run converge")
    }

    /// Every file under the root with its bytes, for before/after checks.
    pub fn tree(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(&self.root(), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, printing both streams when it differs.
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "exit status\n--- stdout\n{}\n--- stderr\n{}",
        stdout(o),
        stderr(o)
    );
}
