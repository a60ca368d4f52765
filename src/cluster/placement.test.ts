import assert from "node:assert/strict";
import { test } from "node:test";
import { chooseHost, planPlacements, type PlacementHost } from "./placement.js";
import { seededRandom } from "../common/random.js";

/** A connected 4-CPU, 4096 MiB host with nothing on it, unless overridden. */
function host(name: string, over: Partial<PlacementHost> = {}): PlacementHost {
  return {
    name,
    connection: "connected",
    maintenance: "none",
    capacity: { cpus: 4, memoryMiB: 4096 },
    reservedMiB: 0,
    cpuPct: 0,
    ...over,
  };
}

void test("only connected hosts outside maintenance and not excluded are eligible", () => {
  const bad = [
    host("a-down", { connection: "down" }),
    host("b-disconnected", { connection: "disconnected" }),
    host("c-entering", { maintenance: "entering" }),
    host("d-in", { maintenance: "in" }),
    host("e-excluded"),
  ];
  // Every ineligible host has more room than the one eligible host, which still wins.
  const ok = host("z-ok", { reservedMiB: 3000 });
  assert.deepEqual(chooseHost([...bad, ok], { memoryMiB: 512, exclude: ["e-excluded"] }), { ok: true, host: "z-ok" });

  for (const h of bad.slice(0, 4)) {
    const r = chooseHost([h], { memoryMiB: 1 });
    assert.equal(r.ok, false, h.name);
    assert.equal(!r.ok && r.code, "NO_HOST_AVAILABLE", h.name);
  }
  const r = chooseHost([host("h1")], { memoryMiB: 1, exclude: ["h1"] });
  assert.equal(!r.ok && r.code, "NO_HOST_AVAILABLE");
  const empty = chooseHost([], { memoryMiB: 1 });
  assert.equal(!empty.ok && empty.code, "NO_HOST_AVAILABLE");
});

void test("NO_HOST_AVAILABLE has a message", () => {
  const r = chooseHost([host("h1", { connection: "down" })], { memoryMiB: 256 });
  assert.ok(!r.ok);
  assert.equal(r.code, "NO_HOST_AVAILABLE");
  assert.match(r.message, /no connected host/);
});

void test("admission control: an exact fit is placed, one MiB short is not", () => {
  const hosts = [host("h1", { capacity: { cpus: 2, memoryMiB: 1024 }, reservedMiB: 768 })];
  assert.deepEqual(chooseHost(hosts, { memoryMiB: 256 }), { ok: true, host: "h1" });
  const r = chooseHost(hosts, { memoryMiB: 257 });
  assert.deepEqual(r, {
    ok: false,
    code: "INSUFFICIENT_CAPACITY",
    message: "no connected host has 257 MiB free (most free: 256 MiB on h1)",
  });
});

void test("INSUFFICIENT_CAPACITY names the eligible host with the most free memory", () => {
  const hosts = [
    host("h1", { reservedMiB: 4096 - 100 }),
    host("h2", { reservedMiB: 4096 - 200 }),
    host("h3", { reservedMiB: 4096 - 150 }),
    host("h4", { connection: "down" }), // 4096 free, but not eligible
    host("h5", { maintenance: "in" }),
  ];
  assert.deepEqual(chooseHost(hosts, { memoryMiB: 256 }), {
    ok: false,
    code: "INSUFFICIENT_CAPACITY",
    message: "no connected host has 256 MiB free (most free: 200 MiB on h2)",
  });
  // Ties for most free go to the lower name.
  const tied = [host("hb", { reservedMiB: 4000 }), host("ha", { reservedMiB: 4000 })];
  const r = chooseHost(tied, { memoryMiB: 512 });
  assert.ok(!r.ok);
  assert.match(r.message, /most free: 96 MiB on ha\)$/);
});

void test("an overcommitted host reports 0 MiB free, not a negative amount", () => {
  const r = chooseHost([host("h1", { reservedMiB: 5000 })], { memoryMiB: 1 });
  assert.ok(!r.ok);
  assert.equal(r.message, "no connected host has 1 MiB free (most free: 0 MiB on h1)");
});

