import assert from "node:assert/strict";
import { test } from "node:test";
import { PageBatchWriter } from "./pages.js";
import {
  authProof,
  Command,
  commandName,
  decodeMessage,
  encodeFrame,
  encodeMessage,
  encodePagesPayload,
  MigrationError,
  PAGE_SIZE,
  PageEncoding,
  PROTOCOL_VERSION,
  type Frame,
  type Message,
} from "./protocol.js";
import { RECEIVER_ACCEPTS, ReceiverStateMachine, type ReceiverStateName, type ReceiverStep } from "./receiver.js";
import { SENDER_ACCEPTS, SenderStateMachine, type SenderStateName } from "./sender.js";
import { framesOf, sampleFrame, TEST_ENGINE, TEST_TOKEN, testConfig } from "./testing.js";

const ALL_COMMANDS = Array.from({ length: 16 }, (_, i) => (i + 1) as Command);

function one(buf: Buffer): Frame {
  const [f] = framesOf([buf]);
  assert.ok(f !== undefined);
  return f;
}

function messages(bufs: readonly Buffer[]): Message[] {
  return framesOf(bufs).map(decodeMessage);
}

function newPair(options: { rxToken?: string; txToken?: string; rxEngine?: string; txEngine?: string; expect?: ConstructorParameters<typeof ReceiverStateMachine>[0]["expect"]; memoryMiB?: number } = {}): {
  tx: SenderStateMachine;
  rx: ReceiverStateMachine;
} {
  const tx = new SenderStateMachine({ token: options.txToken ?? TEST_TOKEN, engineVersion: options.txEngine ?? TEST_ENGINE, migrationId: "mig-1", config: testConfig(options.memoryMiB ?? 1) });
  const rx = new ReceiverStateMachine({ token: options.rxToken ?? TEST_TOKEN, engineVersion: options.rxEngine ?? TEST_ENGINE, ...(options.expect ? { expect: options.expect } : {}) });
  return { tx, rx };
}

/** Feeds the receiver's replies to the sender, and what the sender then sends back to the receiver. */
function replyToSender(tx: SenderStateMachine, rx: ReceiverStateMachine, step: ReceiverStep): void {
  for (const f of framesOf(step.replies)) {
    const s = tx.handle(f);
    for (const g of framesOf(s.send)) replyToSender(tx, rx, rx.handle(g));
  }
}

/** A full round of all pages (zero), as the first round. */
function fullRound(tx: SenderStateMachine, rx: ReceiverStateMachine): void {
  rx.handle(one(tx.beginRound()));
  const w = new PageBatchWriter();
  w.begin(tx.currentRound);
  const zero = new Uint8Array(PAGE_SIZE);
  for (let p = 0; p < tx.pageCount; p++) w.add(p, zero);
  const step = rx.handle(one(tx.pages(w.take()!)));
  assert.equal(step.error, undefined, step.error?.message);
  const end = rx.handle(one(tx.endRound()));
  assert.equal(end.error, undefined, end.error?.message);
}

/** Drives a sender/receiver pair until the receiver is in `target`. */
function receiverIn(target: ReceiverStateName): { tx: SenderStateMachine; rx: ReceiverStateMachine } {
  const { tx, rx } = newPair();
  const order: ReceiverStateName[] = ["AwaitHello", "AwaitConfig", "Preparing", "Prepared", "InRound", "BetweenRounds", "StateReceived", "FinalRound", "FinalRoundDone", "Resuming", "Resumed"];
  if (target === "Aborted") {
    const p = receiverIn("Prepared");
    p.rx.handle(one(p.tx.abort("test")[0]!));
    assert.equal(p.rx.state, "Aborted");
    return p;
  }
  let ack: Buffer | undefined;
  const steps: (() => void)[] = [
    () => {
      ack = rx.handle(one(tx.hello())).replies[0];
    },
    () => {
      rx.handle(one(tx.handle(one(ack!)).send[0]!));
    },
    () => replyToSender(tx, rx, rx.prepared()),
    () => rx.handle(one(tx.beginRound())),
    () => {
      const w = new PageBatchWriter();
      w.begin(0);
      const zero = new Uint8Array(PAGE_SIZE);
      for (let p = 0; p < tx.pageCount; p++) w.add(p, zero);
      rx.handle(one(tx.pages(w.take()!)));
      rx.handle(one(tx.endRound()));
    },
    () => rx.handle(one(tx.sendState(Buffer.from("state"), 1, 2))),
    () => rx.handle(one(tx.beginRound())),
    () => rx.handle(one(tx.endRound())),
    () => rx.handle(one(tx.complete())),
    () => replyToSender(tx, rx, rx.resumed(3)),
  ];
  for (let i = 0; i < order.indexOf(target); i++) steps[i]!();
  assert.equal(rx.state, target);
  return { tx, rx };
}

