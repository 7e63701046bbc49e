;; A valid module that imports a function no one provides: it loads, and fails to
;; instantiate.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "env" "not_provided" (func $missing))
  (memory (export "memory") 1)
  (func (export "_start") (call $missing)))
