//! GGUF metadata values: the type ids, the borrowed [`Value`] and [`Array`] views, and the
//! bounds-checked little-endian decoder shared by the file parser and [`parse_value`].

use std::fmt;

use super::error::GgufError;

/// Array lengths above this that do not fit in the bytes left are reported as absurd
/// rather than as truncation.
const MAX_PLAUSIBLE_ARRAY_LEN: u64 = 1 << 32;

/// Deepest nesting of arrays inside arrays that the reader accepts.
pub const MAX_ARRAY_DEPTH: u32 = 8;

/// The type id of a GGUF metadata value, numbered as in GGUF files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// `u8`.
    U8 = 0,
    /// `i8`.
    I8 = 1,
    /// `u16`.
    U16 = 2,
    /// `i16`.
    I16 = 3,
    /// `u32`.
    U32 = 4,
    /// `i32`.
    I32 = 5,
    /// `f32`.
    F32 = 6,
    /// A bool stored as one byte, 0 or 1.
    Bool = 7,
    /// A string: `u64` byte length, then the bytes.
    String = 8,
    /// An array: `u32` element type, `u64` count, then the elements.
    Array = 9,
    /// `u64`.
    U64 = 10,
    /// `i64`.
    I64 = 11,
    /// `f64`.
    F64 = 12,
}

impl ValueType {
    /// The type with id `id`, or `None` for ids GGUF does not define.
    pub fn from_u32(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    /// Encoded size in bytes of a value of this type, or `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<usize> {
        match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => Some(1),
            ValueType::U16 | ValueType::I16 => Some(2),
            ValueType::U32 | ValueType::I32 | ValueType::F32 => Some(4),
            ValueType::U64 | ValueType::I64 | ValueType::F64 => Some(8),
            ValueType::String | ValueType::Array => None,
        }
    }

    /// Smallest possible encoded size of a value of this type.
    pub const fn min_size(self) -> usize {
        match self.fixed_size() {
            Some(n) => n,
            None => match self {
                ValueType::String => 8,
                _ => 12,
            },
        }
    }

    /// Short lowercase name (`"u32"`, `"string"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ValueType::U8 => "u8",
            ValueType::I8 => "i8",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Bool => "bool",
            ValueType::String => "string",
            ValueType::Array => "array",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value borrowed from the file bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// `u8` value.
    U8(u8),
    /// `i8` value.
    I8(i8),
    /// `u16` value.
    U16(u16),
    /// `i16` value.
    I16(i16),
    /// `u32` value.
    U32(u32),
    /// `i32` value.
    I32(i32),
    /// `f32` value.
    F32(f32),
    /// Bool value.
    Bool(bool),
    /// String bytes (GGUF says UTF-8; not checked until [`Value::as_str`]).
    String(&'a [u8]),
    /// Array value.
    Array(Array<'a>),
    /// `u64` value.
    U64(u64),
    /// `i64` value.
    I64(i64),
    /// `f64` value.
    F64(f64),
}

impl<'a> Value<'a> {
    /// The type of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer value that is non-negative, as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// A float (`f32`, or `f64` rounded) or any integer, as `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            Value::U64(v) => Some(v as f32),
            Value::I64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string value that is valid UTF-8.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A metadata array borrowed from the file: element type, length and the elements' encoding.
///
/// Arrays are only built by the validating decoder, so iterating one cannot fail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Array<'a> {
    elem_type: ValueType,
    len: usize,
    data: &'a [u8],
}

impl<'a> Array<'a> {
    /// Type of the elements.
    pub fn elem_type(&self) -> ValueType {
        self.elem_type
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements' encoding (without the element type and count).
    pub fn raw_elements(&self) -> &'a [u8] {
        self.data
    }

    /// The elements, decoded one by one.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            cur: Cursor::new(self.data, 0),
            elem_type: self.elem_type,
            left: self.len,
        }
    }

    /// The elements of a string array, as raw bytes.
    pub fn to_strings(&self) -> Option<Vec<&'a [u8]>> {
        if self.elem_type != ValueType::String {
            return None;
        }
        self.iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The elements of a numeric array, as `f32` (see [`Value::as_f32`]).
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        if self.elem_type == ValueType::F32 {
            return Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        self.iter().map(|v| v.as_f32()).collect()
    }

    /// The elements of an integer array, if every one fits an `i32`.
    pub fn to_i32s(&self) -> Option<Vec<i32>> {
        if self.elem_type == ValueType::I32 {
            return Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        self.iter()
            .map(|v| v.as_i64().and_then(|x| i32::try_from(x).ok()))
            .collect()
    }

    /// The elements of an integer array, if every one fits a `u32`.
    pub fn to_u32s(&self) -> Option<Vec<u32>> {
        if self.elem_type == ValueType::U32 {
            return Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        self.iter()
            .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect()
    }
}

impl<'a> IntoIterator for &Array<'a> {
    type Item = Value<'a>;
    type IntoIter = ArrayIter<'a>;
    fn into_iter(self) -> ArrayIter<'a> {
        self.iter()
    }
}