const RX_STATES: ReceiverStateName[] = ["AwaitHello", "AwaitConfig", "Preparing", "Prepared", "InRound", "BetweenRounds", "StateReceived", "FinalRound", "FinalRoundDone", "Resuming", "Resumed", "Aborted"];

void test("receiver: every out-of-order command is rejected in every state, naming both", () => {
  let checked = 0;
  for (const state of RX_STATES) {
    const committed = state === "Resuming" || state === "Resumed";
    for (const cmd of ALL_COMMANDS) {
      const always = state !== "Aborted" && (cmd === Command.Ping || cmd === Command.Pong || (!committed && (cmd === Command.Abort || cmd === Command.Error)));
      if (always || RECEIVER_ACCEPTS[state].includes(cmd)) continue;
      const { rx } = receiverIn(state);
      const step = rx.handle(sampleFrame(cmd));
      const what = `${state} + ${commandName(cmd)}`;
      assert.equal(step.error?.code, "MIGRATION_UNEXPECTED_COMMAND", what);
      assert.ok(step.error.message.includes(state) && step.error.message.includes(commandName(cmd)), `${what}: ${step.error.message}`);
      if (committed) {
        assert.equal(rx.state, state, `${what}: a committed migration is never aborted by a stray frame`);
        assert.deepEqual(step.actions, []);
        assert.deepEqual(step.replies, []);
      } else if (state === "Aborted") {
        assert.deepEqual(step.replies, []);
        assert.deepEqual(step.actions, []);
      } else {
        assert.equal(rx.state, "Aborted", what);
        assert.deepEqual(
          step.actions.map((a) => a.kind),
          ["abort"],
          what,
        );
        const [reply] = messages(step.replies);
        assert.ok(reply?.cmd === Command.Error && reply.code === "MIGRATION_UNEXPECTED_COMMAND", what);
        // And it stays Aborted: even a PING is refused now.
        assert.equal(rx.handle(sampleFrame(Command.Ping)).error?.code, "MIGRATION_UNEXPECTED_COMMAND");
        assert.equal(rx.state, "Aborted");
      }
      checked++;
    }
  }
  assert.ok(checked > 90, `${checked} combinations`);
});

void test("receiver: PING is answered in every live state; ABORT and ERROR abort before COMPLETE", () => {
  for (const state of RX_STATES.filter((s) => s !== "Aborted")) {
    const { rx } = receiverIn(state);
    const step = rx.handle(one(encodeMessage({ cmd: Command.Ping, seq: 41 })));
    assert.deepEqual(messages(step.replies), [{ cmd: Command.Pong, seq: 41 }], state);
    assert.equal(rx.state, state);
    if (state === "Resuming" || state === "Resumed") continue;
    for (const cmd of [Command.Abort, Command.Error]) {
      const p = receiverIn(state);
      const s = p.rx.handle(sampleFrame(cmd));
      assert.equal(p.rx.state, "Aborted", `${state} + ${commandName(cmd)}`);
      assert.deepEqual(
        s.actions.map((a) => a.kind),
        ["abort"],
      );
      assert.deepEqual(s.replies, [], "no ERROR sent back for the peer's own ABORT/ERROR");
    }
  }
});

