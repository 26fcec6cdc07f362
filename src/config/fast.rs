//! A fast reader for the plain subset of TOML that generated configs use.
//!
//! Invariant: [`parse`] returns either exactly the tree `toml_span::parse`
//! returns for the same text (the same keys, values and spans, so every
//! later error is positioned identically), or `None`, and then the caller
//! parses with toml_span, which reports every problem. It never reports an
//! error itself: anything outside its subset, or anything toml_span would
//! refuse (a duplicate key or table, `[x]` with `[[x]]`), makes it give up.
//!
//! The subset: `#` comments, blank lines, `[name]` and `[[name]]` headers
//! with one bare name, and `key = value` lines with a bare key and a value
//! that is a one-line string without escapes, a decimal integer, or a
//! boolean. A 10 000-peer file is 40 000 such lines; toml_span's tokenizer
//! walks it char by char through a CRLF-folding iterator and buffers every
//! table before building it, which was most of `validate`'s time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use toml_span::Span;
use toml_span::value::{Key, Table, Value, ValueInner};

/// One header's table as toml_span builds it.
struct Open<'s> {
    /// The header name (`None` for the root, before any header).
    name: Option<Key<'s>>,
    array: bool,
    /// From the header's `[` to the end of its line (toml_span's `at..end`).
    at: usize,
    end: usize,
    table: Table<'s>,
    /// Start of the first and end of the last `key = value` line.
    values: Option<(usize, usize)>,
}

impl<'s> Open<'s> {
    /// toml_span's `get_table_span`: the header joined with its values.
    fn span(&self) -> Span {
        match self.values {
            Some((s, e)) => Span::new(self.at.min(s), self.end.max(e)),
            None => Span::new(self.at, self.end),
        }
    }
}

/// Where each top-level name came from, to refuse what toml_span refuses.
enum Slot<'s> {
    /// A `key = value` at the top level, or a `[name]` table (in the root).
    Single,
    /// `[[name]]`: the first header's name and span (the array's), and the
    /// entries so far; moved into the root at the end.
    Array(Key<'s>, Span, Vec<Value<'s>>),
}

/// The tree of `src`, or `None` when toml_span must read it.
pub(crate) fn parse(src: &str) -> Option<Value<'_>> {
    let b = src.as_bytes();
    let mut root: Table<'_> = BTreeMap::new();
    let mut slots: BTreeMap<&str, Slot<'_>> = BTreeMap::new();
    let mut cur = Open {
        name: None,
        array: false,
        at: 0,
        end: 0,
        table: BTreeMap::new(),
        values: None,
    };
    let mut i = 0;
    while i < b.len() {
        i = skip_ws(b, i);
        match b.get(i) {
            None => break,
            Some(b'\n') => i += 1,
            Some(b'#') => i = comment(b, i)?,
            Some(b'[') => {
                let (next, header) = header(src, i)?;
                close(cur, &mut root, &mut slots)?;
                cur = header;
                i = next;
            }
            Some(_) => {
                let (next, line_end, key, value) = key_value(src, i)?;
                cur.values = Some(match cur.values {
                    Some((s, e)) => (s.min(key.span.start), e.max(line_end)),
                    None => (key.span.start, line_end),
                });
                match cur.table.entry(key) {
                    Entry::Occupied(_) => return None,
                    Entry::Vacant(v) => {
                        v.insert(value);
                    }
                }
                i = next;
            }
        }
    }
    close(cur, &mut root, &mut slots)?;
    for slot in slots.into_values() {
        if let Slot::Array(key, span, entries) = slot {
            root.insert(key, Value::with_span(ValueInner::Array(entries), span));
        }
    }
    Some(Value::with_span(
        ValueInner::Table(root),
        Span::new(0, src.len()),
    ))
}

/// Puts a finished table into the root, as toml_span would.
fn close<'s>(
    t: Open<'s>,
    root: &mut Table<'s>,
    slots: &mut BTreeMap<&'s str, Slot<'s>>,
) -> Option<()> {
    let span = t.span();
    let Some(name) = t.name else {
        // The root's own keys: each one is a top-level name.
        for (k, v) in t.table {
            let Cow::Borrowed(n) = k.name else {
                return None;
            };
            if slots.insert(n, Slot::Single).is_some() {
                return None;
            }
            root.insert(k, v);
        }
        return Some(());
    };
    let Cow::Borrowed(n) = name.name else {
        return None;
    };
    let entry = Value::with_span(ValueInner::Table(t.table), span);
    match (slots.entry(n), t.array) {
        (Entry::Vacant(v), false) => {
            v.insert(Slot::Single);
            root.insert(name, entry);
        }
        // The array is spanned like its first entry.
        (Entry::Vacant(v), true) => {
            v.insert(Slot::Array(name, span, vec![entry]));
        }
        (Entry::Occupied(mut o), true) => match o.get_mut() {
            Slot::Array(_, _, entries) => entries.push(entry),
            // A key or `[x]`, then `[[x]]`: toml_span explains.
            Slot::Single => return None,
        },
        // A table or key twice, or `[[x]]` then `[x]`.
        (Entry::Occupied(_), false) => return None,
    }
    Some(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// A comment from `#` through its newline (or the end): the offset after it.
/// Control characters other than tab make toml_span refuse the line.
fn comment(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i) {
            None => return Some(i),
            Some(b'\n') => return Some(i + 1),
            Some(&c) if c == b'\t' || c >= 0x20 => i += 1,
            Some(_) => return None,
        }
    }
}

