;; The "ban" Kiln sampler in hand-written WebAssembly text (sampler ABI v1, see sdk/sampler/ABI.md).
;;
;; Policy: greedy over the full logits row, except that the token ids listed in the config
;; ({"ban": [7042, 12]}) are never chosen. An empty config bans nothing.
;;
;; Build: wat2wasm ban.wat -o wat-ban.wasm   (wabt)
(module
  ;; The one host function this module uses.
  (import "kiln" "set_error" (func $set_error (param i32 i32)))

  (memory (export "memory") 1)

  ;; Error messages (UTF-8) at fixed offsets; the heap starts above them.
  (data (i32.const 16) "ban: config must be {\22ban\22: [token ids]}") ;; 40 bytes
  (data (i32.const 64) "ban: token id out of range")                 ;; 26 bytes
  (data (i32.const 96) "ban: empty vocabulary")                      ;; 21 bytes
  (data (i32.const 128) "ban: out of memory")                        ;; 18 bytes
  (data (i32.const 160) "ban: every token is banned or -inf")        ;; 34 bytes

  (global $heap (mut i32) (i32.const 256))  ;; bump allocator: first free byte
  (global $banned (mut i32) (i32.const 0))  ;; bitset: bit id%32 of word id/32 = id is banned
  (global $vocab (mut i32) (i32.const 0))
  (global $cur (mut i32) (i32.const 0))     ;; config parser: next byte
  (global $end (mut i32) (i32.const 0))     ;; config parser: end of the config

  (func (export "kiln_abi_version") (result i32) (i32.const 1))

  ;; Bump allocator: 8-byte-aligned, grows memory as needed, 0 on failure.
  (func $alloc (export "kiln_alloc") (param $size i32) (result i32)
    (local $start i32) (local $end i64) (local $have i64)
    (if (i32.lt_s (local.get $size) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $start (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $start)) (i64.extend_i32_u (local.get $size))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                             (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $start))

  ;; Reports an error message; returns -1.
  (func $fail (param $msg i32) (param $len i32) (result i32)
    (call $set_error (local.get $msg) (local.get $len))
    (i32.const -1))

  (func $fail_shape (result i32) (call $fail (i32.const 16) (i32.const 40)))

  ;; ---- config: "" | {} | {"ban": [id, ...]} (whitespace allowed) ----

  (func $skip_ws
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (global.get $cur) (global.get $end)))
        (local.set $c (i32.load8_u (global.get $cur)))
        (br_if $done
          (i32.eqz
            (i32.or (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
                    (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13))))))
        (global.set $cur (i32.add (global.get $cur) (i32.const 1)))
        (br $next))))

  ;; Skips whitespace, then consumes the byte $c if it is next: 1 if it was, else 0.
  (func $eat (param $c i32) (result i32)
    (call $skip_ws)
    (if (i32.and (i32.lt_u (global.get $cur) (global.get $end))
                 (i32.eq (i32.load8_u (global.get $cur)) (local.get $c)))
      (then
        (global.set $cur (i32.add (global.get $cur) (i32.const 1)))
        (return (i32.const 1))))
    (i32.const 0))

  ;; Skips whitespace, then consumes the 5 bytes "ban" (with the quotes) if they are next.
  (func $eat_ban (result i32)
    (call $skip_ws)
    (if (i32.gt_u (i32.add (global.get $cur) (i32.const 5)) (global.get $end))
      (then (return (i32.const 0))))
    (if (i32.and (i32.eq (i32.load (global.get $cur)) (i32.const 0x6e616222)) ;; '"' 'b' 'a' 'n'
                 (i32.eq (i32.load8_u offset=4 (global.get $cur)) (i32.const 0x22)))
      (then
        (global.set $cur (i32.add (global.get $cur) (i32.const 5)))
        (return (i32.const 1))))
    (i32.const 0))

  (func $is_digit (result i32)
    (if (i32.ge_u (global.get $cur) (global.get $end)) (then (return (i32.const 0))))
    (i32.lt_u (i32.sub (i32.load8_u (global.get $cur)) (i32.const 48)) (i32.const 10)))

  (func $parse (param $ptr i32) (param $len i32) (result i32)
    (local $id i64)
    (global.set $cur (local.get $ptr))
    (global.set $end (i32.add (local.get $ptr) (local.get $len)))
    (call $skip_ws)
    (if (i32.eq (global.get $cur) (global.get $end)) (then (return (i32.const 0))))
    (if (i32.eqz (call $eat (i32.const 123))) (then (return (call $fail_shape))))        ;; {
    (if (i32.eqz (call $eat (i32.const 125)))                                            ;; }
      (then
        (if (i32.eqz (call $eat_ban)) (then (return (call $fail_shape))))
        (if (i32.eqz (call $eat (i32.const 58))) (then (return (call $fail_shape))))     ;; :
        (if (i32.eqz (call $eat (i32.const 91))) (then (return (call $fail_shape))))     ;; [
        (if (i32.eqz (call $eat (i32.const 93)))                                         ;; ]
          (then
            (block $items_done
              (loop $item
                (call $skip_ws)
                (if (i32.eqz (call $is_digit)) (then (return (call $fail_shape))))
                (local.set $id (i64.const 0))
                (block $digits_done
                  (loop $digit
                    (br_if $digits_done (i32.eqz (call $is_digit)))
                    (local.set $id
                      (i64.add (i64.mul (local.get $id) (i64.const 10))
                               (i64.extend_i32_u
                                 (i32.sub (i32.load8_u (global.get $cur)) (i32.const 48)))))
                    (if (i64.ge_s (local.get $id) (i64.extend_i32_s (global.get $vocab)))
                      (then (return (call $fail (i32.const 64) (i32.const 26)))))
                    (global.set $cur (i32.add (global.get $cur) (i32.const 1)))
                    (br $digit)))
                (call $ban (i32.wrap_i64 (local.get $id)))
                (br_if $items_done (call $eat (i32.const 93)))                           ;; ]
                (if (i32.eqz (call $eat (i32.const 44))) (then (return (call $fail_shape)))) ;; ,
                (br $item)))))
        (if (i32.eqz (call $eat (i32.const 125))) (then (return (call $fail_shape))))))  ;; }
    (call $skip_ws)
    (if (i32.ne (global.get $cur) (global.get $end)) (then (return (call $fail_shape))))
    (i32.const 0))

  ;; Bitset address of the word holding token $id.
  (func $word (param $id i32) (result i32)
    (i32.add (global.get $banned) (i32.shl (i32.shr_u (local.get $id) (i32.const 5)) (i32.const 2))))

  (func $ban (param $id i32)
    (i32.store (call $word (local.get $id))
      (i32.or (i32.load (call $word (local.get $id)))
              (i32.shl (i32.const 1) (i32.and (local.get $id) (i32.const 31))))))

  (func $is_banned (param $id i32) (result i32)
    (i32.and (i32.shr_u (i32.load (call $word (local.get $id))) (i32.and (local.get $id) (i32.const 31)))
             (i32.const 1)))

  ;; ---- the ABI ----

  (func (export "kiln_init")
        (param $config i32) (param $config_len i32) (param $seed i64) (param $n_vocab i32)
        (result i32)
    (local $bytes i32) (local $i i32)
    (if (i32.le_s (local.get $n_vocab) (i32.const 0))
      (then (return (call $fail (i32.const 96) (i32.const 21)))))
    (global.set $vocab (local.get $n_vocab))
    (local.set $bytes
      (i32.shl (i32.shr_u (i32.add (local.get $n_vocab) (i32.const 31)) (i32.const 5)) (i32.const 2)))
    (global.set $banned (call $alloc (local.get $bytes)))
    (if (i32.eqz (global.get $banned)) (then (return (call $fail (i32.const 128) (i32.const 18)))))
    (block $zeroed
      (loop $zero
        (br_if $zeroed (i32.ge_u (local.get $i) (local.get $bytes)))
        (i32.store (i32.add (global.get $banned) (local.get $i)) (i32.const 0))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $zero)))
    (if (i32.le_s (local.get $config_len) (i32.const 0)) (then (return (i32.const 0))))
    (call $parse (local.get $config) (local.get $config_len)))  ;; 0 = the full view

  (func (export "kiln_sample") (param $buf i32) (param $n i32) (param $lse f32) (result i32)
    (local $count i32) (local $i i32) (local $best i32) (local $best_logit f32) (local $v f32)
    (local.set $count (local.get $n))
    (if (i32.gt_s (local.get $count) (global.get $vocab)) (then (local.set $count (global.get $vocab))))
    (local.set $best (i32.const -1))
    (local.set $best_logit (f32.neg (f32.const inf)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_s (local.get $i) (local.get $count)))
        (if (i32.eqz (call $is_banned (local.get $i)))
          (then
            (local.set $v (f32.load (i32.add (local.get $buf) (i32.shl (local.get $i) (i32.const 2)))))
            ;; First maximum wins; NaN and -inf never do.
            (if (f32.gt (local.get $v) (local.get $best_logit))
              (then
                (local.set $best_logit (local.get $v))
                (local.set $best (local.get $i))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (i32.lt_s (local.get $best) (i32.const 0))
      (then
        (call $set_error (i32.const 160) (i32.const 34))
        (return (i32.const -2))))
    (local.get $best))

  (func (export "kiln_accept") (param $token i32))

  (func (export "kiln_reset"))
)
