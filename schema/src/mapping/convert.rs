//! serde_json <-> jaq values, done directly (not through serde) because it
//! runs twice per evaluation.

use jaq_json::{Num, Val};
use serde_json::{Map, Number, Value};

/// Converts an event to a jaq value.
pub(crate) fn from_json(v: &Value) -> Val {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => Val::Num(if let Some(i) = n.as_i64() {
            Num::from_integral(i)
        } else if let Some(u) = n.as_u64() {
            Num::from_integral(u)
        } else {
            exact_num(n.as_str())
        }),
        Value::String(s) => Val::from(s.clone()),
        Value::Array(a) => a.iter().map(from_json).collect(),
        Value::Object(o) => Val::obj(
            o.iter()
                .map(|(k, v)| (Val::from(k.clone()), from_json(v)))
                .collect(),
        ),
    }
}

/// A number beyond i64/u64 as jq sees it: a big integer, or a decimal literal that
/// jaq keeps verbatim until arithmetic touches it (as jq 1.7 does), so a value that
/// passes through a transform keeps every digit.
fn exact_num(text: &str) -> Num {
    let integral = text
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
    match integral.then(|| Num::from_str_radix(text, 10)).flatten() {
        Some(n) => n,
        None => Num::Dec(jaq_json::Rc::new(text.to_owned())),
    }
}

/// Converts a jaq output back to JSON: byte strings become (lossy) UTF-8
/// strings, `nan`/`infinite` become null as in jq, non-string object keys
/// their JSON text.
pub(crate) fn to_json(v: &Val) -> Value {
    match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => num_to_json(n),
        Val::BStr(b) | Val::TStr(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        Val::Arr(a) => Value::Array(a.iter().map(to_json).collect()),
        Val::Obj(o) => {
            let mut map = Map::with_capacity(o.len());
            for (k, v) in o.iter() {
                let key = match k {
                    Val::TStr(b) | Val::BStr(b) => String::from_utf8_lossy(b).into_owned(),
                    other => other.to_string(),
                };
                map.insert(key, to_json(v));
            }
            Value::Object(map)
        }
    }
}

fn num_to_json(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::Number(Number::from(*i as i64)),
        Num::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        // Big integers and decimal literals keep their digits (serde_json's
        // arbitrary precision); what is not JSON number syntax becomes a float.
        Num::BigInt(_) | Num::Dec(_) => match n.to_string().parse::<Number>() {
            Ok(num) => Value::Number(num),
            Err(_) => n
                .to_string()
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map_or(Value::Null, Value::Number),
        },
    }
}
