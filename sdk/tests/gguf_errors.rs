//! GGUF reader tests on files built with `GgufWriter`, valid and hand-corrupted: one test
//! (at least) per error the reader can report, plus accessors and round trips.

use kiln_sdk::gguf::{
    encode_value, parse_value, Gguf, GgufError, GgufWriter, MetaEntry, TensorInfo, Value, ValueType,
};
use kiln_sdk::quant::GgmlType;

/// A small valid file: three keys, two tensors of different types.
fn base() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama")
        .add_u32("llama.block_count", 2)
        .add_array_str("tokenizer.ggml.tokens", &["a", "bc", ""]);
    let a: Vec<u8> = (0..32u8).collect();
    w.add_tensor("a", GgmlType::F32, &[4, 2], &a).add_tensor(
        "b",
        GgmlType::Q8_0,
        &[32],
        &[7u8; 34],
    );
    w
}

fn parse_err(bytes: &[u8]) -> GgufError {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("expected a parse error"),
        Err(e) => e,
    }
}

/// Byte position of the `offset` field of tensor `name`'s info.
fn offset_field(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    // Tensor infos come last before the data, so search from the end of the metadata.
    let at = bytes
        .windows(pat.len())
        .rposition(|w| w == pat.as_slice())
        .expect("tensor info present");
    let p = at + pat.len();
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + 8 * n_dims + 4
}

fn set_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn valid_file_round_trips() {
    let bytes = base().finish();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.data_offset % 32, 0);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get_u64("llama.block_count").unwrap(), Some(2));
    let toks = g.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
    assert_eq!(toks.elem_type(), ValueType::String);
    assert_eq!(toks.len(), 3);
    assert_eq!(
        toks.to_strings().unwrap(),
        vec![&b"a"[..], &b"bc"[..], &b""[..]]
    );
    assert_eq!(g.tensors.len(), 2);
    let a = g.tensor("a").unwrap();
    assert_eq!(
        (a.ty, a.dims.clone(), a.offset),
        (GgmlType::F32, vec![4, 2], 0)
    );
    assert_eq!(a.data, &(0..32u8).collect::<Vec<_>>()[..]);
    assert_eq!((a.n_elements(), a.row_len(), a.n_rows()), (8, 4, 2));
    let b = g.tensor("b").unwrap();
    assert_eq!(
        (b.ty, b.offset, b.data),
        (GgmlType::Q8_0, 32, &[7u8; 34][..])
    );
    assert_eq!(g.data_offset + b.offset + 34, bytes.len() as u64);
    assert!(g.tensor("c").is_none());
    for e in &g.metadata {
        assert_eq!(parse_value(e.value_type, e.raw).unwrap(), e.value);
        assert_eq!(encode_value(&e.value), e.raw);
    }
}

#[test]
fn version_2_and_no_tensors_parse() {
    let mut w = GgufWriter::new();
    w.set_version(2).add_u8("x", 1);
    let bytes = w.finish();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 2);
    assert!(g.tensors.is_empty());
    assert_eq!(g.architecture(), None);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = base();
    w.set_alignment(64);
    w.add_tensor("c", GgmlType::F16, &[3], &[1, 2, 3, 4, 5, 6]);
    let bytes = w.finish();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    for t in &g.tensors {
        assert_eq!(t.offset % 64, 0, "{}", t.name);
    }
    assert_eq!(g.tensor("c").unwrap().data, &[1, 2, 3, 4, 5, 6]);
}

#[test]
fn bad_magic() {
    let mut bytes = base().finish();
    bytes[..4].copy_from_slice(b"GGML");
    let e = parse_err(&bytes);
    assert_eq!(e, GgufError::BadMagic(*b"GGML"));
    let msg = e.to_string();
    assert!(msg.contains("47 47 4d 4c") && msg.contains("GGML"), "{msg}");
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 77] {
        let mut w = base();
        w.set_version(v);
        let e = parse_err(&w.finish());
        assert_eq!(e, GgufError::UnsupportedVersion(v));
        assert!(e.to_string().contains("2 and 3"), "{e}");
    }
}

