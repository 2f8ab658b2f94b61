//! Backends rendered one at a time, and kept for the next render.
//!
//! A health flip changes one server of one backend, yet Tera formats every
//! server of every backend again, and most of its time goes to looking up
//! each `{{ s.name }}` and `{{ be.maxconn }}` through its context: at 500
//! backends of ten servers, about 12 ms of a 17 ms render. So a template
//! whose backends are written by one loop is rendered in pieces: what comes
//! before the loop, the loop's body once per backend, what comes after. A
//! backend equal to one the last render had takes that render's body text
//! instead of formatting it again.
//!
//! That is only the same output if a body's text depends on nothing but its
//! backend, which is decided once, from the parsed template, when it is
//! loaded ([`Shape::of`]). A template splits when it has exactly one loop
//! `{% for be in backends %}` at its top level (no filter on `backends`,
//! no key, no `{% else %}`), and:
//!
//! - the body reads only `be` and the variables of loops inside it
//!   (including their `loop`), through plain dotted names (no `[…]`
//!   lookups), calls no function (`now()` and `get_env()` are not pure),
//!   no macro, includes nothing, sets nothing, and breaks or continues
//!   only loops of its own;
//! - nothing outside the loop reads `backends` or `__tera_context`,
//!   includes, extends, imports or calls a macro, or sets a variable (a
//!   variable set before the loop would not reach the part after it).
//!
//! Tera has applied the template's whitespace control (`{%-`, `-%}`) to
//! the text around and inside the loop when it parsed it, so the pieces are
//! slices of the parsed template and concatenating their output is the
//! whole template's output. Any other template is rendered whole, with the
//! kept servers of [`crate::memo`]; a template that never reads `backends`
//! is rendered without them. A piece that fails to render sends the whole
//! render down the whole-template path, so errors read as before.
//!
//! Tera has no public way to render part of a template: the pieces are
//! added to its template map (`Tera::templates`, public but undocumented)
//! as copies of the parsed template with a slice of its nodes, under names
//! no template file can have. The tests compare every split render with a
//! whole one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};
use tera::ast::{Expr, ExprVal, Forloop, FunctionCall, Node};
use tera::Tera;

use crate::error::RenderError;
use crate::view::BackendView;

/// How a template reads `backends`, decided when it is loaded.
#[derive(Debug)]
pub(crate) enum Shape {
    /// Never reads it: rendered from a context without backends.
    Without,
    /// One loop over it whose body reads only its backend: rendered in
    /// pieces.
    Split(Split),
    /// Anything else: rendered whole, from the whole context.
    Whole,
}

/// The hidden templates a split template renders through.
#[derive(Debug)]
pub(crate) struct Split {
    /// The nodes before the loop.
    before: String,
    /// The loop's body, with the backend as a top-level variable.
    body: String,
    /// The nodes after the loop.
    after: String,
    /// The loop's variable: what the body calls its backend.
    var: String,
}

impl Shape {
    /// The shape of `name`, already parsed into `tera`; a split template's
    /// pieces are added to `tera`.
    pub(crate) fn of(tera: &mut Tera, name: &str) -> Shape {
        let Some(template) = tera.templates.get(name) else {
            return Shape::Whole;
        };
        if template.parent.is_some() || !template.imported_macro_files.is_empty() {
            return Shape::Whole;
        }
        let loops: Vec<usize> = template
            .ast
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n, Node::Forloop(_, f, _) if over_backends(f)))
            .map(|(i, _)| i)
            .collect();
        let outside_reads = |sets: bool| {
            template
                .ast
                .iter()
                .enumerate()
                .filter(|(i, _)| !loops.contains(i))
                .all(|(_, n)| Walk::outside(sets).node(n))
        };
        match loops[..] {
            [] if outside_reads(true) => Shape::Without,
            [at] if outside_reads(false) => {
                let Node::Forloop(_, forloop, _) = &template.ast[at] else {
                    return Shape::Whole;
                };
                if !Walk::body(&forloop.value).nodes(&forloop.body) {
                    return Shape::Whole;
                }
                let var = forloop.value.clone();
                let piece = |suffix: &str, ast: &[Node]| {
                    let mut t = template.clone();
                    t.name = format!("{name}\0{suffix}");
                    t.ast = ast.to_vec();
                    t
                };
                let pieces = [
                    piece("before", &template.ast[..at]),
                    piece("body", &forloop.body),
                    piece("after", &template.ast[at + 1..]),
                ];
                let [before, body, after] = pieces.map(|t| {
                    let name = t.name.clone();
                    tera.templates.insert(name.clone(), t);
                    name
                });
                Shape::Split(Split {
                    before,
                    body,
                    after,
                    var,
                })
            }
            _ => Shape::Whole,
        }
    }
}

