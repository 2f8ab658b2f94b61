//! `converge publish`: one revision of the manifests and templates put in
//! Consul KV for the fleet, and the fleet's desired revision moved to it.
//!
//! The steps, each one refusing before anything is written where it can:
//!
//! 1. the caller has validated the inputs exactly as `converge validate`
//!    does (a bundle that does not validate never gets here);
//! 2. the [`Bundle`] is packed (no secret in it) and measured against
//!    Consul's value limit, [`MAX_VALUE`]; a `-dirty` revision is refused,
//!    since its name does not pin its files;
//! 3. `<prefix>/desired` is read; when the caller said which revision it
//!    expects to replace (`--expect-revision`) and another is there, stop;
//! 4. the bundle and its checksum are written under `<prefix>/bundles/`;
//! 5. `desired` moves by check-and-set on the index read in 3 (`cas=0`
//!    when absent): if anyone wrote it in between, the publication is
//!    refused, and nothing the fleet follows has changed;
//! 6. bundles that fell off the bounded history are deleted.
//!
//! `--force` replaces whatever is there: it skips the expectation, and a
//! lost check-and-set is retried on a fresh read (a few times; a writer
//! that keeps winning is reported, never overwritten blindly). Rollback
//! is the same move with the history's newest entry, after checking that
//! its bundle is still in KV and matches its checksum.
//!
//! The key layout and the document are in [`desired`]; the archive in
//! [`bundle`].

pub mod bundle;
pub mod desired;

use converge_consul::{Client, Consistency, QueryOptions};
use serde::Serialize;

use crate::inputs::Inputs;
use crate::pass::Prepared;
use crate::revision::Revision;
pub use bundle::Bundle;
pub use desired::{Desired, Keys, Publication};

/// Consul's default limit on one KV value (`kv_max_value_size`), bytes.
pub const MAX_VALUE: usize = 512 * 1024;

/// How many times `--force` retries a lost check-and-set.
const FORCE_ATTEMPTS: usize = 5;

/// How a publication is made.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the keys live.
    pub keys: Keys,
    /// Replace whatever is published, expected or not.
    pub force: bool,
    /// The revision the caller expects `desired` to name now.
    pub expect_revision: Option<Revision>,
    /// Who publishes.
    pub publisher: String,
    /// Earlier publications kept (their bundles stay in KV).
    pub history: usize,
}

/// What a publication or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// The revision `desired` names now.
    pub revision: Revision,
    /// Its bundle's checksum.
    pub checksum: String,
    /// Its bundle's size in bytes.
    pub size: u64,
    /// The revision `desired` named before, if any.
    pub previous: Option<Revision>,
    /// The `desired` key.
    pub key: String,
    /// Revisions whose bundles were deleted (they fell off the history).
    pub deleted: Vec<Revision>,
    /// True when `desired` already named this revision with this bundle:
    /// nothing was written.
    pub unchanged: bool,
}

/// Why a publication or rollback was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bundle is larger than a KV value may be.
    #[error(
        "the bundle of revision {revision} is {size} bytes compressed, more than Consul's \
         {MAX_VALUE}-byte value limit; nothing was written (split large templates or manifests)"
    )]
    TooLarge {
        /// The revision.
        revision: Revision,
        /// Compressed size.
        size: usize,
    },
    /// The revision has uncommitted changes.
    #[error(
        "revision {0} has uncommitted changes, so its name does not say which files it is; \
         commit them and publish again; nothing was written"
    )]
    Dirty(Revision),
    /// `desired` does not name what the publisher expected.
    #[error(
        "{key} names {found}, not {expected} as expected: someone published in between; \
         the desired revision was not changed (re-run with --force to replace it)"
    )]
    Conflict {
        /// The `desired` key.
        key: String,
        /// What the publisher expected there.
        expected: String,
        /// What is there.
        found: String,
    },
    /// `desired` holds something that is not a publication.
    #[error("{key} is not a converge publication ({message}); nothing was changed (--force replaces it)")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Rollback with nothing to go back to.
    #[error("{key} has no earlier revision to roll back to; nothing was changed")]
    NoHistory {
        /// The `desired` key.
        key: String,
    },
    /// The bundle a rollback would go back to is gone or altered.
    #[error("cannot roll back to {revision}: its bundle {key} {problem}; nothing was changed")]
    Bundle {
        /// The revision.
        revision: Revision,
        /// Its bundle key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The manifests or templates could not be read or packed.
    #[error("cannot pack the bundle: {0}")]
    Pack(std::io::Error),
    /// The inputs have no revision (a directory could not be read).
    #[error("cannot tell the revision of the manifests and templates; nothing was written")]
    NoRevision,
    /// No runtime could be started for the requests.
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    /// Consul failed.
    #[error("{step}: {source}")]
    Consul {
        /// What was being done.
        step: String,
        /// Consul's error.
        source: converge_consul::Error,
    },
}

