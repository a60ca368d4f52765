/**
 * A monotonic clock (ms) for measuring durations. Not `performance.now()`: in a VM process that
 * one is the engine's clock, which jumps when a restored guest's clock is continued (see
 * src/engine/clock.ts).
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** A duration rounded to `digits` decimals, for reports and logs. */
export function roundMs(ms: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(ms * f) / f;
}
