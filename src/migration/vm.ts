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

/**
 * Which pages the guest wrote (after Cloud Hypervisor's start_dirty_log / dirty_log). Call it
 * only while the guest is not inside a slice (from the event loop).
 */
export interface DirtyPageLog {
  /** Starts logging with an empty log. */
  start(): void;
  /**
   * Pages written since start() or the last harvest, ascending (a superset); clears the log.
   * `rearm: false`: the last harvest (the guest stays paused), the log need not catch later writes.
   */
  harvest(rearm?: boolean): ArrayLike<number>;
  /** How many pages the next harvest would report at most. */
  count(): number;
  stop(): void;
}

/**
 * Device memory that travels beside RAM (DEVICE_MEMORY: v86's VGA buffers, ~1 MiB): sent in
 * full in round 0, then only the 4 KiB chunks that changed, so that the state saved in the pause
 * leaves it out.
 */
export interface DeviceMemory {
  /** The regions, in a fixed order (views: re-fetch them). */
  regions(): Uint8Array[];
  /** As saveStateWithoutRam, without the regions' contents: restoring it leaves the regions as they are. */
  saveStateWithoutMemory(): Promise<ArrayBuffer>;
}

export interface Migratable extends Pausable, Snapshottable, Clocked {
  /** A raw view of guest RAM (re-fetch it: a view can be detached when wasm memory grows). */
  ram(): Uint8Array;
  /** Absent: dirty pages are found by comparing all of RAM against a shadow copy. */
  readonly dirtyLog?: DirtyPageLog | undefined;
  /** Absent: the state saved in the pause carries all device memory. */
  readonly deviceMemory?: DeviceMemory | undefined;
  /**
   * A region of `bytes` in the engine's wasm memory, outside guest RAM, for the migration's
   * shadow copy: pages there and in RAM can be delta-encoded in place (see WasmDelta). The
   * same region is handed out again on later calls. Absent: the shadow is a Buffer.
   */
  hostArea?(bytes: number): { memory: WebAssembly.Memory; offset: number };
  /**
   * Resolves at a good moment to pause the guest at: the first halt after it sent output, or,
   * for a busy guest whose next output is due soon, right after that output; at once for a busy
   * guest that has nothing due; or after `maxWaitMs`. True when caught after output. Absent: the
   * guest is paused when the pre-copy ends.
   */
  whenQuiet?(maxWaitMs: number): Promise<boolean>;
  /**
   * Resolves when the guest is halted, stopped or busy, or at its next halt, or after
   * `maxWaitMs`. Absent: the pre-copy's slices alternate with the guest's own turns.
   */
  whenHalted?(maxWaitMs: number): Promise<void>;
}
