//! What is at a destination now, and how it differs from the rendered file.
//!
//! `plan` and `apply` share this so that `plan` shows exactly what `apply`
//! would do. Both content and metadata count: a file whose bytes are equal
//! but whose mode (or, when converge runs as root and the manifest names
//! them, owner/group) drifted is a [`Change::Metadata`] — invariant 7 says
//! files holding secrets keep restrictive modes, so a `chmod 644` on a
//! userlist must not go unnoticed. Ownership is only compared when converge
//! would set it (running as root, `owner`/`group` given).

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use converge_model::RenderedFile;
use nix::unistd::{Gid, Group, Uid, User};
use serde::Serialize;

use crate::error::ApplyError;

/// How a target's destination compares with its rendered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Same bytes, same mode and owner: nothing to do.
    Unchanged,
    /// Same bytes, but mode or owner differ: fixed in place, no reload.
    Metadata,
    /// Different bytes.
    Changed,
    /// Nothing at the destination yet.
    New,
}

impl Change {
    /// The word used in text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::Metadata => "metadata",
            Change::Changed => "changed",
            Change::New => "new",
        }
    }

    /// Whether the bytes at the destination must be replaced.
    pub fn rewrites(self) -> bool {
        matches!(self, Change::Changed | Change::New)
    }
}

/// The live file: its bytes and metadata as read through one descriptor.
#[derive(Debug)]
pub(crate) struct Live {
    pub bytes: Vec<u8>,
    pub meta: Metadata,
}

/// Owner and group converge would set, resolved to ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ownership {
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
}

/// Reads the destination; `None` when there is nothing there.
pub(crate) fn read(file: &RenderedFile) -> Result<Option<Live>, ApplyError> {
    let err = |source: io::Error| ApplyError::ReadLive {
        target: file.target.clone(),
        path: file.destination.clone(),
        source,
    };
    // Check the kind before opening: opening a FIFO someone left at the
    // destination would block.
    match std::fs::metadata(&file.destination) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(err(io::Error::other("not a regular file"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    let mut f = match File::open(&file.destination) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(io::Error::other("not a regular file")));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes).map_err(err)?;
    Ok(Some(Live { bytes, meta }))
}

/// The owner/group converge would apply: only as root, only when given.
pub(crate) fn ownership(file: &RenderedFile) -> Result<Ownership, ApplyError> {
    if !Uid::effective().is_root() {
        return Ok(Ownership::default());
    }
    let uid = match &file.owner {
        None => None,
        Some(name) => Some(resolve(file, "user", name, |n| {
            User::from_name(n).map(|u| u.map(|u| u.uid))
        })?),
    };
    let gid = match &file.group {
        None => None,
        Some(name) => Some(resolve(file, "group", name, |n| {
            Group::from_name(n).map(|g| g.map(|g| g.gid))
        })?),
    };
    Ok(Ownership { uid, gid })
}

fn resolve<T: From<u32>>(
    file: &RenderedFile,
    kind: &'static str,
    name: &str,
    lookup: impl Fn(&str) -> nix::Result<Option<T>>,
) -> Result<T, ApplyError> {
    let owner_err = |detail: String| ApplyError::Owner {
        target: file.target.clone(),
        kind,
        name: name.to_string(),
        detail,
    };
    match lookup(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => name
            .parse::<u32>()
            .map(T::from)
            .map_err(|_| owner_err("does not exist on this host".into())),
        Err(e) => Err(owner_err(format!("cannot be looked up: {e}"))),
    }
}

/// Permission bits converge manages.
pub(crate) const MODE_MASK: u32 = 0o7777;

/// Compares the live file with the rendered one. The strings describe
/// metadata drift (`mode 0644 -> 0600`), whatever the content change is.
pub(crate) fn compare(
    file: &RenderedFile,
    live: Option<&Live>,
    own: Ownership,
) -> (Change, Vec<String>) {
    let Some(live) = live else {
        return (Change::New, Vec::new());
    };
    let mut drift = Vec::new();
    let mode = live.meta.mode() & MODE_MASK;
    if mode != file.mode & MODE_MASK {
        drift.push(format!("mode {mode:04o} -> {:04o}", file.mode & MODE_MASK));
    }
    if let Some(uid) = own.uid {
        if live.meta.uid() != uid.as_raw() {
            drift.push(format!("owner uid {} -> {}", live.meta.uid(), uid));
        }
    }
    if let Some(gid) = own.gid {
        if live.meta.gid() != gid.as_raw() {
            drift.push(format!("group gid {} -> {}", live.meta.gid(), gid));
        }
    }
    (classify(live.bytes == file.bytes, &drift), drift)
}

/// Other bytes are a change; equal bytes with `drift` (mode, owner) a
/// metadata fix; else nothing to do.
pub(crate) fn classify(same_bytes: bool, drift: &[String]) -> Change {
    if !same_bytes {
        Change::Changed
    } else if !drift.is_empty() {
        Change::Metadata
    } else {
        Change::Unchanged
    }
}
