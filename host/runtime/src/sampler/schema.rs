//! JSON Schema → regular expression, for the built-in `constraint` sampler
//! (`{"regex": PATTERN}`, whose engine is `kiln_sampler::regex`): the subset of JSON Schema
//! that structured outputs use, turned into a pattern that matches exactly the JSON texts
//! (within bounded formatting) that the schema accepts.
//!
//! Supported: `type` (`object`, `array`, `string`, `number`, `integer`, `boolean`, `null`, or
//! a list of them), `properties` (generated in their declared order), `required` (the other
//! properties are optional, and commas come only between the members present),
//! `additionalProperties` (`false` or absent: only the declared properties are generated;
//! an object without `properties` is `{}`), `enum` and `const` (any JSON values, written
//! compactly as `serde_json` writes them; with `type`, the values of other types are
//! dropped), `items` (one schema), `minItems`/`maxItems`, `minLength`/`maxLength` (in
//! characters; an escape counts as one), `anyOf`, and the annotations `description`,
//! `title`, `$schema`, `default` and `examples` (ignored). Any other keyword (`$ref`,
//! `oneOf`, `allOf`, `not`, `pattern`, `format`, `minimum`, `patternProperties`, …) is a
//! [`SchemaError`] naming it and the JSON Pointer of the schema it is in.
//!
//! The generated JSON: no whitespace around the top-level value; between tokens either
//! nothing, one space, or one newline and at most [`MAX_INDENT`] spaces or tabs (before `:`
//! and `,`, at most one space); strings with JSON's escapes and no raw control character
//! (U+0000–U+001F, U+007F); integers of at most 16 digits, numbers with at most 16 fraction
//! digits and a two-digit exponent.
//!
//! Bounds: subschemas nest at most [`MAX_DEPTH`] deep, and the pattern must compile in the
//! sampler's engine (at most 16 KiB, 64 nested groups, 100,000 automaton states); otherwise
//! a clear error. An object whose properties are all optional needs a pattern quadratic in
//! their number (each may be the first present); large enums, long length bounds and many
//! optional properties are what make a pattern too large.

use super::escape_module_text;
use kiln_sampler::regex::{Regex, MAX_PATTERN};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// Deepest nesting of subschemas accepted.
pub const MAX_DEPTH: usize = 24;
/// Most spaces or tabs after a newline between two tokens.
pub const MAX_INDENT: usize = 20;

/// Optional whitespace between tokens.
const WS: &str = "(?: |\\n[ \\t]{0,20})?";
/// Optional whitespace before `:` and `,`.
const SP: &str = " ?";
/// A JSON integer of at most 16 digits.
const INTEGER: &str = "-?(?:0|[1-9][0-9]{0,15})";
/// A JSON number: an integer part of at most 16 digits, a fraction of at most 16 and an
/// exponent of at most 2.
const NUMBER: &str = "-?(?:0|[1-9][0-9]{0,15})(?:\\.[0-9]{1,16})?(?:[eE][-+]?[0-9]{1,2})?";
/// One character of a JSON string: anything but `"`, `\` and control characters, or an
/// escape.
const CHAR: &str = "(?:[^\"\\\\\\x00-\\x1f\\x7f]|\\\\[\"\\\\/bfnrt]|\\\\u[0-9a-fA-F]{4})";
/// Largest repetition count the engine takes in one `{m,n}`.
const MAX_REPEAT: u64 = kiln_sampler::regex::MAX_REPEAT as u64;

/// Keywords accepted and ignored.
const ANNOTATIONS: &[&str] = &["description", "title", "$schema", "default", "examples"];
/// Keywords that generate something.
const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "const",
    "items",
    "minItems",
    "maxItems",
    "anyOf",
    "minLength",
    "maxLength",
];

/// Why a schema cannot be turned into a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// The keyword at fault (empty when the schema as a whole is, e.g. too large).
    pub keyword: String,
    /// The JSON Pointer of the schema that holds it (empty for the root).
    pub path: String,
    /// What is wrong, e.g. "unsupported JSON Schema keyword `oneOf`".
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.path.is_empty() {
            write!(f, " at {}", self.path)
        } else if !self.keyword.is_empty() {
            f.write_str(" at the root")
        } else {
            Ok(())
        }
    }
}

impl std::error::Error for SchemaError {}

impl SchemaError {
    /// An error about `keyword` in the schema at `path` (both escaped: they come from the
    /// request).
    fn new(keyword: &str, path: &str, message: String) -> Self {
        SchemaError {
            keyword: escape_module_text(keyword),
            path: escape_module_text(path),
            message: escape_module_text(&message),
        }
    }
}

/// The pattern for the built-in `constraint` sampler (`{"regex": PATTERN}`) that matches the
/// JSON texts `schema` accepts (see the module docs for the subset and the formatting).
pub fn schema_to_regex(schema: &Value) -> Result<String, SchemaError> {
    let pattern = subschema(schema, "", 0)?;
    if let Err(e) = Regex::new(&pattern) {
        return Err(SchemaError::new(
            "",
            "",
            format!(
                "the schema is too large or nested too deeply for the constraint sampler ({})",
                e.message()
            ),
        ));
    }
    Ok(pattern)
}

/// A pattern under construction, refused once it passes the engine's length limit.
struct Out<'p> {
    s: String,
    path: &'p str,
}

impl<'p> Out<'p> {
    fn new(path: &'p str) -> Self {
        Out {
            s: String::new(),
            path,
        }
    }

    fn push(&mut self, text: &str) -> Result<(), SchemaError> {
        if self.s.len() + text.len() > MAX_PATTERN {
            return Err(too_long(self.path));
        }
        self.s.push_str(text);
        Ok(())
    }

