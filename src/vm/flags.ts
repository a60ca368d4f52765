/**
 * Node/V8 flags for VM processes (one guest per process). Kept in one place so that the idle-CPU
 * work and the benchmarks see exactly what the host agent forks with.
 */
export const VM_PROCESS_EXEC_ARGV: readonly string[] = [];
