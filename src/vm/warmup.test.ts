import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { createLogger } from "../common/log.js";
import { DEFAULT_VGA_KIB, Engine } from "../engine/index.js";
import { defaultCacheDir } from "../common/paths.js";
import { defaultProfile, TemplateStore } from "../host/templates.js";
import { ensureImage } from "../image/index.js";
import { startWarmup, warmEngineCode, WARMUP_RUN_MS } from "./warmup.js";

async function spec(): Promise<{ statePath: string; bios: string; vgabios: string }> {
  const log = createLogger("warmup-test");
  const image = await ensureImage({ log });
  const store = new TemplateStore(defaultCacheDir(), log);
  const statePath = await store.ensure(image, defaultProfile(128, undefined));
  const found = await store.warmup(image);
  assert.ok(found !== undefined, "the template store offers a template to warm with");
  return { statePath, bios: image.bios, vgabios: image.vgabios };
}

void test("a warm-up runs a throw-away guest for its time (the guest works: its agent's command runs), and an abort cuts it short", async () => {
  const s = await spec();
  const r = await warmEngineCode(s);
  assert.ok(r.ms >= WARMUP_RUN_MS, `took ${r.ms} ms`);
  assert.ok(r.instructions > 1_000_000, `the guest ran ${r.instructions} instructions`);
  const ac = new AbortController();
  ac.abort();
  const cut = await warmEngineCode(s, ac.signal);
  assert.ok(cut.instructions < r.instructions, `aborted: ${cut.instructions} instructions, in full ${r.instructions}`);
  assert.equal(cut.deviceState, undefined, "a warm-up cut short leaves no device state");
  // A full one leaves its guest's device state, which a new engine (an incoming VM's) can
  // restore as a rehearsal before the real state arrives.
  const state = r.deviceState;
  assert.ok(state !== undefined && state.byteLength > 0, "a full warm-up leaves its guest's device state");
  const [bios, vgabios] = await Promise.all([readFile(s.bios), readFile(s.vgabios)]);
  const e = await Engine.create({ memoryMiB: 128, vgaMemoryKiB: DEFAULT_VGA_KIB, bios, vgabios, nic: "virtio", serialPorts: 2 });
  try {
    await e.restoreStateKeepingRam(state);
  } finally {
    await e.destroy();
  }
});

void test("a warm-up that cannot run is reported, never thrown", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hop-warm-"));
  try {
    const bad = join(dir, "not-a-state.hopstate");
    await writeFile(bad, "garbage");
    const s = await spec();
    await assert.rejects(warmEngineCode({ ...s, statePath: bad }), /not a Hopvisor state file/);
    const reports: { ms: number; error?: string }[] = [];
    await startWarmup({ ...s, statePath: join(dir, "missing.hopstate") }, (r) => reports.push(r), { lowPriority: true }).done;
    assert.equal(reports.length, 1);
    assert.match(reports[0]?.error ?? "", /missing\.hopstate/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
