/**
 * Virtual networking wired into the host agents, with real guests:
 *  - networks and addresses (no guests): definitions shared through the datastore, IPAM at
 *    create/destroy, the /v1/networks API;
 *  - two host agents in this process joined by VXLAN over loopback: guests on different hosts
 *    reach each other, guests on different networks (same subnet, same address) cannot, and a
 *    guest pinging another every 10 ms across live migrations loses at most one reply;
 *  - root only: host agents as processes in network namespaces (NetnsHarness) plus one in this
 *    namespace with host access (a Linux gateway): unmodified host programs reach guests by IP,
 *    and a TCP client doing a request every 5 ms keeps its connection, with every reply right,
 *    across a live and a quick migration; ping at 10 ms loses at most one across the live one.
 */
import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { HopError } from "../common/errors.js";
import { freeSubnet, NetnsHarness, skipReasonUnlessRoot } from "../net/index.js";
import { startAgent, type AgentProcess } from "./agents.js";
import { HostClient, HttpMigrationPeer } from "./client.js";
import type { MigrationPeer } from "./migration.js";
import { HostNetwork } from "./network.js";
import { KvdProbe, Pinger } from "./probes.js";
import { serveHost, type HostServerHandle } from "./server.js";
import { LocalSupervisor } from "./supervisor.js";
import { expectCode } from "../common/testing.js";

const TOKEN = "network-test-cluster-token-0123456789";

function addressOf(cidr: string | undefined): string {
  assert.ok(cidr !== undefined, "the VM has an address");
  return cidr.split("/")[0]!;
}

/** "N packets transmitted, M (packets) received" of a busybox or iputils ping. */
function pingCounts(out: string): { sent: number; received: number } {
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  assert.ok(m !== null, `no ping summary in: ${out}`);
  return { sent: Number(m[1]), received: Number(m[2]) };
}

