/**
 * Per-thread CPU priority of a VM process (Linux: a nice value belongs to a thread, and V8's
 * compiler and GC threads are threads of their own, so all of /proc/self/task are set).
 *
 * Lowering is only done where it can be undone: raising a nice value back needs CAP_SYS_NICE,
 * which is tried first, on one thread, by one step. Elsewhere nothing changes.
 */
import { readdirSync } from "node:fs";
import { getPriority, setPriority } from "node:os";

/** This process's threads; empty where /proc is not there. */
function threadIds(): number[] {
  try {
    return readdirSync("/proc/self/task").map(Number).filter((t) => Number.isInteger(t) && t > 0);
  } catch {
    return [];
  }
}

/**
 * Sets every thread of this process to `nice` and returns the function that puts them back
 * (threads started meanwhile inherited `nice`: they get the main thread's old value); returns
 * undefined, changing nothing, where putting them back would not be allowed.
 */
export function lowerPriority(nice: number): (() => void) | undefined {
  const tids = threadIds();
  const main = tids[0];
  if (main === undefined) return undefined;
  try {
    const p = getPriority(main);
    setPriority(main, Math.min(p + 1, 19));
    setPriority(main, p);
    if (getPriority(main) !== p) return undefined;
  } catch {
    return undefined;
  }
  const before = new Map<number, number>();
  for (const t of tids) {
    try {
      before.set(t, getPriority(t));
      setPriority(t, nice);
    } catch {
      // a thread that just ended
    }
  }
  let restored = false;
  return () => {
    if (restored) return;
    restored = true;
    const normal = before.get(main) ?? 0;
    for (const t of threadIds()) {
      try {
        setPriority(t, before.get(t) ?? normal);
      } catch {
        // a thread that just ended
      }
    }
  };
}

/** Runs `fn` with the process at `nice` (see lowerPriority), then puts it back. */
export async function atLowPriority<T>(nice: number, fn: () => Promise<T>): Promise<T> {
  const restore = lowerPriority(nice);
  try {
    return await fn();
  } finally {
    restore?.();
  }
}