const TX_STATES: SenderStateName[] = ["Init", "AwaitHelloAck", "AwaitConfigAck", "Ready", "InRound", "StateSent", "FinalRound", "FinalRoundSent", "AwaitResumed", "Done", "Aborted", "Uncertain"];

function senderIn(target: SenderStateName): SenderStateMachine {
  const { tx, rx } = newPair();
  if (target === "Init") return tx;
  const helloAck = rx.handle(one(tx.hello()));
  if (target === "AwaitHelloAck") return tx;
  const cfg = tx.handle(one(helloAck.replies[0]!));
  rx.handle(one(cfg.send[0]!));
  if (target === "AwaitConfigAck") return tx;
  if (target === "Aborted") {
    tx.abort("test");
    return tx;
  }
  tx.handle(one(rx.prepared().replies[0]!));
  if (target === "Ready") return tx;
  if (target === "InRound") {
    tx.beginRound();
    return tx;
  }
  fullRound(tx, rx);
  rx.handle(one(tx.sendState(Buffer.from("s"), 1, 2)));
  if (target === "StateSent") return tx;
  rx.handle(one(tx.beginRound()));
  if (target === "FinalRound") return tx;
  rx.handle(one(tx.endRound()));
  if (target === "FinalRoundSent") return tx;
  rx.handle(one(tx.complete()));
  if (target === "AwaitResumed") return tx;
  if (target === "Uncertain") {
    tx.connectionLost();
    return tx;
  }
  tx.handle(one(rx.resumed(5).replies[0]!));
  assert.equal(tx.state, "Done");
  return tx;
}

void test("sender: every unexpected reply is rejected in every state; after COMPLETE it makes the outcome uncertain", () => {
  let checked = 0;
  for (const state of TX_STATES) {
    for (const cmd of ALL_COMMANDS) {
      const terminal = state === "Done" || state === "Aborted" || state === "Uncertain";
      const always = !terminal && (cmd === Command.Ping || cmd === Command.Pong || cmd === Command.Error || cmd === Command.Abort);
      if (always || SENDER_ACCEPTS[state].includes(cmd)) continue;
      const tx = senderIn(state);
      assert.equal(tx.state, state);
      const step = tx.handle(sampleFrame(cmd));
      const what = `${state} + ${commandName(cmd)}`;
      assert.ok(step.error !== undefined, what);
      assert.ok(step.error.code === "MIGRATION_UNEXPECTED_COMMAND" || step.error.code === "MIGRATION_OUTCOME_UNKNOWN", `${what}: ${step.error.code}`);
      assert.ok(step.error.message.includes(state) && step.error.message.includes(commandName(cmd)), `${what}: ${step.error.message}`);
      if (state === "AwaitResumed") {
        assert.equal(tx.state, "Uncertain", what);
        assert.equal(tx.sourceMayResume, false, what);
        assert.equal(step.event?.kind === "failed" && step.event.sourceMayResume, false);
      } else if (terminal) {
        assert.equal(tx.state, state, what);
      } else {
        assert.equal(tx.state, "Aborted", what);
        assert.equal(tx.sourceMayResume, true);
        const [reply] = messages(step.send);
        assert.ok(reply?.cmd === Command.Error, what);
      }
      checked++;
    }
  }
  assert.ok(checked > 100, `${checked} combinations`);
});

