//! Reading a manifests directory into a [`Manifest`], with every problem
//! reported at once and placed at `file:line:column`.
//!
//! Each file is parsed to a YAML value, then each entry of each section is
//! deserialized on its own. One bad backend therefore does not hide a bad
//! frontend two files away, and serde's field path for the failing entry,
//! prefixed with `section.name`, finds its position in the file's
//! [`PathIndex`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_norway::Value;

use crate::bounds;
use crate::error::{unlocated, Location, ManifestError, ManifestErrors};
use crate::locate::{format_path, PathIndex, Segment};
use crate::manifest::Manifest;
use crate::wording;

/// Sections a manifest file may contain.
const SECTIONS: &[&str] = &[
    "nodes",
    "vips",
    "frontends",
    "backends",
    "databases",
    "targets",
    "haproxy",
    "pgbouncer",
    "keepalived",
    "rollout",
];

/// A parsed source file with its position index.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    index: PathIndex,
}

/// The manifests of one directory, merged, with where everything came from.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The directory the files were read from (secrets resolve against it).
    pub dir: PathBuf,
    /// The merged manifest.
    pub manifest: Manifest,
    sources: Vec<Source>,
    /// `(section, name)` → index into `sources`.
    origins: HashMap<(String, String), usize>,
    /// `(section, name)` of entries that are written but failed to load,
    /// so that references to them are not reported as undefined too.
    failed: HashSet<(String, String)>,
    /// Files with a YAML syntax error (read only up to it), or too large
    /// or deeply nested to read at all.
    unreadable: Vec<PathBuf>,
}