void describe("virtual networks: definitions and addresses", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-net-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void test("a network is defined once in the datastore and carried by every host that uses it; redefinitions are refused", async () => {
    const ds = join(dir, "ds1");
    const a = new LocalSupervisor({ hostName: "a", datastore: ds, network: { networks: [{ name: "red", vni: 100, subnet: "10.71.0.0/24" }] } });
    const b = new LocalSupervisor({ hostName: "b", datastore: ds });
    try {
      await a.init();
      await b.init();
      // b loaded the definition a wrote.
      const onB = await b.listNetworks();
      assert.deepEqual(onB.networks.map((n) => [n.name, n.vni, n.subnet, n.mtu]), [["red", 100, "10.71.0.0/24", 1450]]);
      assert.equal(onB.vtep, undefined, "no underlay: no VXLAN endpoint");
      const stored = JSON.parse(await readFile(join(ds, "networks", "red.json"), "utf8")) as { vni: number };
      assert.equal(stored.vni, 100);
      // The same definition again is fine; a different one is not.
      assert.equal((await b.createNetwork({ name: "red", vni: 100, subnet: "10.71.0.0/24" })).name, "red");
      await expectCode(b.createNetwork({ name: "red", vni: 101, subnet: "10.71.0.0/24" }), "NETWORK_CONFLICT");
      await expectCode(b.createNetwork({ name: "blue", vni: 100, subnet: "10.72.0.0/24" }), "NETWORK_CONFLICT");
      await expectCode(b.createNetwork({ name: "Bad Name", vni: 7, subnet: "10.72.0.0/24" }), "BAD_REQUEST");
      await expectCode(b.createNetwork({ name: "blue", vni: 7, subnet: "10.72.0.1/24" }), "NET_IPAM_CONFIG_INVALID");
      const c = new LocalSupervisor({ hostName: "c", datastore: ds, network: { networks: [{ name: "red", vni: 5, subnet: "10.71.0.0/24" }] } });
      await expectCode(c.init(), "NETWORK_CONFLICT");
      await c.close();
    } finally {
      await a.close();
      await b.close();
    }
  });

  void test("a VM on a network gets an address from the network's pool at create, keeps it, and gives it back when destroyed", async () => {
    const ds = join(dir, "ds2");
    const a = new LocalSupervisor({ hostName: "a", datastore: ds, network: { networks: [{ name: "red", vni: 100, subnet: "10.71.0.0/29" }] } });
    const b = new LocalSupervisor({ hostName: "b", datastore: ds });
    try {
      await a.init();
      await b.init();
      const v1 = await a.create({ name: "v1", network: "red" });
      assert.equal(v1.config.network, "red");
      assert.equal(v1.config.ip, "10.71.0.2/29", "the first address after the gateway");
      assert.equal(v1.config.gw, "10.71.0.1", "the network's gateway");
      // Another host on the same datastore allocates from the same pool (under its lock).
      const v2 = await b.create({ name: "v2", network: "red" });
      assert.equal(v2.config.ip, "10.71.0.3/29");
      const v3 = await a.create({ name: "v3", network: "red", ip: "10.71.0.6" });
      assert.equal(v3.config.ip, "10.71.0.6/29");
      await expectCode(b.create({ name: "v4", network: "red", ip: "10.71.0.6" }), "NET_IPAM_ADDRESS_IN_USE");
      await expectCode(b.create({ name: "v4", network: "red", ip: "10.71.9.6" }), "NET_IPAM_OUT_OF_SUBNET");
      await expectCode(b.create({ name: "v4", network: "nope" }), "NETWORK_NOT_FOUND");
      await expectCode(b.create({ name: "v4", ip: "10.71.0.4" }), "BAD_REQUEST"); // no network: the prefix is needed
      assert.equal(b.list().some((v) => v.name === "v4"), false, "failed creates leave nothing behind");
      const v4 = await b.create({ name: "v4", network: "red" });
      assert.equal(v4.config.ip, "10.71.0.4/29");
      await expectCode(b.create({ name: "v5", network: "red", ip: "10.71.0.5" }).then(() => b.create({ name: "v6", network: "red" })), "NET_IPAM_EXHAUSTED");
      await a.destroy("v1");
      const detail = await b.getNetwork("red");
      assert.deepEqual(detail.allocations.map((x) => x.address).sort(), ["10.71.0.3", "10.71.0.4", "10.71.0.5", "10.71.0.6"]);
      // A released address is reused only when the rest of the subnet is taken: here, at once.
      assert.equal((await b.create({ name: "v6", network: "red" })).config.ip, "10.71.0.2/29");
    } finally {
      await a.close();
      await b.close();
    }
  });

  void test("the API creates, lists and shows networks; bad input is a 400", async () => {
    const ds = join(dir, "ds3");
    const sup = new LocalSupervisor({ hostName: "api", datastore: ds });
    await sup.init();
    const server = await serveHost({ supervisor: sup, migrations: sup, networks: sup, token: TOKEN, listen: "127.0.0.1:0" });
    try {
      const c = new HostClient(server.url, TOKEN);
      const created = await c.createNetwork({ name: "green", vni: 4242, subnet: "10.73.0.0/24", gateway: "10.73.0.254" });
      assert.deepEqual([created.name, created.vni, created.gateway, created.ports, created.available], ["green", 4242, "10.73.0.254", 0, 253]);
      const list = await c.networks();
      assert.deepEqual(list.networks.map((n) => n.name), ["green"]);
      assert.equal(typeof list.counters.switch.flooded, "number");
      await c.create({ name: "g1", network: "green" });
      const shown = await c.network("green");
      assert.equal(shown.allocations[0]?.address, "10.73.0.1");
      assert.deepEqual(shown.portList, [], "a VM that does not run has no port");
      await assert.rejects(c.createNetwork({ name: "x", vni: 0, subnet: "10.74.0.0/24" }), /vni/);
      await assert.rejects(c.network("nope"), (e: HopError) => e.code === "NETWORK_NOT_FOUND" && e.status === 404);
    } finally {
      await server.close();
      await sup.close();
    }
  });

  void test("--network parsing", async () => {
    const { parseNetworkArg } = await import("./network.js");
    assert.deepEqual(parseNetworkArg("net1:100:10.10.0.0/24"), { name: "net1", vni: 100, subnet: "10.10.0.0/24" });
    assert.deepEqual(parseNetworkArg("net1:100:10.10.0.0/24:10.10.0.254"), { name: "net1", vni: 100, subnet: "10.10.0.0/24", gateway: "10.10.0.254" });
    assert.deepEqual(parseNetworkArg("net1:100:10.10.0.0/24:none"), { name: "net1", vni: 100, subnet: "10.10.0.0/24", gateway: false });
    assert.throws(() => parseNetworkArg("net1:10.10.0.0/24"), /NAME:VNI:SUBNET/);
    assert.ok(HostNetwork !== undefined);
  });
});

