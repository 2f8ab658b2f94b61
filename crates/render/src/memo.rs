//! Tera's context, built from the view with each backend's servers kept,
//! serialized, for the next render.
//!
//! Tera renders from a tree of `serde_json::Value`s. Converting the view
//! into that tree costs about a dozen allocations per server, and freeing
//! it as many again: at a thousand servers that was most of a render
//! besides Tera's own formatting. A health flip changes one server. So
//! after a render each backend's servers are kept beside their values, and
//! the next render takes the value of a kept server equal to its own
//! instead of serializing it again. A value is only ever taken for an
//! equal server, and equal servers serialize to equal values, so the
//! context is the tree a cold serialization builds whatever was kept: the
//! memo saves work and changes no byte (tested below against cold renders).
//!
//! A kept server is looked for a few places around the position of the
//! last one taken, which covers servers added, removed or changed in
//! place; anything further off is serialized again, which is only slower.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use crate::error::RenderError;
use crate::view::{Context, ServerView};

/// How far past the last server taken a kept one is looked for.
const WINDOW: usize = 8;

/// Each backend's servers from the last render, with their values.
type Kept = BTreeMap<String, Vec<(ServerView, Value)>>;

/// Each backend's name and servers, in backend order.
type Servers = Vec<(String, Vec<ServerView>)>;

/// The servers of the last render, for the next one.
#[derive(Default)]
pub(crate) struct Memo(Mutex<Kept>);

impl Memo {
    /// Calls `render` with `context` as Tera's context, reusing the values
    /// of servers the last call kept, and keeps this context's servers.
    /// Concurrent calls are correct; only one of them finds anything kept.
    pub(crate) fn with_context<T>(
        &self,
        context: Context,
        render: impl FnOnce(&tera::Context) -> Result<T, RenderError>,
    ) -> Result<T, RenderError> {
        let kept = std::mem::take(&mut *self.lock());
        let (tera_context, servers) = build(context, kept)?;
        let out = render(&tera_context)?;
        *self.lock() = keep(tera_context, servers);
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Whatever a panicking holder left is a valid memo, if a stale one.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tera's context for `context`, and the servers taken out of it.
fn build(mut context: Context, mut kept: Kept) -> Result<(tera::Context, Servers), RenderError> {
    let error = |message: String| RenderError::Context { message };
    let servers: Servers = context
        .backends
        .iter_mut()
        .map(|b| (b.name.clone(), std::mem::take(&mut b.servers)))
        .collect();
    let mut value = serde_json::to_value(&context).map_err(|e| error(e.to_string()))?;
    if let Some(Value::Array(backends)) = value.get_mut("backends") {
        for (backend, (name, views)) in backends.iter_mut().zip(&servers) {
            let values = values(views, kept.remove(name).unwrap_or_default())
                .map_err(|e| error(e.to_string()))?;
            if let Value::Object(fields) = backend {
                fields.insert("servers".to_string(), Value::Array(values));
            }
        }
    }
    let context = tera::Context::from_value(value).map_err(|e| error(e.to_string()))?;
    Ok((context, servers))
}

/// The value of each of `servers`: the kept one of an equal server, or a
/// fresh serialization.
fn values(
    servers: &[ServerView],
    mut kept: Vec<(ServerView, Value)>,
) -> Result<Vec<Value>, serde_json::Error> {
    let mut next = 0;
    servers
        .iter()
        .map(|s| {
            let end = kept.len().min(next + WINDOW);
            match (next..end).find(|&k| kept[k].0 == *s) {
                Some(k) => {
                    next = k + 1;
                    Ok(std::mem::take(&mut kept[k].1))
                }
                None => serde_json::to_value(s),
            }
        })
        .collect()
}

/// Takes the servers' values back out of a rendered context. A context of
/// another shape keeps nothing (it cannot happen; it would only cost the
/// next render its reuse).
fn keep(mut context: tera::Context, servers: Servers) -> Kept {
    let mut kept = Kept::new();
    let Some(Value::Array(backends)) = context.remove("backends") else {
        return kept;
    };
    for (backend, (name, views)) in backends.into_iter().zip(servers) {
        let Value::Object(mut fields) = backend else {
            return Kept::new();
        };
        let Some(Value::Array(values)) = fields.remove("servers") else {
            return Kept::new();
        };
        if values.len() != views.len() {
            return Kept::new();
        }
        kept.insert(name, views.into_iter().zip(values).collect());
    }
    kept
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use converge_model::{Health, Layout, Manifests, NodeDesired};

    use super::*;
    use crate::Templates;

    fn server(id: &str, health: Health) -> ServerView {
        ServerView {
            name: id.to_string(),
            instance: Some(id.to_string()),
            address: "10.0.0.1".to_string(),
            port: 80,
            endpoint: "10.0.0.1:80".to_string(),
            health,
            disabled: false,
        }
    }

    #[test]
    fn only_equal_servers_take_a_kept_value() {
        let marked = Value::String("kept".into());
        let kept =
            Vec::from(["a", "b", "c", "d"].map(|id| (server(id, Health::Passing), marked.clone())));
        // b removed, c changed, e added.
        let now = [
            server("a", Health::Passing),
            server("c", Health::Critical),
            server("d", Health::Passing),
            server("e", Health::Passing),
        ];
        let values = values(&now, kept).expect("values");
        let reused: Vec<bool> = values.iter().map(|v| *v == marked).collect();
        assert_eq!(reused, [true, false, true, false]);
        for (v, s) in values.iter().zip(&now).filter(|(v, _)| **v != marked) {
            assert_eq!(*v, serde_json::to_value(s).expect("value"));
        }
    }

    fn desired() -> NodeDesired {
        let manifest = "nodes:\n  lb1: {}\nfrontends:\n  fe:\n    bind: [\":80\"]\n    \
                        default_backend: web\nbackends:\n  web:\n    service: web\n    \
                        maxconn: 50\n  slots:\n    service: web\n    runtime_api: {slots: 6}\n  \
                        api:\n    service: api\ntargets:\n  haproxy:\n    template: \
                        haproxy.cfg.tera\n    destination: /etc/haproxy/haproxy.cfg\n    \
                        validate: haproxy\n";
        let m = Manifests::from_sources(
            Path::new("m"),
            &[(PathBuf::from("m/a.yaml"), manifest.to_string())],
        )
        .expect("manifest");
        m.validate().expect("valid");
        m.for_node("lb1").expect("node")
    }

    fn templates() -> Templates {
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"))
            .expect("templates")
    }

    /// Flips, removals, additions and moves, one after the other, through
    /// one memo: every render equals a render with nothing kept.
    #[test]
    fn renders_with_kept_servers_equal_cold_renders() {
        let desired = desired();
        let warm = templates();
        let layout = Layout::new("/r");
        for (step, catalog) in crate::churn::catalogs() {
            let hot = crate::render_as(&desired, &catalog, &warm, &layout, false).expect("render");
            let cold =
                crate::render_as(&desired, &catalog, &templates(), &layout, false).expect("render");
            assert_eq!(
                hot.files["haproxy"].bytes, cold.files["haproxy"].bytes,
                "step {step}"
            );
            let kept = warm.memo.lock();
            assert_eq!(kept.len(), 3, "step {step}: every backend is kept");
        }
    }
}
