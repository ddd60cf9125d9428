//! [`GgufWriter`]: builds GGUF files in memory (or streams them to a writer, for synthetic
//! models larger than memory), for tests, fuzz seeds and synthetic models.
//!
//! The writer is deliberately permissive — it writes whatever it is given (duplicate keys,
//! unknown type ids, wrong data sizes) so that tests can build malformed files too.

use super::value::{Value, ValueType};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use crate::quant::GgmlType;

/// A tensor waiting to be written.
#[derive(Clone, Debug)]
struct WTensor {
    name: Vec<u8>,
    type_id: u32,
    dims: Vec<u64>,
    data: TensorData,
}

/// A tensor's bytes: given now, or produced while writing ([`GgufWriter::write_to`]).
#[derive(Clone, Debug)]
enum TensorData {
    Bytes(Vec<u8>),
    Deferred(usize),
}

impl TensorData {
    fn len(&self) -> usize {
        match self {
            TensorData::Bytes(b) => b.len(),
            TensorData::Deferred(n) => *n,
        }
    }
}

/// Builds a GGUF file (v3 unless [`GgufWriter::set_version`] says otherwise) in memory.
#[derive(Clone, Debug)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    kvs: Vec<(Vec<u8>, u32, Vec<u8>)>,
    tensors: Vec<WTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// Appends a GGUF string (`u64` length + bytes).
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// Encodes an array header followed by the given element encodings.
fn encode_array(elem: ValueType, len: usize, elems: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + elems.len());
    out.extend_from_slice(&(elem as u32).to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.extend_from_slice(elems);
    out
}

/// The exact GGUF encoding (no type tag) of `v`.
pub fn encode_value(v: &Value<'_>) -> Vec<u8> {
    match *v {
        Value::U8(x) => vec![x],
        Value::I8(x) => x.to_le_bytes().to_vec(),
        Value::U16(x) => x.to_le_bytes().to_vec(),
        Value::I16(x) => x.to_le_bytes().to_vec(),
        Value::U32(x) => x.to_le_bytes().to_vec(),
        Value::I32(x) => x.to_le_bytes().to_vec(),
        Value::F32(x) => x.to_le_bytes().to_vec(),
        Value::Bool(x) => vec![u8::from(x)],
        Value::String(s) => {
            let mut out = Vec::with_capacity(8 + s.len());
            put_str(&mut out, s);
            out
        }
        Value::Array(a) => encode_array(a.elem_type(), a.len(), a.raw_elements()),
        Value::U64(x) => x.to_le_bytes().to_vec(),
        Value::I64(x) => x.to_le_bytes().to_vec(),
        Value::F64(x) => x.to_le_bytes().to_vec(),
    }
}

impl GgufWriter {
    /// An empty v3 file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the version number written in the header (the layout stays the v2/v3 one).
    pub fn set_version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets the tensor data alignment and writes it as `general.alignment` (replacing an
    /// existing `u32` entry). A value that is not a power of two is still written, but the
    /// layout then falls back to 32.
    pub fn set_alignment(&mut self, alignment: u32) -> &mut Self {
        self.alignment = if alignment.is_power_of_two() {
            u64::from(alignment)
        } else {
            DEFAULT_ALIGNMENT
        };
        let raw = alignment.to_le_bytes().to_vec();
        let ty = ValueType::U32 as u32;
        match self
            .kvs
            .iter_mut()
            .find(|(k, t, _)| k == ALIGNMENT_KEY.as_bytes() && *t == ty)
        {
            Some(e) => e.2 = raw,
            None => self.kvs.push((ALIGNMENT_KEY.as_bytes().to_vec(), ty, raw)),
        }
        self
    }

    /// Adds an entry from raw parts: any key bytes, any type id, any value encoding.
    pub fn add_raw(&mut self, key: &[u8], type_id: u32, raw: &[u8]) -> &mut Self {
        self.kvs.push((key.to_vec(), type_id, raw.to_vec()));
        self
    }

    /// Adds an entry holding `v` (any type, including nested arrays).
    pub fn add_value(&mut self, key: &str, v: &Value<'_>) -> &mut Self {
        let raw = encode_value(v);
        self.add_raw(key.as_bytes(), v.value_type() as u32, &raw)
    }

    /// Adds a `u8` entry.
    pub fn add_u8(&mut self, key: &str, v: u8) -> &mut Self {
        self.add_value(key, &Value::U8(v))
    }

    /// Adds an `i8` entry.
    pub fn add_i8(&mut self, key: &str, v: i8) -> &mut Self {
        self.add_value(key, &Value::I8(v))
    }

    /// Adds a `u16` entry.
    pub fn add_u16(&mut self, key: &str, v: u16) -> &mut Self {
        self.add_value(key, &Value::U16(v))
    }

    /// Adds an `i16` entry.
    pub fn add_i16(&mut self, key: &str, v: i16) -> &mut Self {
        self.add_value(key, &Value::I16(v))
    }

    /// Adds a `u32` entry.
    pub fn add_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.add_value(key, &Value::U32(v))
    }

    /// Adds an `i32` entry.
    pub fn add_i32(&mut self, key: &str, v: i32) -> &mut Self {
        self.add_value(key, &Value::I32(v))
    }