/// `{% for x in backends %}`, nothing more.
fn over_backends(f: &Forloop) -> bool {
    f.key.is_none()
        && f.empty_body.is_none()
        && !f.container.negated
        && f.container.filters.is_empty()
        && matches!(&f.container.val, ExprVal::Ident(i) if i == "backends")
}

/// One check of a template's nodes: which variables they may read and
/// which tags they may use.
struct Walk {
    /// Outside the loop: any variable but `backends` and `__tera_context`.
    /// In the body: only these (the loop's variable, then those of inner
    /// loops as they open).
    only: Option<Vec<String>>,
    /// Outside the loop: `{% set %}` is allowed (the template has no loop
    /// over backends, so it is rendered in one piece).
    sets: bool,
    /// How many loops of its own the walk is in (for `break`/`continue`).
    loops: usize,
}

impl Walk {
    fn outside(sets: bool) -> Self {
        Walk {
            only: None,
            sets,
            loops: 0,
        }
    }

    fn body(var: &str) -> Self {
        Walk {
            only: Some(vec![var.to_string()]),
            sets: false,
            loops: 0,
        }
    }

    fn nodes(&mut self, nodes: &[Node]) -> bool {
        nodes.iter().all(|n| self.node(n))
    }

    fn node(&mut self, node: &Node) -> bool {
        match node {
            Node::Text(_) | Node::Raw(..) | Node::Comment(..) => true,
            Node::VariableBlock(_, e) => self.expr(e),
            Node::If(i, _) => {
                i.conditions
                    .iter()
                    .all(|(_, e, body)| self.expr(e) && self.nodes(body))
                    && i.otherwise.as_ref().is_none_or(|(_, b)| self.nodes(b))
            }
            Node::Forloop(_, f, _) => {
                if !self.expr(&f.container) || !f.empty_body.as_ref().is_none_or(|b| self.nodes(b))
                {
                    return false;
                }
                let outer = self.only.clone();
                if let Some(only) = &mut self.only {
                    only.extend(f.key.iter().cloned());
                    only.push(f.value.clone());
                    only.push("loop".to_string());
                }
                self.loops += 1;
                let ok = self.nodes(&f.body);
                self.loops -= 1;
                self.only = outer;
                ok
            }
            Node::FilterSection(_, s, _) => self.call(&s.filter) && self.nodes(&s.body),
            Node::Set(_, s) => self.sets && self.expr(&s.value),
            Node::Break(_) | Node::Continue(_) => self.loops > 0,
            Node::Super
            | Node::MacroDefinition(..)
            | Node::Extends(..)
            | Node::Include(..)
            | Node::ImportMacro(..)
            | Node::Block(..) => false,
        }
    }

    fn expr(&self, e: &Expr) -> bool {
        self.val(&e.val) && e.filters.iter().all(|f| self.call(f))
    }

    fn call(&self, f: &FunctionCall) -> bool {
        f.args.values().all(|a| self.expr(a))
    }

