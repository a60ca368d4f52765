/**
 * A migration connection: frames over a TCP socket, with write back-pressure and one place
 * where the stream ends (close, error, corrupt frame). Used by both the source and the target
 * VM process; it knows nothing of the state machines.
 */
import type { Socket } from "node:net";
import { FrameDecoder, MigrationAbortedError, toMigrationError, type Frame, type MigrationError, type PayloadSink } from "./protocol.js";

/** Past this many bytes queued in the socket, writers wait for 'drain'. */
const HIGH_WATER = 8 * 1024 * 1024;

export interface FrameConnectionHandlers {
  onFrame: (frame: Frame) => void;
  /** Called once: the connection ended (error is set for anything but a clean end requested by us). */
  onEnd: (error: MigrationError | undefined) => void;
}

export class FrameConnection {
  private readonly decoder: FrameDecoder;
  private ended = false;
  private closingByUs = false;
  private drainWaiters: (() => void)[] = [];
  bytesIn = 0;
  bytesOut = 0;

  constructor(
    readonly socket: Socket,
    private readonly handlers: FrameConnectionHandlers,
    options: { head?: Buffer; maxPayload?: number } = {},
  ) {
    this.decoder = new FrameDecoder(options.maxPayload !== undefined ? { maxPayload: options.maxPayload } : {});
    socket.setNoDelay(true);
    socket.on("data", (chunk: Buffer) => this.feed(chunk));
    socket.on("drain", () => this.wakeWriters());
    socket.on("error", (err) => this.end(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", `migration connection failed: ${err.message}`, err)));
    socket.on("close", () => {
      if (this.closingByUs) this.end(undefined);
      else {
        try {
          this.decoder.finish();
          this.end(new MigrationAbortedError("MIGRATION_CONNECTION_LOST", "the peer closed the migration connection"));
        } catch (err) {
          this.end(toMigrationError(err));
        }
      }
    });
    if (options.head !== undefined && options.head.length > 0) queueMicrotask(() => this.feed(options.head!));
    if (socket.isPaused()) socket.resume();
  }

  /** Raises (or lowers) the largest frame accepted, e.g. once the peer is authenticated. */
  setMaxPayload(bytes: number): void {
    this.decoder.maxPayload = bytes;
  }

  /** Where large payloads are assembled from now on (see FrameDecoder.payloadSink). */
  setPayloadSink(sink: PayloadSink | undefined): void {
    this.decoder.payloadSink = sink;
  }

  get closed(): boolean {
    return this.ended;
  }

  private feed(chunk: Buffer): void {
    if (this.ended) return;
    this.bytesIn += chunk.length;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.end(toMigrationError(err));
      this.socket.destroy();
      return;
    }
    for (const f of frames) {
      if (this.ended) return;
      this.handlers.onFrame(f);
    }
  }

  /** Queues encoded frames; false when the socket's buffer is over the high-water mark. */
  write(...bufs: Buffer[]): boolean {
    if (this.ended || this.socket.destroyed) return false;
    for (const b of bufs) {
      this.bytesOut += b.length;
      this.socket.write(b);
    }
    return this.socket.writableLength < HIGH_WATER;
  }

  /** Queues encoded frames and calls `done` once the last has been handed to the kernel (or the connection ended). */
  writeThen(done: () => void, ...bufs: Buffer[]): boolean {
    if (this.ended || this.socket.destroyed || bufs.length === 0) return false;
    this.socket.cork();
    bufs.forEach((b, i) => {
      this.bytesOut += b.length;
      if (i === bufs.length - 1) this.socket.write(b, () => done());
      else this.socket.write(b);
    });
    this.socket.uncork();
    return this.socket.writableLength < HIGH_WATER;
  }

  /** Writes and waits until the socket's buffer is below the high-water mark (or the connection ended). */
  async send(...bufs: Buffer[]): Promise<void> {
    if (this.write(...bufs)) return;
    while (!this.ended && !this.socket.destroyed && this.socket.writableLength >= HIGH_WATER) {
      await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    }
  }

  /** Waits until everything written has been handed to the kernel. */
  async flush(): Promise<void> {
    while (!this.ended && !this.socket.destroyed && this.socket.writableLength > 0) {
      await new Promise<void>((resolve) => this.drainWaiters.push(resolve));
    }
  }

  private wakeWriters(): void {
    const w = this.drainWaiters;
    this.drainWaiters = [];
    for (const fn of w) fn();
  }

  /** Ends the connection from our side after pending writes. */
  close(): void {
    if (this.ended) return;
    this.closingByUs = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2_000).unref();
  }

  /** Drops the connection at once. */
  destroy(): void {
    this.closingByUs = true;
    this.socket.destroy();
    this.end(undefined);
  }

  private end(error: MigrationError | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.wakeWriters();
    this.handlers.onEnd(error);
  }
}
