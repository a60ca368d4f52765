import assert from "node:assert/strict";
import { test } from "node:test";
import { loadScore, recommendMoves, type DrsHost, type DrsVm } from "./drs.js";
import { seededRandom } from "../common/random.js";

/** An eligible 4-CPU, 16 GiB host, unless overridden. */
function host(name: string, cpuPct: number, over: Partial<DrsHost> = {}): DrsHost {
  return { name, eligible: true, capacity: { cpus: 4, memoryMiB: 16384 }, reservedMiB: 0, cpuPct, ...over };
}

function vm(name: string, hostName: string, cpuPct: number, memoryMiB = 512, movable = true): DrsVm {
  return { name, host: hostName, memoryMiB, cpuPct, movable };
}

/** Hosts whose reservations are the sum of their VMs' memory. */
function withReservations(hosts: DrsHost[], vms: readonly DrsVm[]): DrsHost[] {
  return hosts.map((h) => ({ ...h, reservedMiB: vms.filter((v) => v.host === h.name).reduce((s, v) => s + v.memoryMiB, 0) }));
}

/**
 * h1 at 80% CPU, h2 at 50%, h3 at 10%; h1 runs v1 (120%), v2 (80%), v3 (40%), each 512 MiB
 * (memory shares stay well below the CPU shares).
 */
function hotCluster(): { hosts: DrsHost[]; vms: DrsVm[] } {
  const vms = [vm("v1", "h1", 120), vm("v2", "h1", 80), vm("v3", "h1", 40), vm("w1", "h2", 200), vm("x1", "h3", 40)];
  return { hosts: withReservations([host("h1", 320), host("h2", 200), host("h3", 40)], vms), vms };
}

void test("loadScore is the larger of the CPU share and the memory share", () => {
  const capacity = { cpus: 4, memoryMiB: 8192 };
  assert.equal(loadScore({ capacity, reservedMiB: 2048, cpuPct: 200 }), 0.5); // cpu 0.5, mem 0.25
  assert.equal(loadScore({ capacity, reservedMiB: 6144, cpuPct: 100 }), 0.75); // cpu 0.25, mem 0.75
  assert.equal(loadScore({ capacity, reservedMiB: 0, cpuPct: 0 }), 0);
  assert.equal(loadScore({ capacity, reservedMiB: 0, cpuPct: 600 }), 1.5); // overloaded
  assert.equal(loadScore({ capacity: { cpus: 0, memoryMiB: 0 }, reservedMiB: 10, cpuPct: 10 }), 0);
});

void test("a balanced cluster gets no moves", () => {
  // 50%, 60% and 45%: a spread of 0.15, under the default threshold of 0.2.
  const vms = [vm("a", "h1", 100), vm("b", "h2", 120), vm("c", "h3", 90)];
  const hosts = withReservations([host("h1", 200), host("h2", 240), host("h3", 180)], vms);
  const r = recommendMoves(hosts, vms);
  assert.deepEqual(r, { imbalance: 0.15, threshold: 0.2, moves: [] });
});

void test("fewer than two eligible hosts: imbalance 0, no moves", () => {
  assert.deepEqual(recommendMoves([], []), { imbalance: 0, threshold: 0.2, moves: [] });
  const vms = [vm("a", "h1", 390)];
  assert.deepEqual(recommendMoves([host("h1", 390), host("h2", 0, { eligible: false })], vms, { threshold: 0 }), {
    imbalance: 0,
    threshold: 0,
    moves: [],
  });
  // Even a negative threshold does not make a single host "imbalanced".
  assert.deepEqual(recommendMoves([host("h1", 390)], vms, { threshold: -1 }).moves, []);
});

void test("one hot host: the VM that evens things out most goes to the coolest host", () => {
  const { hosts, vms } = hotCluster();
  const r = recommendMoves(hosts, vms);
  assert.equal(r.imbalance, 0.7);
  assert.deepEqual(r.moves, [
    { vm: "v1", from: "h1", to: "h3", imbalanceBefore: 0.7, imbalanceAfter: 0.1, reason: "h1 at 80% vs h3 at 10% (cpu)" },
  ]);
});