    fn val(&self, v: &ExprVal) -> bool {
        match v {
            ExprVal::String(_) | ExprVal::Int(_) | ExprVal::Float(_) | ExprVal::Bool(_) => true,
            ExprVal::Ident(i) => self.ident(i),
            ExprVal::Math(m) => self.expr(&m.lhs) && self.expr(&m.rhs),
            ExprVal::Logic(l) => self.expr(&l.lhs) && self.expr(&l.rhs),
            ExprVal::Test(t) => self.ident(&t.ident) && t.args.iter().all(|a| self.expr(a)),
            ExprVal::MacroCall(_) => false,
            ExprVal::FunctionCall(f) => self.only.is_none() && self.call(f),
            ExprVal::Array(items) => items.iter().all(|e| self.expr(e)),
            ExprVal::StringConcat(c) => c.values.iter().all(|v| self.val(v)),
            ExprVal::In(i) => self.expr(&i.lhs) && self.expr(&i.rhs),
        }
    }

    fn ident(&self, ident: &str) -> bool {
        if ident.contains('[') {
            return false;
        }
        let root = ident.split('.').next().unwrap_or(ident);
        match &self.only {
            Some(only) => only.iter().any(|v| v == root),
            None => root != "backends" && root != "__tera_context",
        }
    }
}

/// The last render's backends and each split template's body for each.
#[derive(Default)]
struct Kept {
    /// The backends, in the order they were rendered.
    backends: Vec<BackendView>,
    /// By template, the body of each of `backends`, in the same order.
    bodies: HashMap<String, Vec<String>>,
}

/// The bodies of the last render, for the next one.
#[derive(Default)]
pub(crate) struct Bodies(Mutex<Kept>);

impl Bodies {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Whatever a panicking holder left is a valid memo, if a stale one.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many backends the last render kept bodies of, per template.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> std::collections::BTreeMap<String, usize> {
        let kept = self.lock();
        kept.bodies
            .iter()
            .map(|(t, b)| (t.clone(), b.len()))
            .collect()
    }

    /// Starts a render of `backends`: takes what the last render kept.
    /// Concurrent renders are correct; only one of them finds anything.
    pub(crate) fn start(&self, backends: Vec<BackendView>) -> Pass {
        let kept = std::mem::take(&mut *self.lock());
        // Both lists are in name order (the manifest's backends are a
        // sorted map), so one walk finds each backend's namesake; lists out
        // of order would only find fewer, never a backend that is not equal.
        let mut j = 0;
        let same = backends
            .iter()
            .map(|b| {
                while kept.backends.get(j).is_some_and(|k| k.name < b.name) {
                    j += 1;
                }
                kept.backends.get(j).is_some_and(|k| k == b).then_some(j)
            })
            .collect();
        Pass {
            backends,
            same,
            kept: kept.bodies,
            bodies: HashMap::new(),
        }
    }

    /// Ends a render that succeeded: keeps its backends and bodies.
    pub(crate) fn finish(&self, pass: Pass) {
        *self.lock() = Kept {
            backends: pass.backends,
            bodies: pass.bodies,
        };
    }
}

/// One render's backends and the bodies rendered so far.
pub(crate) struct Pass {
    /// This render's backends.
    backends: Vec<BackendView>,
    /// For each of `backends`, the position of an equal backend among the
    /// kept ones.
    same: Vec<Option<usize>>,
    /// The last render's bodies, by template, taken as they are reused.
    kept: HashMap<String, Vec<String>>,
    /// This render's bodies, by template.
    bodies: HashMap<String, Vec<String>>,
}

impl Pass {
    /// This render's backends back, for a render of whole templates.
    pub(crate) fn into_backends(self) -> Vec<BackendView> {
        self.backends
    }

