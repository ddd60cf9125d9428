//! Reader (and a small in-memory writer) for GGUF v2/v3 little-endian model files.
//!
//! [`Gguf::parse`] validates the whole file up front — header, every metadata value,
//! every tensor's shape, type, alignment and byte range — and returns borrowed views into
//! the input bytes. It never panics and never allocates in proportion to an unchecked count.

mod error;
mod reader;
mod value;
mod writer;

use std::collections::HashMap;

pub use error::GgufError;
pub use value::{parse_value, Array, ArrayIter, Value, ValueType, MAX_ARRAY_DEPTH};
pub use writer::{encode_value, GgufWriter};

use crate::quant::GgmlType;

/// The magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Key that overrides the tensor data alignment (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Key naming the model architecture.
pub const ARCH_KEY: &str = "general.architecture";
/// Most dimensions a tensor may have.
pub const MAX_DIMS: u32 = 4;
/// Longest tensor name accepted, in bytes (llama.cpp itself stops at 64).
pub const MAX_TENSOR_NAME: u64 = 256;
/// Longest metadata key accepted, in bytes.
pub const MAX_KEY_LEN: u64 = 65_535;

/// One metadata key/value pair.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaEntry<'a> {
    /// The key, e.g. `general.architecture`.
    pub key: &'a str,
    /// Type of the value.
    pub value_type: ValueType,
    /// Exact GGUF encoding of the value, without the type tag ([`parse_value`] decodes it).
    pub raw: &'a [u8],
    /// The decoded value.
    pub value: Value<'a>,
}

/// Description of one tensor and its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo<'a> {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: &'a str,
    /// Element type.
    pub ty: GgmlType,
    /// Dimensions, `ne[0]` (the row length) first; 1 to 4 of them, each at least 1.
    pub dims: Vec<u64>,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// The tensor's bytes (exactly `ty.bytes_for(n_elements)` of them).
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Total number of elements (product of the dims).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Elements per row (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of every dim but the first).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// A parsed GGUF file: metadata and tensors, borrowed from the file bytes.
///
/// The lookups ([`Gguf::get`], [`Gguf::tensor`]) use private indexes built at construction:
/// to change `metadata` or `tensors`, rebuild with [`Gguf::from_parts`].
#[derive(Clone, Debug)]
pub struct Gguf<'a> {
    /// Format version (2 or 3).
    pub version: u32,
    /// Tensor data alignment in bytes.
    pub alignment: u64,
    /// Absolute file offset of the tensor data section (0 when built by [`Gguf::from_parts`]).
    pub data_offset: u64,
    /// Metadata, in file order.
    pub metadata: Vec<MetaEntry<'a>>,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo<'a>>,
    key_index: HashMap<&'a str, usize>,
    tensor_index: HashMap<&'a str, usize>,
}

/// Checks a tensor's dims against its type; returns the byte size of its data.
pub(crate) fn tensor_byte_size(name: &str, ty: GgmlType, dims: &[u64]) -> Result<u64, GgufError> {
    if dims.is_empty() {
        return Err(GgufError::ZeroDim {
            name: name.to_string(),
            index: 0,
        });
    }
    if dims.len() > MAX_DIMS as usize {
        return Err(GgufError::TooManyDims {
            name: name.to_string(),
            n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
            max: MAX_DIMS,
        });
    }
    if let Some(index) = dims.iter().position(|&d| d == 0) {
        return Err(GgufError::ZeroDim {
            name: name.to_string(),
            index,
        });
    }
    let overflow = || GgufError::ElementCountOverflow {
        name: name.to_string(),
        dims: dims.to_vec(),
    };
    let n = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)?;
    let block = ty.block_size() as u64;
    if !dims[0].is_multiple_of(block) {
        return Err(GgufError::PartialBlock {
            name: name.to_string(),
            ty,
            row_len: dims[0],
            block,
        });
    }
    ty.bytes_for(n).ok_or_else(overflow)
}