void test("ineligible hosts neither count toward the imbalance nor receive VMs", () => {
  const { hosts, vms } = hotCluster();
  // An idle host in maintenance would be the coolest, but is out of the picture.
  const r = recommendMoves([...hosts, host("h0", 0, { eligible: false })], [...vms, vm("z", "h0", 0)]);
  assert.equal(r.imbalance, 0.7);
  assert.deepEqual(
    r.moves.map((m) => m.to),
    ["h3"],
  );
});

void test("the reason names memory when memory drives the hot host's score", () => {
  const vms = [vm("big", "h1", 10, 8192), vm("small", "h1", 10, 4096), vm("other", "h2", 10, 1024)];
  const hosts = withReservations([host("h1", 20), host("h2", 10)], vms);
  const r = recommendMoves(hosts, vms);
  assert.equal(r.imbalance, 0.688); // 12288 / 16384 - 1024 / 16384
  assert.deepEqual(r.moves, [
    { vm: "small", from: "h1", to: "h2", imbalanceBefore: 0.688, imbalanceAfter: 0.188, reason: "h1 at 75% vs h2 at 6% (memory)" },
  ]);
});

void test("a VM too big for any other host is not moved", () => {
  const hosts = [
    host("h1", 360, { reservedMiB: 6000 }),
    host("h2", 0, { capacity: { cpus: 4, memoryMiB: 4096 } }),
    host("h3", 0, { capacity: { cpus: 4, memoryMiB: 8192 }, reservedMiB: 4096 }),
  ];
  const vms = [vm("huge", "h1", 360, 6000)];
  const r = recommendMoves(hosts, vms);
  assert.equal(r.imbalance, 0.9);
  assert.deepEqual(r.moves, []);

  // With a smaller VM beside it, the smaller one moves although the big one would balance better.
  const vms2 = [vm("huge", "h1", 300, 5000), vm("little", "h1", 60, 1000)];
  const r2 = recommendMoves(hosts, vms2);
  assert.deepEqual(
    r2.moves.map((m) => [m.vm, m.to]),
    [["little", "h2"]],
  );
});

void test("admission control: an exact fit is allowed, one MiB short is not", () => {
  // h1 is overloaded (8 cores busy on 4: score 2); h2 has exactly a's 1024 MiB free (score 0.75).
  const target = (reservedMiB: number): DrsHost => host("h2", 0, { capacity: { cpus: 4, memoryMiB: 4096 }, reservedMiB });
  const vms = [vm("a", "h1", 400, 1024)];
  const hot = host("h1", 800, { reservedMiB: 1024 });
  assert.deepEqual(recommendMoves([hot, target(3072)], vms).moves, [
    { vm: "a", from: "h1", to: "h2", imbalanceBefore: 1.25, imbalanceAfter: 0, reason: "h1 at 200% vs h2 at 75% (cpu)" },
  ]);
  assert.deepEqual(recommendMoves([hot, target(3073)], vms).moves, []);
});

void test("non-movable VMs are skipped", () => {
  const { hosts, vms } = hotCluster();
  const pinned = vms.map((v) => (v.name === "v1" ? { ...v, movable: false } : v));
  const r = recommendMoves(hosts, pinned);
  assert.deepEqual(
    r.moves.map((m) => [m.vm, m.from, m.to, m.imbalanceBefore, m.imbalanceAfter]),
    [
      ["v2", "h1", "h3", 0.7, 0.3],
      ["v3", "h1", "h3", 0.3, 0.1],
    ],
  );
  assert.equal(r.moves[1]?.reason, "h1 at 60% vs h3 at 30% (cpu)");
  // Nothing movable on the hot host: nothing to do.
  const allPinned = vms.map((v) => ({ ...v, movable: false }));
  assert.deepEqual(recommendMoves(hosts, allPinned).moves, []);
});

void test("maxMoves is respected", () => {
  const { hosts, vms } = hotCluster();
  const pinned = vms.map((v) => (v.name === "v1" ? { ...v, movable: false } : v));
  assert.equal(recommendMoves(hosts, pinned).moves.length, 2);
  assert.deepEqual(
    recommendMoves(hosts, pinned, { maxMoves: 1 }).moves.map((m) => m.vm),
    ["v2"],
  );
  assert.deepEqual(recommendMoves(hosts, pinned, { maxMoves: 0 }).moves, []);

  // Many equal VMs on one host: the default caps the plan at 4 moves.
  const many = Array.from({ length: 10 }, (_, i) => vm(`v${i}`, "h1", 36));
  const hosts2 = withReservations([host("h1", 360), host("h2", 0), host("h3", 0), host("h4", 0)], many);
  const r = recommendMoves(hosts2, many, { threshold: 0 });
  assert.equal(r.moves.length, 4);
});