    /// Renders split template `template` with `context` (the view without
    /// its backends).
    pub(crate) fn render(
        &mut self,
        tera: &Tera,
        template: &str,
        split: &Split,
        context: &tera::Context,
    ) -> Result<String, RenderError> {
        let error = |e: tera::Error| RenderError::Context {
            message: e.to_string(),
        };
        let bodies = match self.bodies.remove(template) {
            // A second target of the same template: the same bodies.
            Some(done) => done,
            None => {
                let mut kept = self.kept.remove(template).unwrap_or_default();
                let mut bodies = Vec::with_capacity(self.backends.len());
                for (b, same) in self.backends.iter().zip(&self.same) {
                    let reused = same.and_then(|j| kept.get_mut(j)).map(std::mem::take);
                    bodies.push(match reused {
                        Some(body) => body,
                        None => tera
                            .render(&split.body, &body_context(&split.var, b)?)
                            .map_err(error)?,
                    });
                }
                bodies
            }
        };
        let before = tera.render(&split.before, context).map_err(error)?;
        let after = tera.render(&split.after, context).map_err(error)?;
        let len = before.len() + bodies.iter().map(String::len).sum::<usize>() + after.len();
        let mut out = String::with_capacity(len);
        out.push_str(&before);
        for body in &bodies {
            out.push_str(body);
        }
        out.push_str(&after);
        self.bodies.insert(template.to_string(), bodies);
        Ok(out)
    }
}

