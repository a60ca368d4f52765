import assert from "node:assert/strict";
import { test } from "node:test";
import * as zlib from "node:zlib";
import {
  authProof,
  Command,
  commandName,
  crc32,
  crc32Js,
  decodeMessage,
  decodePagesPayload,
  encodeFrame,
  encodeMessage,
  encodeStateFrameParts,
  FRAME_HEADER_BYTES,
  FrameDecoder,
  MAX_PAYLOAD_BYTES,
  MigrationError,
  MigrationProtocolError,
  PageEncoding,
  PAYLOAD_SINK_MIN_BYTES,
  PROTOCOL_VERSION,
  verifyProof,
  type Frame,
  type Message,
} from "./protocol.js";
import { randInt, sampleMessages, seededRandom, sparseBytes } from "./testing.js";

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof MigrationError, `expected a MigrationError, got ${String(err)}`);
    return err.code;
  }
  return "none";
}

/** Messages compared as plain data (Buffers as byte arrays). */
function plain(m: Message): unknown {
  return JSON.parse(JSON.stringify(m, (_k, v: unknown) => (typeof v === "object" && v !== null && (v as { type?: string }).type === "Buffer" ? { bytes: (v as { data: number[] }).data.join(",") } : v)));
}

void test("CRC-32: the JS table matches zlib and the standard check value", () => {
  assert.equal(crc32Js(Buffer.from("123456789")), 0xcbf43926);
  assert.equal(crc32(Buffer.from("123456789")), 0xcbf43926);
  const rand = seededRandom(1);
  for (const n of [0, 1, 7, 100, 4096, 100_000]) {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = randInt(rand, 256);
    assert.equal(crc32Js(b), zlib.crc32(b), `length ${n}`);
    // Chaining over two parts equals one pass.
    const cut = n >> 1;
    assert.equal(crc32Js(b.subarray(cut), crc32Js(b.subarray(0, cut))), zlib.crc32(b));
  }
});

void test("every command round-trips through encode, a byte-at-a-time decoder, and decode", () => {
  const messages = sampleMessages();
  assert.equal(new Set(messages.map((m) => m.cmd)).size, 16, "one sample per command 1..16");
  for (const m of messages) {
    const wire = encodeMessage(m);
    assert.equal(wire[0], 0x48);
    assert.equal(wire[1], 0x50);
    assert.equal(wire[2], m.cmd);
    assert.equal(wire.readUInt32LE(4), wire.length - FRAME_HEADER_BYTES);
    const d = new FrameDecoder();
    const frames: Frame[] = [];
    for (let i = 0; i < wire.length; i++) frames.push(...d.push(wire.subarray(i, i + 1)));
    d.finish();
    assert.equal(frames.length, 1, commandName(m.cmd));
    assert.deepEqual(plain(decodeMessage(frames[0]!)), plain(m), commandName(m.cmd));
  }
  // All of them back to back, in random chunks.
  const all = Buffer.concat(messages.map(encodeMessage));
  const rand = seededRandom(2);
  const d = new FrameDecoder();
  const got: Message[] = [];
  for (let i = 0; i < all.length; ) {
    const n = 1 + randInt(rand, 40);
    for (const f of d.push(all.subarray(i, i + n))) got.push(decodeMessage(f));
    i += n;
  }
  d.finish();
  assert.deepEqual(got.map(plain), messages.map(plain));
});