    /// `unit` repeated `min` to `max` times (`None`: no upper bound), in pieces the engine
    /// takes.
    fn repeat(&mut self, unit: &str, min: u64, max: Option<u64>) -> Result<(), SchemaError> {
        let (mut min, mut max) = (min, max);
        while min > MAX_REPEAT || max.is_some_and(|m| m > MAX_REPEAT) {
            let lo = min.min(MAX_REPEAT);
            let hi = max.map_or(MAX_REPEAT, |m| m.min(MAX_REPEAT));
            self.push(unit)?;
            self.push(&quantifier(lo, Some(hi)))?;
            min -= lo;
            max = max.map(|m| m - hi);
        }
        if max == Some(0) {
            return Ok(());
        }
        self.push(unit)?;
        self.push(&quantifier(min, max))
    }
}

/// The error of a pattern that grows past the engine's limit, in the schema at `path`.
fn too_long(path: &str) -> SchemaError {
    SchemaError::new(
        "",
        path,
        format!(
            "the schema needs a pattern longer than the {MAX_PATTERN} bytes the constraint \
             sampler accepts (large enums, long length bounds and many optional properties \
             make it grow)"
        ),
    )
}

/// The quantifier of `min` to `max` repetitions.
fn quantifier(min: u64, max: Option<u64>) -> String {
    match (min, max) {
        (0, None) => "*".into(),
        (1, None) => "+".into(),
        (m, None) => format!("{{{m},}}"),
        (1, Some(1)) => String::new(),
        (0, Some(1)) => "?".into(),
        (m, Some(n)) if m == n => format!("{{{m}}}"),
        (m, Some(n)) => format!("{{{m},{n}}}"),
    }
}

/// The JSON Pointer of `key` under `path`.
fn child(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// A literal text as a pattern: ASCII punctuation escaped, control characters as `\xHH`.
fn literal(text: &str) -> String {
    let mut s = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii_punctuation() {
            s.push('\\');
            s.push(c);
        } else if c.is_ascii_control() {
            s.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            s.push(c);
        }
    }
    s
}

/// Whether `v` nests at most `limit` levels of arrays and objects (bounded recursion).
fn shallow(v: &Value, limit: usize) -> bool {
    match v {
        Value::Array(a) => limit > 0 && a.iter().all(|x| shallow(x, limit - 1)),
        Value::Object(o) => limit > 0 && o.values().all(|x| shallow(x, limit - 1)),
        _ => true,
    }
}

/// Whether `v` is of JSON Schema type `t`.
fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// The JSON types JSON Schema knows.
const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// The pattern of the schema `v` at `path`, `depth` subschemas deep.
fn subschema(v: &Value, path: &str, depth: usize) -> Result<String, SchemaError> {
    let err = |keyword: &str, message: String| Err(SchemaError::new(keyword, path, message));
    if depth > MAX_DEPTH {
        return err(
            "",
            format!("the schema nests subschemas more than {MAX_DEPTH} deep"),
        );
    }
    let m = match v {
        Value::Object(m) => m,
        Value::Bool(true) => {
            return err(
                "",
                "the schema `true` (any value) is not supported: give a `type`".into(),
            )
        }
        Value::Bool(false) => return err("", "the schema `false` allows no value".into()),
        _ => return err("", "a schema must be an object".into()),
    };
    for k in m.keys() {
        if !KEYWORDS.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()) {
            return err(k, format!("unsupported JSON Schema keyword `{k}`"));
        }
    }
    let present = |names: &[&str]| -> Option<String> {
        m.keys()
            .find(|k| KEYWORDS.contains(&k.as_str()) && !names.contains(&k.as_str()))
            .cloned()
    };
    if let Some(alts) = m.get("anyOf") {
        if let Some(other) = present(&["anyOf"]) {
            return err(
                &other,
                format!("`{other}` next to `anyOf` is not supported (put it in each branch)"),
            );
        }
        let Some(alts) = alts.as_array().filter(|a| !a.is_empty()) else {
            return err(
                "anyOf",
                "`anyOf` must be a non-empty array of schemas".into(),
            );
        };
        let anyof = child(path, "anyOf");
        let mut out = Out::new(path);
        out.push("(?:")?;
        for (i, alt) in alts.iter().enumerate() {
            if i > 0 {
                out.push("|")?;
            }
            out.push(&subschema(alt, &child(&anyof, &i.to_string()), depth + 1)?)?;
        }
        out.push(")")?;
        return Ok(out.s);
    }
    let types = types_of(m, path)?;
    if m.contains_key("enum") || m.contains_key("const") {
        if let Some(other) = present(&["enum", "const", "type"]) {
            return err(
                &other,
                format!("`{other}` next to `enum` or `const` is not supported"),
            );
        }
        return values(m, types.as_deref(), path);
    }
    let Some(types) = types else {
        return err(
            "",
            "a schema needs `type`, `enum`, `const` or `anyOf` (a schema that allows any \
             value is not supported)"
                .into(),
        );
    };
    let mut out = Out::new(path);
    if types.len() > 1 {
        out.push("(?:")?;
    }
    for (i, t) in types.iter().enumerate() {
        if i > 0 {
            out.push("|")?;
        }
        match *t {
            "null" => out.push("null")?,
            "boolean" => out.push("(?:true|false)")?,
            "integer" => out.push(INTEGER)?,
            "number" => out.push(NUMBER)?,
            "string" => string(m, &mut out)?,
            "array" => array(m, path, depth, &mut out)?,
            _ => object(m, path, depth, &mut out)?,
        }
    }
    if types.len() > 1 {
        out.push(")")?;
    }
    Ok(out.s)
}

