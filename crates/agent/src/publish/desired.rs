//! The fleet's desired revision as stored in Consul KV, and the key layout
//! around it. Pure: what the document says and how publishing and rolling
//! back change it; the reads and check-and-set writes are the caller's.
//!
//! ```text
//! <prefix>/desired                  this document (JSON), moved by check-and-set
//! <prefix>/bundles/<rev>            the bundle (tar + gzip)
//! <prefix>/bundles/<rev>.sha256     its checksum, `sha256:<hex>`
//! <prefix>/nodes/<node>             a node's report (see `crate::fleet`)
//! <prefix>/locks/<group>            (reserved: reload locks)
//! <prefix>/rollout                  (reserved: canaries, pauses)
//! ```
//!
//! The history is bounded: the bundles of the current revision and of the
//! ones in the history are kept, a revision that falls off the history has
//! its bundle deleted by the publisher that pushed it off.

use serde::{Deserialize, Serialize};

use crate::revision::Revision;

/// Where the fleet's keys live under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`converge`); surrounding `/` are dropped.
    /// `None` for an empty prefix or one with an empty segment.
    pub fn new(prefix: &str) -> Option<Self> {
        let prefix = prefix.trim_matches('/');
        let ok = !prefix.is_empty() && prefix.split('/').all(|s| !s.is_empty() && s != "..");
        ok.then(|| Self {
            prefix: prefix.to_string(),
        })
    }

    /// `<prefix>/desired`.
    pub fn desired(&self) -> String {
        format!("{}/desired", self.prefix)
    }

    /// `<prefix>/bundles/<rev>`.
    pub fn bundle(&self, revision: &Revision) -> String {
        format!("{}/bundles/{revision}", self.prefix)
    }

    /// `<prefix>/nodes/`: where node reports live.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// `<prefix>/nodes/<node>`.
    pub fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// `<prefix>/rollout/`: locks, halt, canary marks and pauses of the
    /// rollout (see `crate::rollout`).
    pub fn rollout(&self) -> String {
        format!("{}/rollout/", self.prefix)
    }

    /// `<prefix>/bundles/<rev>.sha256`.
    pub fn checksum(&self, revision: &Revision) -> String {
        format!("{}/bundles/{revision}.sha256", self.prefix)
    }
}

/// One publication: a revision, its bundle's checksum and size, who
/// published it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The revision.
    pub revision: Revision,
    /// `sha256:<hex>` of the bundle.
    pub checksum: String,
    /// Bundle size in bytes (compressed).
    pub size: u64,
    /// RFC 3339 time of publication.
    pub published_at: String,
    /// Who published (`--publisher`, default user@host).
    pub publisher: String,
}

/// The `<prefix>/desired` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The revision every node should run.
    #[serde(flatten)]
    pub current: Publication,
    /// Earlier publications, newest first, at most the publisher's bound.
    #[serde(default)]
    pub history: Vec<Publication>,
}

impl Desired {
    /// `next` published over `previous` (absent for the first
    /// publication), keeping at most `keep` earlier publications; also
    /// the revisions that fell off, whose bundles may go.
    pub fn advance(
        previous: Option<&Desired>,
        next: Publication,
        keep: usize,
    ) -> (Self, Vec<Revision>) {
        let earlier: Vec<Publication> = previous
            .map(|d| {
                std::iter::once(d.current.clone())
                    .chain(d.history.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let mut history: Vec<Publication> = Vec::new();
        for p in earlier {
            if p.revision != next.revision && !history.iter().any(|h| h.revision == p.revision) {
                history.push(p);
            }
        }
        let dropped = history.split_off(keep.min(history.len()));
        let desired = Self {
            current: next,
            history,
        };
        let dropped = dropped
            .into_iter()
            .map(|p| p.revision)
            .filter(|r| !desired.names(r))
            .collect();
        (desired, dropped)
    }

    /// Back to the newest earlier publication, which leaves the history;
    /// the revision rolled back from is dropped (its bundle may go).
    /// `None` when there is no history.
    pub fn rolled_back(&self) -> Option<(Self, Vec<Revision>)> {
        let (back, rest) = self.history.split_first()?;
        let desired = Self {
            current: back.clone(),
            history: rest.to_vec(),
        };
        let dropped = Some(self.current.revision.clone())
            .filter(|r| !desired.names(r))
            .into_iter()
            .collect();
        Some((desired, dropped))
    }

    /// Whether `revision` is current or in the history (its bundle stays).
    pub fn names(&self, revision: &Revision) -> bool {
        self.current.revision == *revision || self.history.iter().any(|h| h.revision == *revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(rev: &str) -> Publication {
        Publication {
            revision: Revision::parse(rev).expect("revision"),
            checksum: format!("sha256:{rev}"),
            size: 1,
            published_at: "2026-01-01T00:00:00Z".into(),
            publisher: "ci".into(),
        }
    }

    fn revisions(d: &Desired) -> Vec<&str> {
        std::iter::once(&d.current)
            .chain(&d.history)
            .map(|p| p.revision.as_str())
            .collect()
    }

    #[test]
    fn the_history_is_bounded_and_what_falls_off_is_dropped() {
        let (mut d, dropped) = Desired::advance(None, publication("a"), 2);
        assert!(dropped.is_empty());
        for rev in ["b", "c"] {
            let (next, dropped) = Desired::advance(Some(&d), publication(rev), 2);
            assert!(dropped.is_empty());
            d = next;
        }
        assert_eq!(revisions(&d), ["c", "b", "a"]);
        let (d, dropped) = Desired::advance(Some(&d), publication("d"), 2);
        assert_eq!(revisions(&d), ["d", "c", "b"]);
        assert_eq!(dropped, [Revision::parse("a").expect("a")]);
    }

    #[test]
    fn publishing_an_older_revision_again_moves_it_not_copies_it() {
        let (d, _) = Desired::advance(None, publication("a"), 10);
        let (d, _) = Desired::advance(Some(&d), publication("b"), 10);
        let (d, dropped) = Desired::advance(Some(&d), publication("a"), 10);
        assert_eq!(revisions(&d), ["a", "b"]);
        assert!(dropped.is_empty());
    }

    #[test]
    fn rollback_pops_the_history_and_drops_the_revision_left() {
        let (d, _) = Desired::advance(None, publication("a"), 10);
        let (d, _) = Desired::advance(Some(&d), publication("b"), 10);
        let (back, dropped) = d.rolled_back().expect("history");
        assert_eq!(revisions(&back), ["a"]);
        assert_eq!(dropped, [Revision::parse("b").expect("b")]);
        assert!(back.rolled_back().is_none(), "nothing before the first");
    }

    #[test]
    fn keys_live_under_one_clean_prefix() {
        let k = Keys::new("/converge/").expect("prefix");
        let rev = Revision::parse("abc1234").expect("rev");
        assert_eq!(k.desired(), "converge/desired");
        assert_eq!(k.bundle(&rev), "converge/bundles/abc1234");
        assert_eq!(k.checksum(&rev), "converge/bundles/abc1234.sha256");
        for bad in ["", "/", "a//b", "a/../b"] {
            assert!(Keys::new(bad).is_none(), "{bad:?}");
        }
    }
}
