//! Strings with `{...}` jq placeholders: HTTP URLs and header values.

use serde_json::Value;

use super::{JqProgram, MappingError, Position};

/// A string with `{...}` placeholders holding jq expressions that start with `.`,
/// e.g. "https://registry.example/api/permits/{.new.id}" or "Bearer-{.key.id}".
/// `{{` and `}}` are literal braces. Anything else in braces that doesn't start with '.'
/// is an error at parse time (so typos are caught before anything connects).
#[derive(Debug, Clone)]
pub struct Template {
    key: String,
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Placeholder(JqProgram),
}

impl Template {
    /// Parses `source`, compiling every placeholder.
    pub fn parse(key: &str, source: &str) -> Result<Template, MappingError> {
        let template_error = |message: String| MappingError::Template {
            key: key.to_owned(),
            message,
        };
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(template_error(format!(
                        "unmatched `}}` at {} (write `}}}}` for a literal brace)",
                        Position::at(source, i)
                    )))
                }
                '{' => {
                    let start = i + 1;
                    let Some(end) = placeholder_end(source, start) else {
                        return Err(template_error(format!(
                            "unclosed `{{` at {} (write `{{{{` for a literal brace)",
                            Position::at(source, i)
                        )));
                    };
                    let expr = &source[start..end];
                    if !expr.trim_start().starts_with('.') {
                        return Err(template_error(format!(
                            "placeholder `{{{expr}}}` at {} must be a jq expression starting with `.` \
                             (write `{{{{` and `}}}}` for literal braces)",
                            Position::at(source, i)
                        )));
                    }
                    let program = JqProgram::compile(key, expr).map_err(|e| match e {
                        MappingError::Compile {
                            key,
                            position,
                            message,
                        } => MappingError::Compile {
                            key,
                            position: Position::at(source, start + position.offset),
                            message: format!("in placeholder `{{{expr}}}`: {message}"),
                        },
                        other => other,
                    })?;
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Placeholder(program));
                    // Skip the placeholder body and its closing brace.
                    while chars.next_if(|&(j, _)| j <= end).is_some() {}
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() || segments.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template {
            key: key.to_owned(),
            source: source.to_owned(),
            segments,
        })
    }

    /// True when there are no placeholders (callers skip rendering).
    pub fn is_static(&self) -> bool {
        self.literal().is_some()
    }

    /// The text (with `{{`/`}}` already unescaped) when the template is static.
    pub fn literal(&self) -> Option<&str> {
        match self.segments.as_slice() {
            [Segment::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The template as written in the config.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders; each placeholder must yield exactly one scalar (string inserted raw,
    /// number/bool as JSON text); null/absent/object/array/multiple outputs are errors
    /// that name the key and the placeholder.
    pub fn render(&self, input: &Value) -> Result<String, MappingError> {
        self.render_with(input, |out, value| out.push_str(value))
    }

    /// Like render, but placeholder values are percent-encoded as a URL path segment
    /// (so "a/b c" becomes "a%2Fb%20c"); literal parts stay as written.
    pub fn render_url(&self, input: &Value) -> Result<String, MappingError> {
        self.render_with(input, encode_path_segment)
    }

    fn render_with(
        &self,
        input: &Value,
        mut insert: impl FnMut(&mut String, &str),
    ) -> Result<String, MappingError> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Placeholder(program) => {
                    let value = self.scalar(program, input)?;
                    insert(&mut out, &value);
                }
            }
        }
        Ok(out)
    }

    /// The single scalar output of a placeholder, as text.
    fn scalar(&self, program: &JqProgram, input: &Value) -> Result<String, MappingError> {
        let placeholder = program.source();
        let outputs = program.first_outputs(input, 2).map_err(|e| match e {
            MappingError::Runtime { key, message } => MappingError::Runtime {
                key,
                message: format!("placeholder `{{{placeholder}}}`: {message}"),
            },
            MappingError::Limit { key, message } => MappingError::Limit {
                key,
                message: format!("placeholder `{{{placeholder}}}`: {message}"),
            },
            other => other,
        })?;
        let fail = |what: &str| {
            MappingError::Template {
            key: self.key.clone(),
            message: format!("placeholder `{{{placeholder}}}` {what}; it must yield one string, number or boolean"),
        }
        };
        match outputs.as_slice() {
            [] => Err(fail("yielded no value")),
            [Value::String(s)] => Ok(s.clone()),
            [Value::Number(n)] => Ok(n.to_string()),
            [Value::Bool(b)] => Ok(b.to_string()),
            [Value::Null] => Err(fail("yielded null (absent field?)")),
            [Value::Array(_)] => Err(fail("yielded an array")),
            [Value::Object(_)] => Err(fail("yielded an object")),
            _ => Err(fail("yielded more than one value")),
        }
    }
}

/// The byte index of the `}` closing a placeholder whose body starts at
/// `start`, skipping braces inside jq string literals and their `\(...)`.
fn placeholder_end(source: &str, start: usize) -> Option<usize> {
    enum Frame {
        Code { parens: usize },
        Str,
    }
    let mut stack = vec![Frame::Code { parens: 0 }];
    let mut braces = 0usize;
    let mut chars = source[start..].char_indices();
    while let Some((i, c)) = chars.next() {
        let nested = stack.len() > 1;
        match stack.last_mut()? {
            Frame::Code { parens } => match c {
                '"' => stack.push(Frame::Str),
                '{' => braces += 1,
                '}' if braces == 0 && !nested => return Some(start + i),
                '}' => braces = braces.saturating_sub(1),
                '(' => *parens += 1,
                ')' if *parens == 0 && nested => {
                    stack.pop();
                }
                ')' => *parens = parens.saturating_sub(1),
                _ => {}
            },
            Frame::Str => match c {
                '\\' => {
                    if let Some((_, '(')) = chars.next() {
                        stack.push(Frame::Code { parens: 0 });
                    }
                }
                '"' => {
                    stack.pop();
                }
                _ => {}
            },
        }
    }
    None
}

/// Appends `value` percent-encoded so that it stays one URL path segment:
/// everything but RFC 3986 unreserved characters is escaped.
fn encode_path_segment(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}
