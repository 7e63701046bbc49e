;; memhog: grows its memory 1 MiB at a time and writes to every page, until the memory
;; cgroup's limit ends it (or growth fails at 4 GiB: exit 1).
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $addr i32) (local $end i32)
    (loop $grow
      ;; 16 pages = 1 MiB; memory.grow returns -1 when it cannot grow.
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
        (then (call $exit (i32.const 1))))
      (local.set $end (i32.mul (memory.size) (i32.const 65536)))
      (block $done
        (loop $touch
          (br_if $done (i32.ge_u (local.get $addr) (local.get $end)))
          (i32.store (local.get $addr) (local.get $addr))
          (local.set $addr (i32.add (local.get $addr) (i32.const 4096)))
          (br $touch)))
      (br $grow))))
