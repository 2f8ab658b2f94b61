//! Field path → source position, for error messages.
//!
//! serde_norway drops positions once a document is a `Value`, and the typed
//! structs carry none. Rather than thread spans through every struct, the
//! loader walks each file once with yaml-rust2's event parser and records
//! where every mapping key and sequence item starts. Any error that knows its
//! field path (serde's, or a cross-reference check's) can then be placed at
//! `file:line:column`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Formats a path the way serde_path_to_error does: `a.b[0].c`.
pub fn format_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Positions (1-based line and column) of every key and item in one file.
#[derive(Debug, Default, Clone)]
pub struct PathIndex {
    positions: HashMap<Vec<Segment>, (usize, usize)>,
}

impl PathIndex {
    /// Indexes `source`. A document yaml-rust2 cannot parse is indexed up
    /// to its syntax error (serde_norway reports the error itself, with its
    /// own position), so the names written before it are still known.
    pub fn build(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        // An error ends the walk; what was seen before it stays indexed.
        let _ = parser.load(&mut builder, false);
        Self {
            positions: builder.positions,
        }
    }

    /// The keys directly under the top-level key `section`.
    pub fn keys_under(&self, section: &str) -> Vec<String> {
        self.positions
            .keys()
            .filter_map(|p| match p.as_slice() {
                [Segment::Key(s), Segment::Key(name)] if s == section => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// The position of `path`, or of its longest known prefix.
    pub fn find(&self, path: &[Segment]) -> Option<(usize, usize)> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.positions.get(&path[..n]).copied())
    }
}

/// A container being walked: a mapping waiting for a key or a value, or a
/// sequence counting its items.
#[derive(Debug)]
enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    path: Vec<Segment>,
    positions: HashMap<Vec<Segment>, (usize, usize)>,
}

impl Builder {
    /// Called when a node (scalar or container) starts; returns true when the
    /// node is a mapping key rather than a value.
    fn enter_node(&mut self, mark: Marker, scalar: Option<&str>) -> bool {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            Some(Frame::Map { key }) if key.is_none() => {
                let k = scalar.unwrap_or("?").to_string();
                *key = Some(k.clone());
                let mut p = self.path.clone();
                p.push(Segment::Key(k));
                self.positions.entry(p).or_insert(pos);
                true
            }
            Some(Frame::Map { key }) => {
                let k = key.clone().unwrap_or_default();
                self.path.push(Segment::Key(k));
                false
            }
            Some(Frame::Seq { next }) => {
                let i = *next;
                *next += 1;
                self.path.push(Segment::Index(i));
                self.positions.entry(self.path.clone()).or_insert(pos);
                false
            }
            None => false,
        }
    }

    /// Called when a value node ends.
    fn leave_value(&mut self) {
        if let Some(Frame::Map { key }) = self.stack.last_mut() {
            *key = None;
        }
        if !self.stack.is_empty() {
            self.path.pop();
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref value, ..) => {
                let is_key = self.enter_node(mark, Some(value));
                if !is_key {
                    self.leave_value();
                }
            }
            Event::Alias(_) => {
                let is_key = self.enter_node(mark, None);
                if !is_key {
                    self.leave_value();
                }
            }
            Event::MappingStart(..) => {
                self.enter_node(mark, None);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.enter_node(mark, None);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.leave_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Vec<Segment> {
        path.split('.').map(|s| Segment::Key(s.into())).collect()
    }

    #[test]
    fn finds_keys_and_items() {
        let src = "a:\n  b: 1\n  c:\n    - x: 1\n    - y: 2\nd: [1, 2]\n";
        let idx = PathIndex::build(src);
        assert_eq!(idx.find(&key("a")), Some((1, 1)));
        assert_eq!(idx.find(&key("a.b")), Some((2, 3)));
        let mut p = key("a.c");
        p.push(Segment::Index(1));
        assert_eq!(idx.find(&p).map(|(line, _)| line), Some(5));
        p.push(Segment::Key("y".into()));
        assert_eq!(idx.find(&p), Some((5, 7)));
        assert_eq!(idx.find(&key("d")), Some((6, 1)));
        // Unknown leaf falls back to the nearest known parent.
        assert_eq!(idx.find(&key("a.b.zzz")), Some((2, 3)));
    }

    #[test]
    fn formats_like_serde_path_to_error() {
        let p = vec![
            Segment::Key("routes".into()),
            Segment::Index(0),
            Segment::Key("backend".into()),
        ];
        assert_eq!(format_path(&p), "routes[0].backend");
    }
}