/// The types of a schema: its `type` (a name or a list), else the one its keywords imply
/// (object, array or string), else `None`.
fn types_of(m: &Map<String, Value>, path: &str) -> Result<Option<Vec<&'static str>>, SchemaError> {
    let known = |v: &Value| {
        v.as_str()
            .and_then(|s| TYPES.iter().find(|t| **t == s).copied())
    };
    let bad = || {
        Err(SchemaError::new(
            "type",
            path,
            format!(
                "`type` must be one of {} or a non-empty list of them",
                TYPES.join(", ")
            ),
        ))
    };
    let mut types = match m.get("type") {
        None => Vec::new(),
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut types = Vec::new();
            for t in list {
                let Some(t) = known(t) else { return bad() };
                if !types.contains(&t) {
                    types.push(t);
                }
            }
            types
        }
        Some(t) => match known(t) {
            Some(t) => vec![t],
            None => return bad(),
        },
    };
    if types.is_empty() {
        let has = |keys: &[&str]| keys.iter().any(|k| m.contains_key(*k));
        if has(&["properties", "required", "additionalProperties"]) {
            types.push("object");
        } else if has(&["items", "minItems", "maxItems"]) {
            types.push("array");
        } else if has(&["minLength", "maxLength"]) {
            types.push("string");
        }
    }
    Ok((!types.is_empty()).then_some(types))
}

/// The non-negative integer of keyword `key`, if present.
fn count(m: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, SchemaError> {
    match m.get(key) {
        None => Ok(None),
        // An integer, possibly written with a zero fraction (`2.0`).
        Some(v) => match v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..9e15).contains(f))
                .map(|f| f as u64)
        }) {
            Some(n) => Ok(Some(n)),
            None => Err(SchemaError::new(
                key,
                path,
                format!("`{key}` must be a non-negative integer"),
            )),
        },
    }
}

/// The bounds `min`/`max` of a schema, checked.
fn bounds(
    m: &Map<String, Value>,
    min: &str,
    max: &str,
    path: &str,
) -> Result<(u64, Option<u64>), SchemaError> {
    let lo = count(m, min, path)?.unwrap_or(0);
    let hi = count(m, max, path)?;
    if hi.is_some_and(|hi| hi < lo) {
        return Err(SchemaError::new(
            max,
            path,
            format!("`{max}` is less than `{min}`: no value can match"),
        ));
    }
    Ok((lo, hi))
}

/// A string with `minLength`/`maxLength`.
fn string(m: &Map<String, Value>, out: &mut Out<'_>) -> Result<(), SchemaError> {
    let (min, max) = bounds(m, "minLength", "maxLength", out.path)?;
    out.push("\"")?;
    out.repeat(CHAR, min, max)?;
    out.push("\"")
}

/// An array of `items` with `minItems`/`maxItems`.
fn array(
    m: &Map<String, Value>,
    path: &str,
    depth: usize,
    out: &mut Out<'_>,
) -> Result<(), SchemaError> {
    let (min, max) = bounds(m, "minItems", "maxItems", path)?;
    if max == Some(0) {
        return out.push(&format!("\\[{WS}\\]"));
    }
    let item = match m.get("items") {
        Some(Value::Array(_)) => {
            return Err(SchemaError::new(
                "items",
                path,
                "`items` as a list of schemas (tuples) is not supported".into(),
            ))
        }
        Some(items) => subschema(items, &child(path, "items"), depth + 1)?,
        None => {
            return Err(SchemaError::new(
                "items",
                path,
                "an array needs `items` (a schema)".into(),
            ))
        }
    };
    out.push(&format!("\\[{WS}"))?;
    if min == 0 {
        out.push("(?:")?;
    }
    out.push(&item)?;
    let rest = format!("(?:{SP},{WS}{item})");
    out.repeat(&rest, min.saturating_sub(1), max.map(|n| n - 1))?;
    out.push(WS)?;
    if min == 0 {
        out.push(")?")?;
    }
    out.push("\\]")
}

/// An object of the declared `properties`, `required` ones always present, in order.
fn object(
    m: &Map<String, Value>,
    path: &str,
    depth: usize,
    out: &mut Out<'_>,
) -> Result<(), SchemaError> {
    match m.get("additionalProperties") {
        None | Some(Value::Bool(false)) => {}
        Some(_) => {
            return Err(SchemaError::new(
                "additionalProperties",
                path,
                "only `additionalProperties: false` is supported (only the declared \
                 properties are generated)"
                    .into(),
            ))
        }
    }
    let empty = Map::new();
    let props = match m.get("properties") {
        None => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err(SchemaError::new(
                "properties",
                path,
                "`properties` must be an object of schemas".into(),
            ))
        }
    };
    let mut required: HashSet<&str> = HashSet::new();
    match m.get("required") {
        None => {}
        Some(Value::Array(names)) => {
            for n in names {
                let Some(n) = n.as_str() else {
                    return Err(SchemaError::new(
                        "required",
                        path,
                        "`required` must be an array of property names".into(),
                    ));
                };
                if !props.contains_key(n) {
                    return Err(SchemaError::new(
                        "required",
                        path,
                        format!(
                            "`required` names `{n}`, which `properties` does not declare \
                             (only the declared properties are generated)"
                        ),
                    ));
                }
                required.insert(n);
            }
        }
        Some(_) => {
            return Err(SchemaError::new(
                "required",
                path,
                "`required` must be an array of property names".into(),
            ))
        }
    }
    if props.is_empty() {
        return out.push(&format!("\\{{{WS}\\}}"));
    }
    // Each member, `"key": value`, and whether it is required.
    let props_path = child(path, "properties");
    let mut members: Vec<(String, bool)> = Vec::new();
    let mut total = 0;
    for (key, schema) in props {
        let value = subschema(schema, &child(&props_path, key), depth + 1)?;
        let name = serde_json::to_string(key).unwrap_or_default();
        let member = format!("{}{SP}:{WS}{value}", literal(&name));
        // Every member is written at least once: past the limit, stop here.
        total += member.len();
        if total > MAX_PATTERN {
            return Err(too_long(path));
        }
        members.push((member, required.contains(key.as_str())));
    }
    let sep = format!("{SP},{WS}");
    out.push(&format!("\\{{{WS}"))?;
    match members.iter().position(|(_, r)| *r) {
        Some(first) => {
            // Optional members before the first required one each carry a trailing comma;
            // the ones after it a leading one.
            for (member, _) in &members[..first] {
                out.push(&format!("(?:{member}{sep})?"))?;
            }
            out.push(&members[first].0)?;
            for (member, req) in &members[first + 1..] {
                if *req {
                    out.push(&format!("{sep}{member}"))?;
                } else {
                    out.push(&format!("(?:{sep}{member})?"))?;
                }
            }
            out.push(WS)?;
        }
        None => {
            // All optional: one branch for each member that may come first.
            out.push("(?:(?:")?;
            for (i, (member, _)) in members.iter().enumerate() {
                if i > 0 {
                    out.push("|")?;
                }
                out.push(member)?;
                for (later, _) in &members[i + 1..] {
                    out.push(&format!("(?:{sep}{later})?"))?;
                }
            }
            out.push(&format!("){WS})?"))?;
        }
    }
    out.push("\\}")
}