void describe("virtual networks between two host agents (VXLAN over loopback, real guests)", { timeout: 6 * 60_000 }, () => {
  let dir: string;
  const hosts: Record<"a" | "b", { sup: LocalSupervisor; server: HostServerHandle }> = {} as never;
  const resolver = (to: string): MigrationPeer => {
    const h = hosts[to as "a" | "b"];
    if (h === undefined) throw new HopError("HOST_UNKNOWN", `unknown host ${to}`, { status: 400 });
    return new HttpMigrationPeer(h.server.url, TOKEN);
  };
  const ip: Record<string, string> = {};
  const where = (vm: string): LocalSupervisor => (hosts.a.sup.list().some((v) => v.name === vm) ? hosts.a.sup : hosts.b.sup);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-net2-"));
    const ds = join(dir, "ds");
    // Two loopback addresses of our own; any free UDP port (the remotes are set once both are open).
    const base = `127.${randomInt(64, 250)}.${randomInt(1, 250)}`;
    const vni = randomInt(1000, 1 << 20);
    // red and blue have the same subnet: isolation must come from the VNI, not from routing.
    const networks = [
      { name: "red", vni, subnet: "10.71.0.0/24" },
      { name: "blue", vni: vni + 1, subnet: "10.71.0.0/24" },
    ];
    for (const [name, n] of [["a", 1], ["b", 2]] as const) {
      const sup = new LocalSupervisor({ hostName: name, datastore: ds, token: TOKEN, migrationListen: { host: "127.0.0.1", port: 0 }, peers: resolver, network: { underlay: `${base}.${n}:0`, networks } });
      await sup.init();
      const server = await serveHost({ supervisor: sup, migrations: sup, networks: sup, token: TOKEN, listen: "127.0.0.1:0" });
      hosts[name] = { sup, server };
    }
    hosts.a.sup.net.setRemotes([hosts.b.sup.net.vtepEndpoint!]);
    hosts.b.sup.net.setRemotes([hosts.a.sup.net.vtepEndpoint!]);
    await hosts.a.sup.prepareTemplate(128);
    await hosts.a.sup.create({ name: "v1", network: "red" });
    await hosts.b.sup.create({ name: "v2", network: "red" });
    // Same address as v2, same host, other network.
    const v2ip = addressOf(hosts.b.sup.get("v2").config.ip);
    await hosts.b.sup.create({ name: "v3", network: "blue", ip: v2ip });
    await Promise.all([hosts.a.sup.start("v1"), hosts.b.sup.start("v2"), hosts.b.sup.start("v3")]);
    for (const vm of ["v1", "v2", "v3"]) ip[vm] = addressOf(where(vm).get(vm).config.ip);
    // An in-guest pinger reads bursts of replies (those held during a switchover) from one
    // socket: give it room (the guest's virtio-net buffers make each reply count big).
    await hosts.a.sup.exec("v1", "echo 1048576 > /proc/sys/net/core/rmem_default");
  });

  after(async () => {
    for (const h of Object.values(hosts)) {
      await h.server.close();
      await h.sup.close();
    }
    await rm(dir, { recursive: true, force: true });
  });

  void test("guests on different hosts reach each other; each has its address and MTU 1450", async () => {
    assert.equal(ip["v3"], ip["v2"]);
    const r = await hosts.a.sup.exec("v1", `ping -c 3 -W 2 ${ip["v2"]!} && ip -o link show eth0 && ip neigh show ${ip["v2"]!}`);
    assert.equal(r.exitCode, 0, r.stdout + r.stderr);
    assert.equal(pingCounts(r.stdout).received, 3);
    assert.match(r.stdout, /mtu 1450/);
    // The answer came from v2 (its MAC), not from v3 which has the same address on another network.
    assert.ok(r.stdout.includes(hosts.b.sup.get("v2").config.mac), r.stdout);
    assert.ok(!r.stdout.includes(hosts.b.sup.get("v3").config.mac));
    const back = await hosts.b.sup.exec("v2", `ping -c 2 -W 2 ${ip["v1"]!}`);
    assert.equal(pingCounts(back.stdout).received, 2, back.stdout);
    // TCP across hosts: v1 asks kvd in v2.
    const kv = await hosts.a.sup.exec("v1", `kvc ${ip["v2"]!} 7000 PING`);
    assert.match(kv.stdout, /PONG/, kv.stdout + kv.stderr);
  });

  void test("guests on different virtual networks cannot reach each other, even with the same subnet and address", async () => {
    const blueBefore = (await hosts.b.sup.getNetwork("blue")).portList.find((p) => p.id === "vm:v3")!.counters;
    // v3 (blue) asks for v1's address: nobody in blue has it.
    const r = await hosts.b.sup.exec("v3", `ping -c 2 -W 1 ${ip["v1"]!}`);
    assert.equal(pingCounts(r.stdout).received, 0, r.stdout);
    // v1 (red) floods ARP for an address only blue has in use... and v2's address: v3 sees none of it.
    await hosts.a.sup.exec("v1", `ping -c 2 -W 1 10.71.0.250; ping -c 2 -W 1 ${ip["v2"]!}`);
    const blueAfter = (await hosts.b.sup.getNetwork("blue")).portList.find((p) => p.id === "vm:v3")!.counters;
    assert.equal(blueAfter.txFrames, blueBefore.txFrames, "no frame from red was delivered to the blue guest");
    const red = await hosts.b.sup.getNetwork("red");
    assert.ok(!red.macTable.some((e) => e.mac === hosts.b.sup.get("v3").config.mac), "red never learned blue's guest");
  });

  void test("live migrations there and back: the guest keeps its address; a guest pinging it every 10 ms loses at most one reply per move", async () => {
    // v1 pings v2 (600 at 10 ms) while v2 moves b -> a (onto v1's host) and back to b.
    const ping = hosts.a.sup.exec("v1", `ping -i 0.01 -c 600 -W 3 ${ip["v2"]!} | tail -3`, { timeoutMs: 60_000 });
    await new Promise((r) => setTimeout(r, 1500));
    const r1 = await hosts.b.sup.migrate("v2", { to: "a", mode: "live" });
    assert.equal(r1.to, "a");
    assert.equal(addressOf(hosts.a.sup.get("v2").config.ip), ip["v2"]);
    const onA = await hosts.a.sup.getNetwork("red");
    assert.ok(onA.portList.some((p) => p.id === "vm:v2" && !p.standby && !p.held), JSON.stringify(onA.portList));
    await new Promise((r) => setTimeout(r, 1000));
    const r2 = await hosts.a.sup.migrate("v2", { to: "b", mode: "live" });
    assert.equal(r2.to, "b");
    const out = (await ping).stdout;
    const { sent, received } = pingCounts(out);
    assert.equal(sent, 600);
    assert.ok(sent - received <= 2, `lost ${sent - received} of ${sent} pings across two live migrations (pauses ${r1.downtimeMs} and ${r2.downtimeMs} ms): ${out}`);
    // The source forwarded what reached it after the switchover; the VTEPs learned the new place.
    const bNet = await hosts.b.sup.getNetwork("red");
    assert.ok(bNet.macTable.some((e) => e.mac === hosts.b.sup.get("v2").config.mac && e.location.kind === "port"));
    const aNet = await hosts.a.sup.getNetwork("red");
    assert.ok(!aNet.portList.some((p) => p.id === "vm:v2"), "the source detached the port");
  });

  void test("quick migration: the guest runs on with its address and is reachable at once", async () => {
    const r = await hosts.b.sup.migrate("v2", { to: "a", mode: "quick" });
    assert.equal(r.mode, "quick");
    const p = await hosts.a.sup.exec("v1", `ping -c 3 -W 2 ${ip["v2"]!}`);
    assert.equal(pingCounts(p.stdout).received, 3, p.stdout);
    const kv = await hosts.a.sup.exec("v1", `kvc ${ip["v2"]!} 7000 PING`);
    assert.match(kv.stdout, /PONG/);
  });
});

