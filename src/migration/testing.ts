/** Helpers shared by the migration tests (not part of the public API). */
import { lz4CompressBlock } from "./lz4.js";
import { Command, encodeMessage, FrameDecoder, PAGE_SIZE, PageEncoding, PROTOCOL_VERSION, type Frame, type Message, type VmMigrationConfig } from "./protocol.js";

export { seededRandom } from "../common/random.js";

export function randomFill(rand: () => number, target: Uint8Array, from = 0, to = target.length): void {
  for (let i = from; i < to; i++) target[i] = (rand() * 256) | 0;
}

export function randInt(rand: () => number, n: number): number {
  return Math.floor(rand() * n);
}

/** `n` bytes, zero but for a random byte every `step` (payloads big enough to matter, cheap to make). */
export function sparseBytes(rand: () => number, n: number, step: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i += step) b[i] = randInt(rand, 256);
  return b;
}

export const TEST_TOKEN = "test-cluster-token-0123456789";
export const TEST_ENGINE = "v86 0.5.462";

export function testConfig(memoryMiB = 1): VmMigrationConfig {
  return { name: "vm1", uuid: "0b0e4a5e-1111-4c3b-9d0a-3f1a2b3c4d5e", memoryMiB, vgaMemoryKiB: 256, nic: "virtio", disk: false, generation: 7, pageSize: PAGE_SIZE };
}

/** One message of every command, with valid payloads. */
export function sampleMessages(): Message[] {
  const nonce = "ab".repeat(32);
  const page = Buffer.alloc(PAGE_SIZE, 0x5a);
  const lz4Buf = Buffer.alloc(PAGE_SIZE);
  const lz4 = lz4Buf.subarray(0, lz4CompressBlock(page, lz4Buf, 0, PAGE_SIZE));
  return [
    { cmd: Command.Hello, protocolVersion: PROTOCOL_VERSION, engineVersion: TEST_ENGINE, migrationId: "mig-1", vmUuid: testConfig().uuid, clientNonce: nonce },
    { cmd: Command.HelloAck, protocolVersion: PROTOCOL_VERSION, engineVersion: TEST_ENGINE, serverNonce: nonce, proof: "cd".repeat(32) },
    { cmd: Command.Config, proof: "ef".repeat(32), config: testConfig() },
    { cmd: Command.ConfigAck, pageCount: 256 },
    { cmd: Command.MemoryRoundBegin, round: 0 },
    {
      cmd: Command.Pages,
      round: 0,
      pages: [
        { index: 0, encoding: PageEncoding.Zero, data: Buffer.alloc(0) },
        { index: 1, encoding: PageEncoding.Raw, data: page },
        { index: 2, encoding: PageEncoding.Lz4, data: lz4 },
      ],
    },
    { cmd: Command.MemoryRoundEnd, round: 0, pages: 3, bytes: 12345 },
    { cmd: Command.State, guestClockMs: 1764000000123.5, pausedAtMs: 1764000000100, state: Buffer.from("cpu and devices") },
    { cmd: Command.Complete },
    { cmd: Command.Resumed, resumedAtMs: 1764000000200 },
    { cmd: Command.Abort, reason: "cancelled by the user" },
    { cmd: Command.Error, code: "MIGRATION_CONFIG_MISMATCH", message: "memory differs" },
    { cmd: Command.Ping, seq: 3 },
    { cmd: Command.Pong, seq: 3 },
    { cmd: Command.ZeroPages, round: 0, firstPage: 8, count: 10, bitmap: Buffer.from([0b10110001, 0b10]) },
    { cmd: Command.DeviceMemory, round: 0, region: 1, offset: 8192, data: Buffer.alloc(4096, 0x3c) },
  ];
}

export function sampleFrame(cmd: Command): Frame {
  const m = sampleMessages().find((x) => x.cmd === cmd);
  if (m === undefined) throw new Error(`no sample for command ${cmd}`);
  const [f] = new FrameDecoder().push(encodeMessage(m));
  if (f === undefined) throw new Error("sample did not decode");
  return f;
}

/** Decodes whole frames from encoded buffers (each buffer must hold whole frames). */
export function framesOf(bufs: readonly Buffer[]): Frame[] {
  const d = new FrameDecoder();
  const out: Frame[] = [];
  for (const b of bufs) out.push(...d.push(b));
  d.finish();
  return out;
}