void test("sender: steps out of order are refused locally (MIGRATION_INVALID_STEP)", () => {
  const invalid = (fn: () => unknown, what: string): void => {
    assert.throws(fn, (e: unknown) => e instanceof MigrationError && e.code === "MIGRATION_INVALID_STEP", what);
  };
  invalid(() => senderIn("Init").beginRound(), "round before the handshake");
  invalid(() => senderIn("AwaitConfigAck").beginRound(), "round before CONFIG_ACK");
  invalid(() => senderIn("Ready").sendState(Buffer.alloc(1), 0, 0), "STATE before any round");
  invalid(() => senderIn("Ready").endRound(), "end without begin");
  invalid(() => senderIn("InRound").sendState(Buffer.alloc(1), 0, 0), "STATE inside a round");
  invalid(() => senderIn("Ready").complete(), "COMPLETE before STATE");
  invalid(() => senderIn("StateSent").complete(), "COMPLETE before the final round");
  invalid(() => senderIn("FinalRound").complete(), "COMPLETE inside the final round");
  invalid(() => senderIn("FinalRoundSent").beginRound(), "a round after the final round");
  invalid(() => senderIn("FinalRound").sendState(Buffer.alloc(1), 0, 0), "STATE twice");
  invalid(() => senderIn("InRound").pages(encodePagesPayload(7, [])), "PAGES of another round");
  invalid(() => senderIn("Ready").pages(encodePagesPayload(0, [])), "PAGES outside a round");
  invalid(() => senderIn("AwaitResumed").abort("no"), "abort after COMPLETE");
  invalid(() => senderIn("Done").abort("no"), "abort when done");
  invalid(() => senderIn("Ready").resolve("aborted"), "resolve when nothing is uncertain");
  invalid(() => senderIn("Init").hello() && senderIn("AwaitHelloAck").hello(), "HELLO twice");
  const rx = receiverIn("Prepared").rx;
  invalid(() => rx.prepared(), "prepared twice");
  invalid(() => rx.resumed(1), "resumed before COMPLETE");
});

void test("authentication: a wrong token is refused by both sides, and recorded proofs do not replay", () => {
  // The target has another token: the source refuses the target's proof and sends it nothing else.
  {
    const { tx, rx } = newPair({ rxToken: "another-token-0123456789" });
    const ack = rx.handle(one(tx.hello()));
    const s = tx.handle(one(ack.replies[0]!));
    assert.equal(s.error?.code, "MIGRATION_AUTH_FAILED");
    assert.equal(tx.state, "Aborted");
    const sent = messages(s.send);
    assert.equal(sent.length, 1);
    assert.ok(sent[0]?.cmd === Command.Error && sent[0].code === "MIGRATION_AUTH_FAILED", "only an ERROR, never the config");
  }
  // A source without the token cannot get past CONFIG.
  {
    const { tx, rx } = newPair();
    const hello = decodeMessage(one(tx.hello()));
    assert.ok(hello.cmd === Command.Hello);
    const ack = decodeMessage(one(rx.handle(one(encodeMessage(hello))).replies[0]!));
    assert.ok(ack.cmd === Command.HelloAck);
    const forged = authProof("guessed-token-0123456789", "source", "mig-1", hello.clientNonce, ack.serverNonce);
    const s = rx.handle(one(encodeMessage({ cmd: Command.Config, proof: forged, config: testConfig(1) })));
    assert.equal(s.error?.code, "MIGRATION_AUTH_FAILED");
    assert.equal(rx.state, "Aborted");
    assert.deepEqual(s.actions.map((a) => a.kind), ["abort"]);
    assert.ok(!s.actions.some((a) => a.kind === "prepare"), "nothing prepared for an unauthenticated source");
  }
  // The target's own proof reflected back as the source's proof fails (role label).
  {
    const { tx, rx } = newPair();
    const hello = decodeMessage(one(tx.hello()));
    const ack = decodeMessage(one(rx.handle(one(encodeMessage(hello))).replies[0]!));
    assert.ok(ack.cmd === Command.HelloAck);
    const s = rx.handle(one(encodeMessage({ cmd: Command.Config, proof: ack.proof, config: testConfig(1) })));
    assert.equal(s.error?.code, "MIGRATION_AUTH_FAILED");
  }
  // Replay: a recorded HELLO + CONFIG against a new receiver (new server nonce) fails.
  {
    const { tx, rx } = newPair();
    const hello = tx.hello();
    const ack = rx.handle(one(hello));
    const config = tx.handle(one(ack.replies[0]!)).send[0]!;
    assert.equal(rx.handle(one(config)).error, undefined, "the genuine session works");
    const rx2 = new ReceiverStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE });
    rx2.handle(one(hello));
    assert.equal(rx2.handle(one(config)).error?.code, "MIGRATION_AUTH_FAILED");
    // And a recorded HELLO_ACK does not convince a new sender (new client nonce).
    const tx2 = newPair().tx;
    tx2.hello();
    assert.equal(tx2.handle(one(ack.replies[0]!)).error?.code, "MIGRATION_AUTH_FAILED");
  }
  assert.throws(() => new ReceiverStateMachine({ token: "short", engineVersion: TEST_ENGINE }), (e: unknown) => e instanceof MigrationError && e.code === "MIGRATION_INVALID_STEP");
});

