/**
 * Fixed places in a wasm memory where the migration target has large payloads assembled
 * (FrameDecoder's payload sink): a payload lands once, where the page applier works on it.
 * Places are handed out in turn and given back once their frame has been handled; when all are
 * taken (frames queued behind a slow step), the decoder falls back to ordinary Buffers.
 */
export class PayloadSlots {
  private readonly free: number[] = [];

  constructor(
    private readonly memory: WebAssembly.Memory,
    private readonly offset: number,
    readonly slotBytes: number,
    readonly count: number,
  ) {
    for (let i = count - 1; i >= 0; i--) this.free.push(i);
  }

  /** A place of exactly `length` bytes, or undefined (too big, or none free). */
  take(length: number): Uint8Array | undefined {
    if (length > this.slotBytes) return undefined;
    const i = this.free.pop();
    if (i === undefined) return undefined;
    return new Uint8Array(this.memory.buffer, this.offset + i * this.slotBytes, length);
  }

  /** Gives back the place `payload` lies in, if it is one of ours and taken (anything else is ignored). */
  release(payload: Uint8Array): void {
    if (payload.buffer !== this.memory.buffer) return;
    const rel = payload.byteOffset - this.offset;
    if (rel < 0 || rel % this.slotBytes !== 0) return;
    const i = rel / this.slotBytes;
    if (i < this.count && !this.free.includes(i)) this.free.push(i);
  }

  /** Places free now. */
  get available(): number {
    return this.free.length;
  }
}
