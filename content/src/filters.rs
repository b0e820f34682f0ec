//! containerd's filter syntax (its `pkg/filters`), for walks and listings.
//!
//! A list of filters matches an object when **any** filter matches; a filter is
//! a comma-separated list of selectors that must **all** match. A selector is a
//! field path, optionally followed by an operator and a value:
//!
//! | selector | matches when |
//! |---|---|
//! | `digest==sha256:ab…` | the field equals the value |
//! | `labels.app!=web` | the field differs (an absent field reads as empty) |
//! | `labels.app!=""` | the field is present and not empty |
//! | `name~=^docker.io/` | the field (or the empty text, when absent) matches the regular expression |
//! | `labels."containerd.io/gc.root"` | the field is present |
//!
//! After `labels.` or `annotations.` the rest of the path is the key, so
//! `labels.a.b/c==x`, `labels."a.b/c"==x` and `labels."a".b/c==x` are the
//! same. A value runs to a comma or a space; quote it with `"` to hold either,
//! with Go's escapes (`\"`, `\\`, `\n`, `\x2e`, `\u00e9`, …). An empty value
//! is written `""`. A `~=` pattern may also be quoted with `/…/` or `|…|`,
//! and uses the [`regex`] crate's syntax, close to Go's RE2; one that does not
//! compile is refused when parsed, where containerd matches nothing. Unlike
//! containerd, a label key may hold `-` and `/` unquoted.
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
//! assert!(Filters::parse(&["name~=/^re/"]).unwrap().matches(&Obj));
//! assert!(!Filters::parse(&[r#"labels.zone!="""#]).unwrap().matches(&Obj));
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
    Matches(Pattern),
}

/// A compiled `~=` pattern, compared by its text.
#[derive(Debug, Clone)]
struct Pattern(regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

/// Field paths under which the rest of the path is one map key.
const MAP_ROOTS: [&str; 2] = ["labels", "annotations"];

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
        // As containerd's selectors: only presence and equality tell an
        // absent field from an empty one.
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref().unwrap_or("") != want,
            Op::Matches(pattern) => pattern.0.is_match(value.as_deref().unwrap_or("")),
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
        let (v, r) = parse_value(filter, r, false)?;
        (Op::Equal(v), r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        let (v, r) = parse_value(filter, r, false)?;
        (Op::NotEqual(v), r)
    } else if let Some(r) = rest.strip_prefix("~=") {
        let (v, r) = parse_value(filter, r, true)?;
        let pattern = regex::Regex::new(&v)
            .map_err(|e| invalid(filter, &format!("bad regular expression: {e}")))?;
        (Op::Matches(Pattern(pattern)), r)
    } else if rest.is_empty() || rest.starts_with(',') {
        (Op::Present, rest)
    } else {
        return Err(invalid(
            filter,
            "expected ==, !=, ~= or ',' after the field",
        ));
    };
    Ok((Selector { path, op }, rest))
}

fn parse_path<'a>(filter: &str, input: &'a str) -> Result<(Vec<String>, &'a str)> {
    let mut path: Vec<String> = Vec::new();
    let mut rest = input;
    let after = loop {
        let in_map = path
            .first()
            .is_some_and(|root| MAP_ROOTS.contains(&root.as_str()));
        let (component, after) = if rest.starts_with('"') {
            parse_quoted(filter, rest, '"')?
        } else {
            // A map key runs to the operator: it may hold '.' and '/'.
            let stop = |c: char| {
                matches!(c, '=' | '!' | '~' | ',') || c.is_whitespace() || (!in_map && c == '.')
            };
            let end = rest.find(stop).unwrap_or(rest.len());
            (rest[..end].to_string(), &rest[end..])
        };
        if component.is_empty() {
            return Err(invalid(filter, "empty field name"));
        }
        if !in_map
            && !component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(filter, &format!("bad field name {component:?}")));
        }
        path.push(component);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None => break after,
        }
    };
    // containerd joins what follows a map root: `labels."a".b` is key `a.b`.
    if path.len() > 2 && MAP_ROOTS.contains(&path[0].as_str()) {
        let key = path[1..].join(".");
        path.truncate(1);
        path.push(key);
    }
    Ok((path, after))
}

/// A value: quoted, or running to a comma or a space. `alt_quotes` (for
/// `~=`) lets `/…/` and `|…|` quote a pattern, as containerd does; elsewhere
/// a value starting with either is refused, as there.
fn parse_value<'a>(filter: &str, input: &'a str, alt_quotes: bool) -> Result<(String, &'a str)> {
    let input = input.trim_start();
    match input.chars().next() {
        Some('"') => parse_quoted(filter, input, '"'),
        Some(quote @ ('/' | '|')) if alt_quotes => parse_quoted(filter, input, quote),
        Some('/' | '|') => Err(invalid(
            filter,
            "a value starting with '/' or '|' must be in double quotes",
        )),
        _ => {
            let end = input
                .find(|c: char| c == ',' || c.is_whitespace())
                .unwrap_or(input.len());
            if end == 0 {
                return Err(invalid(filter, "expected a value (\"\" for an empty one)"));
            }
            Ok((input[..end].to_string(), &input[end..]))
        }
    }
}