void test("versions: another protocol or engine version is refused, and the source learns why", () => {
  {
    const { tx, rx } = newPair();
    tx.hello();
    const v2 = encodeFrame(Command.Hello, Buffer.from(JSON.stringify({ protocolVersion: PROTOCOL_VERSION + 1, engineVersion: TEST_ENGINE, anything: "new" })));
    const s = rx.handle(one(v2));
    assert.equal(s.error?.code, "MIGRATION_VERSION_MISMATCH");
    assert.match(s.error.message, new RegExp(`version ${PROTOCOL_VERSION + 1}.*version ${PROTOCOL_VERSION}`));
    // The source, reading the ERROR, reports the target's code.
    const back = tx.handle(one(s.replies[0]!));
    assert.equal(back.error?.code, "MIGRATION_VERSION_MISMATCH");
    assert.equal(back.event?.kind === "failed" && back.event.sourceMayResume, true);
  }
  {
    const { tx, rx } = newPair({ rxEngine: "v86 0.5.999" });
    const s = rx.handle(one(tx.hello()));
    assert.equal(s.error?.code, "MIGRATION_ENGINE_MISMATCH");
    assert.match(s.error.message, /0\.5\.462.*0\.5\.999/);
    assert.equal(tx.handle(one(s.replies[0]!)).error?.code, "MIGRATION_ENGINE_MISMATCH");
  }
  {
    // The source checks the target's versions too.
    const tx = newPair().tx;
    tx.hello();
    const ack = encodeFrame(Command.HelloAck, Buffer.from(JSON.stringify({ protocolVersion: PROTOCOL_VERSION + 1 })));
    assert.equal(tx.handle(one(ack)).error?.code, "MIGRATION_VERSION_MISMATCH");
    const tx2 = newPair().tx;
    tx2.hello();
    const ack2 = encodeMessage({ cmd: Command.HelloAck, protocolVersion: PROTOCOL_VERSION, engineVersion: "v86 9", serverNonce: "00".repeat(32), proof: "00".repeat(32) });
    assert.equal(tx2.handle(one(ack2)).error?.code, "MIGRATION_ENGINE_MISMATCH");
  }
});

void test("config checks: the target refuses what it was not told to expect", () => {
  const cases: [string, ConstructorParameters<typeof ReceiverStateMachine>[0]["expect"], string][] = [
    ["memory", { memoryMiB: 2 }, "MIGRATION_CONFIG_MISMATCH"],
    ["max memory", { maxMemoryMiB: 0.5 }, "MIGRATION_CONFIG_MISMATCH"],
    ["generation", { generation: 8 }, "MIGRATION_CONFIG_MISMATCH"],
    ["nic", { nic: "ne2k" }, "MIGRATION_CONFIG_MISMATCH"],
    ["disk", { disk: true }, "MIGRATION_CONFIG_MISMATCH"],
    ["vga", { vgaMemoryKiB: 2048 }, "MIGRATION_CONFIG_MISMATCH"],
    ["vm uuid", { vmUuid: "someone-else" }, "MIGRATION_CONFIG_MISMATCH"],
    ["migration id", { migrationId: "mig-2" }, "MIGRATION_CONFIG_MISMATCH"],
    ["all match", { memoryMiB: 1, generation: 7, nic: "virtio", disk: false, vgaMemoryKiB: 256, migrationId: "mig-1", vmUuid: testConfig().uuid, name: "vm1", maxMemoryMiB: 1 }, "ok"],
  ];
  for (const [name, expect, want] of cases) {
    const { tx, rx } = newPair({ expect });
    const ack = rx.handle(one(tx.hello()));
    let code = ack.error?.code;
    if (code === undefined) {
      const cfg = tx.handle(one(ack.replies[0]!)).send[0]!;
      const s = rx.handle(one(cfg));
      code = s.error?.code;
      if (code === undefined) assert.deepEqual(s.actions.map((a) => a.kind), ["prepare"]);
    }
    assert.equal(code ?? "ok", want, name);
  }
  // A page size other than 4096, and a CONFIG for another VM than HELLO named.
  for (const bad of [{ ...testConfig(1), pageSize: 8192 }, { ...testConfig(1), uuid: "other" }]) {
    const tx = new SenderStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE, migrationId: "m", config: testConfig(1) });
    const rx = new ReceiverStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE });
    const hello = decodeMessage(one(tx.hello()));
    const ack = decodeMessage(one(rx.handle(one(encodeMessage(hello))).replies[0]!));
    assert.ok(hello.cmd === Command.Hello && ack.cmd === Command.HelloAck);
    const proof = authProof(TEST_TOKEN, "source", "m", hello.clientNonce, ack.serverNonce);
    assert.equal(rx.handle(one(encodeMessage({ cmd: Command.Config, proof, config: bad }))).error?.code, "MIGRATION_CONFIG_MISMATCH");
  }
});