/// Iterator over the elements of an [`Array`].
#[derive(Clone, Debug)]
pub struct ArrayIter<'a> {
    cur: Cursor<'a>,
    elem_type: ValueType,
    left: usize,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        match self.cur.value(self.elem_type, "array element", 0) {
            Ok(v) => {
                self.left -= 1;
                Some(v)
            }
            Err(_) => {
                // Unreachable for arrays built by the decoder; stop rather than panic.
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ArrayIter<'_> {}

/// Decodes a value of type `ty` from its exact encoding `raw` (no type tag), as the parser
/// does; fails if `raw` is malformed or has bytes left over.
pub fn parse_value(ty: ValueType, raw: &[u8]) -> Result<Value<'_>, GgufError> {
    let mut cur = Cursor::new(raw, 0);
    let v = cur.value(ty, "value", 0)?;
    let extra = cur.remaining();
    if extra != 0 {
        return Err(GgufError::TrailingBytes {
            ty,
            count: extra as u64,
        });
    }
    Ok(v)
}

/// Bounds-checked little-endian reader over a byte slice.
#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the file, for error messages.
    base: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`, which lies at file offset `base`.
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Self {
        Cursor { buf, pos: 0, base }
    }

    /// Current position within the buffer.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Current file offset.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes between positions `start` and `end` of the buffer.
    pub(crate) fn span(&self, start: usize, end: usize) -> &'a [u8] {
        self.buf.get(start..end).unwrap_or(&[])
    }

    /// Takes the next `n` bytes, or fails with a truncation error about `what`.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let left = self.remaining();
        if n > left as u64 {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.offset(),
                needed: n,
                available: left as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// Takes exactly `N` bytes.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Reads a `u8`.
    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// Reads a little-endian `u64`.
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a GGUF string (`u64` length + bytes) and returns its bytes and their offset.
    pub(crate) fn string(&mut self, what: &str) -> Result<(&'a [u8], u64), GgufError> {
        let len = self.u64(what)?;
        let at = self.offset();
        Ok((self.take(len, what)?, at))
    }

    /// Reads a value type id.
    pub(crate) fn value_type(&mut self, what: &str) -> Result<ValueType, GgufError> {
        let at = self.offset();
        let id = self.u32(what)?;
        ValueType::from_u32(id).ok_or(GgufError::UnknownValueType { id, offset: at })
    }

    /// Reads and validates one value of type `ty`; `ctx` names it in errors, `depth` is the
    /// number of arrays around it.
    pub(crate) fn value(
        &mut self,
        ty: ValueType,
        ctx: &str,
        depth: u32,
    ) -> Result<Value<'a>, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8(ctx)?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(ctx)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(ctx)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(ctx)?)),
            ValueType::U32 => Value::U32(self.u32(ctx)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(ctx)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(ctx)?)),
            ValueType::Bool => {
                let at = self.offset();
                match self.u8(ctx)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    value => return Err(GgufError::InvalidBool { value, offset: at }),
                }
            }
            ValueType::String => Value::String(self.string(ctx)?.0),
            ValueType::Array => Value::Array(self.array_value(ctx, depth)?),
            ValueType::U64 => Value::U64(self.u64(ctx)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(ctx)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(ctx)?)),
        })
    }

    /// Reads and validates an array (element type, count, elements).
    fn array_value(&mut self, ctx: &str, depth: u32) -> Result<Array<'a>, GgufError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::Absurd {
                what: format!("array nesting depth in {ctx}"),
                value: u64::from(depth) + 1,
                limit: u64::from(MAX_ARRAY_DEPTH),
            });
        }
        let elem_type = self.value_type(ctx)?;
        let count = self.u64(ctx)?;
        let left = self.remaining() as u64;
        let min_size = elem_type.min_size() as u64;
        let limit = left / min_size;
        if count > limit {
            return Err(if count <= MAX_PLAUSIBLE_ARRAY_LEN {
                GgufError::Truncated {
                    what: format!("{ctx} ({count} array elements of at least {min_size} bytes)"),
                    offset: self.offset(),
                    needed: count * min_size,
                    available: left,
                }
            } else {
                GgufError::Absurd {
                    what: format!("array length in {ctx} (more than the bytes left can hold)"),
                    value: count,
                    limit,
                }
            });
        }
        // `count <= remaining`, so it fits a usize.
        let len = count as usize;
        let start = self.pos;
        match elem_type.fixed_size() {
            Some(size) => {
                let at = self.offset();
                let bytes = self.take(count * size as u64, ctx)?;
                if elem_type == ValueType::Bool {
                    if let Some(i) = bytes.iter().position(|&b| b > 1) {
                        return Err(GgufError::InvalidBool {
                            value: bytes[i],
                            offset: at + i as u64,
                        });
                    }
                }
            }
            None => {
                for _ in 0..len {
                    self.value(elem_type, ctx, depth + 1)?;
                }
            }
        }
        Ok(Array {
            elem_type,
            len,
            data: self.span(start, self.pos),
        })
    }
}
