/**
 * Throttling a guest that dirties memory faster than the link sends ("stun during page send"
 * in vMotion, auto-converge in QEMU): in every cycle of CYCLE_MS the guest is paused for
 * level% of the cycle. Pause and resume each land within ~1 ms in v86.
 */
import type { Pausable } from "./vm.js";
import { monotonicMs } from "../common/time.js";

const CYCLE_MS = 20;

export class Stunner {
  private level = 0;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private stunning = false;
  /** Total time the guest spent stunned (ms). */
  stunnedMs = 0;
  maxLevel = 0;

  constructor(private readonly vm: Pausable) {}

  get current(): number {
    return this.level;
  }

  setLevel(level: number): void {
    this.level = Math.max(0, Math.min(95, level));
    this.maxLevel = Math.max(this.maxLevel, this.level);
    if (this.level > 0 && this.timer === undefined && !this.stopped) this.schedule(0);
  }

  private schedule(delay: number): void {
    this.timer = setTimeout(() => void this.cycle(), delay);
  }

  private async cycle(): Promise<void> {
    this.timer = undefined;
    if (this.stopped || this.level === 0) return;
    const stunMs = (CYCLE_MS * this.level) / 100;
    const t0 = monotonicMs();
    this.stunning = true;
    try {
      if (this.vm.running) await this.vm.pause();
      await new Promise((r) => setTimeout(r, stunMs));
    } finally {
      // stop() may have taken over the VM's power while we slept: only resume if still ours.
      if (!this.stopped) await this.vm.run();
      this.stunning = false;
    }
    this.stunnedMs += monotonicMs() - t0;
    if (!this.stopped) this.schedule(Math.max(1, CYCLE_MS - stunMs));
  }

  /** Ends throttling; afterwards the caller owns pause/run again. Waits for a stun in progress to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.stunning) await new Promise((r) => setTimeout(r, 1));
  }
}