/// After a value or header: spaces, an optional comment, then the newline
/// or the end of the file. The offset after all of it.
fn line_end(b: &[u8], i: usize) -> Option<usize> {
    let i = skip_ws(b, i);
    match b.get(i) {
        None => Some(i),
        Some(b'\n') => Some(i + 1),
        Some(b'#') => comment(b, i),
        Some(_) => None,
    }
}

fn is_keylike(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// A bare key at `i`: (offset after it, key).
fn bare_key(src: &str, i: usize) -> Option<(usize, Key<'_>)> {
    let b = src.as_bytes();
    let mut j = i;
    while b.get(j).copied().is_some_and(is_keylike) {
        j += 1;
    }
    if j == i {
        return None;
    }
    Some((
        j,
        Key {
            name: Cow::Borrowed(src.get(i..j)?),
            span: Span::new(i, j),
        },
    ))
}

/// `[name]` or `[[name]]` at `i`: (offset of the next line, its table).
fn header(src: &str, at: usize) -> Option<(usize, Open<'_>)> {
    let b = src.as_bytes();
    let array = b.get(at + 1) == Some(&b'[');
    let open = if array { at + 2 } else { at + 1 };
    let (mut i, name) = bare_key(src, open)?;
    for _ in 0..if array { 2 } else { 1 } {
        if b.get(i) != Some(&b']') {
            return None;
        }
        i += 1;
    }
    let end = line_end(b, i)?;
    Some((
        end,
        Open {
            name: Some(name),
            array,
            at,
            end,
            table: BTreeMap::new(),
            values: None,
        },
    ))
}

/// `key = value` at `i`: (offset of the next line, end of the value, key, value).
fn key_value(src: &str, i: usize) -> Option<(usize, usize, Key<'_>, Value<'_>)> {
    let b = src.as_bytes();
    let (j, key) = bare_key(src, i)?;
    let j = skip_ws(b, j);
    if b.get(j) != Some(&b'=') {
        return None;
    }
    let j = skip_ws(b, j + 1);
    let (value_end, value) = match b.get(j)? {
        &q @ (b'"' | b'\'') => {
            // Up to the closing quote; an escape, a control character
            // (tab included: rare, and toml_span's rules for it differ by
            // string kind) or DEL ends the fast path.
            let body = b.get(j + 1..)?;
            let len = body
                .iter()
                .position(|&c| c == q || c == b'\\' || c < 0x20 || c == 0x7f)?;
            if body.get(len) != Some(&q) {
                return None;
            }
            let k = j + 1 + len;
            // `""` is spanned differently by toml_span, and may open `"""`.
            if k == j + 1 {
                return None;
            }
            let s = src.get(j + 1..k)?;
            (
                k + 1,
                Value::with_span(ValueInner::String(Cow::Borrowed(s)), Span::new(j + 1, k)),
            )
        }
        _ => {
            let mut k = j;
            while b.get(k).copied().is_some_and(is_keylike) {
                k += 1;
            }
            let word = src.get(j..k)?;
            let v = match word {
                "true" => ValueInner::Boolean(true),
                "false" => ValueInner::Boolean(false),
                w => ValueInner::Integer(integer(w)?),
            };
            (k, Value::with_span(v, Span::new(j, k)))
        }
    };
    let next = line_end(b, value_end)?;
    Some((next, value_end, key, value))
}

/// A plain decimal integer (`0`, `-12`, `8472`); anything TOML spells
/// otherwise (`+1`, `1_000`, `0x10`, floats) is left to toml_span.
fn integer(w: &str) -> Option<i64> {
    let digits = w.strip_prefix('-').unwrap_or(w);
    let ok = !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !ok {
        return None;
    }
    w.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same tree, same spans: keys, values and every table's and array's span.
    fn same(a: &Value<'_>, b: &Value<'_>, at: &str) -> Result<(), String> {
        if a.span != b.span {
            return Err(format!("{at}: span {:?} vs {:?}", a.span, b.span));
        }
        match (a.as_ref(), b.as_ref()) {
            (ValueInner::Table(x), ValueInner::Table(y)) => {
                if x.len() != y.len() {
                    return Err(format!("{at}: {} keys vs {}", x.len(), y.len()));
                }
                for ((kx, vx), (ky, vy)) in x.iter().zip(y) {
                    if kx.name != ky.name || kx.span != ky.span {
                        return Err(format!(
                            "{at}: key {kx:?}@{:?} vs {ky:?}@{:?}",
                            kx.span, ky.span
                        ));
                    }
                    same(vx, vy, &format!("{at}.{}", kx.name))?;
                }
                Ok(())
            }
            (ValueInner::Array(x), ValueInner::Array(y)) => {
                if x.len() != y.len() {
                    return Err(format!("{at}: {} entries vs {}", x.len(), y.len()));
                }
                for (i, (vx, vy)) in x.iter().zip(y).enumerate() {
                    same(vx, vy, &format!("{at}[{i}]"))?;
                }
                Ok(())
            }
            (ValueInner::String(x), ValueInner::String(y)) if x == y => Ok(()),
            (ValueInner::Integer(x), ValueInner::Integer(y)) if x == y => Ok(()),
            (ValueInner::Boolean(x), ValueInner::Boolean(y)) if x == y => Ok(()),
            (x, y) => Err(format!("{at}: {x:?} vs {y:?}")),
        }
    }

    /// `Some(true)`: the fast path took it, with toml_span's tree;
    /// `Some(false)`: it left it to toml_span.
    fn check(src: &str) -> bool {
        match parse(src) {
            None => false,
            Some(fast) => {
                let slow = toml_span::parse(src).unwrap_or_else(|e| {
                    panic!("fast path accepted what toml_span refuses ({e:?}):\n{src}")
                });
                if let Err(e) = same(&fast, &slow, "root") {
                    panic!("trees differ: {e}\n{src}");
                }
                true
            }
        }
    }

    const PEERS: &str = "node_name = \"a\" # this node\n\n[engine]\nnexthops = \"auto\"\n\n\
        [[vxlan]]\nname = \"flannel.1\"\nvni = 1\nport=8472\nlearning = false\n\
        underlay = 'eth0'\n\n# peers\n[[peer]]\ndev = \"flannel.1\"\nsubnet = \"198.18.2.0/24\"\n\
        vtep_ip = \"192.0.2.2\"   \nvtep_mac = \"02:42:c6:12:02:00\"\n[[peer]]  # two\n\
        dev = \"flannel.1\"\nadopt = true\n\t subnet = \"198.18.3.0/24\"\n[daemon]\n\
        debounce_ms = -0\nresync_secs = 60\n[[route]]\n";

    #[test]
    fn takes_the_plain_subset_with_toml_spans_tree() {
        assert!(check(PEERS));
        assert!(check(""));
        assert!(check("\n# only a comment"));
        assert!(check("a = 1"));
        assert!(check("[nat]"));
        assert!(check("[[peer]]\n[[peer]]\n[[peer]]\nx = 'y'"));
        // Unknown keys and values of the wrong type are the schema's to
        // report: same tree, so same messages.
        assert!(check("[[vxlan]]\nnmae = \"x\"\nvni = \"1\"\nmtu = true\n"));
        assert!(check(
            "x = \"caf\u{e9} \u{1F600}\"\n# \u{7f} in a comment\n"
        ));
    }

    #[test]
    fn every_example_and_every_prefix_of_one() {
        let mut taken = 0;
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let src = std::fs::read_to_string(&path).unwrap_or_default();
                taken += usize::from(check(&src));
            }
        }
        // Cut anywhere (a truncated file): either the same tree or left alone.
        for cut in 0..=PEERS.len() {
            if let Some(prefix) = PEERS.get(..cut) {
                check(prefix);
            }
        }
        assert!(taken > 0, "no example took the fast path");
    }

    #[test]
    fn leaves_the_rest_and_every_error_to_toml_span() {
        for src in [
            "a = 1\na = 2",
            "[nat]\n[nat]",
            "[[peer]]\n[peer]",
            "[peer]\n[[peer]]",
            "peer = 1\n[[peer]]",
            "[[peer]]\nx = 1\nx = 2",
            "a.b = 1",
            "\"a\" = 1",
            "[a.b]",
            "[ a ]",
            "a = \"x\\ty\"",
            "a = \"\"",
            "a = '''x'''",
            "a = \"open",
            "a = 1.5",
            "a = 1_000",
            "a = 0x10",
            "a = +1",
            "a = 01",
            "a = inf",
            "a = [1]",
            "a = { b = 1 }",
            "a = 1979-05-27",
            "a = bare",
            "a = 1 b = 2",
            "a = 1\r\n",
            "a = \"tab\there\"",
            "# bell \u{7}\n",
            "a = 12345678901234567890",
            "=",
            "[]",
            "[[a]",
        ] {
            assert!(!check(src), "fast path took {src:?}");
        }
    }
}