/// The values of `enum` and `const` (both: those of `enum` equal to `const`), of the
/// `types` when given, as alternatives.
fn values(
    m: &Map<String, Value>,
    types: Option<&[&str]>,
    path: &str,
) -> Result<String, SchemaError> {
    let mut list: Vec<&Value> = match m.get("enum") {
        None => Vec::new(),
        Some(Value::Array(values)) if !values.is_empty() => values.iter().collect(),
        Some(_) => {
            return Err(SchemaError::new(
                "enum",
                path,
                "`enum` must be a non-empty array".into(),
            ))
        }
    };
    let keyword = if m.contains_key("enum") {
        "enum"
    } else {
        "const"
    };
    // Values are compared and written recursively: their depth is checked first.
    if !list
        .iter()
        .copied()
        .chain(m.get("const"))
        .all(|v| shallow(v, 64))
    {
        return Err(SchemaError::new(
            keyword,
            path,
            format!("a value of `{keyword}` nests more than 64 levels"),
        ));
    }
    if let Some(c) = m.get("const") {
        if m.contains_key("enum") {
            list.retain(|v| *v == c);
        } else {
            list.push(c);
        }
    }
    if let Some(types) = types {
        list.retain(|v| types.iter().any(|t| has_type(v, t)));
    }
    if list.is_empty() {
        return Err(SchemaError::new(
            keyword,
            path,
            format!("no value of `{keyword}` fits the schema's other keywords"),
        ));
    }
    let mut out = Out::new(path);
    let mut seen: HashSet<String> = HashSet::new();
    out.push("(?:")?;
    for v in list {
        let text = literal(&serde_json::to_string(v).unwrap_or_default());
        if seen.contains(&text) {
            continue;
        }
        if !seen.is_empty() {
            out.push("|")?;
        }
        out.push(&text)?;
        seen.insert(text);
    }
    out.push(")")?;
    Ok(out.s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{builtin, SpecialTokens, Step, Vocab};
    use serde_json::json;
    use std::sync::Arc;

    /// The compiled pattern of `schema`.
    fn regex(schema: Value) -> Regex {
        let p = schema_to_regex(&schema).unwrap_or_else(|e| panic!("{schema}: {e}"));
        Regex::new(&p).unwrap()
    }

    /// Checks that every text of `yes` matches and none of `no` does.
    fn check(schema: Value, yes: &[&str], no: &[&str]) {
        let mut re = regex(schema.clone());
        for t in yes {
            assert!(
                re.is_match(t.as_bytes()).unwrap(),
                "{schema}\nshould match {t:?}"
            );
            // Every accepted text is JSON.
            serde_json::from_str::<Value>(t).unwrap_or_else(|e| panic!("{t:?}: {e}"));
        }
        for t in no {
            assert!(
                !re.is_match(t.as_bytes()).unwrap(),
                "{schema}\nshould not match {t:?}"
            );
        }
    }

    /// The error of `schema`.
    fn refused(schema: Value) -> SchemaError {
        match schema_to_regex(&schema) {
            Ok(p) => panic!("{schema} gave {p}"),
            Err(e) => e,
        }
    }

    #[test]
    fn nested_objects() {
        let schema = json!({
            "type": "object",
            "title": "Person",
            "properties": {
                "name": {"type": "string", "description": "full name"},
                "age": {"type": "integer"},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string"},
                        "zip": {"type": "string", "minLength": 5, "maxLength": 5}
                    },
                    "required": ["city", "zip"],
                    "additionalProperties": false
                }
            },
            "required": ["name", "age", "address"],
            "additionalProperties": false
        });
        check(
            schema,
            &[
                r#"{"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9G"}}"#,
                r#"{"name": "Ada", "age": 36, "address": {"city": "London", "zip": "N1 9G"}}"#,
                "{\n  \"name\": \"Ada\",\n  \"age\": 36,\n  \"address\": {\n    \"city\": \
                 \"London\",\n    \"zip\": \"N1 9G\"\n  }\n}",
                "{\n\t\"name\" : \"A\\u00e9\\n\",\n\t\"age\" : -1,\n\t\"address\" : \
                 {\"city\":\"\",\"zip\":\"\\\"\\\\\\/\\t.\"}\n}",
            ],
            &[
                // missing a required property
                r#"{"name":"Ada","age":36}"#,
                r#"{"name":"Ada","age":36,"address":{"city":"London"}}"#,
                // wrong types
                r#"{"name":3,"age":36,"address":{"city":"London","zip":"N1 9G"}}"#,
                r#"{"name":"Ada","age":36.5,"address":{"city":"London","zip":"N1 9G"}}"#,
                r#"{"name":"Ada","age":"36","address":{"city":"London","zip":"N1 9G"}}"#,
                // an extra property
                r#"{"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9G"},"x":1}"#,
                // zip of 4 characters, of 6
                r#"{"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9"}}"#,
                r#"{"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9GD"}}"#,
                // an unescaped control character, a bad escape
                "{\"name\":\"A\nda\",\"age\":36,\"address\":{\"city\":\"L\",\"zip\":\"N1 9G\"}}",
                "{\"name\":\"A\u{1b}\",\"age\":36,\"address\":{\"city\":\"L\",\"zip\":\"N1 9G\"}}",
                r#"{"name":"A\x","age":36,"address":{"city":"L","zip":"N1 9G"}}"#,
                // trailing comma, trailing text, leading space, too much whitespace
                r#"{"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9G"},}"#,
                r#"{"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9G"}} "#,
                r#" {"name":"Ada","age":36,"address":{"city":"London","zip":"N1 9G"}}"#,
                "{\n\n\"name\":\"Ada\",\"age\":36,\"address\":{\"city\":\"L\",\"zip\":\"N1 9G\"}}",
                "{  \"name\":\"Ada\",\"age\":36,\"address\":{\"city\":\"L\",\"zip\":\"N1 9G\"}}",
                // a newline before `:` or `,`
                "{\"name\"\n:\"Ada\",\"age\":36,\"address\":{\"city\":\"L\",\"zip\":\"N1 9G\"}}",
                "{\"name\":\"Ada\"\n,\"age\":36,\"address\":{\"city\":\"L\",\"zip\":\"N1 9G\"}}",
                // another order
                r#"{"age":36,"name":"Ada","address":{"city":"London","zip":"N1 9G"}}"#,
            ],
        );
        // Indentation is bounded.
        let mut re = regex(
            json!({"type": "object", "properties": {"a": {"type": "null"}}, "required": ["a"]}),
        );
        let indent = |n: usize| format!("{{\n{}\"a\":null}}", " ".repeat(n));
        assert!(re.is_match(indent(MAX_INDENT).as_bytes()).unwrap());
        assert!(!re.is_match(indent(MAX_INDENT + 1).as_bytes()).unwrap());
        assert!(WS.contains(&format!("{{0,{MAX_INDENT}}}")));
    }

    #[test]
    fn arrays_of_objects_with_bounds() {
        let point = json!({
            "type": "object",
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
            "required": ["x", "y"]
        });
        check(
            json!({"type": "array", "items": point, "minItems": 1, "maxItems": 3.0}),
            &[
                r#"[{"x":1,"y":2}]"#,
                r#"[{"x":1.5,"y":-2e10}, {"x":0,"y":0.25}]"#,
                "[\n  {\"x\": 1, \"y\": 2},\n  {\"x\": 3, \"y\": 4},\n  {\"x\": 5, \"y\": 6}\n]",
            ],
            &[
                "[]",
                r#"[{"x":1}]"#,
                r#"[{"x":1,"y":2},]"#,
                r#"[{"x":1,"y":2},{"x":1,"y":2},{"x":1,"y":2},{"x":1,"y":2}]"#,
                r#"[{"x":01,"y":2}]"#,
                r#"[{"x":1.,"y":2}]"#,
                r#"[{"x":1e100,"y":2}]"#,
                r#"{"x":1,"y":2}"#,
            ],
        );
        check(
            json!({"type": "array", "items": {"type": "boolean"}}),
            &["[]", "[ ]", "[true]", "[true,false,true]", "[\n  false\n]"],
            &["[,]", "[true,]", "[,true]", "[True]", "[null]"],
        );
        check(
            json!({"type": "array", "items": {"type": "integer"}, "maxItems": 0}),
            &["[]"],
            &["[1]"],
        );
        check(
            json!({"type": "array", "items": {"type": "integer"}, "minItems": 2}),
            &["[1,2]", "[1,2,3,4,5,6,7,8]"],
            &["[]", "[1]"],
        );
        // Counts past the engine's largest repetition are split.
        let mut re = regex(json!({"type": "string", "minLength": 1001, "maxLength": 1500}));
        let text = |n: usize| format!("\"{}\"", "é".repeat(n));
        for (n, ok) in [(1000, false), (1001, true), (1500, true), (1501, false)] {
            assert_eq!(re.is_match(text(n).as_bytes()).unwrap(), ok, "{n}");
        }
    }

    #[test]
    fn enums_and_consts_of_any_values() {
        check(
            json!({"enum": ["red", 1, 2.5, true, null, {"k": [1, "a\"b"]}, [1, "x"], "日本"]}),
            &[
                r#""red""#,
                "1",
                "2.5",
                "true",
                "null",
                r#"{"k":[1,"a\"b"]}"#,
                r#"[1,"x"]"#,
                "\"日本\"",
            ],
            &[
                r#""blue""#,
                "2",
                "false",
                r#""1""#,
                r#"{"k": [1, "a\"b"]}"#,
                "[1,\"x\"] ",
                "\"red",
            ],
        );
        // With `type`, the values of other types are dropped.
        check(
            json!({"type": "string", "enum": ["a", 1, "b"]}),
            &[r#""a""#, r#""b""#],
            &["1"],
        );
        check(
            json!({"type": "integer", "enum": [1, 1.0, 1.5, "1"]}),
            &["1", "1.0"],
            &["1.5", r#""1""#],
        );
        check(
            json!({"const": {"a": [true]}}),
            &[r#"{"a":[true]}"#],
            &["{}"],
        );
        check(json!({"enum": [1, 2, 3], "const": 2}), &["2"], &["1", "3"]);
        // Regex syntax inside values is literal.
        check(
            json!({"enum": [".*", "a|b", "(x)", "[^]", "\\d+", "$^"]}),
            &[
                r#"".*""#,
                r#""a|b""#,
                r#""(x)""#,
                r#""[^]""#,
                r#""\\d+""#,
                r#""$^""#,
            ],
            &[r#""abc""#, r#""a""#, r#""x""#, r#""12""#],
        );
    }

    #[test]
    fn any_of_object_or_null() {
        let schema = json!({
            "type": "object",
            "properties": {
                "pet": {
                    "anyOf": [
                        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
                        {"type": "null"}
                    ],
                    "description": "the pet, if any"
                }
            },
            "required": ["pet"]
        });
        check(
            schema,
            &[
                r#"{"pet":null}"#,
                r#"{"pet":{"name":"Rex"}}"#,
                r#"{"pet": {"name": ""}}"#,
            ],
            &[
                r#"{"pet":{}}"#,
                r#"{"pet":"Rex"}"#,
                r#"{}"#,
                r#"{"pet":nul}"#,
            ],
        );
        check(
            json!({"type": ["string", "null"], "maxLength": 2}),
            &["null", r#""""#, r#""ab""#],
            &[r#""abc""#, "0"],
        );
        check(
            json!({"type": ["integer", "boolean"]}),
            &["0", "-7", "true", "1234567890123456"],
            &["1.5", "null", "12345678901234567", "-0.0", "+1", "-"],
        );
    }

    #[test]
    fn optional_properties_have_commas_only_between_present_members() {
        // b is required; a before it, c and d after it are optional.
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "integer"},
                "c": {"type": "integer"},
                "d": {"type": "integer"}
            },
            "required": ["b"]
        });
        check(
            schema,
            &[
                r#"{"b":2}"#,
                r#"{"a":1,"b":2}"#,
                r#"{"b":2,"c":3}"#,
                r#"{"b":2,"d":4}"#,
                r#"{"a":1,"b":2,"c":3,"d":4}"#,
                r#"{"a":1, "b":2, "d":4}"#,
            ],
            &[
                "{}",
                r#"{"a":1}"#,
                r#"{"a":1,,"b":2}"#,
                r#"{,"b":2}"#,
                r#"{"b":2,}"#,
                r#"{"b":2,"a":1}"#,
                r#"{"b":2,"d":4,"c":3}"#,
                r#"{"b":2,"c":3,"c":3}"#,
                r#"{"a":1"b":2}"#,
            ],
        );
        // None required: any ordered subset, the empty object too.
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string"},
                "c": {"type": "boolean"}
            }
        });
        check(
            schema,
            &[
                "{}",
                "{ }",
                r#"{"a":1}"#,
                r#"{"b":"x"}"#,
                r#"{"c":true}"#,
                r#"{"a":1,"b":"x"}"#,
                r#"{"a":1,"c":false}"#,
                r#"{"b":"x","c":true}"#,
                r#"{ "a": 1, "b": "x", "c": true }"#,
            ],
            &[
                r#"{,}"#,
                r#"{,"a":1}"#,
                r#"{"a":1,}"#,
                r#"{"a":1,,"c":true}"#,
                r#"{"c":true,"a":1}"#,
                r#"{"a":1,"a":1}"#,
                r#"{"d":1}"#,
            ],
        );
    }

    #[test]
    fn properties_keep_their_declared_order() {
        let schema: Value = serde_json::from_str(
            r#"{"type":"object","properties":{"zeta":{"type":"integer"},"alpha":{"type":"integer"},"mid/dle":{"type":"integer"}},"required":["zeta","alpha","mid/dle"]}"#,
        )
        .unwrap();
        check(
            schema,
            &[r#"{"zeta":1,"alpha":2,"mid/dle":3}"#],
            &[r#"{"alpha":2,"zeta":1,"mid/dle":3}"#],
        );
    }

    #[test]
    fn empty_objects_and_special_keys() {
        check(
            json!({"type": "object"}),
            &["{}", "{ }", "{\n}"],
            &[r#"{"a":1}"#, "[]", "null"],
        );
        check(
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
            &["{}"],
            &[r#"{"":1}"#],
        );
        check(
            json!({"properties": {"a\"b\\c": {"type": "null"}, "é.*": {"type": "null"}, "": {"type": "null"}}, "required": ["a\"b\\c", "é.*", ""]}),
            &[r#"{"a\"b\\c":null,"é.*":null,"":null}"#],
            &[r#"{"a\"b\\c":null,"éxx":null,"":null}"#],
        );
    }

    #[test]
    fn string_length_bounds_count_characters() {
        check(
            json!({"type": "string", "minLength": 2, "maxLength": 4}),
            &[
                r#""ab""#,
                r#""abcd""#,
                "\"日本\"",
                "\"😀😀😀\"",
                r#""\n\t""#,
                r#""\u00e9x""#,
                r#""a\"b""#,
            ],
            &[
                r#""a""#,
                r#""abcde""#,
                r#""""#,
                r#""\u00e""#,
                "\"a\tb\"",
                "\"ab\u{7f}\"",
            ],
        );
        check(
            json!({"type": "string", "maxLength": 0}),
            &[r#""""#],
            &[r#""a""#],
        );
        check(
            json!({"type": "string", "minLength": 3}),
            &[r#""abc""#, r#""abcdefghijklmnop""#],
            &[r#""ab""#],
        );
        // Invalid UTF-8 never matches.
        let mut re = regex(json!({"type": "string"}));
        assert!(!re.is_match(b"\"\xff\"").unwrap());
        assert!(!re.is_match(b"\"\xc3\"").unwrap());
    }

    #[test]
    fn numbers_are_json_numbers_of_bounded_length() {
        check(
            json!({"type": "number"}),
            &[
                "0",
                "-0",
                "1.5",
                "-12.25e-3",
                "1E+10",
                "0.0000000000000001",
                "9999999999999999",
            ],
            &[
                "01",
                "1.",
                ".5",
                "+1",
                "1e",
                "1e100",
                "NaN",
                "Infinity",
                "0x10",
                "1.00000000000000001",
            ],
        );
        check(
            json!({"type": "integer"}),
            &["0", "-3", "1234567890123456"],
            &["1.0", "1e3", "-", "00", "12345678901234567"],
        );
    }

    #[test]
    fn unsupported_keywords_are_named_with_their_path() {
        let e = refused(json!({
            "type": "object",
            "properties": {"x": {"oneOf": [{"type": "string"}, {"type": "null"}]}}
        }));
        assert_eq!(e.keyword, "oneOf");
        assert_eq!(e.path, "/properties/x");
        assert_eq!(
            e.to_string(),
            "unsupported JSON Schema keyword `oneOf` at /properties/x"
        );
        let e = refused(json!({"$ref": "#/$defs/a", "$defs": {"a": {"type": "null"}}}));
        assert!(e.keyword == "$ref" || e.keyword == "$defs", "{e}");
        assert!(e.to_string().ends_with("at the root"), "{e}");
        let cases = [
            (json!({"type": "string", "pattern": "a+"}), "pattern", ""),
            (json!({"type": "string", "format": "date"}), "format", ""),
            (
                json!({"type": "array", "items": {"type": "integer", "minimum": 0}}),
                "minimum",
                "/items",
            ),
            (
                json!({"anyOf": [{"type": "null"}, {"allOf": [{"type": "null"}]}]}),
                "allOf",
                "/anyOf/1",
            ),
            (json!({"not": {"type": "null"}}), "not", ""),
            (
                json!({"type": "object", "patternProperties": {"a": {"type": "null"}}}),
                "patternProperties",
                "",
            ),
            (
                json!({"properties": {"a/b~c": {"type": "object", "properties": {"d": {"nullable": true}}}}}),
                "nullable",
                "/properties/a~1b~0c/properties/d",
            ),
            // Supported keywords with values outside the subset.
            (
                json!({"type": "object", "additionalProperties": true}),
                "additionalProperties",
                "",
            ),
            (
                json!({"type": "object", "additionalProperties": {"type": "string"}}),
                "additionalProperties",
                "",
            ),
            (
                json!({"type": "array", "items": [{"type": "null"}]}),
                "items",
                "",
            ),
            (json!({"type": "array"}), "items", ""),
            (
                json!({"type": "object", "properties": {"a": {"type": "null"}}, "required": ["b"]}),
                "required",
                "",
            ),
            (
                json!({"type": "array", "items": {"type": "null"}, "minItems": 3, "maxItems": 2}),
                "maxItems",
                "",
            ),
            (json!({"type": "string", "minLength": -1}), "minLength", ""),
            (json!({"type": "text"}), "type", ""),
            (json!({"type": []}), "type", ""),
            (json!({"enum": []}), "enum", ""),
            (json!({"type": "string", "enum": [1, 2]}), "enum", ""),
            (json!({"enum": ["a"], "minLength": 1}), "minLength", ""),
            (
                json!({"anyOf": [{"type": "null"}], "type": "null"}),
                "type",
                "",
            ),
            (json!({"anyOf": []}), "anyOf", ""),
            (json!({"description": "anything"}), "", ""),
            (json!(true), "", ""),
            (json!(false), "", ""),
            (json!({"type": "array", "items": 3}), "", "/items"),
        ];
        for (schema, keyword, path) in cases {
            let e = refused(schema.clone());
            assert_eq!(
                (e.keyword.as_str(), e.path.as_str()),
                (keyword, path),
                "{schema}: {e}"
            );
            assert!(!e.message.is_empty());
        }
        // Names from the request are escaped in errors.
        let e = refused(json!({"type": "object", "properties": {"\u{1b}[2J": {"bad\n": 1}}}));
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
        assert_eq!(e.keyword, "bad\\n");
    }

    #[test]
    fn schemas_past_the_limits_are_errors() {
        // An enum whose pattern passes 16 KiB.
        let words: Vec<String> = (0..3000).map(|i| format!("value number {i}")).collect();
        let e = refused(
            json!({"type": "object", "properties": {"w": {"enum": words}}, "required": ["w"]}),
        );
        assert!(e.to_string().contains("longer than the 16384 bytes"), "{e}");
        assert_eq!(e.path, "/properties/w");
        // Many optional properties (quadratic), or many properties at all.
        let props: Map<String, Value> = (0..100)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        let e = refused(json!({"type": "object", "properties": props}));
        assert!(e.to_string().contains("longer than the 16384 bytes"), "{e}");
        let props: Map<String, Value> = (0..100_000)
            .map(|i| (format!("p{i}"), json!({"type": "null"})))
            .collect();
        let names: Vec<String> = (0..100_000).map(|i| format!("p{i}")).collect();
        let t = std::time::Instant::now();
        let e = refused(json!({"type": "object", "properties": props, "required": names}));
        assert!(e.to_string().contains("longer than"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        // A long length bound: short to write, too many automaton states.
        let e = refused(json!({"type": "string", "maxLength": 100_000}));
        assert!(e.to_string().contains("constraint sampler"), "{e}");
        // Deep nesting: past the depth limit, or within it but with more nested groups than
        // the engine takes.
        let mut deep = json!({"type": "null"});
        for _ in 0..200 {
            deep = json!({"type": "object", "properties": {"a": deep}, "required": ["a"]});
        }
        let e = refused(deep);
        assert!(e.to_string().contains("more than 24 deep"), "{e}");
        let mut deep = json!({"type": "null"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"type": ["object", "null"], "properties": {"b": deep, "a": {"type": "null"}}});
        }
        let e = refused(deep);
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        // A deep enum value.
        let mut v = json!(0);
        for _ in 0..100 {
            v = json!([v]);
        }
        assert_eq!(refused(json!({"enum": [v.clone()]})).keyword, "enum");
        assert_eq!(refused(json!({"enum": [1], "const": v})).keyword, "enum");
    }

    /// A vocabulary of JSON-ish tokens: every printable ASCII character, newline and tab,
    /// some multi-character pieces, a non-ASCII word, and an end-of-sequence token (last).
    fn json_vocab() -> Vocab {
        let mut texts: Vec<String> = (0x20u8..0x7f).map(|b| (b as char).to_string()).collect();
        for t in [
            "\n", "\t", "{\"", "\":", "\": ", ", \"", ",\"", "\"}", "\"]", "true", "false", "null",
            "  ", "\n  ", "\n    ", "name", "age", "tags", "ok", "12", "-3", "日本", "\\n",
            "\\u00", "<eos>",
        ] {
            texts.push(t.to_string());
        }
        let eos = texts.len() as u32 - 1;
        Vocab::new(
            texts.len(),
            |i| texts[i as usize].as_bytes(),
            SpecialTokens {
                bos: None,
                eos: Some(eos),
                eot: None,
            },
            &[eos],
        )
    }

    #[test]
    fn the_constraint_sampler_generates_instances() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 6},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "b", 3, null]}, "maxItems": 3},
                "ok": {"type": "boolean"},
                "pet": {"anyOf": [{"type": "object", "properties": {"x": {"type": "number"}}}, {"type": "null"}]}
            },
            "required": ["name", "tags"]
        });
        let pattern = schema_to_regex(&schema).unwrap();
        let mut re = Regex::new(&pattern).unwrap();
        let module = builtin::load("constraint").unwrap().unwrap();
        let vocab = Arc::new(json_vocab());
        let n = vocab.n_vocab();
        let mut r = 0x2545_f491_4f6c_dd1du64;
        let mut texts = Vec::new();
        for seed in 0..6u64 {
            let config = json!({
                "regex": pattern,
                "sampler": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
            })
            .to_string();
            let mut s = module
                .instantiate(config.as_bytes(), seed, vocab.clone())
                .unwrap_or_else(|e| panic!("{e}"));
            s.set_deadline_ms(5000); // a shared test machine
            let mut text = Vec::new();
            let mut finished = false;
            for _ in 0..400 {
                // Random logits that favour ending strings and objects, so that texts end.
                let mut row: Vec<f32> = (0..n)
                    .map(|_| {
                        r ^= r << 13;
                        r ^= r >> 7;
                        r ^= r << 17;
                        (r >> 40) as f32 / (1u64 << 24) as f32 * 4.0
                    })
                    .collect();
                for (i, l) in row.iter_mut().enumerate() {
                    let t = vocab.token_bytes(i as u32).unwrap_or_default();
                    if t.contains(&b'"') || t.contains(&b'}') || t.contains(&b']') {
                        *l += 2.0;
                    }
                }
                match s.sample_row(&mut row).unwrap_or_else(|e| panic!("{e}")) {
                    Step::Stop => {
                        finished = true;
                        break;
                    }
                    Step::Token(t) if vocab.is_eog(t) => {
                        finished = true;
                        break;
                    }
                    Step::Token(t) => {
                        text.extend_from_slice(vocab.token_bytes(t).unwrap());
                        s.accept(t).unwrap();
                    }
                }
            }
            let shown = String::from_utf8_lossy(&text).into_owned();
            assert!(finished, "seed {seed}: no end after 400 tokens: {shown}");
            assert!(re.is_match(&text).unwrap(), "seed {seed}: {shown}");
            let v: Value = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{shown}: {e}"));
            assert!(v["name"].is_string() && v["tags"].is_array(), "{shown}");
            texts.push(shown);
        }
        // Random choices give different instances.
        texts.sort();
        texts.dedup();
        assert!(texts.len() > 1, "{texts:?}");
    }

    /// Times the constraint on a schema pattern with a 150,000-token vocabulary of JSON-ish
    /// pieces, under the default deadline (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn schema_constraint_on_a_large_vocabulary() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                "address": {"anyOf": [
                    {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}, "required": ["city"]},
                    {"type": "null"}
                ]},
                "kind": {"enum": ["person", "company", "other"]}
            },
            "required": ["name", "age", "kind"]
        });
        let pattern = schema_to_regex(&schema).unwrap();
        let alphabet: Vec<char> = " \"{}[]:,.-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ\n"
            .chars()
            .collect();
        let mut texts: Vec<String> = (0x20u8..0x7f).map(|b| (b as char).to_string()).collect();
        for a in 0x20u8..0x7f {
            for b in 0x20u8..0x7f {
                texts.push(format!("{}{}", a as char, b as char));
            }
        }
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        while texts.len() < 150_000 {
            let n = 3 + (next() % 6) as usize;
            texts.push(
                (0..n)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        texts.push("<eos>".into());
        let eos = texts.len() as u32 - 1;
        let vocab = Arc::new(Vocab::new(
            texts.len(),
            |i| texts[i as usize].as_bytes(),
            SpecialTokens {
                bos: None,
                eos: Some(eos),
                eot: None,
            },
            &[eos],
        ));
        let module = builtin::load("constraint").unwrap().unwrap();
        let config = json!({"regex": pattern, "sampler": {"temperature": 1.0}}).to_string();
        let t = std::time::Instant::now();
        let mut s = module
            .instantiate(config.as_bytes(), 1, vocab.clone())
            .unwrap();
        eprintln!("pattern {} bytes; init {:?}", pattern.len(), t.elapsed());
        let n = vocab.n_vocab();
        let mut text = Vec::new();
        let mut times = Vec::new();
        for _ in 0..200 {
            let mut row: Vec<f32> = (0..n)
                .map(|_| (next() >> 40) as f32 / 16_777_216.0 * 4.0)
                .collect();
            let t = std::time::Instant::now();
            let step = s.sample_row(&mut row);
            times.push(t.elapsed());
            match step.unwrap_or_else(|e| panic!("after {:?}: {e}", String::from_utf8_lossy(&text)))
            {
                Step::Token(t) if !vocab.is_eog(t) => {
                    text.extend_from_slice(vocab.token_bytes(t).unwrap());
                    s.accept(t).unwrap();
                }
                _ => break,
            }
        }
        times.sort();
        eprintln!(
            "{} steps: median {:?}, max {:?}; text {}",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1],
            String::from_utf8_lossy(&text)
        );
    }
}