void test("a change at any byte position of a frame is detected, never yielding a frame", () => {
  const next = encodeMessage({ cmd: Command.Ping, seq: 99 });
  for (const m of [{ cmd: Command.Ping, seq: 1 } as Message, { cmd: Command.MemoryRoundEnd, round: 3, pages: 10, bytes: 4242 } as Message, sampleMessages()[5]!]) {
    const wire = encodeMessage(m);
    for (let pos = 0; pos < wire.length; pos++) {
      for (const flip of [0x01, 0x80, 0xff, 0x10]) {
        const bad = Buffer.from(wire);
        bad[pos] = bad[pos]! ^ flip;
        const d = new FrameDecoder();
        const yielded: Frame[] = [];
        const code = codeOf(() => {
          // The corrupted frame, then a valid one, then end of stream: the error must come
          // before any frame (a longer length swallows the next frame, then fails its CRC or
          // is left incomplete at the end).
          yielded.push(...d.push(bad));
          yielded.push(...d.push(next));
          d.finish();
        });
        assert.equal(code, "MIGRATION_CORRUPT_FRAME", `${commandName(m.cmd)}: byte ${pos} ^ 0x${flip.toString(16)}`);
        assert.equal(yielded.length, 0, `${commandName(m.cmd)}: byte ${pos} ^ 0x${flip.toString(16)} yielded a frame`);
        // A failed decoder stays failed.
        assert.equal(
          codeOf(() => d.push(next)),
          "MIGRATION_CORRUPT_FRAME",
        );
      }
    }
  }
});

void test("oversized, truncated, unknown-command and flagged frames are refused", () => {
  const header = Buffer.from([0x48, 0x50, Command.Pages, 0, 0, 0, 0, 0]);
  header.writeUInt32LE(MAX_PAYLOAD_BYTES + 1, 4);
  // Refused as soon as the length is readable, without waiting for 64 MiB.
  assert.equal(
    codeOf(() => new FrameDecoder().push(header)),
    "MIGRATION_CORRUPT_FRAME",
  );
  assert.equal(
    codeOf(() => encodeFrame(Command.Pages, Buffer.alloc(MAX_PAYLOAD_BYTES + 1))),
    "MIGRATION_FRAME_TOO_LARGE",
  );
  const small = new FrameDecoder({ maxPayload: 100 });
  assert.equal(
    codeOf(() => small.push(encodeFrame(Command.Pages, Buffer.alloc(101)))),
    "MIGRATION_CORRUPT_FRAME",
  );
  // Truncated at the end of the stream.
  const ping = encodeMessage({ cmd: Command.Ping, seq: 1 });
  const t = new FrameDecoder();
  assert.deepEqual(t.push(ping.subarray(0, ping.length - 1)), []);
  assert.equal(
    codeOf(() => t.finish()),
    "MIGRATION_CORRUPT_FRAME",
  );
  // Valid CRC but command 0, 17 (one past the last) or flags set.
  for (const [cmd, flags] of [
    [0, 0],
    [17, 0],
    [200, 0],
    [Command.Ping, 1],
  ] as const) {
    const f = encodeFrame(cmd as Command, Buffer.from("{}"), flags);
    assert.equal(
      codeOf(() => new FrameDecoder().push(f)),
      "MIGRATION_CORRUPT_FRAME",
      `cmd ${cmd} flags ${flags}`,
    );
  }
  // Bad magic on the first byte alone.
  assert.equal(
    codeOf(() => new FrameDecoder().push(Buffer.from([0x47]))),
    "MIGRATION_CORRUPT_FRAME",
  );
});

void test("payloads are validated per command", () => {
  const frame = (cmd: Command, payload: Buffer | string): Frame => ({ command: cmd, flags: 0, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload) });
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.Ping, "not json"))),
    "MIGRATION_CORRUPT_FRAME",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.Ping, '{"seq":-1}'))),
    "MIGRATION_CORRUPT_FRAME",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.Config, '{"proof":"00","config":{}}'))),
    "MIGRATION_CORRUPT_FRAME",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.Abort, Buffer.alloc(70_000, 0x20)))),
    "MIGRATION_CORRUPT_FRAME",
  );
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.State, Buffer.from([9, 9, 9, 9])))),
    "MIGRATION_CORRUPT_FRAME",
  );
  // DEVICE_MEMORY: a header and at least one byte.
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.DeviceMemory, Buffer.alloc(12)))),
    "MIGRATION_CORRUPT_FRAME",
  );
  // The version is checked before anything else in HELLO and HELLO_ACK.
  for (const v of [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, String(PROTOCOL_VERSION), null]) {
    assert.equal(
      codeOf(() => decodeMessage(frame(Command.Hello, JSON.stringify({ protocolVersion: v })))),
      "MIGRATION_VERSION_MISMATCH",
    );
    assert.equal(
      codeOf(() => decodeMessage(frame(Command.HelloAck, JSON.stringify({ protocolVersion: v, whatever: true })))),
      "MIGRATION_VERSION_MISMATCH",
    );
  }
  assert.equal(
    codeOf(() => decodeMessage(frame(Command.Hello, JSON.stringify({ protocolVersion: PROTOCOL_VERSION })))),
    "MIGRATION_CORRUPT_FRAME",
  );
});

