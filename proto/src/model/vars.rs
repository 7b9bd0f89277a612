//! A route's `vars`: APISIX-style request conditions, all of which must hold.
//!
//! Each condition is `[var, op, value]` or `[var, "!", op, value]` (negated):
//!
//! * `var`: `http_<header>` (`_` → `-`, any case), `arg_<name>` (query argument,
//!   percent-decoded), `cookie_<name>`, `remote_addr`, `uri` (the normalised path),
//!   `request_method`, `host` (lowercase, without port).
//! * `op`: `==`, `~=` (not equal), `>`, `<` (numeric; a non-numeric request value is false),
//!   `~~` (regex search), `~*` (case-insensitive regex search), `in` (value in a list), `has`
//!   (the variable, as a list, contains the value: a header is split on commas, an argument
//!   given several times counts each time).
//!
//! Numbers in the config compare as their decimal text for `==`, `~=`, `in` and `has`. A
//! missing variable is unequal to everything, so `~=` holds for it and every other operator
//! fails (before any `!`).

use serde_json::Value;

use super::error::{Result, ValidationError};

/// Longest regex source accepted (the compiled size is bounded by REGEX_SIZE_LIMIT).
pub const MAX_REGEX_LEN: usize = 1024;
use super::validate::REGEX_SIZE_LIMIT;

/// A request variable a condition reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// Lowercase header name, `_` already turned into `-`.
    Header(String),
    Arg(String),
    Cookie(String),
    RemoteAddr,
    Uri,
    RequestMethod,
    Host,
}

/// A parsed operator with its operand.
#[derive(Debug, Clone)]
pub enum VarOp {
    Eq(String),
    Ne(String),
    Gt(f64),
    Lt(f64),
    /// Compiled regex; case-insensitive for `~*`.
    Regex(regex::Regex),
    In(Vec<String>),
    Has(String),
}

/// One parsed condition.
#[derive(Debug, Clone)]
pub struct VarExpr {
    pub var: Var,
    pub negate: bool,
    pub op: VarOp,
}

/// The operators `vars` accepts.
pub const OPERATORS: [&str; 8] = ["==", "~=", ">", "<", "~~", "~*", "in", "has"];

/// Parses (and so validates) a route's `vars`. Errors name the element: `0.1` for the first
/// condition's operator, to be put under `vars`.
pub fn parse_vars(vars: &[Value]) -> Result<Vec<VarExpr>> {
    vars.iter()
        .enumerate()
        .map(|(i, v)| parse_expr(v).map_err(|e| e.under(&i.to_string())))
        .collect()
}