void test("pages and rounds: out-of-range pages, deltas without a base, wrong counts and missing pages are refused", () => {
  const pagesFrame = (round: number, pages: { index: number; encoding: PageEncoding; data: Buffer }[]): Frame => one(encodeFrame(Command.Pages, encodePagesPayload(round, pages)));
  {
    const { rx } = receiverIn("InRound");
    const s = rx.handle(pagesFrame(0, [{ index: 256, encoding: PageEncoding.Zero, data: Buffer.alloc(0) }]));
    assert.equal(s.error?.code, "MIGRATION_PAGE_OUT_OF_RANGE");
    assert.match(s.error.message, /page 256.*256 pages/);
    assert.equal(rx.state, "Aborted");
  }
  {
    const { rx } = receiverIn("InRound");
    const s = rx.handle(pagesFrame(0, [{ index: 0xffffffff, encoding: PageEncoding.Raw, data: Buffer.alloc(PAGE_SIZE) }]));
    assert.equal(s.error?.code, "MIGRATION_PAGE_OUT_OF_RANGE");
  }
  {
    const { rx } = receiverIn("InRound");
    assert.equal(rx.handle(pagesFrame(0, [{ index: 3, encoding: PageEncoding.Delta, data: Buffer.from([0x80, 0x20, 0]) }])).error?.code, "MIGRATION_PAGE_ENCODING");
  }
  {
    const { rx } = receiverIn("InRound");
    assert.equal(rx.handle(pagesFrame(1, [])).error?.code, "MIGRATION_ROUND_MISMATCH");
  }
  {
    const { rx } = receiverIn("InRound");
    rx.handle(pagesFrame(0, [{ index: 3, encoding: PageEncoding.Zero, data: Buffer.alloc(0) }]));
    const s = rx.handle(one(encodeMessage({ cmd: Command.MemoryRoundEnd, round: 0, pages: 2, bytes: 17 })));
    assert.equal(s.error?.code, "MIGRATION_ROUND_MISMATCH");
  }
  {
    const { rx } = receiverIn("Prepared");
    assert.equal(rx.handle(one(encodeMessage({ cmd: Command.MemoryRoundBegin, round: 1 }))).error?.code, "MIGRATION_ROUND_MISMATCH");
  }
  {
    // A round that skipped page 255, then STATE.
    const { rx } = receiverIn("InRound");
    const pages = Array.from({ length: 255 }, (_, i) => ({ index: i, encoding: PageEncoding.Zero, data: Buffer.alloc(0) }));
    const f = pagesFrame(0, pages);
    rx.handle(f);
    assert.equal(rx.handle(one(encodeMessage({ cmd: Command.MemoryRoundEnd, round: 0, pages: 255, bytes: f.payload.length }))).error, undefined);
    const s = rx.handle(one(encodeMessage({ cmd: Command.State, guestClockMs: 0, pausedAtMs: 0, state: Buffer.alloc(1) })));
    assert.equal(s.error?.code, "MIGRATION_MEMORY_INCOMPLETE");
    assert.match(s.error.message, /1 of 256/);
  }
});

