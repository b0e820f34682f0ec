//! containerd's filter syntax, for walks and listings.
//!
//! A list of filters matches an object when **any** filter matches; a filter is
//! a comma-separated list of selectors that must **all** match. A selector is a
//! field path, optionally followed by an operator and a value:
//!
//! | selector | matches when |
//! |---|---|
//! | `digest==sha256:ab…` | the field equals the value |
//! | `labels.app!=web` | the field is absent or differs |
//! | `labels."containerd.io/gc.root"` | the field is present |
//!
//! After `labels.` the rest of the path is the key, so `labels.a.b/c==x` and
//! `labels."a.b/c"==x` are the same. Values may be quoted with `"` (with `\"` and
//! `\\` escapes) to hold commas. The regular-expression operator `~=` is refused
//! with [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
//!
//! ```
//! use ocidist_content::filters::{Fields, Filters};
//!
//! struct Obj;
//! impl Fields for Obj {
//!     fn field(&self, path: &[&str]) -> Option<String> {
//!         match path {
//!             ["name"] => Some("redis".into()),
//!             ["labels", "tier"] => Some("cache".into()),
//!             _ => None,
//!         }
//!     }
//! }
//! let f = Filters::parse(&["name==nginx", "labels.tier==cache,name!=x"]).unwrap();
//! assert!(f.matches(&Obj));
//! ```

use crate::{Error, Result};

/// An object whose fields filters can read.
pub trait Fields {
    /// The value at `path` (`["digest"]`, `["labels", "KEY"]`, ...), if present.
    fn field(&self, path: &[&str]) -> Option<String>;
}

/// A parsed list of filters (any of them may match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    any_of: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filters {
    /// Parses filters; an empty list matches everything.
    pub fn parse(filters: &[&str]) -> Result<Self> {
        let any_of = filters
            .iter()
            .filter(|f| !f.trim().is_empty())
            .map(|f| parse_filter(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Filters { any_of })
    }

    /// True when no filter was given.
    pub fn is_empty(&self) -> bool {
        self.any_of.is_empty()
    }

    /// True when any filter matches `obj` (or there are none).
    pub fn matches(&self, obj: &dyn Fields) -> bool {
        self.any_of.is_empty()
            || self
                .any_of
                .iter()
                .any(|all| all.iter().all(|sel| sel.matches(obj)))
    }

    /// True when some selector reads a field under `root` (such as `labels`),
    /// so a store can skip loading what no filter looks at.
    pub fn mentions(&self, root: &str) -> bool {
        self.any_of
            .iter()
            .flatten()
            .any(|sel| sel.path.first().is_some_and(|p| p == root))
    }
}

impl Selector {
    fn matches(&self, obj: &dyn Fields) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let value = obj.field(&path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
        }
    }
}

fn invalid(filter: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("filter `{filter}`: {why}"))
}

fn parse_filter(filter: &str) -> Result<Vec<Selector>> {
    let mut selectors = Vec::new();
    let mut rest = filter.trim();
    loop {
        let (selector, after) = parse_selector(filter, rest)?;
        selectors.push(selector);
        rest = after.trim_start();
        if rest.is_empty() {
            return Ok(selectors);
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| invalid(filter, "expected ',' between selectors"))?
            .trim_start();
    }
}

/// Parses one selector from the front of `input`; returns it and the rest.
fn parse_selector<'a>(filter: &str, input: &'a str) -> Result<(Selector, &'a str)> {
    let (path, rest) = parse_path(filter, input)?;
    let rest = rest.trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("==") {
        let (v, r) = parse_value(filter, r)?;
        (Op::Equal(v), r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        let (v, r) = parse_value(filter, r)?;
        (Op::NotEqual(v), r)
    } else if rest.starts_with("~=") {
        return Err(invalid(
            filter,
            "the regular-expression operator ~= is not supported",
        ));
    } else if rest.is_empty() || rest.starts_with(',') {
        (Op::Present, rest)
    } else {
        return Err(invalid(filter, "expected ==, != or ',' after the field"));
    };
    Ok((Selector { path, op }, rest))
}

fn parse_path<'a>(filter: &str, input: &'a str) -> Result<(Vec<String>, &'a str)> {
    let mut path = Vec::new();
    let mut rest = input;
    loop {
        let is_map_key = path.len() == 1 && path[0] == "labels";
        let (component, after) = if rest.starts_with('"') {
            parse_quoted(filter, rest)?
        } else {
            // A label key runs to the operator: it may hold '.' and '/'.
            let stop =
                |c: char| matches!(c, '=' | '!' | '~' | ',' | ' ') || (!is_map_key && c == '.');
            let end = rest.find(stop).unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        if component.is_empty() {
            return Err(invalid(filter, "empty field name"));
        }
        if !is_map_key
            && !component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(filter, &format!("bad field name {component:?}")));
        }
        path.push(component);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None => return Ok((path, after)),
        }
    }
}

fn parse_value<'a>(filter: &str, input: &'a str) -> Result<(String, &'a str)> {
    let input = input.trim_start();
    if input.starts_with('"') {
        return parse_quoted(filter, input);
    }
    let end = input.find(',').unwrap_or(input.len());
    Ok((input[..end].trim_end().to_string(), &input[end..]))
}

fn parse_quoted<'a>(filter: &str, input: &'a str) -> Result<(String, &'a str)> {
    let mut out = String::new();
    let mut chars = input.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &input[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) => out.push(e),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(invalid(filter, "unterminated quote"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj {
        name: &'static str,
        labels: BTreeMap<&'static str, &'static str>,
    }

    impl Fields for Obj {
        fn field(&self, path: &[&str]) -> Option<String> {
            match path {
                ["name"] => Some(self.name.to_string()),
                ["labels", key] => self.labels.get(key).map(|v| v.to_string()),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj {
            name: "redis",
            labels: BTreeMap::from([("containerd.io/gc.root", "x"), ("a", "1,2")]),
        }
    }

    fn matches(filters: &[&str]) -> bool {
        Filters::parse(filters).unwrap().matches(&obj())
    }

    #[test]
    fn empty_filters_match_everything() {
        assert!(matches(&[]));
        assert!(matches(&[""]));
    }

    #[test]
    fn equality_inequality_and_presence() {
        assert!(matches(&["name==redis"]));
        assert!(!matches(&["name==nginx"]));
        assert!(matches(&["name!=nginx"]));
        assert!(matches(&["labels.containerd.io/gc.root"]));
        assert!(matches(&["labels.\"containerd.io/gc.root\"==x"]));
        assert!(!matches(&["labels.missing"]));
        assert!(matches(&["labels.missing!=v"]));
    }

    #[test]
    fn comma_is_and_list_is_or() {
        assert!(!matches(&["name==redis,labels.a==2"]));
        assert!(matches(&["name==redis,labels.a==\"1,2\""]));
        assert!(matches(&["name==nginx", "labels.a==\"1,2\""]));
    }

    #[test]
    fn malformed_filters_are_invalid_arguments() {
        for bad in [
            "name=redis",
            "name~=re.*",
            "labels.\"x",
            "na-me==x",
            ",name==x",
        ] {
            let err = Filters::parse(&[bad]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
