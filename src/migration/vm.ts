/**
 * The capabilities a migration needs from a VM, as small interfaces (after Cloud Hypervisor's
 * Pausable / Snapshottable / Migratable). The engine implements them; the migration drivers
 * see nothing else of it.
 */
export interface Pausable {
  readonly running: boolean;
  pause(): Promise<void>;
  run(): Promise<void>;
}

export interface Snapshottable {
  /** CPU and device state, RAM excluded (RAM travels as pages). */
  saveStateWithoutRam(): Promise<ArrayBuffer>;
  /**
   * Restores CPU and devices onto RAM that already holds the guest's pages. With `saved` (the
   * source engine's clock and the wall clock at the save), the engine clock (device timers) and
   * the guest's TSC continue from there, counting the pause.
   */
  restoreStateKeepingRam(state: ArrayBuffer, saved?: { clockMs: number; atMs: number }): Promise<void>;
}

/** The engine's own clock, which device timers run on: it must continue across a move. */
export interface Clocked {
  /** The engine's clock now (ms). */
  clockMs(): number;
}

export interface Migratable extends Pausable, Snapshottable, Clocked {
  /** A raw view of guest RAM (re-fetch it: a view can be detached when wasm memory grows). */
  ram(): Uint8Array;
}
