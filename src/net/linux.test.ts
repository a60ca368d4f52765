import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomInt } from "node:crypto";
import { test } from "node:test";
import { hasProgram } from "./command.js";
import { LinuxDeviceError, NetError, NotRootError } from "./errors.js";
import { LinuxVxlanDevice } from "./linux.js";
import { isRoot, skipReasonUnlessRoot, withHarness, type NetnsHarness } from "./netns.js";
import { VirtualSwitch } from "./switch.js";
import { GuestResponder } from "./testing.js";
import { Vtep } from "./vxlan.js";

const rootSkip = skipReasonUnlessRoot();
const skip = rootSkip !== false ? rootSkip : hasProgram("ping") ? false : "needs ping (apt-get install iputils-ping)";
if (skip !== false) console.log(`# skipping Linux vxlan device tests: ${skip}`);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A JS "host": switch + VTEP bound in the root namespace, with network `red`. */
async function jsHost(address: string, port: number, vni: number): Promise<{ sw: VirtualSwitch; vtep: Vtep }> {
  const sw = new VirtualSwitch();
  sw.addNetwork("red", vni);
  const vtep = await Vtep.open({ address, port });
  vtep.connect(sw, "red");
  return { sw, vtep };
}

function received(pingOutput: string): number {
  const m = /(\d+) received/.exec(pingOutput);
  return m === null ? -1 : Number(m[1]);
}

async function fdbDst(dev: LinuxVxlanDevice, mac: string): Promise<string | undefined> {
  return (await dev.fdb()).find((e) => e.mac === mac)?.dst;
}

/** The virtual network's subnet inside the namespaces (never routed in the root namespace). */
function guestNet(): string {
  return `172.31.${randomInt(0, 250)}`;
}

void test("a Linux vxlan device in a harness namespace pings a JS guest behind our switch and VTEP", { skip, timeout: 60_000 }, async () => {
  await withHarness({ hosts: 1 }, async (h: NetnsHarness) => {
    const host = h.host(1);
    const port = randomInt(20_000, 60_000);
    const vni = randomInt(1, 1 << 24);
    const g = guestNet();
    const js = await jsHost(h.rootAddress!, port, vni);
    try {
      const guest = new GuestResponder(js.sw, "guest", "red", "02:68:6f:00:00:10", `${g}.10`);
      const dev = await LinuxVxlanDevice.attach({ name: "vx0", netns: host.netns, vni, local: host.address, port, remotes: [h.rootAddress!], address: `${g}.2/24` });
      js.vtep.addRemote(vni, host.address, port);
      try {
        const out = await h.exec(host, ["ping", "-c", "3", "-i", "0.2", "-W", "2", `${g}.10`], { timeoutMs: 20_000 });
        assert.equal(received(out.stdout), 3, out.stdout);
        assert.ok(guest.stats.arpReplies >= 1);
        assert.ok(guest.stats.echoReplies >= 3);
        // Both sides learned each other: our VTEP the device's MAC, the device (learning) the guest's.
        assert.equal(js.vtep.macTable(vni).find((e) => e.mac === dev.mac)?.remote, `${host.address}:${port}`);
        assert.equal(await fdbDst(dev, guest.mac), h.rootAddress);
        assert.equal(js.vtep.counters().malformed, 0);
      } finally {
        await dev.remove();
        await dev.remove(); // idempotent
      }
      const links = await h.exec(host, ["ip", "-o", "link", "show"]);
      assert.ok(!links.stdout.includes("vx0"), "the device is gone");
    } finally {
      await js.vtep.close();
    }
  });
});