/// Tera's context for one body: the backend, servers included, under the
/// loop's variable.
fn body_context(var: &str, backend: &BackendView) -> Result<tera::Context, RenderError> {
    let error = |e: serde_json::Error| RenderError::Context {
        message: e.to_string(),
    };
    let mut value = serde_json::to_value(backend).map_err(error)?;
    if let Value::Object(fields) = &mut value {
        let servers = serde_json::to_value(&backend.servers).map_err(error)?;
        fields.insert("servers".to_string(), servers);
    }
    let mut top = Map::new();
    top.insert(var.to_string(), value);
    tera::Context::from_value(Value::Object(top)).map_err(|e| RenderError::Context {
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use converge_model::{Layout, Manifests, NodeDesired};

    use super::*;
    use crate::Templates;

    fn shipped() -> Templates {
        Templates::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates"))
            .expect("templates")
    }

    fn shape(text: &str) -> &'static str {
        let t = Templates::from_sources(
            Path::new("t"),
            BTreeMap::from([("t.tera".to_string(), text.to_string())]),
        )
        .expect("parses");
        match t.shapes["t.tera"] {
            Shape::Without => "without",
            Shape::Split(_) => "split",
            Shape::Whole => "whole",
        }
    }

    #[test]
    fn the_shipped_haproxy_template_splits_and_the_others_never_read_backends() {
        let t = shipped();
        let shapes: BTreeMap<&str, &str> = t
            .shapes
            .iter()
            .map(|(name, s)| {
                let s = match s {
                    Shape::Without => "without",
                    Shape::Split(_) => "split",
                    Shape::Whole => "whole",
                };
                (name.as_str(), s)
            })
            .collect();
        assert_eq!(
            shapes,
            BTreeMap::from([
                ("haproxy.cfg.tera", "split"),
                ("keepalived.conf.tera", "without"),
                ("pgbouncer.ini.tera", "without"),
                ("userlist.txt.tera", "without"),
            ])
        );
    }

    #[test]
    fn a_body_that_reads_anything_but_its_backend_is_rendered_whole() {
        let body = |b: &str| shape(&format!("x\n{{% for be in backends %}}{b}{{% endfor %}}\n"));
        assert_eq!(body("{{ be.name }}{% for s in be.servers %}{{ s.name }} {{ loop.index }}{% if s.disabled %}{% break %}{% endif %}{% endfor %}"), "split");
        assert_eq!(body("{{ be.name | upper }} {{ be.name ~ '-x' }} {% if be.maxconn > 2 and 'a' in be.extra %}y{% endif %}"), "split");
        for b in [
            "{{ loop.index }}",
            "{{ node.name }}",
            "{{ be[be.name] }}",
            "{{ now() }}",
            "{{ be.name | replace(from=node.name, to='x') }}",
            "{% set x = be.name %}{{ x }}",
            "{% break %}",
            "{% include 't.tera' %}",
            "{% for s in be.servers %}{% endfor %}{{ s.name }}",
            "{{ __tera_context }}",
            "{% if backends %}{% endif %}",
        ] {
            assert_eq!(body(b), "whole", "{b}");
        }
    }

    #[test]
    fn a_template_that_reads_backends_outside_its_one_loop_is_rendered_whole() {
        let loop_ = "{% for be in backends %}{{ be.name }}{% endfor %}";
        assert_eq!(shape("{{ node.name }}{% set x = 1 %}{{ x }}"), "without");
        assert_eq!(shape(&format!("{{{{ now() }}}}{loop_}")), "split");
        for t in [
            format!("{{{{ backends | length }}}}{loop_}"),
            format!("{{% set n = node.name %}}{loop_}{{{{ n }}}}"),
            format!("{loop_}{loop_}"),
            "{% for be in backends | reverse %}{{ be.name }}{% endfor %}".to_string(),
            "{% for be in backends %}{{ be.name }}{% else %}none{% endfor %}".to_string(),
            "{% if x %}{% for be in backends %}{% endfor %}{% endif %}".to_string(),
            format!("{{{{ __tera_context }}}}{loop_}"),
        ] {
            assert_eq!(shape(&t), "whole", "{t}");
        }
    }

    fn desired(template: &str) -> NodeDesired {
        let manifest = format!(
            "nodes:\n  lb1: {{}}\nfrontends:\n  fe:\n    bind: [\":80\"]\n    \
             default_backend: web\nbackends:\n  web:\n    service: web\n    \
             maxconn: 50\n    health_check: {{path: /up}}\n  slots:\n    service: web\n    \
             runtime_api: {{slots: 6}}\n  sticky:\n    service: api\n    \
             sticky: {{cookie: S}}\n  api:\n    service: api\ntargets:\n  haproxy:\n    \
             template: {template}\n    destination: /etc/haproxy/haproxy.cfg\n    \
             validate: haproxy\n  again:\n    template: {template}\n    \
             destination: /etc/haproxy/again.cfg\n    validate: none\n"
        );
        let m = Manifests::from_sources(Path::new("m"), &[(PathBuf::from("m/a.yaml"), manifest)])
            .expect("manifest");
        m.validate().expect("valid");
        m.for_node("lb1").expect("node")
    }

    /// Flips, removals, additions, moves and a service emptied, one after
    /// the other, through one set of templates: every split render equals a
    /// whole render with nothing kept, and keeps a body per backend.
    fn split_renders_equal_whole_renders(templates: impl Fn() -> Templates, template: &str) {
        let desired = desired(template);
        let warm = templates();
        let layout = Layout::new("/r");
        for (step, catalog) in crate::churn::catalogs() {
            let hot = crate::render(&desired, &catalog, &warm, &layout).expect("render");
            let cold =
                crate::render_as(&desired, &catalog, &templates(), &layout, false).expect("render");
            for target in ["haproxy", "again"] {
                assert_eq!(
                    String::from_utf8_lossy(&hot.files[target].bytes),
                    String::from_utf8_lossy(&cold.files[target].bytes),
                    "step {step}, {target}"
                );
            }
            assert_eq!(
                warm.bodies.kept(),
                BTreeMap::from([(template.to_string(), 4)]),
                "step {step}: a body per backend"
            );
        }
    }

    #[test]
    fn split_renders_of_the_shipped_template_equal_whole_renders() {
        split_renders_equal_whole_renders(shipped, "haproxy.cfg.tera");
    }

    /// Whitespace control on every side of the loop and inside it.
    #[test]
    fn split_renders_keep_the_whitespace_control_around_the_loop() {
        let text = "head {{ node.name }}  \n\n  {%- for be in backends -%}  \n  \
                    [{{ be.name }}]\n  {%- for s in be.servers %} {{ loop.index }}:{{ s.name }}\
                    {%- if s.disabled %} off{% endif %}\n{% endfor -%}\n\n  \
                    {%- endfor %}   \n\n  {{- node.name }} tail  {% for f in frontends %}\
                    {{ f.name }}{% endfor %}\n";
        let templates = || {
            Templates::from_sources(
                Path::new("t"),
                BTreeMap::from([("t.tera".to_string(), text.to_string())]),
            )
            .expect("parses")
        };
        assert!(matches!(templates().shapes["t.tera"], Shape::Split(_)));
        split_renders_equal_whole_renders(templates, "t.tera");
    }
}