const rootSkip = skipReasonUnlessRoot();
if (rootSkip !== false) console.log(`# skipping the multi-host namespace tests: ${rootSkip}`);

void describe("virtual networks across host agents in network namespaces, reached from the host (root)", { skip: rootSkip, timeout: 8 * 60_000 }, () => {
  let dir: string;
  let harness: NetnsHarness | undefined;
  const agents: AgentProcess[] = [];
  const client: Record<string, HostClient> = {};
  const url: Record<string, string> = {};
  let subnet: string;
  const ip: Record<string, string> = {};

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hop-netns-"));
    // The template is made here once, not by three agents at the same time.
    const prep = new LocalSupervisor({ hostName: "prep", datastore: join(dir, "prep") });
    await prep.init();
    await prep.prepareTemplate(128);
    await prep.close();

    const h = await NetnsHarness.create({ hosts: 2, rootAddresses: 1 });
    harness = h;
    subnet = await freeSubnet([h.subnet]);
    const network = `net1:${randomInt(1000, 1 << 20)}:${subnet}`;
    const ds = join(dir, "ds");
    const root = h.rootAddress!;
    const underlays = [h.hosts[0]!.address, h.hosts[1]!.address, root];
    for (const host of h.hosts) {
      const a = await startAgent({
        name: host.name,
        datastore: ds,
        token: TOKEN,
        listen: `${host.address}:7401`,
        underlay: host.address,
        vxlanRemotes: underlays.filter((u) => u !== host.address),
        networks: [network],
        inheritStderr: false,
        spawn: (argv, opts) => h.spawn(host, argv, opts),
      });
      agents.push(a);
      client[host.name] = new HostClient(a.url, TOKEN);
      url[host.name] = a.url;
    }
    // The host's own agent: no VMs here, but the Linux gateway that lets this namespace in.
    const g = await startAgent({
      name: `gw-${randomBytes(2).toString("hex")}`,
      datastore: ds,
      token: TOKEN,
      listen: `${root}:0`,
      underlay: root,
      vxlanRemotes: underlays.filter((u) => u !== root),
      networks: [network],
      hostAccess: ["net1"],
      inheritStderr: false,
    });
    agents.push(g);
    client["gw"] = new HostClient(g.url, TOKEN);
    await client["h1"]!.create({ name: "v1", network: "net1" });
    await client["h2"]!.create({ name: "v2", network: "net1" });
    await Promise.all([client["h1"]!.start("v1"), client["h2"]!.start("v2")]);
    ip["v1"] = addressOf((await client["h1"]!.get("v1")).config.ip);
    ip["v2"] = addressOf((await client["h2"]!.get("v2")).config.ip);
  });

  after(async () => {
    await Promise.all(agents.map((a) => a.stop(20_000)));
    await harness?.teardown();
    await rm(dir, { recursive: true, force: true });
  });

  void test("guests on hosts in different namespaces reach each other over VXLAN", async () => {
    const r = await client["h1"]!.exec("v1", `ping -c 3 -W 2 ${ip["v2"]!}`);
    assert.equal(pingCounts(r.stdout).received, 3, r.stdout);
  });

  void test("unmodified programs on the host reach guests on both hosts through the Linux gateway", async () => {
    const nets = await client["gw"]!.networks();
    const access = nets.networks.find((n) => n.name === "net1")?.hostAccess;
    assert.ok(access !== undefined, "host access is attached");
    assert.equal(access.address.split("/")[0], (await client["h1"]!.get("v1")).config.gw, "the gateway has the guests' default gateway address");
    for (const vm of ["v1", "v2"]) {
      const p = new Pinger(ip[vm]!, 200);
      await new Promise((r) => setTimeout(r, 1000));
      const res = await p.stop();
      assert.ok(res.replies.length >= 3, `ping ${vm}: ${JSON.stringify(res)}`);
    }
    const probe = await KvdProbe.connect({ host: ip["v2"]!, mode: "incr", key: "hostclient" });
    probe.start();
    await new Promise((r) => setTimeout(r, 300));
    const s = await probe.stop();
    probe.close();
    assert.equal(s.errors, 0, s.errorMessages.join("; "));
    assert.ok(s.replies >= 10 && s.firstValue === 1 && s.lastValue === s.replies, JSON.stringify(s));
  });

  void test("live then quick migration under a TCP client (a request every 5 ms) and ping (every 10 ms): no error, no lost or reordered reply", async () => {
    const probe = await KvdProbe.connect({ host: ip["v1"]!, mode: "seq", intervalMs: 5 });
    const ping = new Pinger(ip["v1"]!, 10);
    probe.start();
    try {
      await new Promise((r) => setTimeout(r, 1000));
      // Live: h1 -> h2.
      const l0 = performance.now();
      const seqBefore = ping.seqAt(l0) ?? 1;
      const live = await client["h1"]!.migrate("v1", { to: url["h2"]!, mode: "live" });
      const l1 = performance.now();
      await new Promise((r) => setTimeout(r, 1500));
      const seqAfter = ping.seqAt(performance.now()) ?? 0;
      const liveGap = probe.longestGap(l0, l1 + 1000);
      const liveLost = ping.lost(seqBefore, seqAfter);
      // Quick: h2 -> h1.
      const q0 = performance.now();
      const quick = await client["h2"]!.migrate("v1", { to: url["h1"]!, mode: "quick" });
      const q1 = performance.now();
      await new Promise((r) => setTimeout(r, 1500));
      const quickGap = probe.longestGap(q0, q1 + 1000);
      const s = await probe.stop();
      const pr = await ping.stop();
      console.log(
        `# live: pause ${live.downtimeMs} ms, longest gap between replies ${liveGap.toFixed(1)} ms, pings lost ${liveLost.length}; ` +
          `quick: pause ${quick.downtimeMs} ms, longest gap ${quickGap.toFixed(1)} ms; ${s.replies} replies, ${pr.replies.length} pings`,
      );
      assert.equal(s.errors, 0, s.errorMessages.join("; "));
      assert.equal(s.closed, false, "the connection stayed open");
      assert.equal(s.outstanding, 0, "every request was answered");
      assert.ok(s.replies > 500, `${s.replies} replies`);
      assert.ok(liveLost.length <= 1, `ping lost ${liveLost.length} (seq ${liveLost.join(",")}) across the live migration`);
      assert.ok(liveGap < 2_000, `live: longest gap ${liveGap} ms`);
      assert.ok(quickGap >= quick.downtimeMs * 0.5, `the quick migration's pause (${quick.downtimeMs} ms) shows as a gap (${quickGap} ms)`);
      assert.equal(addressOf((await client["h1"]!.get("v1")).config.ip), ip["v1"]);
    } finally {
      probe.close();
      await ping.stop();
    }
  });
});