void test("PAGES payloads: entry lengths must match their encoding, and nothing may trail", () => {
  const entry = (index: number, encoding: number, data: Buffer): Buffer => {
    const h = Buffer.alloc(9);
    h.writeUInt32LE(index, 0);
    h[4] = encoding;
    h.writeUInt32LE(data.length, 5);
    return Buffer.concat([h, data]);
  };
  const batch = (count: number, ...entries: Buffer[]): Buffer => {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(4, 0);
    h.writeUInt32LE(count, 4);
    return Buffer.concat([h, ...entries]);
  };
  const ok = decodePagesPayload(batch(2, entry(5, PageEncoding.Zero, Buffer.alloc(0)), entry(6, PageEncoding.Raw, Buffer.alloc(4096, 1))));
  assert.equal(ok.round, 4);
  assert.deepEqual(
    ok.pages.map((p) => [p.index, p.encoding, p.data.length]),
    [
      [5, 0, 0],
      [6, 1, 4096],
    ],
  );
  const cases: [string, Buffer, string][] = [
    ["zero with data", batch(1, entry(1, PageEncoding.Zero, Buffer.alloc(1))), "MIGRATION_PAGE_ENCODING"],
    ["short raw", batch(1, entry(1, PageEncoding.Raw, Buffer.alloc(4095))), "MIGRATION_PAGE_ENCODING"],
    ["empty lz4", batch(1, entry(1, PageEncoding.Lz4, Buffer.alloc(0))), "MIGRATION_PAGE_ENCODING"],
    ["huge delta", batch(1, entry(1, PageEncoding.Delta, Buffer.alloc(4097))), "MIGRATION_PAGE_ENCODING"],
    ["unknown encoding", batch(1, entry(1, 9, Buffer.alloc(3))), "MIGRATION_PAGE_ENCODING"],
    ["count too high", batch(3, entry(1, PageEncoding.Zero, Buffer.alloc(0))), "MIGRATION_CORRUPT_FRAME"],
    ["trailing bytes", Buffer.concat([batch(1, entry(1, PageEncoding.Zero, Buffer.alloc(0))), Buffer.alloc(1)]), "MIGRATION_CORRUPT_FRAME"],
    ["short header", Buffer.alloc(5), "MIGRATION_CORRUPT_FRAME"],
  ];
  for (const [name, payload, want] of cases) {
    assert.equal(
      codeOf(() => decodePagesPayload(payload)),
      want,
      name,
    );
  }
  // A truncated data length.
  const cut = batch(1, entry(1, PageEncoding.Raw, Buffer.alloc(4096)));
  assert.equal(
    codeOf(() => decodePagesPayload(cut.subarray(0, cut.length - 1))),
    "MIGRATION_CORRUPT_FRAME",
  );
});

void test("auth proofs: bound to the token, the role, the migration and both nonces", () => {
  const cn = "11".repeat(32);
  const sn = "22".repeat(32);
  const p = authProof("token-aaaaaaaaaaaaaaaa", "target", "m1", cn, sn);
  assert.match(p, /^[0-9a-f]{64}$/);
  assert.ok(verifyProof("token-aaaaaaaaaaaaaaaa", "target", "m1", cn, sn, p));
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaab", "target", "m1", cn, sn, p), "other token");
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaaa", "source", "m1", cn, sn, p), "reflected to the other role");
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaaa", "target", "m2", cn, sn, p), "other migration");
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaaa", "target", "m1", "33".repeat(32), sn, p), "other client nonce (replay)");
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaaa", "target", "m1", cn, "33".repeat(32), p), "other server nonce (replay)");
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaaa", "target", "m1", cn, sn, p.slice(0, 62)), "short proof");
  assert.ok(!verifyProof("token-aaaaaaaaaaaaaaaa", "target", "m1", cn, sn, p.toUpperCase()), "not lower-case hex");
});