/// The text between `quote` and the next unescaped `quote` at the front of
/// `input`, with Go's escapes, as containerd unquotes; and the rest.
fn parse_quoted<'a>(filter: &str, input: &'a str, quote: char) -> Result<(String, &'a str)> {
    let body = &input[quote.len_utf8()..];
    let mut out: Vec<u8> = Vec::new();
    let mut chars = body.char_indices();
    let push = |out: &mut Vec<u8>, c: char| {
        let mut utf8 = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
    };
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => {
                let text = String::from_utf8(out)
                    .map_err(|_| invalid(filter, "quoted escapes that are not UTF-8"))?;
                return Ok((text, &body[i + c.len_utf8()..]));
            }
            '\n' => break,
            '\\' => {
                let Some((_, escape)) = chars.next() else {
                    break;
                };
                let mut digits = |n: usize, radix: u32| -> Result<u32> {
                    let mut value = 0u32;
                    for _ in 0..n {
                        let digit = chars
                            .next()
                            .and_then(|(_, d)| d.to_digit(radix))
                            .ok_or_else(|| invalid(filter, "bad numeric escape in quotes"))?;
                        value = value * radix + digit;
                    }
                    Ok(value)
                };
                match escape {
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    '\\' => out.push(b'\\'),
                    e if e == quote => push(&mut out, e),
                    'x' => out.push(digits(2, 16)? as u8),
                    'u' | 'U' => {
                        let code = digits(if escape == 'u' { 4 } else { 8 }, 16)?;
                        let c = char::from_u32(code)
                            .ok_or_else(|| invalid(filter, "bad unicode escape in quotes"))?;
                        push(&mut out, c);
                    }
                    '0'..='7' => {
                        let rest = digits(2, 8)?;
                        let value = escape.to_digit(8).unwrap_or(0) * 64 + rest;
                        let byte = u8::try_from(value)
                            .map_err(|_| invalid(filter, "bad octal escape in quotes"))?;
                        out.push(byte);
                    }
                    other => {
                        return Err(invalid(
                            filter,
                            &format!("illegal escape \\{other} in quotes"),
                        ));
                    }
                }
            }
            c => push(&mut out, c),
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
        annotations: BTreeMap<&'static str, &'static str>,
    }

    impl Fields for Obj {
        fn field(&self, path: &[&str]) -> Option<String> {
            match path {
                ["name"] => Some(self.name.to_string()),
                ["labels", key] => self.labels.get(key).map(|v| v.to_string()),
                ["annotations", key] => self.annotations.get(key).map(|v| v.to_string()),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj {
            name: "redis",
            labels: BTreeMap::from([
                ("containerd.io/gc.root", "x"),
                ("a", "1,2"),
                ("blank", ""),
                ("spaced", "a b\tc"),
            ]),
            annotations: BTreeMap::from([("org.opencontainers.image.ref.name", "v1")]),
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
            "name~=(re",
            "labels.\"x",
            "na-me==x",
            ",name==x",
            "name==",
            "name==,labels.a",
            "name==red is",
            "name==/redis/",
            "name!=|redis|",
            "labels.\"a\\qb\"",
            "name==\"\\x4\"",
            "name==\"\\777\"",
            "name==\"\\ud800\"",
            "name==\"\\xff\"",
            "name==\"a\nb\"",
        ] {
            let err = Filters::parse(&[bad]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    /// containerd's reading of an absent field: empty, for `!=` and `~=`.
    #[test]
    fn an_absent_field_reads_as_empty_to_not_equal_and_matches() {
        assert!(matches(&["labels.a!=\"\""]));
        assert!(!matches(&["labels.missing!=\"\""]));
        assert!(!matches(&["labels.blank!=\"\""]));
        assert!(matches(&["labels.blank"]));
        assert!(!matches(&["labels.missing==\"\""]));
        assert!(matches(&["labels.blank==\"\""]));
        assert!(matches(&["labels.missing~=^$"]));
        assert!(!matches(&["labels.missing~=."]));
    }

    #[test]
    fn regular_expressions_with_their_quotes() {
        assert!(matches(&["name~=^re"]));
        assert!(matches(&["name~=/^re.is$/"]));
        assert!(matches(&["name~=/^(redis|nginx)$/"]));
        assert!(matches(&["name~=|^re/?dis$|"]));
        assert!(matches(&["name~=\"^re\\\\w+$\""]));
        assert!(matches(&["labels.a~=\"^1,\""]));
        assert!(!matches(&["name~=^nginx"]));
        assert!(matches(&["name~=/a\\/b/", "name==redis"]));
    }

    /// After `labels.` or `annotations.` the rest is the key, however quoted.
    #[test]
    fn map_keys_hold_dots_quoted_or_not() {
        for key in [
            "annotations.org.opencontainers.image.ref.name==v1",
            "annotations.\"org.opencontainers.image.ref.name\"==v1",
            "annotations.\"org.opencontainers\".image.ref.name==v1",
            "labels.\"containerd.io/gc\".root==x",
        ] {
            assert!(matches(&[key]), "{key}");
        }
        assert!(!matches(&["annotations.org.opencontainers==v1"]));
    }

    /// Go's escapes, as containerd unquotes values and keys.
    #[test]
    fn quoted_text_takes_go_escapes() {
        assert!(matches(&["labels.\"containerd\\x2eio/gc.root\"==x"]));
        assert!(matches(&["labels.\"containerd\\u002eio/gc\\056root\""]));
        assert!(matches(&["labels.spaced==\"a b\\tc\""]));
        assert!(matches(&[
            "name==\"re\\\"dis\"",
            "name==\"\\U00000072edis\""
        ]));
        assert!(matches(&[" name == redis , labels.a == \"1,2\" "]));
    }
}
