/**
 * Node/V8 flags for VM processes (one guest per process). Kept in one place so that the idle-CPU
 * work and the benchmarks see exactly what the host agent forks with.
 *
 * --expose-gc: a spare VM process collects the throw-away guest of its warm-up (src/vm/warmup.ts,
 * 128 MiB of wasm memory) before it takes a VM.
 *
 * --no-memory-reducer: V8's memory reducer runs major GCs in a process that looks idle, 8 s
 * after start and later, to shrink its heap. A VM process's heap is small (~16 MB) and steady,
 * and each such GC held the guest for 5-13 ms (measured: the longest heartbeat silences of a
 * guest that was not being moved).
 *
 * --no-flush-bytecode: V8 drops the bytecode, and with it the optimised code, of functions that
 * have not run for a few GCs. The code of a migration's pause runs a few times per move: the
 * warm-up (src/vm/warmup.ts) compiles it ahead, and a VM process collects explicitly right after,
 * so without this flag what the warm-up compiled was flushed before a migration needed it (the
 * final round's dirty-log harvest took ~2 ms in the pause instead of ~0.7).
 *
 * --v8-pool-size=1: V8 compiles wasm (v86 JIT modules), optimises JS and sweeps on a pool of platform
 * worker threads, by default one per core. On a 2-core host, the ~2 s in which the JIT gate
 * (src/engine/internals.ts) turns compiling on after a move put 4 such threads beside the guest's own
 * thread, which then waited 60-85 ms for a CPU: the longest heartbeat silences of a guest that had
 * just arrived (80-136 ms) came from that. One worker keeps compiling off the guest's thread and
 * leaves it a core.
 *
 * HOPVISOR_VM_NODE_FLAGS (space-separated) adds flags for diagnosis, e.g. "--cpu-prof
 * --cpu-prof-dir=/tmp/prof" or "--trace-gc" (NODE_OPTIONS does not take --cpu-prof).
 */
const extra = process.env["HOPVISOR_VM_NODE_FLAGS"]?.split(" ").filter((f) => f !== "") ?? [];

export const VM_PROCESS_EXEC_ARGV: readonly string[] = ["--expose-gc", "--no-memory-reducer", "--no-flush-bytecode", "--v8-pool-size=1", ...extra];