fn parse_expr(v: &Value) -> Result<VarExpr> {
    let Some(items) = v.as_array() else {
        return Err(ValidationError::new(
            "",
            "a condition is an array: [var, op, value] or [var, \"!\", op, value]",
        ));
    };
    let var = match items.first() {
        Some(Value::String(s)) => parse_var(s).map_err(|e| e.under("0"))?,
        _ => {
            return Err(ValidationError::new(
                "0",
                "the variable name must be a string",
            ));
        }
    };
    let negate = items.get(1).and_then(Value::as_str) == Some("!");
    let op_at = if negate { 2 } else { 1 };
    let value_at = op_at + 1;
    if items.len() != value_at + 1 {
        return Err(ValidationError::new(
            "",
            format!(
                "expected {} elements: [var, {}op, value]",
                value_at + 1,
                if negate { "\"!\", " } else { "" }
            ),
        ));
    }
    let field = |at: usize| at.to_string();
    let op = match items.get(op_at) {
        Some(Value::String(s)) if OPERATORS.contains(&s.as_str()) => s.as_str(),
        other => {
            return Err(ValidationError::new(
                field(op_at),
                format!(
                    "{} is not an operator (one of {})",
                    other.map_or("nothing".into(), Value::to_string),
                    OPERATORS.join(" ")
                ),
            ));
        }
    };
    let value = items.get(value_at).unwrap_or(&Value::Null);
    let bad = |m: &str| ValidationError::new(field(value_at), m.to_string());
    let op = match op {
        "==" => VarOp::Eq(scalar(value).ok_or_else(|| bad("must be a string or a number"))?),
        "~=" => VarOp::Ne(scalar(value).ok_or_else(|| bad("must be a string or a number"))?),
        ">" | "<" => {
            let n = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .filter(|n| n.is_finite())
            .ok_or_else(|| bad("must be a number"))?;
            if op == ">" {
                VarOp::Gt(n)
            } else {
                VarOp::Lt(n)
            }
        }
        "~~" | "~*" => {
            let Value::String(src) = value else {
                return Err(bad("must be a regular expression (a string)"));
            };
            if src.len() > MAX_REGEX_LEN {
                return Err(bad(&format!("longer than {MAX_REGEX_LEN} bytes")));
            }
            let re = regex::RegexBuilder::new(src)
                .case_insensitive(op == "~*")
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| bad(&format!("invalid regular expression: {e}")))?;
            VarOp::Regex(re)
        }
        "in" => {
            let Value::Array(list) = value else {
                return Err(bad("must be an array of strings or numbers"));
            };
            let list = list
                .iter()
                .map(scalar)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("must be an array of strings or numbers"))?;
            VarOp::In(list)
        }
        _ => VarOp::Has(scalar(value).ok_or_else(|| bad("must be a string or a number"))?),
    };
    Ok(VarExpr { var, negate, op })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one variable name (`remote_addr`, `uri`, `host`, `request_method`, `http_<header>`,
/// `arg_<name>`, `cookie_<name>`).
pub fn parse_var(name: &str) -> Result<Var> {
    let err = |m: &str| Err(ValidationError::new("", format!("'{name}': {m}")));
    let rest_ok = |rest: &str| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if let Some(h) = name.strip_prefix("http_") {
        if !rest_ok(h) || h.contains('.') {
            return err("expected http_<header name>");
        }
        return Ok(Var::Header(h.replace('_', "-").to_ascii_lowercase()));
    }
    if let Some(a) = name.strip_prefix("arg_") {
        if a.is_empty() {
            return err("expected arg_<argument name>");
        }
        return Ok(Var::Arg(a.to_string()));
    }
    if let Some(c) = name.strip_prefix("cookie_") {
        if !rest_ok(c) {
            return err("expected cookie_<cookie name>");
        }
        return Ok(Var::Cookie(c.to_string()));
    }
    match name {
        "remote_addr" => Ok(Var::RemoteAddr),
        "uri" => Ok(Var::Uri),
        "request_method" => Ok(Var::RequestMethod),
        "host" => Ok(Var::Host),
        _ => err(
            "unknown variable (http_<header>, arg_<name>, cookie_<name>, remote_addr, uri, \
             request_method or host)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(v: Value) -> String {
        let list = v.as_array().expect("array").clone();
        parse_vars(&list).expect_err("should fail").field
    }

    #[test]
    fn accepts_every_operator_and_variable() {
        let vars = json!([
            ["http_x_client", "==", "mobile"],
            ["arg_page", ">", "1"],
            ["arg_page", "<", 10],
            ["cookie_session", "~~", "^a"],
            ["host", "~*", "^API\\."],
            ["remote_addr", "in", ["127.0.0.1", "::1"]],
            ["request_method", "~=", "POST"],
            ["uri", "!", "==", "/x"],
            ["http_accept", "has", "text/html"],
        ]);
        let parsed = parse_vars(vars.as_array().unwrap()).expect("valid");
        assert_eq!(parsed.len(), 9);
        assert_eq!(parsed[0].var, Var::Header("x-client".into()));
        assert!(matches!(parsed[1].op, VarOp::Gt(n) if n == 1.0));
        assert!(parsed[7].negate);
        assert!(matches!(&parsed[7].op, VarOp::Eq(s) if s == "/x"));
    }

    #[test]
    fn errors_name_the_element() {
        assert_eq!(field(json!([["http_x", "=", "a"]])), "0.1");
        assert_eq!(field(json!([["http_x", "!", "eq", "a"]])), "0.2");
        assert_eq!(
            field(json!([["http_x", "==", "a"], ["uri", "~~", "("]])),
            "1.2"
        );
        assert_eq!(field(json!([["uri", "!", "~*", "[a"]])), "0.3");
        assert_eq!(field(json!([["nope", "==", "a"]])), "0.0");
        assert_eq!(field(json!([["http_", "==", "a"]])), "0.0");
        assert_eq!(field(json!([[1, "==", "a"]])), "0.0");
        assert_eq!(field(json!([["arg_p", ">", "x"]])), "0.2");
        assert_eq!(field(json!([["arg_p", "in", "x"]])), "0.2");
        assert_eq!(field(json!([["arg_p", "==", ["x"]]])), "0.2");
        assert_eq!(field(json!([["arg_p", "=="]])), "0");
        assert_eq!(field(json!([["arg_p", "==", "a", "b"]])), "0");
        assert_eq!(field(json!(["arg_p"])), "0");
    }
}