    /// Adds an `f32` entry.
    pub fn add_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.add_value(key, &Value::F32(v))
    }

    /// Adds a bool entry.
    pub fn add_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.add_value(key, &Value::Bool(v))
    }

    /// Adds a string entry.
    pub fn add_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.add_value(key, &Value::String(v.as_bytes()))
    }

    /// Adds a `u64` entry.
    pub fn add_u64(&mut self, key: &str, v: u64) -> &mut Self {
        self.add_value(key, &Value::U64(v))
    }

    /// Adds an `i64` entry.
    pub fn add_i64(&mut self, key: &str, v: i64) -> &mut Self {
        self.add_value(key, &Value::I64(v))
    }

    /// Adds an `f64` entry.
    pub fn add_f64(&mut self, key: &str, v: f64) -> &mut Self {
        self.add_value(key, &Value::F64(v))
    }

    /// Adds an array entry from an element type, count and the elements' encoding.
    pub fn add_array_raw(
        &mut self,
        key: &str,
        elem: ValueType,
        len: usize,
        elems: &[u8],
    ) -> &mut Self {
        let raw = encode_array(elem, len, elems);
        self.add_raw(key.as_bytes(), ValueType::Array as u32, &raw)
    }

    /// Adds an array of strings (any bytes).
    pub fn add_array_str<S: AsRef<[u8]>>(&mut self, key: &str, v: &[S]) -> &mut Self {
        let mut elems = Vec::new();
        for s in v {
            put_str(&mut elems, s.as_ref());
        }
        self.add_array_raw(key, ValueType::String, v.len(), &elems)
    }

    /// Adds an array of `u8`.
    pub fn add_array_u8(&mut self, key: &str, v: &[u8]) -> &mut Self {
        self.add_array_raw(key, ValueType::U8, v.len(), v)
    }

    /// Adds an array of `i32`.
    pub fn add_array_i32(&mut self, key: &str, v: &[i32]) -> &mut Self {
        let elems: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_array_raw(key, ValueType::I32, v.len(), &elems)
    }

    /// Adds an array of `u32`.
    pub fn add_array_u32(&mut self, key: &str, v: &[u32]) -> &mut Self {
        let elems: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_array_raw(key, ValueType::U32, v.len(), &elems)
    }

    /// Adds an array of `u64`.
    pub fn add_array_u64(&mut self, key: &str, v: &[u64]) -> &mut Self {
        let elems: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_array_raw(key, ValueType::U64, v.len(), &elems)
    }

    /// Adds an array of `f32`.
    pub fn add_array_f32(&mut self, key: &str, v: &[f32]) -> &mut Self {
        let elems: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.add_array_raw(key, ValueType::F32, v.len(), &elems)
    }

    /// Adds an array of bools.
    pub fn add_array_bool(&mut self, key: &str, v: &[bool]) -> &mut Self {
        let elems: Vec<u8> = v.iter().map(|&b| u8::from(b)).collect();
        self.add_array_raw(key, ValueType::Bool, v.len(), &elems)
    }

    /// Adds a tensor; `data` should hold `ty.bytes_for(product of dims)` bytes.
    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64], data: &[u8]) -> &mut Self {
        self.add_tensor_raw(name.as_bytes(), ty as u32, dims, data)
    }

    /// Adds a tensor from raw parts: any name bytes, any type id.
    pub fn add_tensor_raw(
        &mut self,
        name: &[u8],
        type_id: u32,
        dims: &[u64],
        data: &[u8],
    ) -> &mut Self {
        self.tensors.push(WTensor {
            name: name.to_vec(),
            type_id,
            dims: dims.to_vec(),
            data: TensorData::Bytes(data.to_vec()),
        });
        self
    }

    /// Adds a tensor of `bytes` bytes whose data [`GgufWriter::write_to`] asks for while
    /// writing (so a file larger than memory can be streamed); [`GgufWriter::finish`] writes
    /// zeros for it.
    pub fn add_tensor_deferred(
        &mut self,
        name: &str,
        ty: GgmlType,
        dims: &[u64],
        bytes: usize,
    ) -> &mut Self {
        self.tensors.push(WTensor {
            name: name.as_bytes().to_vec(),
            type_id: ty as u32,
            dims: dims.to_vec(),
            data: TensorData::Deferred(bytes),
        });
        self
    }

    /// Number of tensors added so far (the index the next one gets in
    /// [`GgufWriter::write_to`]'s callback).
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// Writes the file: header, metadata, tensor infos, padding to the alignment, then each
    /// tensor's data padded to the alignment (no padding after the last tensor). With no
    /// tensors the file ends right after the metadata. Deferred tensors are zeros.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out, |_, buf| {
            buf.fill(0);
            Ok(())
        })
        .expect("writing to a Vec cannot fail");
        out
    }

    /// Streams the file to `w`, as [`GgufWriter::finish`] lays it out. For each deferred
    /// tensor, `fill(index, buf)` writes its bytes into `buf` (already of the declared size);
    /// an error from `fill` or `w` stops the writing and is returned.
    pub fn write_to<W: std::io::Write>(
        &self,
        w: &mut W,
        mut fill: impl FnMut(usize, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let align = self.alignment as usize;
        let pad = |n: usize| n.div_ceil(align) * align;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, t, raw) in &self.kvs {
            put_str(&mut out, k);
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(raw);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = pad(offset + t.data.len());
        }
        if self.tensors.is_empty() {
            return w.write_all(&out);
        }
        out.resize(pad(out.len()), 0);
        w.write_all(&out)?;
        let last = self.tensors.len() - 1;
        let mut buf = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let n = t.data.len();
            match &t.data {
                TensorData::Bytes(b) => w.write_all(b)?,
                TensorData::Deferred(_) => {
                    buf.clear();
                    buf.resize(n, 0);
                    fill(i, &mut buf)?;
                    w.write_all(&buf)?;
                }
            }
            if i != last {
                w.write_all(&vec![0u8; pad(n) - n])?;
            }
        }
        Ok(())
    }
}
