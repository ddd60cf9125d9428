//! Fuzz target: `Gguf::parse` and `parse_value` on arbitrary bytes must never panic, and
//! whatever parses must be internally consistent.

#![no_main]

use kiln_sdk::gguf::{encode_value, parse_value, Gguf, Value, ValueType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The value decoder alone: first byte picks the type.
    if let Some((&t, rest)) = data.split_first() {
        if let Some(ty) = ValueType::from_u32(u32::from(t % 13)) {
            if let Ok(v) = parse_value(ty, rest) {
                assert_eq!(encode_value(&v), rest);
            }
        }
    }

    let Ok(g) = Gguf::parse(data) else { return };
    for e in &g.metadata {
        let v = parse_value(e.value_type, e.raw).expect("raw span re-parses");
        assert_eq!(encode_value(&v), e.raw);
        if let Value::Array(a) = e.value {
            assert_eq!(a.iter().count(), a.len());
            let _ = (a.to_strings(), a.to_f32s(), a.to_i32s(), a.to_u32s());
        }
        let _ = (
            e.value.as_str(),
            e.value.as_f32(),
            e.value.as_u64(),
            e.value.as_bool(),
        );
    }
    for t in &g.tensors {
        assert_eq!(Some(t.data.len() as u64), t.ty.bytes_for(t.n_elements()));
        assert!(t.offset.is_multiple_of(g.alignment));
        assert!(g.tensor(t.name).is_some());
        let _ = (t.row_len(), t.n_rows());
    }
    let _ = g.architecture();
    let h = Gguf::from_parts(
        g.version,
        g.alignment,
        g.metadata.clone(),
        g.tensors.clone(),
    )
    .expect("a parsed file rebuilds");
    assert_eq!(h.tensors.len(), g.tensors.len());
});
