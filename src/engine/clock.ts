/**
 * The engine's clock. v86 times its devices (PIT, APIC, RTC, TSC) with `performance.now()`,
 * bound once when its module loads. That clock starts at zero in every process, so a guest
 * restored in another process (live or quick migration, resume from suspend) finds its timers
 * set against a different time origin: measured here, its next timer interrupt then came 30-70 ms
 * late, while the same restore inside one process resumed at once.
 *
 * So the VM process gives v86 an adjustable clock: `performance.now()` plus an offset, installed
 * before v86 loads (this module is imported first by the engine). After restoring a state saved
 * elsewhere, setEngineNow() continues the source's clock from the moment it paused (plus the
 * pause), exactly as if the guest had been paused and resumed in place.
 */
const realNow = performance.now.bind(performance);
let offsetMs = 0;

performance.now = (): number => realNow() + offsetMs;

/** The engine's current time (v86's microtick), ms. */
export function engineNow(): number {
  return realNow() + offsetMs;
}

/** Makes the engine's clock read `ms` now (monotonic from here on). */
export function setEngineNow(ms: number): void {
  if (!Number.isFinite(ms)) throw new RangeError(`engine time must be a finite number, got ${ms}`);
  offsetMs = ms - realNow();
}

/**
 * After restoring a state saved at engine time `savedEngineMs` when the wall clock read
 * `savedAtMs`: continue from there, counting the time the guest spent paused in between.
 */
export function continueEngineClock(savedEngineMs: number, savedAtMs: number): void {
  setEngineNow(savedEngineMs + Math.max(0, Date.now() - savedAtMs));
}

/**
 * Checks that v86 reads this clock (its `microtick`), by moving the clock and watching
 * microtick follow. Throws if v86 was loaded before this module.
 */
export function checkEngineClock(microtick: () => number): void {
  const before = offsetMs;
  try {
    offsetMs += 1e6;
    const seen = microtick() - engineNow();
    if (Math.abs(seen) > 1_000) throw new Error(`v86's clock does not follow the engine clock (off by ${seen.toFixed(0)} ms): v86 was loaded before src/engine/clock.ts`);
  } finally {
    offsetMs = before;
  }
}