void test("device memory: sent whole in round 0 it lets STATE through; a region never sent whole, or chunks outside a region, are refused", () => {
  const config = { ...testConfig(1), deviceMemory: [8192, 6000] };
  /** A pair in InRound (round 0, every page sent as ZERO) for a VM with two device-memory regions. */
  const inRound = (): { tx: SenderStateMachine; rx: ReceiverStateMachine } => {
    const tx = new SenderStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE, migrationId: "mig-1", config });
    const rx = new ReceiverStateMachine({ token: TEST_TOKEN, engineVersion: TEST_ENGINE });
    const ack = rx.handle(one(tx.hello())).replies[0]!;
    const prep = rx.handle(one(tx.handle(one(ack)).send[0]!));
    assert.deepEqual(prep.actions[0]?.kind === "prepare" ? prep.actions[0].config.deviceMemory : undefined, [8192, 6000], "the target learns the regions from CONFIG");
    replyToSender(tx, rx, rx.prepared());
    rx.handle(one(tx.beginRound()));
    const w = new PageBatchWriter();
    w.begin(0);
    for (let p = 0; p < tx.pageCount; p++) w.add(p, new Uint8Array(PAGE_SIZE));
    assert.equal(rx.handle(one(tx.pages(w.take()!))).error, undefined);
    return { tx, rx };
  };
  const state = (tx: SenderStateMachine): Frame => one(tx.sendState(Buffer.from("state"), 1, 2));
  {
    const { tx, rx } = inRound();
    const s0 = rx.handle(one(tx.deviceMemory(0, 0, new Uint8Array(8192).fill(7))));
    assert.equal(s0.error, undefined, s0.error?.message);
    const a = s0.actions[0];
    assert.ok(a?.kind === "writeDeviceMemory" && a.region === 0 && a.offset === 0 && a.data.length === 8192 && a.data[100] === 7);
    // Region 1 in two parts: a whole chunk, then the shorter last one.
    assert.equal(rx.handle(one(tx.deviceMemory(1, 4096, new Uint8Array(1904)))).error, undefined);
    assert.equal(rx.handle(one(tx.deviceMemory(1, 0, new Uint8Array(4096)))).error, undefined);
    assert.equal(rx.handle(one(tx.endRound())).error, undefined, "MEMORY_ROUND_END counts DEVICE_MEMORY bytes on both sides");
    assert.equal(rx.handle(state(tx)).error, undefined);
    assert.equal(rx.state, "StateReceived");
  }
  {
    // Region 1's last chunk never sent.
    const { tx, rx } = inRound();
    rx.handle(one(tx.deviceMemory(0, 0, new Uint8Array(8192))));
    rx.handle(one(tx.deviceMemory(1, 0, new Uint8Array(4096))));
    rx.handle(one(tx.endRound()));
    const s = rx.handle(state(tx));
    assert.equal(s.error?.code, "MIGRATION_MEMORY_INCOMPLETE");
    assert.match(s.error.message, /1 4 KiB chunks of device memory/);
    assert.equal(rx.state, "Aborted");
  }
  const frame = (round: number, region: number, offset: number, bytes: number): Frame =>
    one(encodeMessage({ cmd: Command.DeviceMemory, round, region, offset, data: Buffer.alloc(bytes) }));
  for (const [what, f, code] of [
    ["a region the config does not have", frame(0, 2, 0, 4096), "MIGRATION_PAGE_OUT_OF_RANGE"],
    ["an offset inside a chunk", frame(0, 0, 100, 4096), "MIGRATION_PAGE_OUT_OF_RANGE"],
    ["bytes past the region's end", frame(0, 1, 4096, 4096), "MIGRATION_PAGE_OUT_OF_RANGE"],
    ["part of a chunk that is not the region's last", frame(0, 0, 0, 100), "MIGRATION_PAGE_OUT_OF_RANGE"],
    ["another round", frame(1, 0, 0, 4096), "MIGRATION_ROUND_MISMATCH"],
  ] as const) {
    const { rx } = inRound();
    const s = rx.handle(f);
    assert.equal(s.error?.code, code, what);
    assert.equal(rx.state, "Aborted", what);
  }
  {
    // A VM whose config names no device memory takes none.
    const { rx } = receiverIn("InRound");
    assert.equal(rx.handle(frame(0, 0, 0, 4096)).error?.code, "MIGRATION_PAGE_OUT_OF_RANGE");
  }
  // The sender refuses what the config does not have.
  assert.throws(() => inRound().tx.deviceMemory(0, 4096, new Uint8Array(8192)), MigrationError);
});

