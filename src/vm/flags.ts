/**
 * Node/V8 flags for VM processes (one guest per process). Kept in one place so that the idle-CPU
 * work and the benchmarks see exactly what the host agent forks with.
 *
 * --expose-gc: a spare VM process collects the throw-away guest of its warm-up (src/vm/warmup.ts,
 * 128 MiB of wasm memory) before it takes a VM, not in the middle of that VM's first migration.
 */
export const VM_PROCESS_EXEC_ARGV: readonly string[] = ["--expose-gc"];
