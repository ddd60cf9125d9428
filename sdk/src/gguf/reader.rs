//! The GGUF file parser: header, metadata, tensor infos, then layout checks of the data.

use std::collections::{HashMap, HashSet};

use super::value::{Cursor, Value};
use super::{
    tensor_byte_size, Gguf, GgufError, MetaEntry, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT,
    GGUF_MAGIC, MAX_DIMS, MAX_KEY_LEN, MAX_TENSOR_NAME,
};
use crate::quant::GgmlType;

/// Smallest encoded metadata entry: key length, empty key, type id, one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Smallest encoded tensor info: name length, empty name, n_dims, no dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;
/// Most entries reserved up front; vectors grow past this only as entries are parsed.
const MAX_PREALLOC: usize = 4096;

/// A tensor info read from the file, before its data range is resolved.
struct PendingTensor<'a> {
    name: &'a str,
    ty: GgmlType,
    dims: Vec<u64>,
    offset: u64,
    size: u64,
}

/// Counts above this are absurd even when the file is large enough to hold them.
const MAX_PLAUSIBLE_COUNT: u64 = 1 << 24;

/// Checks that `count` entries of at least `min_size` bytes each fit in the `left` bytes
/// after the header: absurd counts and truncated files are reported differently.
fn check_count(
    cur: &Cursor<'_>,
    count: u64,
    min_size: u64,
    what: &str,
    left: u64,
) -> Result<(), GgufError> {
    let limit = (left / min_size).min(MAX_PLAUSIBLE_COUNT);
    if count <= limit {
        Ok(())
    } else if count <= MAX_PLAUSIBLE_COUNT {
        Err(GgufError::Truncated {
            what: format!("{what} {count} (entries of at least {min_size} bytes each)"),
            offset: cur.offset(),
            needed: count * min_size,
            available: left,
        })
    } else {
        Err(GgufError::Absurd {
            what: what.to_string(),
            value: count,
            limit,
        })
    }
}

/// Reads a length-prefixed UTF-8 name no longer than `max` bytes.
fn read_name<'a>(
    cur: &mut Cursor<'a>,
    what: &str,
    len_what: &str,
    max: u64,
) -> Result<&'a str, GgufError> {
    let len = cur.u64(what)?;
    if len > max {
        return Err(GgufError::Absurd {
            what: len_what.to_string(),
            value: len,
            limit: max,
        });
    }
    let at = cur.offset();
    let bytes = cur.take(len, what)?;
    std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidUtf8 {
        what: what.to_string(),
        offset: at,
    })
}

/// Parses and validates a whole GGUF file.
pub(crate) fn parse(bytes: &[u8]) -> Result<Gguf<'_>, GgufError> {
    let mut cur = Cursor::new(bytes, 0);

    let magic = cur.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        let mut m = [0u8; 4];
        m.copy_from_slice(magic);
        return Err(GgufError::BadMagic(m));
    }
    let version = cur.u32("version")?;
    match version {
        2 | 3 => {}
        v if (1..=3).contains(&v.swap_bytes()) => return Err(GgufError::BigEndian(v)),
        v => return Err(GgufError::UnsupportedVersion(v)),
    }
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("metadata key/value count")?;
    let left = cur.remaining() as u64;
    check_count(&cur, n_kv, MIN_KV_SIZE, "metadata key/value count", left)?;
    check_count(&cur, n_tensors, MIN_TENSOR_INFO_SIZE, "tensor count", left)?;

    // Both counts are bounded by the file size, so they fit a usize.
    let mut metadata = Vec::with_capacity((n_kv as usize).min(MAX_PREALLOC));
    let mut keys: HashMap<&str, usize> = HashMap::with_capacity(metadata.capacity());
    for i in 0..n_kv {
        let what = format!("metadata key #{i}");
        let key = read_name(&mut cur, &what, &format!("length of {what}"), MAX_KEY_LEN)?;
        let ctx = format!("value of key '{key}'");
        let value_type = cur.value_type(&ctx)?;
        let start = cur.pos();
        let value = cur.value(value_type, &ctx, 0)?;
        let raw = cur.span(start, cur.pos());
        if keys.insert(key, metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey(key.to_string()));
        }
        metadata.push(MetaEntry {
            key,
            value_type,
            raw,
            value,
        });
    }

    let alignment = match keys.get(ALIGNMENT_KEY).map(|&i| &metadata[i].value) {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(Value::U32(a)) => return Err(GgufError::BadAlignment(u64::from(*a))),
        Some(v) => {
            return Err(GgufError::WrongType {
                key: ALIGNMENT_KEY.to_string(),
                expected: "u32",
                found: v.value_type(),
            })
        }
    };

    let mut pending = Vec::with_capacity((n_tensors as usize).min(MAX_PREALLOC));
    let mut names: HashSet<&str> = HashSet::with_capacity(pending.capacity());
    for i in 0..n_tensors {
        let what = format!("name of tensor #{i}");
        let name = read_name(
            &mut cur,
            &what,
            &format!("length of {what}"),
            MAX_TENSOR_NAME,
        )?;
        if !names.insert(name) {
            return Err(GgufError::DuplicateTensor(name.to_string()));
        }
        let ctx = format!("info of tensor '{name}'");
        let n_dims = cur.u32(&ctx)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                name: name.to_string(),
                n_dims,
                max: MAX_DIMS,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cur.u64(&ctx)?);
        }
        let id = cur.u32(&ctx)?;
        let ty = GgmlType::from_u32(id).ok_or_else(|| GgufError::UnknownTensorType {
            name: name.to_string(),
            id,
        })?;
        let offset = cur.u64(&ctx)?;
        let size = tensor_byte_size(name, ty, &dims)?;
        pending.push(PendingTensor {
            name,
            ty,
            dims,
            offset,
            size,
        });
    }

    let file_size = bytes.len() as u64;
    let infos_end = cur.offset();
    // `infos_end <= file_size` and `alignment <= 2^31`, so this cannot overflow.
    let data_offset = infos_end.div_ceil(alignment) * alignment;

    let mut tensors = Vec::with_capacity(pending.len());
    for p in pending {
        if !p.offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedTensor {
                name: p.name.to_string(),
                offset: p.offset,
                alignment,
            });
        }
        let start = data_offset.saturating_add(p.offset);
        let end = start.saturating_add(p.size);
        let data = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| bytes.get(s..e))
            .ok_or_else(|| GgufError::TensorPastEof {
                name: p.name.to_string(),
                start,
                end,
                file_size,
            })?;
        tensors.push(TensorInfo {
            name: p.name,
            ty: p.ty,
            dims: p.dims,
            offset: p.offset,
            data,
        });
    }

    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.data.len() as u64 > b.offset {
            return Err(GgufError::OverlappingTensors {
                first: a.name.to_string(),
                second: b.name.to_string(),
            });
        }
    }

    Gguf::assemble(version, alignment, data_offset, metadata, tensors)
}
