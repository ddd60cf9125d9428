//! The error type of the GGUF reader: one variant, with one clear message, per failure.

use super::value::ValueType;
use crate::quant::GgmlType;

/// Everything that can go wrong while reading a GGUF file or looking up its metadata.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with the bytes `GGUF`.
    #[error("not a GGUF file: bad magic {} (expected \"GGUF\")", show_magic(.0))]
    BadMagic([u8; 4]),

    /// The version field names a version this reader does not handle.
    #[error("unsupported GGUF version {0}: only versions 2 and 3 are supported")]
    UnsupportedVersion(u32),

    /// The version field is byte-swapped: the file was written big-endian.
    #[error(
        "big-endian GGUF file (version field reads {0:#010x}): only little-endian files \
         are supported"
    )]
    BigEndian(u32),

    /// The file ended in the middle of something.
    #[error(
        "truncated GGUF file: reading {what} at byte offset {offset} needs {needed} bytes, \
         only {available} left"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset where the read started.
        offset: u64,
        /// Bytes the read needed.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },

    /// A metadata key or tensor name is not valid UTF-8.
    #[error("invalid UTF-8 in {what} at byte offset {offset}")]
    InvalidUtf8 {
        /// What held the bytes (`"metadata key #3"`, `"tensor name #7"`).
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },

    /// A count or length is larger than any sane file (or the bytes left) allows.
    #[error("absurd {what}: {value} (limit {limit})")]
    Absurd {
        /// What was counted (`"tensor count"`, `"array length of key 'x'"`).
        what: String,
        /// The value found in the file.
        value: u64,
        /// The largest accepted value here.
        limit: u64,
    },

    /// A tensor has more dimensions than ggml supports.
    #[error("tensor '{name}' has {n_dims} dimensions (at most {max} are supported)")]
    TooManyDims {
        /// Tensor name.
        name: String,
        /// Dimension count found.
        n_dims: u32,
        /// Largest supported dimension count.
        max: u32,
    },

    /// A tensor has no dimensions, or one of its dimensions is zero.
    #[error("tensor '{name}': dimension {index} is zero (or the tensor has no dimensions)")]
    ZeroDim {
        /// Tensor name.
        name: String,
        /// Index of the zero dimension (0 when the tensor has no dimensions at all).
        index: usize,
    },

    /// The product of a tensor's dimensions overflows.
    #[error("tensor '{name}': element count of dims {dims:?} overflows")]
    ElementCountOverflow {
        /// Tensor name.
        name: String,
        /// The dimensions, `ne[0]` first.
        dims: Vec<u64>,
    },

    /// A tensor's row length is not a whole number of blocks of its type.
    #[error(
        "tensor '{name}': row length {row_len} is not a multiple of the {ty} block size {block}"
    )]
    PartialBlock {
        /// Tensor name.
        name: String,
        /// Tensor type.
        ty: GgmlType,
        /// Row length (`dims[0]`).
        row_len: u64,
        /// Elements per block of `ty`.
        block: u64,
    },

    /// A value type id that the GGUF format does not define.
    #[error("unknown GGUF value type id {id} at byte offset {offset}")]
    UnknownValueType {
        /// The type id found.
        id: u32,
        /// Byte offset of the type id.
        offset: u64,
    },

    /// A bool value stored as a byte other than 0 or 1.
    #[error("invalid bool byte {value} at byte offset {offset} (must be 0 or 1)")]
    InvalidBool {
        /// The byte found.
        value: u8,
        /// Its byte offset.
        offset: u64,
    },

    /// A tensor type id this SDK does not know (e.g. an IQ type).
    #[error("tensor '{name}' has unknown or unsupported tensor type id {id}")]
    UnknownTensorType {
        /// Tensor name.
        name: String,
        /// The type id found.
        id: u32,
    },

    /// A tensor's data runs past the end of the file.
    #[error(
        "tensor '{name}': data bytes {start}..{end} lie past the end of the file ({file_size} bytes)"
    )]
    TensorPastEof {
        /// Tensor name.
        name: String,
        /// Absolute start offset of its data.
        start: u64,
        /// Absolute end offset (exclusive) of its data.
        end: u64,
        /// File size in bytes.
        file_size: u64,
    },

    /// A tensor's offset is not a multiple of the file's alignment.
    #[error("tensor '{name}': offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Tensor name.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },

    /// Two tensors' data ranges overlap.
    #[error("tensors '{first}' and '{second}' have overlapping data")]
    OverlappingTensors {
        /// The tensor whose data starts first.
        first: String,
        /// The tensor whose data starts inside the first one's.
        second: String,
    },

    /// A tensor's data slice does not have the size its type and dims require.
    #[error("tensor '{name}': data is {found} bytes, its type and dims need {expected}")]
    TensorSizeMismatch {
        /// Tensor name.
        name: String,
        /// Bytes required.
        expected: u64,
        /// Bytes given.
        found: u64,
    },

    /// The same metadata key appears twice.
    #[error("duplicate metadata key '{0}'")]
    DuplicateKey(String),

    /// The same tensor name appears twice.
    #[error("duplicate tensor name '{0}'")]
    DuplicateTensor(String),

    /// `general.alignment` is zero or not a power of two.
    #[error("bad general.alignment {0}: must be a non-zero power of two")]
    BadAlignment(u64),

    /// A value's encoding has bytes left over after the value.
    #[error("{count} trailing bytes after a {ty} value")]
    TrailingBytes {
        /// The value's type.
        ty: ValueType,
        /// Bytes left over.
        count: u64,
    },

    /// A required metadata key is absent.
    #[error("missing metadata key '{0}'")]
    MissingKey(String),

    /// A metadata key holds a value of the wrong type.
    #[error("metadata key '{key}' has type {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected (`"u64"`, `"non-negative integer"`, `"UTF-8 string"`).
        expected: &'static str,
        /// The value type found.
        found: ValueType,
    },
}

/// Renders 4 magic bytes as hex plus their printable ASCII form.
fn show_magic(m: &[u8; 4]) -> String {
    let ascii: String = m
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    format!(
        "{:02x} {:02x} {:02x} {:02x} (\"{ascii}\")",
        m[0], m[1], m[2], m[3]
    )
}
