//! Between byte spans and key paths. toml reports where in the text an error is;
//! an operator wants to know which key (`numbers[1].dial[0].ring[2]`) and on what
//! line. The checks after parsing know the key; this finds its line. Both walk the
//! spanned document tree toml parses (`DeTable`).

use std::fmt::Write as _;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A 1-based line and column (in characters), as editors count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// The position of byte `offset` in `text`.
pub(crate) fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

fn holds(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The key path of the innermost key or value whose span holds `span`, or `None`
/// when nothing holds it (then the error is about the document as a whole).
pub(crate) fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(_) => return syntax_key_at(text, span),
    };
    let mut best: Option<(usize, String)> = None;
    walk_table(doc.get_ref(), &mut String::new(), span, &mut best);
    best.map(|(_, path)| path)
}

/// For a syntax error, whose spans in the recovered tree are not to be trusted
/// (and a duplicate key is not in it at all): the section whose `[header]` comes
/// last before the error, and the key there when the error is on one (`name =`).
fn syntax_key_at(text: &str, span: &Range<usize>) -> Option<String> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut headers = Vec::new();
    collect_headers(text, doc.get_ref(), &mut String::new(), &mut headers);
    let section = headers
        .into_iter()
        .filter(|(start, _)| *start <= span.start)
        .max_by_key(|(start, _)| *start)
        .map(|(_, path)| path);
    let word = text.get(span.clone()).unwrap_or_default();
    let is_key = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && text
            .get(span.end..)
            .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with('='));
    match (section, is_key) {
        (Some(s), true) => Some(format!("{s}.{word}")),
        (None, true) => Some(word.to_string()),
        (s, false) => s,
    }
}

/// Tables written as `[header]` or `[[header]]`, with their start. (Only a span
/// whose text is such a header naming the table counts: after a syntax error
/// the recovered tree has tables the text does not.)
fn collect_headers(text: &str, t: &DeTable<'_>, path: &mut String, out: &mut Vec<(usize, String)>) {
    for (k, v) in t.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        let name: &str = k.get_ref();
        path.push_str(name);
        let mut visit = |v: &Spanned<DeValue<'_>>, path: &mut String| {
            if let DeValue::Table(inner) = v.get_ref() {
                if text
                    .get(v.span())
                    .is_some_and(|h| h.starts_with('[') && h.ends_with(']') && h.contains(name))
                {
                    out.push((v.span().start, path.clone()));
                }
                collect_headers(text, inner, path, out);
            }
        };
        match v.get_ref() {
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let l = path.len();
                    let _ = write!(path, "[{i}]");
                    visit(item, path);
                    path.truncate(l);
                }
            }
            _ => visit(v, path),
        }
        path.truncate(len);
    }
}

type Best = Option<(usize, String)>;

fn consider(at: &Range<usize>, path: &str, span: &Range<usize>, best: &mut Best) {
    // The smallest span that holds the error wins; on a tie, the deeper path (it
    // is visited later).
    if holds(at, span) && best.as_ref().is_none_or(|(len, _)| at.len() <= *len) {
        *best = Some((at.len(), path.to_string()));
    }
}

fn walk_table(t: &DeTable<'_>, path: &mut String, span: &Range<usize>, best: &mut Best) {
    for (k, v) in t.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k.get_ref());
        consider(&k.span(), path, span, best);
        walk_value(v, path, span, best);
        path.truncate(len);
    }
}

fn walk_value(v: &Spanned<DeValue<'_>>, path: &mut String, span: &Range<usize>, best: &mut Best) {
    consider(&v.span(), path, span, best);
    match v.get_ref() {
        DeValue::Table(t) => walk_table(t, path, span, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                walk_value(item, path, span, best);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Where the value at `key` (a path as `key_at` writes it) starts, or the nearest
/// ancestor that is written in the file (a missing key is reported at its table).
pub(crate) fn position_of(text: &str, key: &str) -> Option<Position> {
    let doc = DeTable::parse(text).ok()?;
    let mut table = Some(doc.get_ref());
    let mut found: Option<&Spanned<DeValue<'_>>> = None;
    'parts: for part in key.split('.').filter(|p| !p.is_empty()) {
        let (name, indices) = part.split_once('[').unwrap_or((part, ""));
        let Some(mut v) = table.and_then(|t| t.get(name)) else {
            break;
        };
        found = Some(v);
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            match (v.get_ref(), idx.trim_end_matches(']').parse::<usize>()) {
                (DeValue::Array(a), Ok(i)) if i < a.len() => {
                    v = &a[i];
                    found = Some(v);
                }
                _ => break 'parts,
            }
        }
        table = v.get_ref().as_table();
    }
    found.map(|v| position(text, v.span().start))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[sip]\nudp = \"x\"\n\n[[numbers]]\nid = \"a\"\ndial = [ { ring = [\"echo\", \"tone\"] } ]\n\n[[numbers]]\nid = \"b\"\n";

    #[test]
    fn positions_count_lines_and_characters() {
        assert_eq!(position("ab\ncd", 0), Position { line: 1, column: 1 });
        assert_eq!(position("ab\ncd", 4), Position { line: 2, column: 2 });
        assert_eq!(position("é=1\nx", 2), Position { line: 1, column: 2 });
        assert_eq!(position("ab", 99), Position { line: 1, column: 3 });
    }

    #[test]
    fn spans_map_to_key_paths() {
        let at = |needle: &str| {
            let start = DOC.find(needle).unwrap();
            key_at(DOC, &(start..start + needle.len()))
        };
        assert_eq!(at("\"x\"").as_deref(), Some("sip.udp"));
        assert_eq!(at("udp").as_deref(), Some("sip.udp"));
        assert_eq!(
            at("\"tone\"").as_deref(),
            Some("numbers[0].dial[0].ring[1]")
        );
        assert_eq!(at("\"b\"").as_deref(), Some("numbers[1].id"));
        assert_eq!(key_at("not toml", &(0..3)), None);
        assert_eq!(key_at("[sip\nudp = 1\n", &(4..4)), None);
        // A syntax error still has a key when the parser can recover.
        let dup = "[[t]]\nname = \"a\"\nname = \"b\"\n";
        let start = dup.rfind("name").unwrap();
        assert_eq!(
            key_at(dup, &(start..start + 4)).as_deref(),
            Some("t[0].name")
        );
        let bad = "[sip]\nudp = \"a\"\n[[n]]\nx = 1\n[[n]]\ny = \"a\" \"b\"\n";
        let start = bad.rfind("\"b\"").unwrap();
        assert_eq!(key_at(bad, &(start..start + 3)).as_deref(), Some("n[1]"));
        // A bare word not in key position is not taken for a key.
        let value = "[s]\nx = abc\n";
        let start = value.find("abc").unwrap();
        assert_eq!(key_at(value, &(start..start + 3)).as_deref(), Some("s"));
    }

    #[test]
    fn key_paths_map_to_positions() {
        let pos = |k: &str| position_of(DOC, k).map(|p| (p.line, p.column));
        assert_eq!(pos("sip.udp"), Some((2, 7)));
        assert_eq!(pos("numbers[0].dial[0].ring[1]"), Some((6, 28)));
        assert_eq!(pos("numbers[1].id"), Some((9, 6)));
        // Missing keys are reported where their nearest ancestor is.
        assert_eq!(pos("numbers[0].dial[3]"), pos("numbers[0].dial"));
        assert_eq!(
            pos("numbers[1].e164").map(|p| p.0),
            pos("numbers[1]").map(|p| p.0)
        );
        assert_eq!(pos("auth.token_secret"), None);
    }
}
