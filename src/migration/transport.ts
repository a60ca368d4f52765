/**
 * A migration connection: frames over a TCP socket, with write back-pressure and one place
 * where the stream ends (close, error, corrupt frame). Used by both the source and the target
 * VM process; it knows nothing of the state machines.
 */
import { Socket, type OnReadOpts } from "node:net";
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
  /** The connection's socket (another object than the one given when reads were adopted). */
  readonly socket: Socket;
  /** Whether the socket reads into a reused buffer and into payload places (see adoptReads). */
  readonly readsInPlace: boolean;
  bytesIn = 0;
  bytesOut = 0;

  /**
   * `readBufferBytes`: read into one buffer of this size, reused, and straight into the payload
   * sink's places (see adoptReads) instead of into a new Buffer per read; for the side that
   * receives a VM's pages.
   */
  constructor(socket: Socket, private readonly handlers: FrameConnectionHandlers, options: { head?: Buffer; maxPayload?: number; readBufferBytes?: number } = {}) {
    this.decoder = new FrameDecoder(options.maxPayload !== undefined ? { maxPayload: options.maxPayload } : {});
    const pending: Buffer[] = options.head !== undefined && options.head.length > 0 ? [options.head] : [];
    let adopted: Socket | undefined;
    if (options.readBufferBytes !== undefined) {
      const buffer = Buffer.allocUnsafe(options.readBufferBytes);
      adopted = adoptReads(socket, pending, {
        buffer: () => this.decoder.readPlace() ?? buffer,
        callback: (n, buf) => {
          this.feed(buf.subarray(0, n), buf === buffer);
          return true;
        },
      });
    }
    this.socket = adopted ?? socket;
    this.readsInPlace = adopted !== undefined;
    socket = this.socket;
    socket.setNoDelay(true);
    if (adopted === undefined) socket.on("data", (chunk: Buffer) => this.feed(chunk, false));
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
    if (pending.length > 0) queueMicrotask(() => pending.forEach((b) => this.feed(b, false)));
    if (adopted === undefined && socket.isPaused()) socket.resume();
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

  private feed(chunk: Uint8Array, transient: boolean): void {
    if (this.ended) return;
    this.bytesIn += chunk.length;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk, transient);
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
    // Several buffers (a frame in parts) go out in one writev, not one segment each.
    if (bufs.length > 1) this.socket.cork();
    for (const b of bufs) {
      this.bytesOut += b.length;
      this.socket.write(b);
    }
    if (bufs.length > 1) this.socket.uncork();
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

/**
 * The connection of `socket`, as a new Socket that reads with Node's `onread`: into one reused
 * buffer, or wherever `onread.buffer()` says (the rest of a payload being assembled), instead of
 * into a new 64 KiB Buffer per read. Measured on loopback, 48 MiB: the receiving process spent
 * ~115-155 ms (90 ms of it in the kernel) the usual way, ~11-18 ms this way. Node offers
 * `onread` only when it creates a socket, and a socket handed over from the host agent (IPC) is
 * created by Node, so its handle is moved to a new Socket: reads stop on the old one, bytes it
 * had buffered already are appended to `pending` (they come first), and the old object is left
 * without a handle. Undefined (nothing changed) when the socket does not have the expected
 * internals; the caller reads the usual way then.
 */
export function adoptReads(socket: Socket, pending: Buffer[], onread: OnReadOpts): Socket | undefined {
  const internals = socket as unknown as { _handle?: { readStop?: () => number; useUserBuffer?: unknown; reading?: boolean } | null };
  const handle = internals._handle;
  if (handle === null || handle === undefined || typeof handle.readStop !== "function" || typeof handle.useUserBuffer !== "function" || typeof handle.reading !== "boolean" || socket.destroyed || socket.readableEnded) return undefined;
  handle.readStop();
  for (let b = socket.read() as Buffer | null; b !== null; b = socket.read() as Buffer | null) pending.push(b);
  // read() may have started reading again to refill the stream's buffer; the new socket starts
  // reading only on a handle marked as not reading.
  handle.readStop();
  handle.reading = false;
  internals._handle = null;
  const adopted = new Socket({ handle, onread } as unknown as ConstructorParameters<typeof Socket>[0]);
  // Whoever watches the old object (Node tracks sockets received from a server's process) hears of the close.
  adopted.once("close", (hadError: boolean) => socket.emit("close", hadError));
  return adopted;
}