#[test]
fn big_endian_is_recognised() {
    let mut bytes = base().finish();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let e = parse_err(&bytes);
    assert!(matches!(e, GgufError::BigEndian(_)), "{e:?}");
    assert!(e.to_string().contains("big-endian"));
}

#[test]
fn truncated_reports_what_and_where() {
    let bytes = base().finish();
    assert!(matches!(
        parse_err(&bytes[..2]),
        GgufError::Truncated { offset: 0, .. }
    ));
    match parse_err(&bytes[..12]) {
        GgufError::Truncated {
            what,
            offset,
            needed,
            available,
        } => {
            assert_eq!(
                (what.as_str(), offset, needed, available),
                ("tensor count", 8, 8, 4)
            );
        }
        e => panic!("{e:?}"),
    }
    // Too short for the announced entries.
    match parse_err(&bytes[..40]) {
        GgufError::Truncated { what, offset, .. } => {
            assert!(what.starts_with("metadata key/value count 3"), "{what}");
            assert_eq!(offset, 24);
        }
        e => panic!("{e:?}"),
    }
    // Cut inside the first key's bytes.
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama");
    let one = w.finish();
    match parse_err(&one[..24 + 8 + 10]) {
        GgufError::Truncated {
            what,
            offset,
            needed,
            available,
        } => {
            assert_eq!(
                (what.as_str(), offset, needed, available),
                ("metadata key #0", 32, 20, 10)
            );
        }
        e => panic!("{e:?}"),
    }
    let msg = parse_err(&one[..24 + 8 + 10]).to_string();
    assert!(
        msg.contains("metadata key #0") && msg.contains("offset 32"),
        "{msg}"
    );
    // Cut inside a string array.
    match parse_err(&bytes[..150]) {
        GgufError::Truncated { what, .. } => {
            assert!(what.contains("tokenizer.ggml.tokens"), "{what}")
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = base().finish();
    for n in 0..bytes.len() {
        assert!(Gguf::parse(&bytes[..n]).is_err(), "length {n} accepted");
    }
}

#[test]
fn invalid_utf8_key_and_tensor_name() {
    let mut w = GgufWriter::new();
    w.add_raw(b"ok.\xff", ValueType::U8 as u32, &[1]);
    match parse_err(&w.finish()) {
        GgufError::InvalidUtf8 { what, offset } => {
            assert_eq!((what.as_str(), offset), ("metadata key #0", 32));
        }
        e => panic!("{e:?}"),
    }
    let mut w = base();
    w.add_tensor_raw(b"\xc3\x28", GgmlType::F32 as u32, &[1], &[0; 4]);
    match parse_err(&w.finish()) {
        GgufError::InvalidUtf8 { what, .. } => assert_eq!(what, "name of tensor #2"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn absurd_header_counts() {
    let bytes = base().finish();
    for (field, what) in [(8usize, "tensor count"), (16, "metadata key/value count")] {
        let mut b = bytes.clone();
        set_u64(&mut b, field, u64::MAX);
        match parse_err(&b) {
            GgufError::Absurd {
                what: w,
                value,
                limit,
            } => {
                assert!(w.starts_with(what), "{w}");
                assert_eq!(value, u64::MAX);
                assert!(limit < bytes.len() as u64);
            }
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn absurd_lengths() {
    // Key longer than 65535 bytes.
    let mut w = GgufWriter::new();
    w.add_raw(&vec![b'k'; 70_000], ValueType::U8 as u32, &[1]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::Absurd {
            value: 70_000,
            limit: 65_535,
            ..
        }
    ));
    // Tensor name longer than 256 bytes (256 itself is fine).
    let mut w = GgufWriter::new();
    w.add_tensor(&"t".repeat(256), GgmlType::F32, &[1], &[0; 4]);
    Gguf::parse(&w.finish()).unwrap();
    w.add_tensor(&"u".repeat(257), GgmlType::F32, &[1], &[0; 4]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::Absurd {
            value: 257,
            limit: 256,
            ..
        }
    ));
    // Array count far larger than the bytes left.
    let mut w = GgufWriter::new();
    w.add_array_raw("arr", ValueType::U32, usize::MAX, &[0; 8]);
    match parse_err(&w.finish()) {
        GgufError::Absurd { what, value, limit } => {
            assert!(what.contains("'arr'"), "{what}");
            assert_eq!((value, limit), (u64::MAX, 2));
        }
        e => panic!("{e:?}"),
    }
    // Same for a string array (each element takes at least 8 bytes).
    let mut w = GgufWriter::new();
    w.add_array_raw("s", ValueType::String, 1 << 40, &[0; 16]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::Absurd { value, limit: 2, .. } if value == 1 << 40
    ));
    // String value longer than the file.
    let mut w = GgufWriter::new();
    w.add_raw(b"s", ValueType::String as u32, &u64::MAX.to_le_bytes());
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::Truncated {
            needed: u64::MAX,
            available: 0,
            ..
        }
    ));
}

#[test]
fn nested_arrays_and_depth_limit() {
    // [[1, 2], [3]] as an array of u16 arrays.
    let inner = |xs: &[u16]| {
        let mut v = (ValueType::U16 as u32).to_le_bytes().to_vec();
        v.extend_from_slice(&(xs.len() as u64).to_le_bytes());
        for x in xs {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v
    };
    let mut elems = inner(&[1, 2]);
    elems.extend(inner(&[3]));
    let mut w = GgufWriter::new();
    w.add_array_raw("nest", ValueType::Array, 2, &elems);
    let bytes = w.finish();
    let g = Gguf::parse(&bytes).unwrap();
    let outer = g.get_array("nest").unwrap().unwrap();
    let got: Vec<Vec<u32>> = outer
        .iter()
        .map(|v| v.as_array().unwrap().to_u32s().unwrap())
        .collect();
    assert_eq!(got, vec![vec![1, 2], vec![3]]);
    let e = g.entry("nest").unwrap();
    assert_eq!(parse_value(ValueType::Array, e.raw).unwrap(), e.value);

    // Nesting depth: 8 levels are accepted, 9 are absurd.
    let nested = |levels: usize| {
        let mut raw = (ValueType::U8 as u32).to_le_bytes().to_vec();
        raw.extend_from_slice(&0u64.to_le_bytes());
        for _ in 1..levels {
            let mut outer = (ValueType::Array as u32).to_le_bytes().to_vec();
            outer.extend_from_slice(&1u64.to_le_bytes());
            outer.extend(raw);
            raw = outer;
        }
        raw
    };
    assert!(parse_value(ValueType::Array, &nested(8)).is_ok());
    assert!(matches!(
        parse_value(ValueType::Array, &nested(9)),
        Err(GgufError::Absurd {
            value: 9,
            limit: 8,
            ..
        })
    ));
    let mut w = GgufWriter::new();
    w.add_raw(b"deep", ValueType::Array as u32, &nested(100));
    assert!(matches!(parse_err(&w.finish()), GgufError::Absurd { .. }));
}

#[test]
fn too_many_and_zero_dims() {
    let mut w = GgufWriter::new();
    w.add_tensor("t5", GgmlType::F32, &[1, 1, 1, 1, 1], &[0; 4]);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::TooManyDims {
            name: "t5".into(),
            n_dims: 5,
            max: 4
        }
    );
    let mut w = GgufWriter::new();
    w.add_tensor("z", GgmlType::F32, &[4, 0], &[]);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::ZeroDim {
            name: "z".into(),
            index: 1
        }
    );
    let mut w = GgufWriter::new();
    w.add_tensor("none", GgmlType::F32, &[], &[]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::ZeroDim { index: 0, .. }
    ));
}

#[test]
fn element_count_overflow() {
    for dims in [
        &[1u64 << 32, 1 << 32][..],
        &[1 << 32, 1 << 31],
        &[u64::MAX, 1, 1, 2],
    ] {
        let mut w = GgufWriter::new();
        w.add_tensor("big", GgmlType::F32, dims, &[]);
        match parse_err(&w.finish()) {
            GgufError::ElementCountOverflow { name, dims: d } => {
                assert_eq!((name.as_str(), d.as_slice()), ("big", dims));
            }
            e => panic!("{dims:?}: {e:?}"),
        }
    }
    // Fits i64 elements, but the byte size overflows u64.
    let mut w = GgufWriter::new();
    w.add_tensor("bytes", GgmlType::F32, &[1 << 62], &[]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::ElementCountOverflow { .. }
    ));
}

