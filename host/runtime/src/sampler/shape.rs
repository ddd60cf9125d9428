//! The shape check of a sampler module, run before compiling it: a small module can still
//! make Cranelift spend minutes and gigabytes (tens of thousands of functions, control flow
//! nested thousands deep, huge bodies, or many variables live across many blocks: 15 s for
//! one 256 KiB function of loops over 10,000 locals), so the host reads the binary once with
//! `wasmparser` and refuses a module past any of the limits below, with a message naming
//! the limit. At the limits, compiling takes seconds on one core (measured in
//! `modules_near_the_limits_compile_in_bounded_time`).
//!
//! The check is one pass over the bytes: every count is compared with its limit before the
//! items it counts are read or as they are, the operators of each body are read once (no
//! allocation grows with the input beyond one entry per type and function), and the first
//! limit exceeded ends it.
//!
//! Real samplers are far below the limits: the built-ins and the five examples in
//! `samplers/examples` have at most 156 functions, 149 KiB of code, bodies of 9 KiB, nesting
//! 35 deep, 37 locals in a function (1,098 in all) and a compile cost of 21,349 in a function
//! (226,395 in all); `real_samplers_pass_by_a_wide_margin` checks a margin of 4 to 100×.

use wasmparser::{CompositeInnerType, Encoding, Operator, Parser, Payload};

/// Most functions (imported and defined) in a module.
pub const MAX_FUNCTIONS: usize = 10_000;
/// Largest function body, in bytes (its locals and code).
pub const MAX_FUNCTION_BYTES: usize = 256 << 10;
/// Most bytes of code (all function bodies) in a module.
pub const MAX_CODE_BYTES: usize = 8 << 20;
/// Deepest nesting of blocks (`block`, `loop`, `if`, `try`, `try_table`) in a function.
pub const MAX_BLOCK_DEPTH: usize = 256;
/// Most locals a function declares (its parameters not counted).
pub const MAX_LOCALS: u64 = 10_000;
/// Most locals declared by all the functions of a module together.
pub const MAX_TOTAL_LOCALS: u64 = 200_000;
/// Largest compile cost of one function: its variables (parameters and locals) times its
/// control operators. The compiler's work grows with this product (every variable may need
/// a value at every block), about a second for 16 million on a current core.
pub const MAX_FUNCTION_COST: u64 = 16_000_000;
/// Largest compile cost of all the functions of a module together.
pub const MAX_TOTAL_COST: u64 = 64_000_000;
/// Most entries in each of the type, global, export, element and data sections.
pub const MAX_ENTRIES: usize = 10_000;
/// Most imports (the ABI allows seven functions; more is refused later with the names).
pub const MAX_IMPORTS: usize = 1_000;

/// What the check measured of a module that passed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Functions, imported and defined.
    pub functions: usize,
    /// Bytes of all function bodies.
    pub code_bytes: usize,
    /// The largest function body, in bytes.
    pub max_body_bytes: usize,
    /// The deepest block nesting of any function.
    pub max_depth: usize,
    /// The most locals one function declares.
    pub max_locals: u64,
    /// Locals declared by all functions.
    pub total_locals: u64,
    /// The largest compile cost of one function (see [`MAX_FUNCTION_COST`]).
    pub max_cost: u64,
    /// The compile cost of all functions.
    pub total_cost: u64,
}

/// Refuses `n` items of a kind past `max`.
fn count(n: usize, max: usize, what: &str) -> Result<usize, String> {
    if n > max {
        return Err(format!("it has {n} {what}, more than the {max} allowed"));
    }
    Ok(n)
}