void test("the threshold is respected", () => {
  const { hosts, vms } = hotCluster();
  const r = recommendMoves(hosts, vms, { threshold: 0.75 });
  assert.deepEqual(r, { imbalance: 0.7, threshold: 0.75, moves: [] });
  const pinned = vms.map((v) => (v.name === "v1" ? { ...v, movable: false } : v));
  // 0.3 after the first move is under 0.35: stop there.
  assert.deepEqual(
    recommendMoves(hosts, pinned, { threshold: 0.35 }).moves.map((m) => m.vm),
    ["v2"],
  );
  // A lower threshold does not force moves that do not help.
  const r0 = recommendMoves(hosts, vms, { threshold: 0 });
  for (const m of r0.moves) assert.ok(m.imbalanceAfter < m.imbalanceBefore);
});

void test("moves that gain less than 0.01 are not recommended", () => {
  // Moving the only VM (1% of one core = 0.0025 of the host) narrows the spread by at most twice that.
  const vms = [vm("tiny", "h1", 1, 16)];
  const hosts = [host("h1", 300, { reservedMiB: 16 }), host("h2", 0)];
  assert.deepEqual(recommendMoves(hosts, vms, { threshold: 0 }).moves, []);
});

void test("only VMs on the most loaded host are considered", () => {
  // h2's VM would balance the cluster too (by going to h3), but h1 is hotter and its VM is pinned.
  const vms = [vm("a", "h1", 360, 512, false), vm("b", "h2", 280)];
  const hosts = withReservations([host("h1", 360), host("h2", 280), host("h3", 0)], vms);
  assert.deepEqual(recommendMoves(hosts, vms).moves, []);
});

void test("results are deterministic: input order does not matter, ties go by name", () => {
  // Two identical VMs and two identical cool hosts: the lower names win.
  const vms = [vm("vb", "h1", 160), vm("va", "h1", 160), vm("w", "h1", 40)];
  const hosts = withReservations([host("h1", 360), host("h3", 0), host("h2", 0)], vms);
  const r = recommendMoves(hosts, vms, { maxMoves: 1 });
  assert.deepEqual(
    r.moves.map((m) => [m.vm, m.to]),
    [["va", "h2"]],
  );
  const again = recommendMoves([...hosts].reverse(), [...vms].reverse(), { maxMoves: 1 });
  assert.deepEqual(again, r);
  // Ties for the hottest host go to the lower name too.
  const vms2 = [vm("x1", "hb", 160), vm("x2", "hb", 160), vm("y1", "ha", 160), vm("y2", "ha", 160)];
  const hosts2 = withReservations([host("hb", 320), host("ha", 320), host("hc", 0)], vms2);
  assert.deepEqual(
    recommendMoves(hosts2, vms2, { maxMoves: 1 }).moves.map((m) => [m.vm, m.from, m.to]),
    [["y1", "ha", "hc"]],
  );
});

void test("recommendMoves does not change its input", () => {
  const { hosts, vms } = hotCluster();
  const before = structuredClone({ hosts, vms });
  recommendMoves(hosts, vms, { threshold: 0 });
  assert.deepEqual({ hosts, vms }, before);
});