#[test]
fn partial_blocks_are_rejected() {
    let mut w = GgufWriter::new();
    w.add_tensor("q", GgmlType::Q8_0, &[16, 2], &[0; 34]);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::PartialBlock {
            name: "q".into(),
            ty: GgmlType::Q8_0,
            row_len: 16,
            block: 32
        }
    );
    let mut w = GgufWriter::new();
    w.add_tensor("k", GgmlType::Q4_K, &[128, 2], &[0; 144]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::PartialBlock { block: 256, .. }
    ));
}

#[test]
fn unknown_value_types() {
    let mut w = GgufWriter::new();
    w.add_raw(b"k", 13, &[0]);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::UnknownValueType {
            id: 13,
            offset: 24 + 8 + 1
        }
    );
    let mut w = GgufWriter::new();
    w.add_raw(
        b"arr",
        ValueType::Array as u32,
        &[99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::UnknownValueType { id: 99, .. }
    ));
}

#[test]
fn invalid_bools() {
    let mut w = GgufWriter::new();
    w.add_raw(b"b", ValueType::Bool as u32, &[2]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::InvalidBool { value: 2, .. }
    ));
    let mut w = GgufWriter::new();
    w.add_array_raw("bs", ValueType::Bool, 3, &[1, 0, 9]);
    assert!(matches!(
        parse_err(&w.finish()),
        GgufError::InvalidBool { value: 9, .. }
    ));
}

