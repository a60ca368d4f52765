/**
 * A TCP relay for fault tests of the migration path: it sits between a source and a target,
 * forwards bytes both ways, follows the frames going to the target, and can break the stream
 * at a chosen frame: flip a byte in it, or cut the connection before it, or cut the connection
 * right after it so that the target's answer never reaches the source. It is a network
 * element, not a stand-in: both ends run the real code.
 */
import { createServer, connect, type AddressInfo, type Server, type Socket } from "node:net";
import { Command, FrameDecoder, FRAME_HEADER_BYTES } from "./protocol.js";

export type FaultAction = "corrupt" | "drop-before" | "drop-after";

export interface Fault {
  action: FaultAction;
  /** The command of the frame (source -> target) to act on. */
  command: Command;
  /** Act on the nth such frame (1-based; default 1). */
  nth?: number;
}

export class FaultProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Commands seen from the source, in order. */
  readonly seen: Command[] = [];
  triggered = false;

  constructor(
    private readonly target: { host: string; port: number },
    private readonly fault?: Fault,
  ) {}

  async listen(): Promise<{ host: string; port: number }> {
    const server = createServer((client) => this.relay(client));
    this.server = server;
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const a = server.address() as AddressInfo;
    return { host: "127.0.0.1", port: a.port };
  }

  private relay(client: Socket): void {
    const upstream = connect(this.target);
    this.sockets.add(client);
    this.sockets.add(upstream);
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", kill);
    upstream.on("error", kill);
    client.on("close", () => upstream.end());
    upstream.on("close", () => client.end());
    upstream.pipe(client);
    // Frames to the target are re-framed here so that a fault lands on a frame boundary.
    const decoder = new FrameDecoder();
    const counts = new Map<Command, number>();
    let raw: Buffer[] = [];
    let cut = false;
    client.on("data", (chunk: Buffer) => {
      if (cut) return; // drop-after: nothing more reaches the target
      if (this.fault === undefined) {
        upstream.write(chunk);
        return;
      }
      raw.push(chunk);
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch {
        kill();
        return;
      }
      if (frames.length === 0) return;
      // Re-encode byte-exact from the raw stream: whole frames are what the decoder consumed.
      let all = Buffer.concat(raw);
      raw = [];
      for (const f of frames) {
        const size = FRAME_HEADER_BYTES + f.payload.length;
        const bytes = Buffer.from(all.subarray(0, size));
        all = all.subarray(size);
        this.seen.push(f.command);
        const n = (counts.get(f.command) ?? 0) + 1;
        counts.set(f.command, n);
        const hit = !this.triggered && f.command === this.fault.command && n === (this.fault.nth ?? 1);
        if (!hit) {
          upstream.write(bytes);
          continue;
        }
        this.triggered = true;
        if (this.fault.action === "drop-before") {
          kill();
          return;
        }
        if (this.fault.action === "corrupt") {
          const at = bytes.length > FRAME_HEADER_BYTES ? FRAME_HEADER_BYTES + Math.floor((bytes.length - FRAME_HEADER_BYTES) / 2) : 8;
          bytes[at] = (bytes[at] ?? 0) ^ 0x5a;
          upstream.write(bytes);
          continue;
        }
        // drop-after: the target gets the frame and nothing after it; the source never hears back.
        cut = true;
        upstream.unpipe(client);
        upstream.write(bytes, () => setTimeout(kill, 200));
        return;
      }
      if (all.length > 0) raw.push(all);
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