void test("errors carry stable codes and HTTP statuses", () => {
  assert.equal(new MigrationProtocolError("MIGRATION_AUTH_FAILED", "x").status, 401);
  assert.equal(new MigrationProtocolError("MIGRATION_VERSION_MISMATCH", "x").status, 409);
  assert.equal(new MigrationProtocolError("MIGRATION_CORRUPT_FRAME", "x").status, 502);
  assert.equal(new MigrationProtocolError("MIGRATION_CORRUPT_FRAME", "x").toJSON().code, "MIGRATION_CORRUPT_FRAME");
});

void test("large payloads are assembled in the payload sink's place, whatever the chunking; corruption and truncation are still caught", () => {
  const rand = seededRandom(7);
  const big = (n: number): Buffer => sparseBytes(rand, n, 97);
  const payloads = [big(PAYLOAD_SINK_MIN_BYTES), big(300_000), Buffer.from("small"), big(1 << 20), big(PAYLOAD_SINK_MIN_BYTES - 1)];
  const wire = Buffer.concat(payloads.map((p) => encodeFrame(Command.Pages, p)));
  const arena = new Uint8Array(4 << 20);
  for (const chunkBytes of [1, 1000, 65536, 200_000, wire.length]) {
    let next = 0;
    const given: number[] = [];
    const d = new FrameDecoder();
    d.payloadSink = (n) => {
      given.push(n);
      const place = arena.subarray(next, next + n);
      next += n;
      return place;
    };
    const frames: Frame[] = [];
    for (let i = 0; i < wire.length; i += chunkBytes) frames.push(...d.push(wire.subarray(i, i + chunkBytes)));
    d.finish();
    assert.deepEqual(
      frames.map((f) => Buffer.compare(f.payload, payloads[frames.indexOf(f)]!)),
      payloads.map(() => 0),
      `chunks of ${chunkBytes}: payloads intact`,
    );
    // Large payloads went to the sink (also those that arrived in one chunk), and they lie there.
    for (const [i, f] of frames.entries()) {
      const inSink = f.payload.buffer === arena.buffer;
      assert.equal(inSink, payloads[i]!.length >= PAYLOAD_SINK_MIN_BYTES, `chunks of ${chunkBytes}: payload ${i} in the sink: ${inSink}`);
    }
    assert.deepEqual(given, payloads.map((p) => p.length).filter((n) => n >= PAYLOAD_SINK_MIN_BYTES), `chunks of ${chunkBytes}: places asked for`);
  }
  // A sink that declines: the ordinary path.
  const declining = new FrameDecoder();
  declining.payloadSink = () => undefined;
  const got: Frame[] = [];
  for (let i = 0; i < wire.length; i += 4096) got.push(...declining.push(wire.subarray(i, i + 4096)));
  assert.equal(got.length, payloads.length);
  // A flipped payload byte fails the CRC once the assembled frame is complete.
  const bad = encodeFrame(Command.Pages, big(200_000));
  bad[FRAME_HEADER_BYTES + 123_456] = bad[FRAME_HEADER_BYTES + 123_456]! ^ 0x04;
  const d1 = new FrameDecoder();
  d1.payloadSink = (n) => new Uint8Array(n);
  assert.equal(
    codeOf(() => {
      for (let i = 0; i < bad.length; i += 50_000) d1.push(bad.subarray(i, i + 50_000));
    }),
    "MIGRATION_CORRUPT_FRAME",
  );
  // The stream ending inside an assembled payload is a truncation.
  const d2 = new FrameDecoder();
  d2.payloadSink = (n) => new Uint8Array(n);
  const whole = encodeFrame(Command.Pages, big(200_000));
  d2.push(whole.subarray(0, 100_000));
  assert.equal(d2.bufferedBytes, 100_000);
  assert.equal(
    codeOf(() => d2.finish()),
    "MIGRATION_CORRUPT_FRAME",
  );
});