#[test]
fn unknown_tensor_type() {
    let mut w = base();
    // 16 is IQ2_XXS, which this SDK does not support.
    w.add_tensor_raw(b"iq", 16, &[256], &[0; 66]);
    let e = parse_err(&w.finish());
    assert_eq!(
        e,
        GgufError::UnknownTensorType {
            name: "iq".into(),
            id: 16
        }
    );
    assert!(e.to_string().contains("'iq'") && e.to_string().contains("16"));
}

#[test]
fn tensor_data_past_eof() {
    let bytes = base().finish();
    let g = Gguf::parse(&bytes).unwrap();
    let start = g.data_offset + 32;
    let e = parse_err(&bytes[..bytes.len() - 1]);
    assert_eq!(
        e,
        GgufError::TensorPastEof {
            name: "b".into(),
            start,
            end: start + 34,
            file_size: bytes.len() as u64 - 1
        }
    );
    // A huge offset must not overflow.
    let mut b = bytes.clone();
    let at = offset_field(&b, "b");
    set_u64(&mut b, at, u64::MAX - 31);
    assert!(matches!(parse_err(&b), GgufError::TensorPastEof { .. }));
}

#[test]
fn misaligned_tensor() {
    let mut bytes = base().finish();
    let at = offset_field(&bytes, "b");
    set_u64(&mut bytes, at, 33);
    assert_eq!(
        parse_err(&bytes),
        GgufError::MisalignedTensor {
            name: "b".into(),
            offset: 33,
            alignment: 32
        }
    );
}

#[test]
fn overlapping_tensors() {
    let mut w = base();
    w.add_tensor("c", GgmlType::F32, &[8], &[0; 32]);
    let mut bytes = w.finish();
    // Move "c" onto "a".
    let at = offset_field(&bytes, "c");
    set_u64(&mut bytes, at, 0);
    let e = parse_err(&bytes);
    assert_eq!(
        e,
        GgufError::OverlappingTensors {
            first: "a".into(),
            second: "c".into()
        }
    );
    assert!(e.to_string().contains("'a'") && e.to_string().contains("'c'"));
}

