//! Envoy's `json_format` access logs: an object whose string values are
//! format strings. A value that is exactly one operator keeps its type
//! (numbers for RESPONSE_CODE, BYTES_*, DURATION; `null` when the value is
//! missing); any other string value is rendered as text. Nested objects and
//! non-string literals are copied as they are. One object per line.

use super::{Entry, Format, Op, Seg, write_op};
use crate::config::ConfigError;
use crate::model::common::Ctx;
use serde_json::{Map, Value};

/// A compiled `json_format` object.
#[derive(Debug, Clone)]
pub struct JsonTemplate {
    fields: Vec<(String, Field)>,
}

#[derive(Debug, Clone)]
enum Field {
    /// Exactly one operator: typed value.
    Single(Op),
    /// Literal text and operators: a string.
    Text(Vec<Seg>),
    Literal(Value),
    Object(JsonTemplate),
}

impl JsonTemplate {
    pub(super) fn compile(
        f: &mut Format,
        ctx: &Ctx<'_>,
        object: &Map<String, Value>,
    ) -> Result<JsonTemplate, ConfigError> {
        let mut fields = Vec::with_capacity(object.len());
        for (k, v) in object {
            let c = ctx.field(k);
            let field = match v {
                Value::String(s) => {
                    let mut segs = f.parse(&c, s)?;
                    match segs.as_slice() {
                        [Seg::Op(_)] => match segs.pop() {
                            Some(Seg::Op(op)) => Field::Single(op),
                            _ => unreachable!("matched one operator"),
                        },
                        _ => Field::Text(segs),
                    }
                }
                Value::Object(o) => Field::Object(JsonTemplate::compile(f, &c, o)?),
                Value::Array(_) => {
                    return Err(c.unsupported("lists in json_format"));
                }
                other => Field::Literal(other.clone()),
            };
            fields.push((k.clone(), field));
        }
        Ok(JsonTemplate { fields })
    }

    fn value(&self, e: &Entry, buf: &mut String) -> Value {
        let mut map = Map::with_capacity(self.fields.len());
        for (k, f) in &self.fields {
            let v = match f {
                Field::Single(op) => single(op, e, buf),
                Field::Text(segs) => {
                    buf.clear();
                    for s in segs {
                        match s {
                            Seg::Lit(l) => buf.push_str(l),
                            Seg::Op(op) => write_op(op, e, buf),
                        }
                    }
                    Value::String(buf.clone())
                }
                Field::Literal(v) => v.clone(),
                Field::Object(t) => t.value(e, buf),
            };
            map.insert(k.clone(), v);
        }
        Value::Object(map)
    }

    /// Appends one JSON object (no newline) for `e`.
    pub(super) fn write(&self, e: &Entry, out: &mut String) {
        let mut buf = String::new();
        let v = self.value(e, &mut buf);
        out.push_str(&v.to_string());
    }
}

fn single(op: &Op, e: &Entry, buf: &mut String) -> Value {
    match op {
        Op::ResponseCode => Value::from(e.status),
        Op::BytesReceived => Value::from(e.bytes_received),
        Op::BytesSent => Value::from(e.bytes_sent),
        Op::Duration => Value::from(e.duration_ms),
        // No flags is "-" in JSON too, as Envoy writes it.
        Op::ResponseFlags => {
            buf.clear();
            e.flags.write(buf);
            Value::String(buf.clone())
        }
        other => {
            buf.clear();
            write_op(other, e, buf);
            if buf == "-" {
                Value::Null
            } else {
                Value::String(buf.clone())
            }
        }
    }
}