/// Checks the shape of a binary module (see the module docs); returns what it measured, or
/// why the module is refused. Binaries that cannot be read are refused too (validation is
/// left to the compiler).
pub fn check(wasm: &[u8]) -> Result<Shape, String> {
    let malformed = |e: wasmparser::BinaryReaderError| format!("it is not valid WebAssembly: {e}");
    let mut shape = Shape::default();
    // Parameters of each type, and the type of each defined function.
    let mut type_params: Vec<u32> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let mut imported_functions = 0usize;
    let mut defined = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(malformed)? {
            Payload::Version {
                encoding: Encoding::Component,
                ..
            } => {
                return Err("it is a WebAssembly component; a sampler is a core module".to_string())
            }
            Payload::TypeSection(s) => {
                count(s.count() as usize, MAX_ENTRIES, "types")?;
                for group in s {
                    for ty in group.map_err(malformed)?.types() {
                        count(type_params.len() + 1, MAX_ENTRIES, "types")?;
                        type_params.push(match &ty.composite_type.inner {
                            CompositeInnerType::Func(f) => f.params().len() as u32,
                            _ => 0,
                        });
                    }
                }
            }
            Payload::ImportSection(s) => {
                let mut imports = 0usize;
                for imp in s.into_imports() {
                    imports += 1;
                    count(imports, MAX_IMPORTS, "imports")?;
                    if matches!(
                        imp.map_err(malformed)?.ty,
                        wasmparser::TypeRef::Func(_) | wasmparser::TypeRef::FuncExact(_)
                    ) {
                        imported_functions += 1;
                    }
                }
            }
            Payload::FunctionSection(s) => {
                let n = s.count() as usize;
                count(
                    imported_functions.saturating_add(n),
                    MAX_FUNCTIONS,
                    "functions",
                )?;
                for t in s {
                    func_types.push(t.map_err(malformed)?);
                }
            }
            Payload::GlobalSection(s) => {
                count(s.count() as usize, MAX_ENTRIES, "globals")?;
            }
            Payload::ExportSection(s) => {
                count(s.count() as usize, MAX_ENTRIES, "exports")?;
            }
            Payload::ElementSection(s) => {
                count(s.count() as usize, MAX_ENTRIES, "element segments")?;
            }
            Payload::DataSection(s) => {
                count(s.count() as usize, MAX_ENTRIES, "data segments")?;
            }
            Payload::CodeSectionStart { count: n, size, .. } => {
                count(
                    imported_functions.saturating_add(n as usize),
                    MAX_FUNCTIONS,
                    "functions",
                )?;
                if size as usize > MAX_CODE_BYTES {
                    return Err(format!(
                        "it has {size} bytes of code, more than the {MAX_CODE_BYTES} allowed"
                    ));
                }
            }
            Payload::CodeSectionEntry(body) => {
                let index = imported_functions + defined;
                let params = func_types
                    .get(defined)
                    .and_then(|&t| type_params.get(t as usize))
                    .copied()
                    .unwrap_or(0);
                defined += 1;
                check_body(&body, index, params, &mut shape).map_err(|e| match e {
                    BodyError::Limit(m) => m,
                    BodyError::Malformed(e) => malformed(e),
                })?;
            }
            _ => {}
        }
    }
    shape.functions = imported_functions + defined;
    Ok(shape)
}

enum BodyError {
    Limit(String),
    Malformed(wasmparser::BinaryReaderError),
}

impl From<wasmparser::BinaryReaderError> for BodyError {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        BodyError::Malformed(e)
    }
}

/// Checks one function body (function `index`, with `params` parameters) and adds it to
/// `shape`.
fn check_body(
    body: &wasmparser::FunctionBody<'_>,
    index: usize,
    params: u32,
    shape: &mut Shape,
) -> Result<(), BodyError> {
    let limit = |m: String| Err(BodyError::Limit(m));
    let bytes = body.range().len();
    if bytes > MAX_FUNCTION_BYTES {
        return limit(format!(
            "function {index} has a body of {bytes} bytes, more than the {MAX_FUNCTION_BYTES} \
             allowed"
        ));
    }
    let mut locals = 0u64;
    let mut reader = body.get_locals_reader()?;
    for _ in 0..reader.get_count() {
        let (n, _) = reader.read()?;
        locals += u64::from(n);
        if locals > MAX_LOCALS {
            return limit(format!(
                "function {index} declares more than the {MAX_LOCALS} locals allowed"
            ));
        }
    }
    shape.total_locals += locals;
    if shape.total_locals > MAX_TOTAL_LOCALS {
        return limit(format!(
            "its functions declare more than the {MAX_TOTAL_LOCALS} locals allowed in all"
        ));
    }
    let variables = locals + u64::from(params) + 1;
    let mut ops = body.get_operators_reader()?;
    let (mut depth, mut max_depth, mut control) = (0usize, 0usize, 0u64);
    while !ops.eof() {
        let op = ops.read()?;
        match op {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => {
                depth += 1;
                if depth > MAX_BLOCK_DEPTH {
                    return limit(format!(
                        "function {index} nests blocks more than the {MAX_BLOCK_DEPTH} deep \
                         allowed"
                    ));
                }
                max_depth = max_depth.max(depth);
            }
            Operator::End | Operator::Delegate { .. } => depth = depth.saturating_sub(1),
            _ => {}
        }
        if is_control(&op) {
            control += 1;
            if control * variables > MAX_FUNCTION_COST {
                return limit(format!(
                    "function {index} is too costly to compile: its {variables} variables \
                     times its control operators pass {MAX_FUNCTION_COST}, the limit"
                ));
            }
        }
    }
    ops.finish()?;
    let cost = control * variables;
    shape.total_cost += cost;
    if shape.total_cost > MAX_TOTAL_COST {
        return limit(format!(
            "it is too costly to compile: its functions' variables times their control \
             operators pass {MAX_TOTAL_COST} in all, the limit"
        ));
    }
    shape.code_bytes += bytes;
    shape.max_body_bytes = shape.max_body_bytes.max(bytes);
    shape.max_depth = shape.max_depth.max(max_depth);
    shape.max_locals = shape.max_locals.max(locals);
    shape.max_cost = shape.max_cost.max(cost);
    Ok(())
}