#[test]
fn duplicates() {
    let mut w = base();
    w.add_u32("llama.block_count", 3);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::DuplicateKey("llama.block_count".into())
    );
    let mut w = base();
    w.add_tensor("a", GgmlType::F32, &[1], &[0; 4]);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::DuplicateTensor("a".into())
    );
}

#[test]
fn bad_alignment_values() {
    for a in [0u32, 3, 48] {
        let mut w = base();
        w.set_alignment(a);
        assert_eq!(parse_err(&w.finish()), GgufError::BadAlignment(a.into()));
    }
    let mut w = base();
    w.add_u64("general.alignment", 32);
    assert_eq!(
        parse_err(&w.finish()),
        GgufError::WrongType {
            key: "general.alignment".into(),
            expected: "u32",
            found: ValueType::U64
        }
    );
}

#[test]
fn parse_value_rejects_trailing_and_short_input() {
    assert_eq!(
        parse_value(ValueType::U32, &[1, 0, 0, 0, 9]),
        Err(GgufError::TrailingBytes {
            ty: ValueType::U32,
            count: 1
        })
    );
    assert!(matches!(
        parse_value(ValueType::U64, &[1, 2]),
        Err(GgufError::Truncated { .. })
    ));
    assert_eq!(
        parse_value(ValueType::I16, &[0xfe, 0xff]),
        Ok(Value::I16(-2))
    );
}

#[test]
fn typed_getters() {
    let mut w = GgufWriter::new();
    w.add_i32("neg", -5)
        .add_i8("small", 7)
        .add_u64("huge", u64::MAX)
        .add_f64("f64", 0.5)
        .add_bool("flag", true)
        .add_str("s", "hi")
        .add_raw(
            b"bad_utf8",
            ValueType::String as u32,
            &[1, 0, 0, 0, 0, 0, 0, 0, 0xff],
        )
        .add_array_i32("ints", &[1, -2, 3])
        .add_array_f32("floats", &[0.25, -1.5])
        .add_array_u32("uints", &[4, 5])
        .add_array_bool("bools", &[true, false])
        .add_i16("i16", -3)
        .add_u16("u16", 60000)
        .add_i64("i64", -9)
        .add_f32("f32", 2.5)
        .add_u8("u8", 255);
    let bytes = w.finish();
    let g = Gguf::parse(&bytes).unwrap();

    assert_eq!(g.get_i64("neg").unwrap(), Some(-5));
    assert!(matches!(
        g.get_u64("neg"),
        Err(GgufError::WrongType {
            found: ValueType::I32,
            ..
        })
    ));
    assert_eq!(g.get_u64("small").unwrap(), Some(7));
    assert_eq!(g.require_u64("huge").unwrap(), u64::MAX);
    assert!(g.get_i64("huge").is_err());
    assert_eq!(g.require_f32("f64").unwrap(), 0.5);
    assert_eq!(g.get_f32("neg").unwrap(), Some(-5.0));
    assert_eq!(g.get_bool("flag").unwrap(), Some(true));
    assert!(g.get_bool("s").is_err());
    assert_eq!(g.require_str("s").unwrap(), "hi");
    assert!(matches!(
        g.get_str("bad_utf8"),
        Err(GgufError::WrongType {
            found: ValueType::String,
            ..
        })
    ));
    assert_eq!(g.get("bad_utf8"), Some(&Value::String(&[0xff])));
    assert!(g.get_str("neg").is_err());
    assert_eq!(g.get_u64("absent").unwrap(), None);
    assert_eq!(g.get_array("absent").unwrap(), None);
    assert_eq!(
        g.require_str("absent"),
        Err(GgufError::MissingKey("absent".into()))
    );
    assert_eq!(
        g.require_f32("absent").unwrap_err().to_string(),
        "missing metadata key 'absent'"
    );
    assert!(g.get_array("s").is_err());

    let ints = g.get_array("ints").unwrap().unwrap();
    assert_eq!(ints.to_i32s(), Some(vec![1, -2, 3]));
    assert_eq!(ints.to_u32s(), None);
    assert_eq!(ints.to_f32s(), Some(vec![1.0, -2.0, 3.0]));
    assert_eq!(ints.to_strings(), None);
    assert_eq!(ints.iter().len(), 3);
    let floats = g.get_array("floats").unwrap().unwrap();
    assert_eq!(floats.to_f32s(), Some(vec![0.25, -1.5]));
    assert_eq!(floats.to_i32s(), None);
    let uints = g.get_array("uints").unwrap().unwrap();
    assert_eq!(uints.to_u32s(), Some(vec![4, 5]));
    assert_eq!(uints.to_i32s(), Some(vec![4, 5]));
    let bools: Vec<_> = g
        .get_array("bools")
        .unwrap()
        .unwrap()
        .iter()
        .map(|v| v.as_bool())
        .collect();
    assert_eq!(bools, vec![Some(true), Some(false)]);

    let expect = [
        ("i16", Value::I16(-3)),
        ("u16", Value::U16(60000)),
        ("i64", Value::I64(-9)),
        ("f32", Value::F32(2.5)),
        ("u8", Value::U8(255)),
        ("f64", Value::F64(0.5)),
    ];
    for (k, v) in expect {
        assert_eq!(g.get(k), Some(&v), "{k}");
        let e = g.entry(k).unwrap();
        assert_eq!(e.value_type, v.value_type());
        assert_eq!(parse_value(e.value_type, e.raw).unwrap(), v);
    }
    assert_eq!(Value::I16(-3).as_u64(), None);
    assert_eq!(Value::U16(3).as_f32(), Some(3.0));
    assert_eq!(Value::Bool(true).as_u64(), None);
    assert_eq!(Value::String(b"x").as_f32(), None);
}