impl Manifests {
    /// Reads every `*.yaml`/`*.yml` file directly in `dir`, in name order.
    pub fn load(dir: &Path) -> Result<Self, ManifestErrors> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            single(
                dir,
                String::new(),
                format!("cannot read manifests directory: {e}"),
            )
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(single(
                dir,
                String::new(),
                "no *.yaml manifest files in this directory".into(),
            ));
        }
        let mut texts = Vec::with_capacity(files.len());
        for path in files {
            let text = bounds::read(&path, "manifest").map_err(|e| ManifestErrors(vec![e]))?;
            texts.push((path, text));
        }
        Self::from_sources(dir, &texts)
    }

    /// Builds from in-memory `(path, text)` pairs; `load` without the disk.
    pub fn from_sources(dir: &Path, texts: &[(PathBuf, String)]) -> Result<Self, ManifestErrors> {
        let mut out = Self {
            dir: dir.to_path_buf(),
            manifest: Manifest::default(),
            sources: Vec::new(),
            origins: HashMap::new(),
            failed: HashSet::new(),
            unreadable: Vec::new(),
        };
        let mut errors = Vec::new();
        for (path, text) in texts {
            if let Err(e) = bounds::check(path, text, "manifest") {
                errors.push(e);
                out.sources.push(Source {
                    path: path.clone(),
                    index: PathIndex::default(),
                });
                out.unreadable.push(path.clone());
                continue;
            }
            let source = Source {
                path: path.clone(),
                index: PathIndex::build(text),
            };
            let file_id = out.sources.len();
            out.sources.push(source);
            let value: Value = match serde_norway::from_str(text) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(yaml_error(path, &e, String::new()));
                    // The names written before the error exist; whatever
                    // refers to them elsewhere is not a second problem.
                    for section in SECTIONS {
                        for name in out.sources[file_id].index.keys_under(section) {
                            out.failed.insert(((*section).to_string(), name));
                        }
                    }
                    out.unreadable.push(path.clone());
                    continue;
                }
            };
            out.merge_file(file_id, value, &mut errors);
        }
        if errors.is_empty() {
            return Ok(out);
        }
        // Check what did load, so that one broken file or entry does not
        // hide the reference errors of the others until it is fixed.
        if let Err(more) = out.validate() {
            errors.extend(more.0);
        }
        Err(ManifestErrors(errors))
    }

    /// True when entry `name` of `section` is written but failed to load.
    pub(crate) fn failed_to_load(&self, section: &str, name: &str) -> bool {
        self.failed
            .contains(&(section.to_string(), name.to_string()))
    }

    /// The files that could not be parsed as YAML, as named to the loader.
    pub(crate) fn unreadable_files(&self) -> Vec<String> {
        self.unreadable
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    fn merge_file(&mut self, file_id: usize, value: Value, errors: &mut Vec<ManifestError>) {
        let top = match value {
            Value::Null => return,
            Value::Mapping(m) => m,
            _ => {
                errors.push(self.error_at(
                    file_id,
                    &[],
                    "a manifest file must be a mapping of sections".into(),
                ));
                return;
            }
        };
        for (key, section) in top {
            let Some(name) = key.as_str().map(str::to_owned) else {
                errors.push(self.error_at(file_id, &[], "section names must be strings".into()));
                continue;
            };
            let path = [Segment::Key(name.clone())];
            match name.as_str() {
                "haproxy" => {
                    let r = self.entry(file_id, &path, section);
                    self.set_once(file_id, "haproxy", r, errors, |m, v| m.haproxy = v);
                }
                "pgbouncer" => {
                    let r = self.entry(file_id, &path, section);
                    self.set_once(file_id, "pgbouncer", r, errors, |m, v| m.pgbouncer = v);
                }
                "keepalived" => {
                    let r = self.entry(file_id, &path, section);
                    self.set_once(file_id, "keepalived", r, errors, |m, v| m.keepalived = v);
                }
                "rollout" => {
                    let r = self.entry(file_id, &path, section);
                    self.set_once(file_id, "rollout", r, errors, |m, v| m.rollout = v);
                }
                "nodes" => self.named(file_id, &name, section, errors, |m| &mut m.nodes),
                "vips" => self.named(file_id, &name, section, errors, |m| &mut m.vips),
                "frontends" => self.named(file_id, &name, section, errors, |m| &mut m.frontends),
                "backends" => self.named(file_id, &name, section, errors, |m| &mut m.backends),
                "databases" => self.named(file_id, &name, section, errors, |m| &mut m.databases),
                "targets" => self.named(file_id, &name, section, errors, |m| &mut m.targets),
                other => errors.push(self.error_at(
                    file_id,
                    &path,
                    match wording::suggest(other, SECTIONS.iter().copied()) {
                        hint if hint.is_empty() => format!(
                            "unknown section `{other}`, expected one of: {}",
                            SECTIONS.join(", ")
                        ),
                        hint => format!("unknown section `{other}`{hint}"),
                    },
                )),
            }
        }
    }

    /// Stores a program-wide settings block, rejecting a second definition.
    fn set_once<T>(
        &mut self,
        file_id: usize,
        section: &str,
        parsed: Result<T, ManifestError>,
        errors: &mut Vec<ManifestError>,
        store: impl FnOnce(&mut Manifest, T),
    ) {
        match parsed {
            Err(e) => errors.push(e),
            Ok(v) => {
                let key = (section.to_string(), String::new());
                if let Some(first) = self.origins.get(&key) {
                    let first = self.sources[*first].path.display().to_string();
                    errors.push(self.error_at(
                        file_id,
                        &[Segment::Key(section.into())],
                        format!("`{section}` is already defined in {first}"),
                    ));
                } else {
                    self.origins.insert(key, file_id);
                    store(&mut self.manifest, v);
                }
            }
        }
    }

    /// Merges a section of named entries, each deserialized on its own.
    fn named<T: DeserializeOwned>(
        &mut self,
        file_id: usize,
        section: &str,
        value: Value,
        errors: &mut Vec<ManifestError>,
        map: impl Fn(&mut Manifest) -> &mut BTreeMap<String, T>,
    ) {
        let sec_path = [Segment::Key(section.into())];
        let entries = match value {
            Value::Null => return,
            Value::Mapping(m) => m,
            _ => {
                errors.push(self.error_at(
                    file_id,
                    &sec_path,
                    format!("`{section}` must be a mapping of name → definition"),
                ));
                return;
            }
        };
        for (key, body) in entries {
            let Some(name) = key.as_str().map(str::to_owned) else {
                errors.push(self.error_at(file_id, &sec_path, "names must be strings".into()));
                continue;
            };
            let path = [Segment::Key(section.into()), Segment::Key(name.clone())];
            if !valid_name(&name) {
                errors.push(self.error_at(
                    file_id,
                    &path,
                    format!("name `{name}` may only contain letters, digits, `_`, `-` and `.` (1-64 characters)"),
                ));
                continue;
            }
            let origin = (section.to_string(), name.clone());
            if let Some(first) = self.origins.get(&origin) {
                let first = self.sources[*first].path.display().to_string();
                errors.push(self.error_at(
                    file_id,
                    &path,
                    format!("{section} `{name}` is already defined in {first}"),
                ));
                continue;
            }
            match self.entry::<T>(file_id, &path, body) {
                Ok(v) => {
                    self.origins.insert(origin, file_id);
                    map(&mut self.manifest).insert(name, v);
                }
                Err(e) => {
                    errors.push(e);
                    self.failed.insert(origin);
                }
            }
        }
    }

    /// Deserializes one value, placing a failure at its field path.
    fn entry<T: DeserializeOwned>(
        &self,
        file_id: usize,
        prefix: &[Segment],
        value: Value,
    ) -> Result<T, ManifestError> {
        // An absent body (`web:` with nothing after it) means "all defaults".
        let value = if value.is_null() {
            Value::Mapping(Default::default())
        } else {
            value
        };
        serde_path_to_error::deserialize(value).map_err(|e| {
            let mut path = prefix.to_vec();
            path.extend(serde_path(e.path()));
            self.error_for_serde(file_id, path, &e.inner().to_string())
        })
    }

    fn error_for_serde(
        &self,
        file_id: usize,
        mut path: Vec<Segment>,
        message: &str,
    ) -> ManifestError {
        // For an unknown field, point at the offending key itself.
        if let Some(field) = backticked(message, "unknown field `") {
            if path.last() != Some(&Segment::Key(field.clone())) {
                path.push(Segment::Key(field));
            }
        }
        self.error_at(file_id, &path, wording::serde_message(message))
    }

    /// An error at `path` in source `file_id`.
    fn error_at(&self, file_id: usize, path: &[Segment], message: String) -> ManifestError {
        let source = &self.sources[file_id];
        let (line, column) = source.index.find(path).unwrap_or((0, 0));
        ManifestError {
            location: Location {
                file: source.path.clone(),
                line,
                column,
            },
            path: format_path(path),
            message,
        }
    }

    /// An error about entry `name` of `section` at the sub-path `rest`.
    pub fn error(
        &self,
        section: &str,
        name: &str,
        rest: &[Segment],
        message: String,
    ) -> ManifestError {
        let mut path = vec![Segment::Key(section.into()), Segment::Key(name.into())];
        path.extend_from_slice(rest);
        self.error_for(&(section.to_string(), name.to_string()), &path, message)
    }

    /// An error inside a program-wide settings block (`haproxy`, `pgbouncer`).
    pub fn settings_error(&self, section: &str, rest: &[&str], message: String) -> ManifestError {
        let mut path = vec![Segment::Key(section.into())];
        path.extend(rest.iter().map(|k| Segment::Key((*k).into())));
        self.error_for(&(section.to_string(), String::new()), &path, message)
    }

    /// An error at `path` in the file that defined `origin`; at the
    /// directory when nothing defined it (a default was used).
    fn error_for(
        &self,
        origin: &(String, String),
        path: &[Segment],
        message: String,
    ) -> ManifestError {
        match self.origins.get(origin) {
            Some(&file_id) => self.error_at(file_id, path, message),
            None => unlocated(&self.dir, format_path(path), message),
        }
    }
}