void test("random clusters: every move fits, strictly lowers the imbalance, and no host ends overcommitted", () => {
  const rand = seededRandom(20240611);
  const int = (lo: number, hi: number): number => lo + Math.floor(rand() * (hi - lo + 1));
  let totalMoves = 0;
  for (let i = 0; i < 500; i++) {
    const label = `cluster ${i}`;
    const hosts: DrsHost[] = Array.from({ length: int(1, 6) }, (_, k) => ({
      name: `h${k}`,
      eligible: rand() > 0.15,
      capacity: { cpus: int(1, 16), memoryMiB: 1024 * int(2, 32) },
      reservedMiB: 0,
      cpuPct: int(0, 50), // background load not owned by any VM
    }));
    const vms: DrsVm[] = [];
    for (const h of hosts) {
      for (let k = int(0, 8); k > 0; k--) {
        const memoryMiB = 128 * int(1, 32);
        if (h.reservedMiB + memoryMiB > h.capacity.memoryMiB) continue;
        const cpuPct = int(0, 150);
        vms.push({ name: `vm${vms.length}`, host: h.name, memoryMiB, cpuPct, movable: rand() > 0.2 });
        h.reservedMiB += memoryMiB;
        h.cpuPct += cpuPct;
      }
    }
    const threshold = [0, 0.05, 0.1, 0.2, 0.3][int(0, 4)] ?? 0.2;
    const maxMoves = int(0, 6);
    const r = recommendMoves(hosts, vms, { threshold, maxMoves });

    // Replay the moves on an independent model of the cluster.
    const state = new Map(hosts.filter((h) => h.eligible).map((h) => [h.name, { ...h }]));
    const where = new Map(vms.map((v) => [v.name, v.host]));
    const imbalance = (): number => {
      const s = [...state.values()].map(loadScore);
      return s.length < 2 ? 0 : Math.max(...s) - Math.min(...s);
    };
    const r3 = (x: number): number => Math.round(x * 1000) / 1000;
    assert.equal(r.imbalance, r3(imbalance()), label);
    assert.equal(r.threshold, threshold, label);
    assert.ok(r.moves.length <= maxMoves, `${label}: too many moves`);
    const seen = new Set<string>();
    for (const m of r.moves) {
      const v = vms.find((x) => x.name === m.vm);
      const from = state.get(m.from);
      const to = state.get(m.to);
      assert.ok(v && from && to, `${label}: move ${JSON.stringify(m)} names unknown or ineligible hosts`);
      assert.ok(v.movable, `${label}: ${v.name} is not movable`);
      assert.equal(where.get(v.name), m.from, label);
      assert.notEqual(m.from, m.to, label);
      assert.ok(!seen.has(v.name), `${label}: ${v.name} moved twice`);
      seen.add(v.name);
      assert.ok(to.capacity.memoryMiB - to.reservedMiB >= v.memoryMiB, `${label}: ${v.name} does not fit on ${to.name}`);
      const before = imbalance();
      assert.ok(before > threshold, `${label}: moved below the threshold`);
      assert.equal(m.imbalanceBefore, r3(before), label);
      from.reservedMiB -= v.memoryMiB;
      from.cpuPct -= v.cpuPct;
      to.reservedMiB += v.memoryMiB;
      to.cpuPct += v.cpuPct;
      where.set(v.name, m.to);
      const after = imbalance();
      assert.equal(m.imbalanceAfter, r3(after), label);
      assert.ok(before - after >= 0.01 - 1e-9, `${label}: ${v.name} gains too little`);
      assert.ok(m.imbalanceAfter < m.imbalanceBefore, `${label}: rounded imbalance must drop`);
      assert.match(m.reason, /^h\d+ at \d+% vs h\d+ at \d+% \((cpu|memory)\)$/, label);
      totalMoves++;
    }
    for (const h of state.values()) {
      assert.ok(h.reservedMiB <= h.capacity.memoryMiB, `${label}: ${h.name} ends overcommitted`);
    }
    // Stopping early means no move from the hottest host was worth it.
    const final = imbalance();
    if (r.moves.length < maxMoves && final > threshold) {
      const eligible = [...state.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
      const hot = eligible.reduce((a, b) => (loadScore(b) > loadScore(a) ? b : a));
      for (const v of vms) {
        if (!v.movable || seen.has(v.name) || where.get(v.name) !== hot.name) continue;
        for (const to of eligible) {
          if (to === hot || to.capacity.memoryMiB - to.reservedMiB < v.memoryMiB) continue;
          hot.reservedMiB -= v.memoryMiB;
          hot.cpuPct -= v.cpuPct;
          to.reservedMiB += v.memoryMiB;
          to.cpuPct += v.cpuPct;
          const gain = final - imbalance();
          hot.reservedMiB += v.memoryMiB;
          hot.cpuPct += v.cpuPct;
          to.reservedMiB -= v.memoryMiB;
          to.cpuPct -= v.cpuPct;
          assert.ok(gain < 0.01 + 1e-9, `${label}: stopped although ${v.name} -> ${to.name} gains ${gain}`);
        }
      }
    }
  }
  assert.ok(totalMoves > 100, `the random clusters should exercise moves (got ${totalMoves})`);
});