impl PublishError {
    /// One word a program can branch on (`--format json`): `conflict`,
    /// `too_large`, `dirty`, `corrupt`, `rollback`, `bundle` or `consul`.
    pub fn kind(&self) -> &'static str {
        match self {
            PublishError::TooLarge { .. } => "too_large",
            PublishError::Dirty(_) => "dirty",
            PublishError::Conflict { .. } => "conflict",
            PublishError::Corrupt { .. } => "corrupt",
            PublishError::NoHistory { .. } => "rollback",
            PublishError::Bundle { .. } | PublishError::Pack(_) | PublishError::NoRevision => {
                "bundle"
            }
            PublishError::Consul { .. } | PublishError::Runtime(_) => "consul",
        }
    }
}

/// What to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Publish this bundle.
    Publish(&'a Bundle),
    /// Move back to the previous revision.
    Rollback,
}

/// The bundle of validated inputs: `prepared`'s revision, the files
/// `inputs` names, no secret.
pub fn pack(inputs: &Inputs, prepared: &Prepared) -> Result<Bundle, PublishError> {
    let revision = prepared.revision.clone().ok_or(PublishError::NoRevision)?;
    Bundle::pack(inputs, &prepared.manifests.manifest, revision).map_err(PublishError::Pack)
}

/// Does `action` against the Consul agent `config` names, from a
/// one-shot command.
pub fn run(
    config: converge_consul::Config,
    action: Action<'_>,
    opts: &Options,
) -> Result<Published, PublishError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PublishError::Runtime)?;
    let client = Client::new(config).map_err(|source| PublishError::Consul {
        step: "connecting".into(),
        source,
    })?;
    runtime.block_on(async {
        match action {
            Action::Publish(bundle) => publish(&client, bundle, opts).await,
            Action::Rollback => rollback(&client, opts).await,
        }
    })
}

/// `desired` as read: its index for the check-and-set (0: absent) and the
/// document, when there is one and it parses.
struct Read {
    index: u64,
    desired: Option<Desired>,
}

/// Publishes `bundle` and moves `desired` to it (steps 2 to 6 above).
pub async fn publish(
    client: &Client,
    bundle: &Bundle,
    opts: &Options,
) -> Result<Published, PublishError> {
    if bundle.bytes.len() > MAX_VALUE {
        return Err(PublishError::TooLarge {
            revision: bundle.revision.clone(),
            size: bundle.bytes.len(),
        });
    }
    if bundle.revision.is_dirty() {
        return Err(PublishError::Dirty(bundle.revision.clone()));
    }
    let keys = &opts.keys;
    let publication = Publication {
        revision: bundle.revision.clone(),
        checksum: bundle.checksum(),
        size: bundle.bytes.len() as u64,
        published_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        publisher: opts.publisher.clone(),
    };
    let read = read_desired(client, keys, opts.force).await?;
    expect(keys, opts, read.desired.as_ref())?;
    if let Some(d) = &read.desired {
        if d.current.revision == publication.revision && d.current.checksum == publication.checksum
        {
            return Ok(outcome(keys, &d.current, None, Vec::new(), true));
        }
    }
    put(client, &keys.bundle(&bundle.revision), &bundle.bytes).await?;
    put(
        client,
        &keys.checksum(&bundle.revision),
        publication.checksum.as_bytes(),
    )
    .await?;
    let (before, dropped) = move_desired(client, keys, opts, read, |previous| {
        Some(Desired::advance(
            previous,
            publication.clone(),
            opts.history,
        ))
    })
    .await?;
    let deleted = delete_bundles(client, keys, dropped).await;
    let previous = before.map(|d| d.current.revision);
    Ok(outcome(keys, &publication, previous, deleted, false))
}

/// Moves `desired` back to the newest revision in its history.
pub async fn rollback(client: &Client, opts: &Options) -> Result<Published, PublishError> {
    let keys = &opts.keys;
    let read = read_desired(client, keys, false).await?;
    expect(keys, opts, read.desired.as_ref())?;
    let Some((back, _)) = read.desired.as_ref().and_then(Desired::rolled_back) else {
        return Err(PublishError::NoHistory {
            key: keys.desired(),
        });
    };
    verify_bundle(client, keys, &back.current).await?;
    let target = back.current.clone();
    let (before, dropped) = move_desired(client, keys, opts, read, |previous| {
        // Rolled back from what is there now, as long as it still goes
        // back to the verified revision.
        previous
            .and_then(Desired::rolled_back)
            .filter(|(d, _)| d.current == target)
    })
    .await?;
    let deleted = delete_bundles(client, keys, dropped).await;
    let previous = before.map(|d| d.current.revision);
    Ok(outcome(keys, &target, previous, deleted, false))
}

fn outcome(
    keys: &Keys,
    p: &Publication,
    previous: Option<Revision>,
    deleted: Vec<Revision>,
    unchanged: bool,
) -> Published {
    Published {
        revision: p.revision.clone(),
        checksum: p.checksum.clone(),
        size: p.size,
        previous,
        key: keys.desired(),
        deleted,
        unchanged,
    }
}

