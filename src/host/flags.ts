/**
 * Node/V8 flags for a process that runs host agents (`hop host serve`, and the benchmarks, which
 * run two agents in one process). See src/vm/flags.ts for the VM processes' own.
 *
 * --no-memory-reducer: V8's memory reducer runs major GCs in a process whose allocation rate
 * drops, to shrink its heap. A host agent's heap is small (~16-22 MB) and steady, and each such
 * GC (22-34 ms, measured with --trace-gc during live migrations on 2 cores) held the agent's event
 * loop, and with it the consoles and switch ports it relays: the longest heartbeat silences of
 * a migrating guest (46-68 ms with a 64 MiB dirty set) came from that. Only a command-line flag
 * does this: set at run time (v8.setFlagsFromString) it is too late, the reducer already exists.
 */
export const AGENT_NODE_FLAGS: readonly string[] = ["--no-memory-reducer"];

/** The agent flags this process was started without. */
export function missingAgentFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return AGENT_NODE_FLAGS.filter((f) => !execArgv.includes(f));
}
