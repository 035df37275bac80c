//! Parser for Postgres array literals (`array_out` form, with `array_in`'s
//! tolerance for whitespace and backslashes in unquoted elements).

use std::borrow::Cow;

use serde_json::Value;

use super::{decode_text, PgType};

/// Postgres' MAXDIM; deeper input is malformed, and the cap bounds recursion.
const MAX_DIMS: usize = 6;

/// One parsed node of an array literal.
#[derive(Debug, PartialEq)]
pub(crate) enum Node<'a> {
    /// An unquoted `NULL`.
    Null,
    /// An element's text, with quotes and escapes removed (borrowed when it had none).
    Item(Cow<'a, str>),
    /// A `{...}` sub-array.
    List(Vec<Node<'a>>),
}

/// The parsed literal; None when malformed.
pub(crate) fn parse(text: &str) -> Option<Node<'_>> {
    let body = strip_dimensions(text)?;
    let mut parser = Parser {
        s: body,
        b: body.as_bytes(),
        pos: 0,
    };
    let root = parser.list(1)?;
    parser.skip_ws();
    if parser.pos != parser.b.len() {
        return None;
    }
    Some(root)
}

/// Decodes an array literal whose elements have kind `elem`; None when malformed.
pub(super) fn decode_array(elem: &PgType, text: &str) -> Option<Value> {
    parse(text).map(|root| to_json(elem, root))
}

fn to_json(elem: &PgType, node: Node<'_>) -> Value {
    match node {
        Node::Null => Value::Null,
        Node::Item(text) => decode_text(elem, &text),
        Node::List(items) => Value::Array(items.into_iter().map(|n| to_json(elem, n)).collect()),
    }
}

/// Drops a leading `[lb:ub]...=` decoration (printed when a lower bound is not 1).
fn strip_dimensions(text: &str) -> Option<&str> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('[') {
        return Some(trimmed);
    }
    let eq = trimmed.find('=')?;
    let dims = trimmed[..eq].trim_end();
    let mut rest = dims;
    let mut count = 0;
    while !rest.is_empty() {
        let open = rest.strip_prefix('[')?;
        let close = open.find(']')?;
        let inner = &open[..close];
        let valid = inner.split(':').count() <= 2 && inner.split(':').all(is_bound);
        if !valid {
            return None;
        }
        count += 1;
        rest = &open[close + 1..];
    }
    if count == 0 || count > MAX_DIMS {
        return None;
    }
    Some(trimmed[eq + 1..].trim_start())
}

fn is_bound(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

/// Cursor over the literal's bytes. Every byte it branches on is ASCII, so
/// element bytes copied between them stay valid UTF-8.
struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// `{ item (, item)* }` or `{}`; `depth` counts dimensions.
    fn list(&mut self, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DIMS || self.peek() != Some(b'{') {
            return None;
        }
        self.pos += 1;
        self.skip_ws();
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(Node::List(items));
        }
        loop {
            self.skip_ws();
            let item = match self.peek()? {
                b'{' => self.list(depth + 1)?,
                b'"' => self.quoted()?,
                _ => self.unquoted()?,
            };
            items.push(item);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
        // A level holds either sub-arrays only or elements only: `{1,{2}}`
        // and `{{1},NULL}` are rejected by Postgres too.
        let lists = items.iter().filter(|n| matches!(n, Node::List(_))).count();
        if lists != 0 && lists != items.len() {
            return None;
        }
        Some(Node::List(items))
    }

    /// `"..."` with `\x` meaning the byte x.
    fn quoted(&mut self) -> Option<Node<'a>> {
        self.pos += 1;
        let from = self.pos;
        // Most elements have no escapes: borrowed.
        while let Some(c) = self.peek() {
            match c {
                b'"' => {
                    self.pos += 1;
                    return Some(Node::Item(Cow::Borrowed(self.s.get(from..self.pos - 1)?)));
                }
                b'\\' => break,
                _ => self.pos += 1,
            }
        }
        let mut out = self.b[from..self.pos].to_vec();
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    out.push(self.peek()?);
                    self.pos += 1;
                }
                _ => out.push(c),
            }
        }
        String::from_utf8(out)
            .ok()
            .map(|s| Node::Item(Cow::Owned(s)))
    }

    /// An element up to `,` or `}`; surrounding whitespace is not part of it.
    fn unquoted(&mut self) -> Option<Node<'a>> {
        let from = self.pos;
        // Most elements have no escapes: borrowed from the input, trailing
        // whitespace left out.
        let mut end = from;
        loop {
            match self.peek()? {
                b',' | b'}' => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    self.pos = from;
                    return self.unquoted_escaped();
                }
                c => {
                    self.pos += 1;
                    if !c.is_ascii_whitespace() {
                        end = self.pos;
                    }
                }
            }
        }
        let item = self.s.get(from..end)?;
        if item.is_empty() {
            return None;
        }
        if item.eq_ignore_ascii_case("NULL") {
            return Some(Node::Null);
        }
        Some(Node::Item(Cow::Borrowed(item)))
    }

    /// [`Parser::unquoted`] of an element with a backslash: `\x` is the byte x, an
    /// escaped space is kept, and an escaped `NULL` is not null.
    fn unquoted_escaped(&mut self) -> Option<Node<'a>> {
        let mut out = Vec::new();
        // Length of `out` up to its last escaped or non-space byte, so trailing
        // whitespace is trimmed but an escaped space is kept.
        let mut keep = 0;
        loop {
            let c = self.peek()?;
            match c {
                b',' | b'}' => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    self.pos += 1;
                    out.push(self.peek()?);
                    keep = out.len();
                }
                _ => {
                    out.push(c);
                    if !c.is_ascii_whitespace() {
                        keep = out.len();
                    }
                }
            }
            self.pos += 1;
        }
        out.truncate(keep);
        String::from_utf8(out)
            .ok()
            .map(|s| Node::Item(Cow::Owned(s)))
    }
}