impl<'a> Gguf<'a> {
    /// Parses and fully validates a GGUF v2/v3 little-endian file held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        reader::parse(bytes)
    }

    /// Assembles a `Gguf` from already-decoded parts (used by the ABI glue): checks the
    /// version, alignment, each entry's type, each tensor's shape, data size and offset
    /// alignment, and duplicate keys / tensor names; rebuilds the name indexes.
    /// `data_offset` is 0: the tensors carry their own data slices.
    pub fn from_parts(
        version: u32,
        alignment: u64,
        metadata: Vec<MetaEntry<'a>>,
        tensors: Vec<TensorInfo<'a>>,
    ) -> Result<Self, GgufError> {
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        if !alignment.is_power_of_two() {
            return Err(GgufError::BadAlignment(alignment));
        }
        for e in &metadata {
            if e.value.value_type() != e.value_type {
                return Err(GgufError::WrongType {
                    key: e.key.to_string(),
                    expected: e.value_type.name(),
                    found: e.value.value_type(),
                });
            }
        }
        for t in &tensors {
            let size = tensor_byte_size(t.name, t.ty, &t.dims)?;
            if size != t.data.len() as u64 {
                return Err(GgufError::TensorSizeMismatch {
                    name: t.name.to_string(),
                    expected: size,
                    found: t.data.len() as u64,
                });
            }
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedTensor {
                    name: t.name.to_string(),
                    offset: t.offset,
                    alignment,
                });
            }
        }
        Self::assemble(version, alignment, 0, metadata, tensors)
    }

    /// Builds the indexes, rejecting duplicate keys and tensor names.
    pub(crate) fn assemble(
        version: u32,
        alignment: u64,
        data_offset: u64,
        metadata: Vec<MetaEntry<'a>>,
        tensors: Vec<TensorInfo<'a>>,
    ) -> Result<Self, GgufError> {
        let mut key_index = HashMap::with_capacity(metadata.len());
        for (i, e) in metadata.iter().enumerate() {
            if key_index.insert(e.key, i).is_some() {
                return Err(GgufError::DuplicateKey(e.key.to_string()));
            }
        }
        let mut tensor_index = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            if tensor_index.insert(t.name, i).is_some() {
                return Err(GgufError::DuplicateTensor(t.name.to_string()));
            }
        }
        Ok(Gguf {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            key_index,
            tensor_index,
        })
    }

    /// The metadata entry for `key`.
    pub fn entry(&self, key: &str) -> Option<&MetaEntry<'a>> {
        self.key_index.get(key).map(|&i| &self.metadata[i])
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.entry(key).map(|e| &e.value)
    }

    /// Converts the value of `key` with `conv`; `Ok(None)` if absent, `WrongType` if the
    /// conversion fails.
    fn get_as<T>(
        &self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&Value<'a>) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.to_string(),
                expected,
                found: v.value_type(),
            }),
        }
    }

    /// The value of `key` as a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.get_as(key, "non-negative integer", Value::as_u64)
    }

    /// The value of `key` as an integer fitting `i64`.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get_as(key, "integer", Value::as_i64)
    }

    /// The value of `key` as `f32` (floats or integers).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get_as(key, "number", Value::as_f32)
    }

    /// The value of `key` as a bool.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get_as(key, "bool", Value::as_bool)
    }

    /// The value of `key` as a UTF-8 string.
    pub fn get_str(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        self.get_as(key, "UTF-8 string", Value::as_str)
    }

    /// The value of `key` as an array.
    pub fn get_array(&self, key: &str) -> Result<Option<&Array<'a>>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(GgufError::WrongType {
                key: key.to_string(),
                expected: "array",
                found: v.value_type(),
            }),
        }
    }

    /// Like [`Gguf::get_u64`], but a missing key is an error.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// Like [`Gguf::get_f32`], but a missing key is an error.
    pub fn require_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.get_f32(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// Like [`Gguf::get_str`], but a missing key is an error.
    pub fn require_str(&self, key: &str) -> Result<&'a str, GgufError> {
        self.get_str(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// Like [`Gguf::get_array`], but a missing key is an error.
    pub fn require_array(&self, key: &str) -> Result<&Array<'a>, GgufError> {
        self.get_array(key)?
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The model architecture (`general.architecture`), if present and a UTF-8 string.
    pub fn architecture(&self) -> Option<&'a str> {
        self.get(ARCH_KEY).and_then(Value::as_str)
    }
}
