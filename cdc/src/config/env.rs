//! `${VAR}` substitution from the environment, before the TOML is deserialized.

use super::{key_err, ConfigError};

/// Whether the string at `path` is a jq program. Programs are taken verbatim: `env`
/// is removed from jq so that payloads never see the environment, and substituting
/// `${VAR}` into a program would hand it over all the same.
pub(super) fn is_jq_program(path: &str) -> bool {
    let Some((head, last)) = path.rsplit_once('.') else {
        return false;
    };
    let table = head.split('[').next().unwrap_or(head);
    let indexed = head.ends_with(']') && !head[table.len()..].contains('.');
    indexed
        && match table {
            "trigger" => last == "when",
            "sink" => matches!(last, "filter" | "transform" | "key"),
            _ => false,
        }
}

/// Replaces `${VAR}` (and `${VAR:-default}`) in every string value except jq
/// programs; `$${` is a literal `${`.
pub(super) fn substitute_env(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(_) if is_jq_program(path) => {}
        toml::Value::String(s) if s.contains("${") => {
            *s = expand(s, path, env)?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute_env(item, path, env)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute_env(v, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(
    s: &str,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            // `$${` is the escape for a literal `${`.
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            key_err(
                path,
                "unterminated ${...}: write ${NAME} to use an environment variable, or $${ for a literal ${",
            )
        })?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(key_err(
                path,
                format!("${{{expr}}} is not a valid environment variable reference"),
            ));
        }
        match (env(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(key_err(
                    path,
                    format!("environment variable {name} is not set (referenced as ${{{name}}}); export it or write ${{{name}:-default}}"),
                ))
            }
            (Some(v), None) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