void test("the host left with the largest free-memory fraction wins, not the most MiB", () => {
  // small: (4096-1024-512)/4096 = 0.625 free after; big: (8192-4096-512)/8192 = 0.4375, though more MiB free.
  const hosts = [host("big", { capacity: { cpus: 4, memoryMiB: 8192 }, reservedMiB: 4096 }), host("small", { reservedMiB: 1024 })];
  assert.deepEqual(chooseHost(hosts, { memoryMiB: 512 }), { ok: true, host: "small" });
  // A host that does not fit is never chosen, however empty it is in relative terms.
  const hosts2 = [host("tiny", { capacity: { cpus: 1, memoryMiB: 256 } }), host("busy", { reservedMiB: 3500 })];
  assert.deepEqual(chooseHost(hosts2, { memoryMiB: 512 }), { ok: true, host: "busy" });
});

void test("ties on memory go to the lower CPU share (cpuPct / cpus), then to the lower name", () => {
  // h1 has less absolute CPU use but a higher share: 150 / (100 * 2) = 0.75 vs 200 / (100 * 8) = 0.25.
  const hosts = [
    host("h1", { capacity: { cpus: 2, memoryMiB: 4096 }, cpuPct: 150 }),
    host("h2", { capacity: { cpus: 8, memoryMiB: 4096 }, cpuPct: 200 }),
  ];
  assert.deepEqual(chooseHost(hosts, { memoryMiB: 512 }), { ok: true, host: "h2" });

  const same = [host("hc"), host("ha"), host("hb")];
  assert.deepEqual(chooseHost(same, { memoryMiB: 512 }), { ok: true, host: "ha" });
  assert.deepEqual(chooseHost([...same].reverse(), { memoryMiB: 512 }), { ok: true, host: "ha" });
});

void test("chooseHost does not change its input", () => {
  const hosts = [host("h1"), host("h2", { reservedMiB: 100 })];
  const copy = structuredClone(hosts);
  chooseHost(hosts, { memoryMiB: 512 });
  planPlacements(hosts, [{ name: "a", memoryMiB: 1024 }]);
  assert.deepEqual(hosts, copy);
});

void test("planPlacements places largest first and tracks reservations (bin packing)", () => {
  const hosts = [host("h1", { capacity: { cpus: 4, memoryMiB: 1000 } }), host("h2", { capacity: { cpus: 4, memoryMiB: 1000 } })];
  // In the given order the two 500s would take one host each and leave no room for the 1000.
  const plan = planPlacements(hosts, [
    { name: "a", memoryMiB: 500 },
    { name: "b", memoryMiB: 500 },
    { name: "c", memoryMiB: 1000 },
  ]);
  assert.deepEqual(plan, {
    assignments: [
      { vm: "c", host: "h1" },
      { vm: "a", host: "h2" },
      { vm: "b", host: "h2" },
    ],
    unplaced: [],
  });
});

void test("planPlacements spreads VMs by free fraction and reports those that do not fit", () => {
  const hosts = [host("h1", { capacity: { cpus: 4, memoryMiB: 1024 } }), host("h2", { capacity: { cpus: 4, memoryMiB: 1024 } })];
  const vms = ["v1", "v2", "v3", "v4", "v5"].map((name) => ({ name, memoryMiB: 512 }));
  const plan = planPlacements(hosts, vms);
  assert.deepEqual(plan.assignments, [
    { vm: "v1", host: "h1" },
    { vm: "v2", host: "h2" },
    { vm: "v3", host: "h1" },
    { vm: "v4", host: "h2" },
  ]);
  assert.deepEqual(plan.unplaced, [
    { vm: "v5", code: "INSUFFICIENT_CAPACITY", message: "no connected host has 512 MiB free (most free: 0 MiB on h1)" },
  ]);
});

