//! `plan` and `apply --once`: the [`pass`] against the guard baseline on
//! disk, then the plan or one transaction, then (after an apply) the
//! baseline moved to what was rendered — exactly the steps the daemon's
//! reconciler takes around the same pass, once.

use std::collections::BTreeSet;

use converge_apply::{ApplyOptions, ApplyReport, Plan};
use converge_model::Catalog;

use crate::error::AgentError;
use crate::guard::baseline;
use crate::pass::{self, Pass, Prepared};

impl Prepared {
    /// The pass `run` would make on `node` now: guarded against the
    /// baseline on disk, with `released` accepted once. Reads only.
    pub fn pass(
        &self,
        node: &str,
        catalog: Catalog,
        released: &BTreeSet<String>,
    ) -> Result<Pass, AgentError> {
        let stored = baseline::load(&self.layout);
        pass::run(self, node, &self.layout, catalog, stored.as_ref(), released)
    }

    /// The pass on `node`, compared with the live files; touches nothing.
    pub fn plan(
        &self,
        node: &str,
        catalog: Catalog,
        released: &BTreeSet<String>,
    ) -> Result<(Pass, Plan), AgentError> {
        let pass = self.pass(node, catalog, released)?;
        let plan = converge_apply::plan(&pass.set)?;
        Ok((pass, plan))
    }

    /// The pass on `node` and one transaction of its rendered set; then the
    /// catalog it rendered becomes the guard's baseline, so the next
    /// `apply --once` or a daemon started later measures changes against
    /// the snapshot this apply acted on.
    pub fn apply(
        &self,
        node: &str,
        catalog: Catalog,
        released: &BTreeSet<String>,
        opts: &ApplyOptions,
    ) -> Result<(Pass, ApplyReport), AgentError> {
        let stored = baseline::load(&self.layout);
        let pass = pass::run(self, node, &self.layout, catalog, stored.as_ref(), released)?;
        let report = converge_apply::apply(&pass.set, opts)?;
        baseline::advance(&self.layout, stored.as_ref(), &pass.accepted);
        Ok((pass, report))
    }
}
