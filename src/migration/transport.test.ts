import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, connect, type Socket } from "node:net";
import { test } from "node:test";
import { Command, encodeFrame, PAYLOAD_SINK_MIN_BYTES, type Frame, type MigrationError } from "./protocol.js";
import { seededRandom, sparseBytes } from "./testing.js";
import { FrameConnection } from "./transport.js";

/** Waits until `cond()` holds; fails after 10 s, saying what did not happen. */
async function waitUntil(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A connected pair over loopback: the client's socket and the socket the server accepted. */
async function socketPair(): Promise<{ client: Socket; accepted: Socket; close: () => void }> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const addr = server.address();
  if (addr === null || typeof addr === "string") throw new Error("no address");
  const acceptedP = once(server, "connection") as Promise<[Socket]>;
  const client = connect(addr.port, "127.0.0.1");
  await once(client, "connect");
  const [accepted] = await acceptedP;
  return { client, accepted, close: () => server.close() };
}

void test("a connection that reads into a reused buffer and into payload places: bytes read before, the head, small and large frames arrive intact and in order; replies go out; the peer's close ends it once", async () => {
  const { client, accepted, close } = await socketPair();
  try {
    const rand = seededRandom(3);
    const big = (n: number): Buffer => sparseBytes(rand, n, 61);
    const payloads = [Buffer.from("head"), Buffer.from("early"), ...Array.from({ length: 12 }, (_, i) => (i % 3 === 2 ? Buffer.from(`small ${i}`) : big(i % 3 === 0 ? 1 << 20 : 200_000)))];
    const wire = payloads.map((p) => encodeFrame(Command.Pages, p));
    // Bytes the old socket has read already (as with a socket handed over by the host agent).
    client.write(wire[1]!);
    accepted.pause();
    while (accepted.readableLength < wire[1]!.length) await once(accepted, "readable");
    let oldClosed = false;
    accepted.on("close", () => (oldClosed = true));

    const frames: Frame[] = [];
    const ends: (MigrationError | undefined)[] = [];
    const conn = new FrameConnection(accepted, { onFrame: (f) => frames.push({ ...f, payload: Buffer.from(f.payload) }), onEnd: (e) => ends.push(e) }, { head: wire[0]!, readBufferBytes: 64 * 1024 });
    assert.equal(conn.readsInPlace, true, "the accepted socket's reads were adopted");
    assert.notEqual(conn.socket, accepted);
    // One place for every large payload: each frame is copied out as it comes (onFrame).
    const arena = new Uint8Array(2 << 20);
    let places = 0;
    conn.setPayloadSink((n) => {
      places++;
      return arena.subarray(0, n);
    });
    for (const w of wire.slice(2)) client.write(w);
    const replies: Buffer[] = [];
    client.on("data", (b: Buffer) => replies.push(b));
    await waitUntil(() => frames.length >= payloads.length, `${payloads.length} frames arrived (${frames.length} did)`);
    assert.deepEqual(
      frames.map((f, i) => Buffer.compare(f.payload, payloads[i]!)),
      payloads.map(() => 0),
      "every payload intact, in order",
    );
    assert.equal(places, payloads.filter((p) => p.length >= PAYLOAD_SINK_MIN_BYTES).length, "each large payload was given a place");
    conn.write(encodeFrame(Command.Pong));
    await waitUntil(() => Buffer.concat(replies).length >= encodeFrame(Command.Pong).length, "the reply arrived");
    assert.deepEqual(Buffer.concat(replies), encodeFrame(Command.Pong), "a reply written on the adopted socket reaches the peer");
    client.end();
    await waitUntil(() => ends.length > 0, "the connection ended");
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(ends.length, 1);
    assert.equal(ends[0]?.code, "MIGRATION_CONNECTION_LOST", "the peer's close ends the connection");
    assert.equal(oldClosed, true, "the old socket object hears of the close");
  } finally {
    client.destroy();
    close();
  }
});

void test("a frame cut off by the peer's close is a truncation, also when read in place", async () => {
  const { client, accepted, close } = await socketPair();
  try {
    const ends: (MigrationError | undefined)[] = [];
    const conn = new FrameConnection(accepted, { onFrame: () => undefined, onEnd: (e) => ends.push(e) }, { readBufferBytes: 4096 });
    conn.setPayloadSink((n) => new Uint8Array(n));
    const w = encodeFrame(Command.Pages, Buffer.alloc(300_000, 1));
    client.end(w.subarray(0, 150_000));
    await waitUntil(() => ends.length > 0, "the connection ended");
    assert.equal(ends[0]?.code, "MIGRATION_CORRUPT_FRAME");
  } finally {
    client.destroy();
    close();
  }
});