void test("after COMPLETE: the target never aborts a resumed VM; the source resolves uncertainty only from the target's answer", () => {
  {
    // Receiver, Resumed: failures and dropped connections do not abort.
    const { rx } = receiverIn("Resumed");
    assert.deepEqual(rx.fail(new Error("late")).actions, []);
    assert.deepEqual(rx.connectionLost().actions, []);
    assert.equal(rx.state, "Resumed");
    assert.equal(rx.fence().outcome, "resumed");
  }
  {
    // Receiver, Resuming: the resume itself failed -> abort and tell the source.
    const { tx, rx } = receiverIn("Resuming");
    const s = rx.fail(new Error("engine would not run"));
    assert.equal(rx.state, "Aborted");
    assert.deepEqual(s.actions.map((a) => a.kind), ["abort"]);
    const back = tx.handle(one(s.replies[0]!));
    assert.equal(tx.state, "Aborted");
    assert.equal(back.event?.kind === "failed" && back.event.sourceMayResume, true, "the target said it aborted: the source may run again");
    assert.equal(tx.sourceMayResume, true);
  }
  {
    // The connection drops after the final round: the target aborts; a source that had sent COMPLETE asks, and the fence answers "aborted".
    const { tx, rx } = receiverIn("FinalRoundDone");
    const complete = tx.complete(); // lost on the way
    assert.deepEqual(rx.connectionLost().actions.map((a) => a.kind), ["abort"]);
    const lost = tx.connectionLost();
    assert.equal(tx.state, "Uncertain");
    assert.equal(lost.event?.kind === "failed" && lost.event.sourceMayResume, false);
    assert.equal(lost.error?.code, "MIGRATION_OUTCOME_UNKNOWN");
    assert.equal(tx.sourceMayResume, false);
    const answer = rx.fence();
    assert.equal(answer.outcome, "aborted");
    tx.resolve(answer.outcome === "aborted" ? "aborted" : "resumed");
    assert.equal(tx.sourceMayResume, true);
    // A late COMPLETE can no longer resume the fenced target.
    assert.equal(rx.handle(one(complete)).error?.code, "MIGRATION_UNEXPECTED_COMMAND");
    assert.equal(rx.state, "Aborted");
  }
  {
    // The RESUMED reply is lost: the source is Uncertain, the target says "resumed", the source must be destroyed.
    const { tx, rx } = receiverIn("Resuming");
    rx.resumed(9); // reply lost
    tx.connectionLost();
    assert.equal(tx.state, "Uncertain");
    const answer = rx.fence();
    assert.equal(answer.outcome, "resumed");
    tx.resolve("resumed");
    assert.equal(tx.mustDestroySource, true);
    assert.equal(tx.sourceMayResume, false);
  }
  {
    // The fence in an earlier state aborts the target.
    const { rx } = receiverIn("BetweenRounds");
    const f = rx.fence();
    assert.equal(f.outcome, "aborted");
    assert.deepEqual(f.actions.map((a) => a.kind), ["abort"]);
    assert.equal(receiverIn("Resuming").rx.fence().outcome, "resuming");
  }
  {
    // Before COMPLETE, a lost connection leaves the source free to resume.
    const tx = senderIn("StateSent");
    const s = tx.connectionLost();
    assert.equal(s.event?.kind === "failed" && s.event.sourceMayResume, true);
    assert.equal(tx.state, "Aborted");
  }
});
