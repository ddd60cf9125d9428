//! A small JSON parser for sampler configurations (RFC 8259), hardened for untrusted input:
//! bounded size and nesting, errors instead of panics, duplicate keys refused.

use crate::Error;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Largest input accepted (the ABI's configuration limit).
pub const MAX_INPUT: usize = 64 * 1024;
/// Deepest nesting of arrays and objects accepted.
pub const MAX_DEPTH: usize = 64;

/// A parsed JSON value. Objects keep their keys in input order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number (as the nearest `f64`).
    Number(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, as (key, value) pairs in input order; keys are unique.
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members, if this is an object.
    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// A short name of the value's type, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// Parses one JSON value (surrounded by optional whitespace).
pub fn parse(input: &[u8]) -> Result<Value, Error> {
    if input.len() > MAX_INPUT {
        return Err(Error::new(format!(
            "configuration too large ({} bytes, at most {MAX_INPUT})",
            input.len()
        )));
    }
    if core::str::from_utf8(input).is_err() {
        return Err(Error::new("configuration is not valid UTF-8"));
    }
    let mut p = Parser { s: input, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != input.len() {
        return Err(p.err("unexpected text after the value"));
    }
    Ok(v)
}

/// Parses a sampler configuration: empty (or all-whitespace) input is an empty object, and
/// anything else must be a JSON object.
pub fn parse_config(input: &[u8]) -> Result<Value, Error> {
    if input.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Value::Object(Vec::new()));
    }
    match parse(input) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(v) => Err(Error::new(format!(
            "configuration must be a JSON object, not {}",
            v.kind()
        ))),
        Err(e) => Err(Error::new(format!("bad configuration: {e}"))),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::new(format!("{what} at byte {}", self.i))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.peek() {
            None => Err(self.err("unexpected end")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(_) => Err(self.err("expected a value")),
        }
    }

    fn literal(&mut self, word: &[u8], v: Value) -> Result<Value, Error> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        let mut members: Vec<(String, Value)> = Vec::new();
        self.ws();
        if self.eat(b'}') {
            return Ok(Value::Object(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(self.err(&format!("duplicate key \"{key}\"")));
            }
            self.ws();
            if !self.eat(b':') {
                return Err(self.err("expected ':'"));
            }
            self.ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.ws();
            if self.eat(b'}') {
                return Ok(Value::Object(members));
            }
            if !self.eat(b',') {
                return Err(self.err("expected ',' or '}'"));
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat(b']') {
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            if self.eat(b']') {
                return Ok(Value::Array(items));
            }
            if !self.eat(b',') {
                return Err(self.err("expected ',' or ']'"));
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(c @ b'0'..=b'9') => c - b'0',
                Some(c @ b'a'..=b'f') => c - b'a' + 10,
                Some(c @ b'A'..=b'F') => c - b'A' + 10,
                _ => return Err(self.err("bad \\u escape")),
            };
            v = v * 16 + u32::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, Error> {
        self.i += 1; // the opening quote
        let mut out: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.err("unterminated string"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(self.err("unpaired surrogate"));
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            match char::from_u32(code) {
                                Some(ch) => ch,
                                None => return Err(self.err("unpaired surrogate")),
                            }
                        }
                        _ => return Err(self.err("bad escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in string")),
                _ => out.push(c),
            }
        }
        // The input is valid UTF-8 and escapes add whole characters.
        String::from_utf8(out).map_err(|_| self.err("invalid UTF-8 in string"))
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.i;
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("bad number")),
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err("bad number"));
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err("bad number"));
            }
        }
        match decimal_to_f64(&self.s[start..self.i]) {
            Some(v) if v.is_finite() => Ok(Value::Number(v)),
            _ => Err(self.err("number out of range")),
        }
    }
}

/// The powers of ten that are exact in `f64` (10^0 ..= 10^22).
fn pow10(e: usize) -> f64 {
    let mut p = 1.0;
    for _ in 0..e {
        p *= 10.0;
    }
    p
}