void test("planPlacements: a small VM still fits after a large one failed", () => {
  const hosts = [host("h1", { capacity: { cpus: 4, memoryMiB: 1024 }, reservedMiB: 512 })];
  const plan = planPlacements(hosts, [
    { name: "small", memoryMiB: 256 },
    { name: "huge", memoryMiB: 2048 },
  ]);
  assert.deepEqual(plan.assignments, [{ vm: "small", host: "h1" }]);
  assert.equal(plan.unplaced.length, 1);
  assert.equal(plan.unplaced[0]?.vm, "huge");
  assert.equal(plan.unplaced[0]?.code, "INSUFFICIENT_CAPACITY");
  assert.equal(plan.unplaced[0]?.message, "no connected host has 2048 MiB free (most free: 512 MiB on h1)");
});

void test("planPlacements for evacuation: the excluded host receives nothing", () => {
  const hosts = [host("h1"), host("h2", { reservedMiB: 3072 }), host("h3", { maintenance: "entering" })];
  const vms = [
    { name: "a", memoryMiB: 1024 },
    { name: "b", memoryMiB: 1024 },
  ];
  const plan = planPlacements(hosts, vms, { exclude: ["h1"] });
  assert.deepEqual(plan.assignments, [{ vm: "a", host: "h2" }]);
  assert.deepEqual(plan.unplaced, [
    { vm: "b", code: "INSUFFICIENT_CAPACITY", message: "no connected host has 1024 MiB free (most free: 0 MiB on h2)" },
  ]);

  const none = planPlacements([host("h1")], vms, { exclude: ["h1"] });
  assert.deepEqual(none.assignments, []);
  assert.deepEqual(
    none.unplaced.map((u) => [u.vm, u.code]),
    [
      ["a", "NO_HOST_AVAILABLE"],
      ["b", "NO_HOST_AVAILABLE"],
    ],
  );
  assert.deepEqual(planPlacements([host("h1")], []), { assignments: [], unplaced: [] });
});

void test("planPlacements never overcommits and places everything chooseHost would (random clusters)", () => {
  const rand = seededRandom(42);
  const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));
  for (let i = 0; i < 300; i++) {
    const hosts = Array.from({ length: int(0, 5) }, (_, k) => {
      const memoryMiB = 256 * int(1, 16);
      return host(`h${k}`, {
        capacity: { cpus: int(1, 8), memoryMiB },
        reservedMiB: 128 * int(0, memoryMiB / 128),
        cpuPct: int(0, 400),
        connection: rand() < 0.15 ? "down" : "connected",
        maintenance: rand() < 0.1 ? "in" : "none",
      });
    });
    const vms = Array.from({ length: int(0, 8) }, (_, k) => ({ name: `vm${k}`, memoryMiB: 128 * int(1, 16) }));
    const plan = planPlacements(hosts, vms);
    const label = `cluster ${i}`;
    assert.equal(plan.assignments.length + plan.unplaced.length, vms.length, label);
    const reserved = new Map(hosts.map((h) => [h.name, h.reservedMiB]));
    for (const a of plan.assignments) {
      const h = hosts.find((x) => x.name === a.host);
      const vm = vms.find((v) => v.name === a.vm);
      assert.ok(h && vm, label);
      assert.equal(h.connection, "connected", label);
      assert.equal(h.maintenance, "none", label);
      const r = (reserved.get(h.name) ?? 0) + vm.memoryMiB;
      assert.ok(r <= h.capacity.memoryMiB, `${label}: ${h.name} overcommitted`);
      reserved.set(h.name, r);
    }
    // Whatever was left unplaced really fits nowhere in the final state.
    const final = hosts.map((h) => ({ ...h, reservedMiB: reserved.get(h.name) ?? 0 }));
    for (const u of plan.unplaced) {
      const vm = vms.find((v) => v.name === u.vm);
      assert.ok(vm, label);
      assert.equal(chooseHost(final, { memoryMiB: vm.memoryMiB }).ok, false, `${label}: ${u.vm} would fit`);
    }
  }
});