#[test]
fn value_type_ids() {
    for id in 0..13u32 {
        assert_eq!(ValueType::from_u32(id).map(|t| t as u32), Some(id));
    }
    assert_eq!(ValueType::from_u32(13), None);
}

#[test]
fn from_parts_rebuilds_and_checks() {
    let bytes = base().finish();
    let g = Gguf::parse(&bytes).unwrap();
    let h = Gguf::from_parts(
        g.version,
        g.alignment,
        g.metadata.clone(),
        g.tensors.clone(),
    )
    .unwrap();
    assert_eq!(h.metadata, g.metadata);
    assert_eq!(h.tensors, g.tensors);
    assert_eq!(h.data_offset, 0);
    assert_eq!(h.tensor("b").unwrap().data, g.tensor("b").unwrap().data);
    assert_eq!(h.get_u64("llama.block_count").unwrap(), Some(2));

    let mut dup = g.metadata.clone();
    dup.push(dup[0].clone());
    assert!(matches!(
        Gguf::from_parts(3, 32, dup, vec![]),
        Err(GgufError::DuplicateKey(_))
    ));
    let mut dupt = g.tensors.clone();
    dupt.push(dupt[1].clone());
    assert!(matches!(
        Gguf::from_parts(3, 32, vec![], dupt),
        Err(GgufError::DuplicateTensor(_))
    ));
    let short = TensorInfo {
        data: &g.tensors[0].data[..31],
        ..g.tensors[0].clone()
    };
    assert!(matches!(
        Gguf::from_parts(3, 32, vec![], vec![short]),
        Err(GgufError::TensorSizeMismatch {
            expected: 32,
            found: 31,
            ..
        })
    ));
    let mislabelled = MetaEntry {
        value_type: ValueType::U64,
        ..g.metadata[1].clone()
    };
    assert!(matches!(
        Gguf::from_parts(3, 32, vec![mislabelled], vec![]),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        Gguf::from_parts(1, 32, vec![], vec![]),
        Err(GgufError::UnsupportedVersion(1))
    ));
    assert!(matches!(
        Gguf::from_parts(3, 24, vec![], vec![]),
        Err(GgufError::BadAlignment(24))
    ));
}