/// The value of a JSON number's text (already checked against the grammar).
///
/// Correctly rounded when the significant digits fit in 2^53 and the decimal exponent is
/// within ±22 (every number a configuration normally holds: `0.95`, `1e-5`, `40`); within a
/// few ulps otherwise. (`core`'s parser would add about 14 KB to every module.)
fn decimal_to_f64(text: &[u8]) -> Option<f64> {
    let (neg, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mut mant: u64 = 0;
    let mut exp: i64 = 0; // value = mant · 10^exp
    let mut seen_point = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'.' => seen_point = true,
            d @ b'0'..=b'9' => {
                if mant < 1_000_000_000_000_000_000 {
                    mant = mant * 10 + u64::from(d - b'0');
                    if seen_point {
                        exp -= 1;
                    }
                } else if !seen_point {
                    exp += 1; // a dropped integer digit
                }
            }
            _ => break,
        }
        i += 1;
    }
    if i < text.len() {
        // Exponent: e[+-]digits
        let mut j = i + 1;
        let mut eneg = false;
        match text.get(j) {
            Some(b'-') => {
                eneg = true;
                j += 1;
            }
            Some(b'+') => j += 1,
            _ => {}
        }
        let mut e: i64 = 0;
        for &d in &text[j..] {
            e = (e * 10 + i64::from(d - b'0')).min(100_000);
        }
        exp += if eneg { -e } else { e };
    }
    let m = mant as f64;
    let v = if mant == 0 {
        0.0
    } else if mant <= 1 << 53 && (-22..=22).contains(&exp) {
        if exp >= 0 {
            m * pow10(exp as usize)
        } else {
            m / pow10((-exp) as usize)
        }
    } else {
        let mut v = m;
        let mut e = exp;
        while e > 0 {
            let step = e.min(22);
            v *= pow10(step as usize);
            e -= step;
            if v.is_infinite() {
                break;
            }
        }
        while e < 0 {
            let step = (-e).min(22);
            v /= pow10(step as usize);
            e += step;
            if v == 0.0 {
                break;
            }
        }
        v
    };
    Some(if neg { -v } else { v })
}

/// Whether `v` is a whole number (and small enough to convert to `i64` exactly).
pub fn is_integer(v: f64) -> bool {
    v.abs() <= 9.0e15 && (v as i64) as f64 == v
}

/// Reads typed fields of a configuration object and refuses unknown keys.
pub struct Fields<'a> {
    members: &'a [(String, Value)],
    used: Vec<bool>,
    context: &'a str,
}

impl<'a> Fields<'a> {
    /// Fields of `value`, which must be an object; `context` names it in messages.
    pub fn new(value: &'a Value, context: &'a str) -> Result<Self, Error> {
        let members = value.as_object().ok_or_else(|| {
            Error::new(format!("{context} must be an object, not {}", value.kind()))
        })?;
        Ok(Fields {
            members,
            used: alloc::vec![false; members.len()],
            context,
        })
    }