void test("a reader that reuses its buffer and reads into readPlace(): frames stay intact after the buffer is overwritten, and large payloads are read in place", () => {
  const rand = seededRandom(9);
  const big = (n: number): Buffer => sparseBytes(rand, n, 89);
  const payloads = [Buffer.from("hello"), big(1 << 20), big(70_000), Buffer.from("x"), big(PAYLOAD_SINK_MIN_BYTES - 1), big(PAYLOAD_SINK_MIN_BYTES), Buffer.from("tail")];
  const wire = Buffer.concat(payloads.map((p) => encodeFrame(Command.Pages, p)));
  for (const readBytes of [7, 4096, 65536, 300_000]) {
    const arena = new Uint8Array(4 << 20);
    let next = 0;
    const d = new FrameDecoder();
    d.payloadSink = (n) => {
      const place = arena.subarray(next, next + n);
      next += n;
      return place;
    };
    const reused = Buffer.alloc(readBytes);
    const frames: Frame[] = [];
    let inPlace = 0;
    for (let at = 0; at < wire.length; ) {
      // As the kernel does: at most the place's length, never past it.
      const place = d.readPlace() ?? reused;
      const n = Math.min(place.length, wire.length - at);
      place.set(wire.subarray(at, at + n));
      at += n;
      if (place !== reused) inPlace += n;
      frames.push(...d.push(place.subarray(0, n), place === reused));
      reused.fill(0xee);
    }
    d.finish();
    assert.equal(frames.length, payloads.length, `reads of ${readBytes}: every frame`);
    for (const [i, f] of frames.entries()) assert.equal(Buffer.compare(f.payload, payloads[i]!), 0, `reads of ${readBytes}: payload ${i} intact after the read buffer was reused`);
    const large = payloads.filter((p) => p.length >= PAYLOAD_SINK_MIN_BYTES).reduce((n, p) => n + p.length, 0);
    // Only what came in the same read as a large frame's header was copied into its place.
    assert.ok(inPlace >= large - 3 * readBytes, `reads of ${readBytes}: ${inPlace} of ${large} large-payload bytes read in place`);
  }
  // A corrupt frame read in place is still refused, and the decoder offers no place after that.
  const bad = encodeFrame(Command.Pages, big(200_000));
  bad[FRAME_HEADER_BYTES + 150_000] = bad[FRAME_HEADER_BYTES + 150_000]! ^ 0x10;
  const d = new FrameDecoder();
  d.payloadSink = (n) => new Uint8Array(n);
  const reused = Buffer.alloc(4096);
  const code = codeOf(() => {
    for (let at = 0; at < bad.length; ) {
      const place = d.readPlace() ?? reused;
      const n = Math.min(place.length, bad.length - at);
      place.set(bad.subarray(at, at + n));
      at += n;
      d.push(place.subarray(0, n), place === reused);
    }
  });
  assert.equal(code, "MIGRATION_CORRUPT_FRAME");
  assert.equal(d.readPlace(), undefined);
});

void test("a STATE frame written in parts is the same frame as encodeMessage's, and decodes to the same state", () => {
  const state = sparseBytes(seededRandom(7), 200_000, 3);
  const m = { cmd: Command.State, guestClockMs: 1234.5, pausedAtMs: 1_700_000_000_000, engineClockMs: 99.25, state: Buffer.from(state) } as const;
  const parts = encodeStateFrameParts(m);
  assert.equal(parts.length, 3);
  assert.equal(parts[2]!.buffer, m.state.buffer, "the state is written as it is, not copied");
  const whole = encodeMessage(m);
  assert.deepEqual(Buffer.concat(parts), whole);
  const frames = new FrameDecoder().push(Buffer.concat(parts));
  assert.equal(frames.length, 1);
  assert.deepEqual(plain(decodeMessage(frames[0]!)), plain(m));
  // A changed byte of the state after the header was made is caught by the frame's CRC.
  const bad = Buffer.concat(parts);
  bad[bad.length - 1]! ^= 1;
  assert.equal(codeOf(() => new FrameDecoder().push(bad)), "MIGRATION_CORRUPT_FRAME");
});
