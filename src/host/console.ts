import type { ConsoleStream } from "./types.js";

/** A VM's serial console: bounded scrollback plus live subscribers. Survives VM restarts. */
export class ConsoleBuffer implements ConsoleStream {
  private chunks: Buffer[] = [];
  private size = 0;
  private readonly subscribers = new Set<(chunk: Buffer) => void>();

  constructor(private readonly limit = 256 * 1024) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.limit && this.chunks.length > 1) {
      const first = this.chunks.shift();
      if (first !== undefined) this.size -= first.length;
    }
    for (const fn of this.subscribers) fn(chunk);
  }

  scrollback(): Buffer {
    const all = Buffer.concat(this.chunks);
    return all.length > this.limit ? all.subarray(all.length - this.limit) : all;
  }

  subscribe(fn: (chunk: Buffer) => void): () => void {
    this.subscribers.add(fn);
    return () => this.subscribers.delete(fn);
  }
}