/// Whether `op` starts, ends or leaves a block (where the compiler starts a new basic block).
fn is_control(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Else
            | Operator::End
            | Operator::Br { .. }
            | Operator::BrIf { .. }
            | Operator::BrTable { .. }
            | Operator::Return
            | Operator::Unreachable
            | Operator::Try { .. }
            | Operator::TryTable { .. }
            | Operator::Catch { .. }
            | Operator::CatchAll
            | Operator::Delegate { .. }
            | Operator::Throw { .. }
            | Operator::Rethrow { .. }
            | Operator::ThrowRef
            | Operator::BrOnNull { .. }
            | Operator::BrOnNonNull { .. }
            | Operator::BrOnCast { .. }
            | Operator::BrOnCastFail { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{builtin, Cause, SamplerModule};
    use std::time::{Duration, Instant};

    fn leb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn section(id: u8, content: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(content.len() as u64, out);
        out.extend_from_slice(content);
    }

    /// A function body: local declarations `(count, value type)`, then `code` and `end`.
    fn body(locals: &[(u32, u8)], code: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        leb(locals.len() as u64, &mut b);
        for &(n, t) in locals {
            leb(n.into(), &mut b);
            b.push(t);
        }
        b.extend_from_slice(code);
        b.push(0x0b);
        b
    }

    /// A binary module of functions of type `() -> ()` with these bodies.
    fn module(bodies: &[Vec<u8>]) -> Vec<u8> {
        module_with(bodies, false)
    }

    /// The same, with a memory of one page when `memory`.
    fn module_with(bodies: &[Vec<u8>], memory: bool) -> Vec<u8> {
        let mut m = b"\0asm\x01\0\0\0".to_vec();
        section(1, &[1, 0x60, 0, 0], &mut m);
        let mut funcs = Vec::new();
        leb(bodies.len() as u64, &mut funcs);
        funcs.extend(std::iter::repeat_n(0u8, bodies.len()));
        section(3, &funcs, &mut m);
        if memory {
            section(5, &[1, 0, 1], &mut m);
        }
        let mut code = Vec::new();
        leb(bodies.len() as u64, &mut code);
        for b in bodies {
            leb(b.len() as u64, &mut code);
            code.extend_from_slice(b);
        }
        section(10, &code, &mut m);
        m
    }

    /// `n` nested `block`s and their `end`s.
    fn nested(n: usize) -> Vec<u8> {
        let mut code = [0x02, 0x40].repeat(n);
        code.extend(std::iter::repeat_n(0x0b, n));
        code
    }

    /// Checks that loading `wasm` is refused within a second with a message containing
    /// `limit`, by the check and by `SamplerModule::load`.
    fn refused(wasm: &[u8], limit: &str) {
        let t = Instant::now();
        let m = check(wasm).expect_err("refused");
        assert!(m.contains(limit), "{m}");
        let e = SamplerModule::load("shape", wasm).expect_err("refused");
        assert!(
            matches!(&e.cause, Cause::Invalid(m) if m.contains(limit)),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn real_samplers_pass_by_a_wide_margin() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samplers/examples/out");
        let mut modules: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        (
                            e.path().display().to_string(),
                            std::fs::read(e.path()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for name in builtin::names() {
            modules.push((name.to_string(), builtin::bytes(name).unwrap().to_vec()));
        }
        for (name, bytes) in &modules {
            let s = check(bytes).unwrap();
            eprintln!("{name}: {} bytes, {s:?}", bytes.len());
            assert!(s.functions * 20 <= MAX_FUNCTIONS, "{name}");
            assert!(s.max_body_bytes * 20 <= MAX_FUNCTION_BYTES, "{name}");
            assert!(s.max_depth * 4 <= MAX_BLOCK_DEPTH, "{name}");
            assert!(s.max_locals * 100 <= MAX_LOCALS, "{name}");
            assert!(s.total_locals * 50 <= MAX_TOTAL_LOCALS, "{name}");
            assert!(s.max_cost * 20 <= MAX_FUNCTION_COST, "{name}");
            assert!(s.total_cost * 20 <= MAX_TOTAL_COST, "{name}");
            assert!(s.code_bytes * 20 <= MAX_CODE_BYTES, "{name}");
        }
    }

    #[test]
    fn fifty_thousand_functions_are_refused() {
        let tiny = body(&[], &[]);
        refused(
            &module(&vec![tiny; 50_000]),
            "it has 50000 functions, more than the 10000 allowed",
        );
        // At the limit it passes the check.
        let s = check(&module(&vec![body(&[], &[]); MAX_FUNCTIONS])).unwrap();
        assert_eq!(s.functions, MAX_FUNCTIONS);
    }

    #[test]
    fn deep_nesting_is_refused() {
        // 100,000 deep does not even fit the body limit; 80,000 deep does, and is refused for
        // its depth after reading 257 blocks.
        refused(
            &module(&[body(&[], &nested(100_000))]),
            "has a body of 300002 bytes, more than the 262144 allowed",
        );
        refused(
            &module(&[body(&[], &nested(80_000))]),
            "function 0 nests blocks more than the 256 deep allowed",
        );
        refused(
            &module(&[body(&[], &[]), body(&[], &nested(MAX_BLOCK_DEPTH + 1))]),
            "function 1 nests blocks more than the 256 deep allowed",
        );
        let s = check(&module(&[body(&[], &nested(MAX_BLOCK_DEPTH))])).unwrap();
        assert_eq!(s.max_depth, MAX_BLOCK_DEPTH);
        // `if` and `loop` count too; `else` does not.
        let mut code = [0x41, 0, 0x04, 0x40, 0x03, 0x40].repeat(200); // i32.const 0, if, loop
        code.extend([0x0b, 0x05, 0x0b].repeat(200)); // end (loop), else, end (if)
        refused(
            &module(&[body(&[], &code)]),
            "nests blocks more than the 256",
        );
    }

    #[test]
    fn huge_local_counts_are_refused() {
        refused(
            &module(&[body(&[(u32::MAX, 0x7f)], &[])]),
            "function 0 declares more than the 10000 locals allowed",
        );
        refused(
            &module(&[body(&[(6000, 0x7f), (6000, 0x7e)], &[])]),
            "function 0 declares more than the 10000 locals allowed",
        );
        let many = vec![body(&[(9_000, 0x7f)], &[]); 1 + (MAX_TOTAL_LOCALS / 9_000) as usize];
        refused(
            &module(&many),
            "its functions declare more than the 200000 locals allowed in all",
        );
        let s = check(&module(&[body(&[(MAX_LOCALS as u32, 0x7f)], &[])])).unwrap();
        assert_eq!(s.max_locals, MAX_LOCALS);
    }

    #[test]
    fn costly_and_large_code_is_refused() {
        // 10,000 locals and 1,700 control operators (850 empty blocks): 17 million.
        let blocks = |n: usize| [0x02, 0x40, 0x0b].repeat(n);
        refused(
            &module(&[body(&[(10_000, 0x7f)], &blocks(850))]),
            "function 0 is too costly to compile: its 10001 variables times its control \
             operators pass 16000000",
        );
        // Five functions of 15 million each.
        let costly = body(&[(10_000, 0x7f)], &blocks(749));
        assert!(check(&module(&vec![costly.clone(); 4])).is_ok());
        refused(
            &module(&vec![costly; 5]),
            "it is too costly to compile: its functions' variables times their control \
             operators pass 64000000 in all",
        );
        // 33 bodies of 256 KiB of `nop`s.
        let nops = body(&[], &vec![0x01; MAX_FUNCTION_BYTES - 8]);
        refused(
            &module(&vec![nops; 33]),
            "bytes of code, more than the 8388608 allowed",
        );
    }

    #[test]
    fn malformed_modules_and_components_are_refused() {
        let mut m = module(&[body(&[], &[0x02, 0x40])]); // an unterminated block
        refused(&m, "not valid WebAssembly");
        m.truncate(m.len() - 3);
        refused(&m, "not valid WebAssembly");
        refused(b"\0asm\x0d\0\x01\0", "component");
    }

    /// Times the compilation of modules near the limits (run with `--ignored --nocapture`).
    /// Measured on one core of the development machine: 10,000 empty functions 0.5 s; 8 MiB
    /// of loads and stores 3.5 s (32 functions of 256 KiB or 5,000 of 1.6 KiB); a function
    /// of loops over 600 locals at the cost limit 0.5 s (15 s for 10,000 locals and 256 KiB,
    /// which the cost limit refuses).
    #[test]
    #[ignore]
    fn modules_near_the_limits_compile_in_bounded_time() {
        let engine = crate::sampler::runtime::engine().unwrap();
        let time = |what: &str, wasm: &[u8]| {
            if let Err(e) = check(wasm) {
                eprintln!("{what}: {} KiB, refused: {e}", wasm.len() >> 10);
                return;
            }
            let t = Instant::now();
            let r = wasmtime::Module::new(engine, wasm);
            eprintln!(
                "{what}: {} KiB, {:?} ({})",
                wasm.len() >> 10,
                t.elapsed(),
                r.map_or_else(|e| e.to_string(), |_| "ok".into())
            );
        };
        time(
            "10000 empty functions",
            &module(&vec![body(&[], &[]); MAX_FUNCTIONS]),
        );
        // Loops that update `locals` locals in turn, `bytes` long.
        let loops = |locals: u32, bytes: usize| {
            let mut code = Vec::new();
            let mut k = 0u32;
            while code.len() < bytes {
                code.extend([0x03, 0x40]); // loop
                for _ in 0..20 {
                    code.push(0x20); // local.get
                    leb((k % locals).into(), &mut code);
                    code.extend([0x41, 1, 0x6a, 0x22]); // i32.const 1, i32.add, local.tee
                    leb(((k * 31 + 7) % locals).into(), &mut code);
                    code.extend([0x0d, 0x00]); // br_if 0
                    k += 1;
                }
                code.push(0x0b);
            }
            body(&[(locals, 0x7f)], &code)
        };
        time(
            "loops over 10000 locals, 256 KiB",
            &module(&[loops(10_000, 250_000)]),
        );
        time(
            "loops over 10000 locals, 12.5 KB",
            &module(&[loops(10_000, 12_500)]),
        );
        time(
            "loops over 1000 locals, 125 KB",
            &module(&[loops(1000, 125_000)]),
        );
        time(
            "loops over 600 locals, 208 KB",
            &module(&[loops(600, 208_000)]),
        );
        time(
            "4 × loops over 600 locals",
            &module(&vec![loops(600, 208_000); 4]),
        );
        time(
            "loops over 100 locals, 256 KiB",
            &module(&[loops(100, 250_000)]),
        );
        // Values left on the operand stack across loops: loads (not rematerialized), loops,
        // then the sum of the loaded values.
        let stack = |values: usize, bytes: usize| {
            let mut code = Vec::new();
            for _ in 0..values {
                code.extend([0x41, 0, 0x28, 2, 0]); // i32.const 0, i32.load
            }
            while code.len() + values < bytes {
                code.extend([0x03, 0x40]);
                for _ in 0..20 {
                    code.extend([0x20, 0, 0x41, 1, 0x6a, 0x22, 0, 0x0d, 0]);
                }
                code.push(0x0b);
            }
            code.extend(std::iter::repeat_n(0x6a, values - 1)); // i32.add
            code.push(0x1a); // drop
            module_with(&[body(&[(1, 0x7f)], &code)], true)
        };
        time("1000 loaded values across loops", &stack(1000, 250_000));
        time("10000 loaded values across loops", &stack(10_000, 250_000));
        // Straight-line code that cannot be dropped: loads and stores.
        let stores = |bytes: usize| {
            let mut code = Vec::new();
            let mut k = 0u32;
            while code.len() + 16 < bytes {
                // i32.const a, i32.const b, i32.load, i32.const 1, i32.add, i32.store
                code.extend([0x41, (k % 64) as u8, 0x41, ((k * 7) % 64) as u8, 0x28, 2, 0]);
                code.extend([0x41, 1, 0x6a, 0x36, 2, 0]);
                k += 1;
            }
            body(&[], &code)
        };
        time(
            "32 functions of 256 KiB of loads and stores (8 MiB)",
            &module_with(&vec![stores(250_000); 32], true),
        );
        time(
            "5000 functions of 1.6 KiB of loads and stores (8 MiB)",
            &module_with(&vec![stores(1_650); 5000], true),
        );
    }
}