    /// The raw value of `key` (marks it used).
    pub fn value(&mut self, key: &str) -> Option<&'a Value> {
        let i = self.members.iter().position(|(k, _)| k == key)?;
        self.used[i] = true;
        Some(&self.members[i].1)
    }

    fn bad(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::new(format!(
            "{}: \"{key}\" must be {want}, not {}",
            self.context,
            got.kind()
        ))
    }

    /// A number (finite), or `default` when absent.
    pub fn f64(&mut self, key: &str, default: f64) -> Result<f64, Error> {
        match self.value(key) {
            None => Ok(default),
            Some(Value::Number(n)) => Ok(*n),
            Some(v) => Err(self.bad(key, "a number", v)),
        }
    }

    /// A number in `f32` range, or `default` when absent.
    pub fn f32(&mut self, key: &str, default: f32) -> Result<f32, Error> {
        let v = self.f64(key, f64::from(default))?;
        let f = v as f32;
        if f.is_finite() {
            Ok(f)
        } else {
            Err(Error::new(format!(
                "{}: \"{key}\" is out of range",
                self.context
            )))
        }
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub fn int(&mut self, key: &str, default: i64, min: i64, max: i64) -> Result<i64, Error> {
        let v = self.f64(key, default as f64)?;
        if !is_integer(v) || v < min as f64 || v > max as f64 {
            return Err(Error::new(format!(
                "{}: \"{key}\" must be an integer in {min}..={max}",
                self.context
            )));
        }
        Ok(v as i64)
    }

    /// A boolean, or `default` when absent.
    pub fn bool(&mut self, key: &str, default: bool) -> Result<bool, Error> {
        match self.value(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.bad(key, "true or false", v)),
        }
    }

    /// A string, if present.
    pub fn str(&mut self, key: &str) -> Result<Option<&'a str>, Error> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.bad(key, "a string", v)),
        }
    }

    /// Fails naming the first key that no accessor asked for.
    pub fn finish(self) -> Result<(), Error> {
        match self.used.iter().position(|&u| !u) {
            Some(i) => Err(Error::new(format!(
                "{}: unknown key \"{}\"",
                self.context, self.members[i].0
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn parses_all_kinds() {
        let v = parse(br#" {"a": [1, -2.5e3, 0, true, false, null], "b": {"c": "x\"\\\/\n\u00e9\ud83d\ude00"}} "#)
            .unwrap();
        assert_eq!(
            v.get("a").unwrap().as_array().unwrap(),
            &[
                Value::Number(1.0),
                Value::Number(-2500.0),
                Value::Number(0.0),
                Value::Bool(true),
                Value::Bool(false),
                Value::Null
            ]
        );
        assert_eq!(
            v.get("b").unwrap().get("c").unwrap().as_str(),
            Some("x\"\\/\né😀")
        );
        assert_eq!(
            parse(b"\"\xc3\xa9\"").unwrap(),
            Value::String("é".to_string())
        );
        assert_eq!(parse(b"[]").unwrap(), Value::Array(vec![]));
        assert_eq!(parse(b"1E+2").unwrap(), Value::Number(100.0));
    }

    #[test]
    fn refuses_bad_input() {
        for bad in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"01",
            b"1.",
            b".5",
            b"-",
            b"1e",
            b"+1",
            b"1e999",
            b"tru",
            b"nul",
            b"\"abc",
            b"\"a\x01\"",
            b"\"\\x\"",
            b"\"\\ud800\"",
            b"\"\\udc00\"",
            b"\"\\u12\"",
            b"{\"a\":1,\"a\":2}",
            b"[1] 2",
            b"NaN",
            b"\xff",
            b"{1:2}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn numbers_parse_like_core() {
        for t in [
            "0",
            "-0",
            "0.95",
            "0.05",
            "0.8",
            "1e-5",
            "40",
            "1.1",
            "-2.5e3",
            "123456789012345",
            "0.000001",
            "3.14159",
            "1E22",
            "9007199254740993",
            "1e300",
            "2.5e-300",
            "0.1e1",
        ] {
            let want: f64 = t.parse().unwrap();
            let got = decimal_to_f64(t.as_bytes()).unwrap();
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulps <= 2, "{t}: {got} vs {want}");
        }
        // Exact on the fast path, for many random short decimals.
        let mut r = crate::rng::Rng::new(5);
        for _ in 0..20_000 {
            let m = r.next_u64() % 10_000_000_000;
            let e = (r.next_u64() % 30) as i32 - 15;
            let t = alloc::format!("{m}e{e}");
            assert_eq!(
                decimal_to_f64(t.as_bytes()),
                Some(t.parse::<f64>().unwrap()),
                "{t}"
            );
            let t = alloc::format!("{}.{:03}", m / 1000, m % 1000);
            assert_eq!(
                decimal_to_f64(t.as_bytes()),
                Some(t.parse::<f64>().unwrap()),
                "{t}"
            );
        }
        assert_eq!(decimal_to_f64(b"1e999"), Some(f64::INFINITY));
        assert_eq!(decimal_to_f64(b"1e-999"), Some(0.0));
        assert_eq!(
            decimal_to_f64(b"123456789012345678901234567890"),
            Some(1.2345678901234568e29)
        );
    }

    #[test]
    fn limits_hold() {
        let deep: Vec<u8> = core::iter::repeat_n(b'[', 65)
            .chain(core::iter::repeat_n(b']', 65))
            .collect();
        assert!(parse(&deep).unwrap_err().message().contains("deep"));
        let ok: Vec<u8> = core::iter::repeat_n(b'[', 64)
            .chain(core::iter::repeat_n(b']', 64))
            .collect();
        assert!(parse(&ok).is_ok());
        // Very deep input fails quickly rather than overflowing the stack.
        let huge = vec![b'['; MAX_INPUT];
        assert!(parse(&huge).is_err());
        let too_big = vec![b' '; MAX_INPUT + 1];
        assert!(parse(&too_big).unwrap_err().message().contains("too large"));
    }

    #[test]
    fn config_and_fields() {
        assert_eq!(parse_config(b"").unwrap(), Value::Object(vec![]));
        assert_eq!(parse_config(b" \n").unwrap(), Value::Object(vec![]));
        assert!(parse_config(b"[1]")
            .unwrap_err()
            .message()
            .contains("object"));
        let v = parse_config(br#"{"t": 0.5, "k": 40, "on": true, "s": "x", "bad": "1"}"#).unwrap();
        let mut f = Fields::new(&v, "test").unwrap();
        assert_eq!(f.f32("t", 1.0), Ok(0.5));
        assert_eq!(f.f32("missing", 1.0), Ok(1.0));
        assert_eq!(f.int("k", 0, 0, 100), Ok(40));
        assert!(f.int("t", 0, 0, 100).is_err());
        assert_eq!(f.bool("on", false), Ok(true));
        assert_eq!(f.str("s"), Ok(Some("x")));
        assert!(f.f64("bad", 0.0).is_err());
        assert!(f.finish().is_ok());
        let mut f = Fields::new(&v, "test").unwrap();
        f.f32("t", 1.0).unwrap();
        assert_eq!(f.finish().unwrap_err().message(), "test: unknown key \"k\"");
        let big = parse_config(b"{\"t\": 1e300}").unwrap();
        assert!(Fields::new(&big, "x").unwrap().f32("t", 0.0).is_err());
    }
}
