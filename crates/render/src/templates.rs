//! The Tera environment: every `*.tera` file of the templates directory,
//! loaded and parsed up front so a syntax error surfaces before any target
//! renders, with autoescaping off (these are config files, not HTML; the
//! context is made safe by [`crate::sanitize`] instead).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use converge_model::Location;
use tera::Tera;

use crate::error::{RenderError, SyntaxError};
use crate::memo::Memo;
use crate::split::{Bodies, Shape};

/// Parsed templates and their sources (kept to place errors on a line),
/// how each reads the backends, and what the last render leaves the next
/// to reuse: each backend's body of a split template (`split.rs`),
/// and the servers with their serialized values (`memo.rs`).
pub struct Templates {
    dir: PathBuf,
    pub(crate) tera: Tera,
    sources: BTreeMap<String, String>,
    pub(crate) shapes: BTreeMap<String, Shape>,
    pub(crate) memo: Memo,
    pub(crate) bodies: Bodies,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("dir", &self.dir)
            .field("names", &self.sources.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Templates {
    /// Loads every `*.tera` file directly in `dir`.
    pub fn load(dir: &Path) -> Result<Self, RenderError> {
        let dir_err = |e: std::io::Error| RenderError::Dir {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        };
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let path = entry.map_err(dir_err)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("tera") {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(dir_err)?;
            sources.insert(name.to_string(), text);
        }
        Self::from_sources(dir, sources)
    }

    /// Builds from in-memory `name → text`; `dir` is used in messages.
    pub fn from_sources(
        dir: &Path,
        sources: BTreeMap<String, String>,
    ) -> Result<Self, RenderError> {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        tera.register_filter("pgb_quote", pgb_quote);
        // Each file is added alone so a syntax error names its own file,
        // and every file is tried so one run reports every broken one.
        let mut errors = Vec::new();
        for (name, text) in &sources {
            if let Err(e) = tera.add_raw_template(name, text) {
                let message = chain(&e);
                let (line, column) = pest_position(&message).unwrap_or((0, 0));
                errors.push(SyntaxError {
                    template: name.clone(),
                    location: Location {
                        file: dir.join(name),
                        line,
                        column,
                    },
                    targets: Vec::new(),
                    message,
                });
            }
        }
        if !errors.is_empty() {
            return Err(RenderError::Syntax(errors));
        }
        let shapes = sources
            .keys()
            .map(|name| (name.clone(), Shape::of(&mut tera, name)))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            tera,
            sources,
            shapes,
            memo: Memo::default(),
            bodies: Bodies::default(),
        })
    }

    /// Template names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    /// Renders `template` for `target`.
    pub fn render(
        &self,
        target: &str,
        template: &str,
        context: &tera::Context,
    ) -> Result<String, RenderError> {
        if !self.sources.contains_key(template) {
            return Err(RenderError::Missing {
                target: target.to_string(),
                template: template.to_string(),
                dir: self.dir.clone(),
            });
        }
        self.tera.render(template, context).map_err(|e| {
            let message = chain(&e);
            let line = offending_name(&message)
                .and_then(|name| first_line_with(&self.sources[template], &name))
                .unwrap_or(0);
            RenderError::Render {
                target: target.to_string(),
                file: self.dir.join(template),
                line,
                message,
            }
        })
    }
}

/// Quotes a value for PgBouncer's auth file: `"` doubled inside `"…"`.
fn pgb_quote(
    value: &tera::Value,
    _args: &std::collections::HashMap<String, tera::Value>,
) -> tera::Result<tera::Value> {
    let s = value
        .as_str()
        .ok_or_else(|| tera::Error::msg("pgb_quote expects a string"))?;
    if s.contains(['\n', '\r', '\0']) {
        return Err(tera::Error::msg(
            "pgb_quote: value contains a line break or NUL",
        ));
    }
    Ok(tera::Value::String(format!(
        "\"{}\"",
        s.replace('"', "\"\"")
    )))
}

/// The error and all its causes on one line, most specific last.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.join(": ")
}

/// Tera's parser reports ` --> LINE:COL`.
fn pest_position(message: &str) -> Option<(usize, usize)> {
    let rest = &message[message.find("--> ")? + 4..];
    let (line, rest) = rest.split_once(':')?;
    let column = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((line.trim().parse().ok()?, column))
}

/// The name in "Variable `x` not found" or "Filter `x` not found".
fn offending_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

fn first_line_with(source: &str, needle: &str) -> Option<usize> {
    source
        .lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Templates, RenderError> {
        let mut m = BTreeMap::new();
        m.insert("t.tera".to_string(), text.to_string());
        Templates::from_sources(Path::new("templates"), m)
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = one("line one\nline two\n{% for x in %}\n").expect_err("bad syntax");
        let msg = err.to_string();
        assert!(
            msg.starts_with("templates/t.tera:3:13: template syntax error:"),
            "{msg}"
        );
    }

    #[test]
    fn every_broken_template_is_reported_with_the_targets_using_it() {
        let sources = BTreeMap::from([
            ("a.tera".to_string(), "{{ x }\n".to_string()),
            ("b.tera".to_string(), "fine {{ x }}\n".to_string()),
            ("c.tera".to_string(), "\n\n{% if %}\n".to_string()),
        ]);
        let err = Templates::from_sources(Path::new("templates"), sources).expect_err("two broken");
        let manifests = converge_model::Manifests::from_sources(
            Path::new("m"),
            &[(
                PathBuf::from("m/t.yaml"),
                "targets:\n  \
                 one: {template: a.tera, destination: /a, validate: none}\n  \
                 two: {template: a.tera, destination: /b, validate: none}\n  \
                 three: {template: b.tera, destination: /c, validate: none}\n"
                    .to_string(),
            )],
        )
        .expect("manifest");
        let msg = err.name_targets(&manifests.manifest).to_string();
        // Each error's first line; Tera adds a snippet under it.
        let lines: Vec<&str> = msg
            .lines()
            .filter(|l| l.starts_with("templates/"))
            .collect();
        assert_eq!(lines.len(), 2, "{msg}");
        assert!(
            lines[0].starts_with("templates/a.tera:1:6: targets one, two: template syntax error:"),
            "{msg}"
        );
        assert!(
            lines[1].starts_with("templates/c.tera:3:7: template syntax error:"),
            "{msg}"
        );
    }

    #[test]
    fn missing_variable_names_file_line_and_target() {
        let t = one("a\nb {{ nope.field }}\n").expect("parses");
        let err = t
            .render("haproxy", "t.tera", &tera::Context::new())
            .expect_err("missing var");
        let msg = err.to_string();
        assert!(
            msg.starts_with("templates/t.tera:2: target haproxy:"),
            "{msg}"
        );
        assert!(msg.contains("nope.field"), "{msg}");
    }

    #[test]
    fn pgb_quote_doubles_quotes() {
        let v = pgb_quote(&tera::Value::String("a\"b".into()), &Default::default()).expect("quote");
        assert_eq!(v, tera::Value::String("\"a\"\"b\"".into()));
        assert!(pgb_quote(&tera::Value::String("a\nb".into()), &Default::default()).is_err());
    }
}
