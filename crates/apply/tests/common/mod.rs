//! What the apply tests share: the rendered set of one HAProxy config,
//! validated by `haproxy -c` and reloaded by SIGUSR2 to its master.

use std::collections::BTreeMap;
use std::path::Path;

use converge_model::manifest::Validator;
use converge_model::{Layout, ReloadAction, RenderedFile, RenderedSet};

/// `bytes` as node `lb1`'s `/etc/haproxy/haproxy.cfg` under `root`.
pub fn set(root: &Path, bytes: String) -> RenderedSet {
    let layout = Layout::new(root);
    let file = RenderedFile {
        target: "haproxy".into(),
        destination: layout.path("/etc/haproxy/haproxy.cfg"),
        bytes: bytes.into_bytes(),
        mode: 0o644,
        owner: None,
        group: None,
        validate: Validator::Haproxy,
        reload: ReloadAction::Signal {
            pidfile: layout.path("/run/haproxy.pid"),
            signal: "SIGUSR2".into(),
        },
        bundle: "haproxy".into(),
        secret: false,
        backups: 2,
    };
    RenderedSet {
        node: "lb1".into(),
        layout,
        files: BTreeMap::from([("haproxy".to_string(), file)]),
        rejections: Vec::new(),
        warnings: Vec::new(),
        secrets: Vec::new(),
    }
}