/// Names land in config files; keep them to a charset every format accepts.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses a whole document into `T`, placing a failure at `file:line:col`.
/// `what` names the file's role in messages (`catalog`).
pub(crate) fn parse_typed<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    what: &str,
) -> Result<T, ManifestErrors> {
    bounds::check(path, text, what).map_err(|e| ManifestErrors(vec![e]))?;
    let value: Value = serde_norway::from_str(text)
        .map_err(|e| ManifestErrors(vec![yaml_error(path, &e, String::new())]))?;
    let value = if value.is_null() {
        Value::Mapping(Default::default())
    } else {
        value
    };
    let holder = Manifests {
        dir: path.to_path_buf(),
        manifest: Manifest::default(),
        sources: vec![Source {
            path: path.to_path_buf(),
            index: PathIndex::build(text),
        }],
        origins: HashMap::new(),
        failed: HashSet::new(),
        unreadable: Vec::new(),
    };
    holder
        .entry(0, &[], value)
        .map_err(|e| ManifestErrors(vec![e]))
}

fn serde_path(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect()
}

fn backticked(message: &str, after: &str) -> Option<String> {
    let rest = message.strip_prefix(after)?;
    Some(rest.split('`').next()?.to_string())
}

fn yaml_error(path: &Path, e: &serde_norway::Error, field: String) -> ManifestError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    ManifestError {
        location: Location {
            file: path.to_path_buf(),
            line,
            column,
        },
        path: field,
        message: format!("invalid YAML: {e}"),
    }
}

fn single(path: &Path, field: String, message: String) -> ManifestErrors {
    ManifestErrors(vec![unlocated(path, field, message)])
}
