import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { test } from "node:test";
import { hasProgram, runCommand } from "./command.js";
import { LinuxDeviceError } from "./errors.js";
import { LinuxGateway } from "./gateway.js";
import { skipReasonUnlessRoot } from "./netns.js";
import { VirtualSwitch } from "./switch.js";
import { GuestResponder } from "./testing.js";
import { Vtep } from "./vxlan.js";

const rootSkip = skipReasonUnlessRoot();
const skip = rootSkip !== false ? rootSkip : hasProgram("ping") ? false : "needs ping (apt-get install iputils-ping)";
if (skip !== false) console.log(`# skipping Linux gateway tests: ${skip}`);

async function leftovers(name: string): Promise<string[]> {
  const out: string[] = [];
  for (const line of (await runCommand("ip", ["netns", "list"])).stdout.split("\n")) if ((line.split(" ")[0] ?? "") === name) out.push(line);
  for (const l of JSON.parse((await runCommand("ip", ["-j", "link", "show"])).stdout || "[]") as { ifname: string }[]) if (l.ifname.startsWith(`${name}-`)) out.push(l.ifname);
  return out;
}

void test("a Linux gateway lets root-namespace programs ping guests on this host and, over VXLAN, on another", { skip, timeout: 60_000 }, async () => {
  const vni = randomInt(1, 1 << 24);
  const g = `172.31.${randomInt(0, 250)}`;
  const name = `hopt-${randomBytes(2).toString("hex")}g`;
  // Two JS hosts on loopback addresses, joined by VXLAN.
  const hosts: { sw: VirtualSwitch; vtep: Vtep }[] = [];
  for (const address of ["127.0.0.2", "127.0.0.3"]) {
    const sw = new VirtualSwitch();
    sw.addNetwork("red", vni);
    const vtep = await Vtep.open({ address, port: 0 });
    vtep.connect(sw, "red");
    hosts.push({ sw, vtep });
  }
  const [a, b] = hosts as [{ sw: VirtualSwitch; vtep: Vtep }, { sw: VirtualSwitch; vtep: Vtep }];
  a.vtep.addRemote(vni, b.vtep.address, b.vtep.port);
  b.vtep.addRemote(vni, a.vtep.address, a.vtep.port);
  const local = new GuestResponder(a.sw, "vm1", "red", "02:68:6f:00:01:01", `${g}.11`);
  const remote = new GuestResponder(b.sw, "vm2", "red", "02:68:6f:00:01:02", `${g}.12`);
  let gw: LinuxGateway | undefined;
  try {
    gw = await LinuxGateway.attach({ name, sw: a.sw, network: "red", address: `${g}.1/24`, port: randomInt(20_000, 60_000) });
    assert.equal(gw.subnet, `${g}.0/24`);
    assert.match((await runCommand("ip", ["route", "show", `${g}.0/24`])).stdout, new RegExp(`via ${gw.nsAddress.replaceAll(".", "\\.")}`));
    for (const guest of [local, remote]) {
      const out = await runCommand("ping", ["-c", "3", "-i", "0.2", "-W", "2", guest.ip], { timeoutMs: 20_000 });
      assert.match(out.stdout, /3 received/, out.stdout);
      assert.ok(guest.stats.echoReplies >= 3);
    }
    assert.deepEqual(a.sw.lookup("red", gw.device.mac), { kind: "port", port: gw.portId });
    assert.deepEqual(b.sw.lookup("red", gw.device.mac), { kind: "uplink" });
    const c = gw.counters();
    assert.ok(c.rxFrames >= 6 && c.txFrames >= 6, JSON.stringify(c));
    assert.equal(c.dropped, 0);
    // The name is taken while it exists.
    await assert.rejects(LinuxGateway.attach({ name, sw: b.sw, network: "red", address: `${g}.2/24` }), LinuxDeviceError);
    assert.ok(b.sw.hasPort(`gw:${name}`) === false, "a failed attach leaves no port behind");
  } finally {
    await gw?.remove();
    await gw?.remove(); // idempotent
    for (const h of hosts) await h.vtep.close();
  }
  assert.deepEqual(await leftovers(name), []);
  assert.equal((await runCommand("ip", ["route", "show", `${g}.0/24`])).stdout.trim(), "", "the route went with the link");
});

void test("gateway options are checked before anything is created", { skip: rootSkip }, async () => {
  const sw = new VirtualSwitch();
  sw.addNetwork("red", 9);
  await assert.rejects(LinuxGateway.attach({ name: "Bad Name", sw, network: "red", address: "10.0.0.1/24" }), LinuxDeviceError);
  await assert.rejects(LinuxGateway.attach({ name: "hopt-ok", sw, network: "red", address: "10.0.0.1" }), LinuxDeviceError);
  await assert.rejects(LinuxGateway.attach({ name: "hopt-ok", sw, network: "red", address: "10.0.0.1/24", linkSubnet: "169.254.9.0/24" }), LinuxDeviceError);
  await assert.rejects(LinuxGateway.attach({ name: "hopt-ok", sw, network: "blue", address: "10.0.0.1/24" }), /no virtual network/);
  assert.deepEqual(await leftovers("hopt-ok"), []);
});