void test("a Linux client follows a migrated guest: announce updates the device's fdb, pings keep flowing", { skip, timeout: 90_000 }, async () => {
  await withHarness({ hosts: 1, rootAddresses: 2 }, async (h) => {
    const host = h.host(1);
    const [addrA, addrB] = h.rootAddresses as [string, string];
    const port = randomInt(20_000, 60_000);
    const vni = randomInt(1, 1 << 24);
    const g = guestNet();
    const mac = "02:68:6f:00:00:20";
    const ip = `${g}.20`;
    const a = await jsHost(addrA, port, vni);
    const b = await jsHost(addrB, port, vni);
    try {
      for (const [x, other] of [
        [a, addrB],
        [b, addrA],
      ] as const) {
        x.vtep.addRemote(vni, other, port);
        x.vtep.addRemote(vni, host.address, port);
      }
      const onA = new GuestResponder(a.sw, "vm", "red", mac, ip);
      const dev = await LinuxVxlanDevice.attach({ name: "vx0", netns: host.netns, vni, local: host.address, port, remotes: [addrA, addrB], address: `${g}.2/24` });
      const first = await h.exec(host, ["ping", "-c", "2", "-i", "0.2", "-W", "2", ip], { timeoutMs: 20_000 });
      assert.equal(received(first.stdout), 2, first.stdout);
      assert.equal(await fdbDst(dev, mac), addrA);

      // A continuous ping runs through the migration.
      const pinger = h.spawn(host, ["ping", "-c", "30", "-i", "0.1", "-W", "1", ip]);
      let pingOut = "";
      pinger.stdout?.on("data", (d: Buffer) => (pingOut += d.toString()));
      const pingDone = new Promise<void>((r) => pinger.once("exit", () => r()));
      await sleep(1000);

      // Stop-and-copy: A holds, B attaches its port held (the VM's state is on its way).
      a.sw.holdPort("vm", 256);
      const onB = new GuestResponder(b.sw, "vm", "red", mac, ip);
      b.sw.holdPort("vm", 256);
      await sleep(300); // the pause: about three echo requests arrive meanwhile
      // Commit: A forwards to B and the VM process on A goes; B resumes: announce, release.
      a.sw.forwardPort("vm", b.vtep.endpoint, 2000);
      onA.detach();
      b.sw.announce("vm", { rounds: 3, intervalMs: 50 });
      b.sw.releasePort("vm");
      for (let i = 0; i < 50 && (await fdbDst(dev, mac)) !== addrB; i++) await sleep(20);
      assert.equal(await fdbDst(dev, mac), addrB, "the device learned the new location from the announcement");

      await pingDone;
      const got = received(pingOut);
      console.log(`# continuous ping across the migration: ${got}/30 replies; B answered ${onB.stats.echoReplies}, A ${onA.stats.echoReplies}`);
      // Lossless by design (held, forwarded, held, released); one late reply is tolerated on a busy machine.
      assert.ok(got >= 29, pingOut);
      assert.ok(onB.stats.echoReplies > 0);
      await dev.remove();
    } finally {
      await a.vtep.close();
      await b.vtep.close();
    }
  });
});

void test("attach refuses bad options with step errors, and a second device with the same name", { skip: rootSkip, timeout: 30_000 }, async () => {
  await withHarness({ hosts: 1 }, async (h) => {
    const host = h.host(1);
    const code = async (p: Promise<unknown>): Promise<string> => {
      try {
        await p;
      } catch (err) {
        assert.ok(err instanceof NetError, String(err));
        return err.code;
      }
      return "none";
    };
    assert.equal(await code(LinuxVxlanDevice.attach({ name: "this-name-is-too-long", netns: host.netns, vni: 5, local: host.address })), "NET_LINUX_DEVICE_ADD_FAILED");
    assert.equal(await code(LinuxVxlanDevice.attach({ name: "vx1", netns: host.netns, vni: 0, local: host.address })), "NET_LINUX_DEVICE_ADD_FAILED");
    assert.equal(await code(LinuxVxlanDevice.attach({ name: "vx1", netns: host.netns, vni: 5, local: "nope" })), "NET_LINUX_DEVICE_ADD_FAILED");
    assert.equal(await code(LinuxVxlanDevice.attach({ name: "vx1", netns: host.netns, vni: 5, local: host.address, address: "10.0.0.1" })), "NET_LINUX_ADDRESS_FAILED");
    assert.equal(await code(LinuxVxlanDevice.attach({ name: "vx1", netns: host.netns, vni: 5, local: host.address, remotes: ["nope"] })), "NET_LINUX_FDB_FAILED");
    const dev = await LinuxVxlanDevice.attach({ name: "vx1", netns: host.netns, vni: 5, local: host.address, learning: false, remotes: ["10.9.9.9:4790"] });
    try {
      const err = await LinuxVxlanDevice.attach({ name: "vx1", netns: host.netns, vni: 6, local: host.address }).catch((e: unknown) => e);
      assert.ok(err instanceof LinuxDeviceError && err.step === "device-add", String(err));
      assert.match(err.message, /exists/);
      const fdb = await dev.fdb();
      assert.deepEqual(
        fdb.filter((e) => e.mac === "00:00:00:00:00:00").map((e) => [e.dst, e.port ?? 0]),
        [["10.9.9.9", 4790]],
      );
      await dev.addRemote("10.9.9.10");
      await dev.removeRemote("10.9.9.9:4790");
      assert.deepEqual(
        (await dev.fdb()).filter((e) => e.mac === "00:00:00:00:00:00").map((e) => e.dst),
        ["10.9.9.10"],
      );
    } finally {
      await dev.remove();
    }
  });
});

void test("without root, attaching fails at once with NET_NOT_ROOT", async () => {
  if (!isRoot()) {
    const err = await LinuxVxlanDevice.attach({ name: "vx9", vni: 5, local: "127.0.0.1" }).catch((e: unknown) => e);
    assert.ok(err instanceof NotRootError && err.code === "NET_NOT_ROOT", String(err));
    return;
  }
  // As root: try it in a child process that runs as nobody.
  const mod = new URL("./index.js", import.meta.url).href;
  const script = `import(${JSON.stringify(mod)}).then((m) => m.LinuxVxlanDevice.attach({ name: "vx9", vni: 5, local: "127.0.0.1" })).then(() => console.log("ATTACHED"), (e) => console.log("CODE " + e.code))`;
  const r = spawnSync(process.execPath, ["-e", script], { uid: 65534, gid: 65534, encoding: "utf8", timeout: 20_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /CODE NET_NOT_ROOT/, r.stdout + r.stderr);
});