/// Refuses when the caller expected another revision in `desired`
/// (unless forced).
fn expect(keys: &Keys, opts: &Options, desired: Option<&Desired>) -> Result<(), PublishError> {
    let (Some(expected), false) = (&opts.expect_revision, opts.force) else {
        return Ok(());
    };
    let found = desired.map(|d| &d.current.revision);
    if found == Some(expected) {
        return Ok(());
    }
    Err(PublishError::Conflict {
        key: keys.desired(),
        expected: expected.to_string(),
        found: describe(desired),
    })
}

/// `revision R (published by P at T)`, or `nothing`.
fn describe(desired: Option<&Desired>) -> String {
    match desired {
        Some(d) => format!(
            "revision {} (published by {} at {})",
            d.current.revision, d.current.publisher, d.current.published_at
        ),
        None => "nothing".to_string(),
    }
}

/// Writes `desired` as `change` computes it from what was read, by
/// check-and-set. Returns what it replaced and the revisions dropped.
async fn move_desired(
    client: &Client,
    keys: &Keys,
    opts: &Options,
    mut read: Read,
    change: impl Fn(Option<&Desired>) -> Option<(Desired, Vec<Revision>)>,
) -> Result<(Option<Desired>, Vec<Revision>), PublishError> {
    let key = keys.desired();
    for _ in 0..FORCE_ATTEMPTS {
        let Some((next, dropped)) = change(read.desired.as_ref()) else {
            return Err(PublishError::Conflict {
                key,
                expected: "the revision it was rolling back from".into(),
                found: describe(read.desired.as_ref()),
            });
        };
        let body = serde_json::to_vec_pretty(&next).map_err(|e| PublishError::Corrupt {
            key: key.clone(),
            message: e.to_string(),
        })?;
        let moved = client
            .kv_put(&key, &body, Some(read.index))
            .await
            .map_err(|source| PublishError::Consul {
                step: format!("writing {key}"),
                source,
            })?;
        if moved {
            return Ok((read.desired, dropped));
        }
        let expected = describe(read.desired.as_ref());
        let now = read_desired(client, keys, opts.force).await?;
        if !opts.force {
            return Err(PublishError::Conflict {
                key,
                expected,
                found: describe(now.desired.as_ref()),
            });
        }
        read = now;
    }
    Err(PublishError::Conflict {
        key,
        expected: "to win a check-and-set".into(),
        found: format!("another writer changing it {FORCE_ATTEMPTS} times in a row"),
    })
}

/// Reads `desired`. A document that does not parse is an error, unless
/// forced: then it is replaced as if absent (on its own index).
async fn read_desired(client: &Client, keys: &Keys, force: bool) -> Result<Read, PublishError> {
    let key = keys.desired();
    let opts = QueryOptions {
        consistency: Consistency::Consistent,
        ..QueryOptions::default()
    };
    let Some(pair) = get(client, &key, &opts).await? else {
        return Ok(Read {
            index: 0,
            desired: None,
        });
    };
    match serde_json::from_slice::<Desired>(&pair.value) {
        Ok(desired) => Ok(Read {
            index: pair.modify_index,
            desired: Some(desired),
        }),
        Err(_) if force => Ok(Read {
            index: pair.modify_index,
            desired: None,
        }),
        Err(e) => Err(PublishError::Corrupt {
            key,
            message: e.to_string(),
        }),
    }
}

/// Checks that `p`'s bundle is in KV with `p`'s checksum.
async fn verify_bundle(client: &Client, keys: &Keys, p: &Publication) -> Result<(), PublishError> {
    let key = keys.bundle(&p.revision);
    let problem = match get(client, &key, &QueryOptions::default()).await? {
        None => "is gone".to_string(),
        Some(pair) if bundle::checksum(&pair.value) != p.checksum => format!(
            "does not match its checksum {} (it is {})",
            p.checksum,
            bundle::checksum(&pair.value)
        ),
        Some(_) => return Ok(()),
    };
    Err(PublishError::Bundle {
        revision: p.revision.clone(),
        key,
        problem,
    })
}

async fn get(
    client: &Client,
    key: &str,
    opts: &QueryOptions,
) -> Result<Option<converge_consul::KvPair>, PublishError> {
    client
        .kv_get(key, opts)
        .await
        .map(|r| r.value)
        .map_err(|source| PublishError::Consul {
            step: format!("reading {key}"),
            source,
        })
}

async fn put(client: &Client, key: &str, value: &[u8]) -> Result<(), PublishError> {
    client
        .kv_put(key, value, None)
        .await
        .map(|_| ())
        .map_err(|source| PublishError::Consul {
            step: format!("writing {key}"),
            source,
        })
}

/// Deletes the bundles of `revisions`; a failure is logged, not returned:
/// the publication stands, and a leftover bundle only takes space.
async fn delete_bundles(client: &Client, keys: &Keys, revisions: Vec<Revision>) -> Vec<Revision> {
    let mut deleted = Vec::new();
    for rev in revisions {
        let mut ok = true;
        for key in [keys.bundle(&rev), keys.checksum(&rev)] {
            if let Err(e) = client.kv_delete(&key, None).await {
                tracing::warn!(%key, error = %e, "cannot delete an old bundle; it stays in KV");
                ok = false;
            }
        }
        if ok {
            deleted.push(rev);
        }
    }
    deleted
}
