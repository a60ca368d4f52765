import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { IpamError } from "./errors.js";
import { AddressPool, parseCidr } from "./ipam.js";

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), "hop-ipam-"));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof IpamError, `expected an IpamError, got ${String(err)}`);
    return err.code;
  }
  return "none";
}

void test("CIDR parsing", () => {
  assert.deepEqual(parseCidr("10.10.0.0/24"), { base: 0x0a0a0000, prefixLength: 24, size: 256 });
  assert.deepEqual(parseCidr("0.0.0.0/0").size, 2 ** 32);
  for (const bad of ["10.10.0.1/24", "10.10.0.0", "10.10.0.0/33", "10.10.0/24", "x/24"]) assert.throws(() => parseCidr(bad), IpamError, bad);
});

void test("allocate: gateway and reserved skipped, next-fit, idempotent per owner, release, persisted across reopen", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "net", "red.json");
    const cfg = { network: "red", subnet: "10.10.0.0/29", reserved: ["10.10.0.2", "10.10.0.4-10.10.0.4"] };
    const pool = await AddressPool.open(file, cfg);
    assert.equal(pool.gateway, "10.10.0.1");
    assert.equal(pool.available(), 6 - 1 - 2, "hosts .1-.6, minus gateway, minus two reserved");
    const a = await pool.allocate("vm-a");
    assert.deepEqual({ address: a.address, cidr: a.cidr, gateway: a.gateway, prefix: a.prefixLength }, { address: "10.10.0.3", cidr: "10.10.0.3/29", gateway: "10.10.0.1", prefix: 29 });
    assert.equal((await pool.allocate("vm-a")).address, "10.10.0.3", "same owner, same address");
    assert.equal((await pool.allocate("vm-b")).address, "10.10.0.5");
    assert.equal((await pool.release("vm-a"))?.address, "10.10.0.3");
    assert.equal(await pool.release("vm-a"), undefined);
    // Next-fit: the released .3 is not reused before the rest of the subnet.
    assert.equal((await pool.allocate("vm-c")).address, "10.10.0.6");
    assert.equal((await pool.allocate("vm-d")).address, "10.10.0.3");
    assert.equal(await codeOf(pool.allocate("vm-e")), "NET_IPAM_EXHAUSTED");
    // A reserved address can be given by request.
    assert.equal((await pool.allocate("host-dev", "10.10.0.4")).address, "10.10.0.4");
    assert.equal(pool.ownerOf("10.10.0.4"), "host-dev");

    const again = await AddressPool.open(file, cfg);
    assert.deepEqual(
      again.list().map((x) => [x.address, x.owner]),
      [
        ["10.10.0.3", "vm-d"],
        ["10.10.0.4", "host-dev"],
        ["10.10.0.5", "vm-b"],
        ["10.10.0.6", "vm-c"],
      ],
    );
    assert.equal(again.get("vm-b")?.cidr, "10.10.0.5/29");
    assert.equal((await again.releaseAddress("10.10.0.5"))?.owner, "vm-b");
    const onDisk = JSON.parse(await readFile(file, "utf8")) as { version: number; next: string; allocations: Record<string, unknown> };
    assert.equal(onDisk.version, 1);
    assert.equal(Object.keys(onDisk.allocations).length, 3);
    assert.deepEqual(await readdir(join(dir, "net")), ["red.json"], "no temp files left behind");
  });
});

void test("requested addresses: duplicates, out of subnet, network/broadcast/gateway, owner already holding", async () => {
  await withDir(async (dir) => {
    const pool = await AddressPool.open(join(dir, "p.json"), { network: "n", subnet: "192.168.5.0/24", gateway: "192.168.5.254" });
    assert.equal((await pool.allocate("a", "192.168.5.10")).address, "192.168.5.10");
    assert.equal(await codeOf(pool.allocate("b", "192.168.5.10")), "NET_IPAM_ADDRESS_IN_USE");
    assert.equal(await codeOf(pool.allocate("b", "192.168.6.10")), "NET_IPAM_OUT_OF_SUBNET");
    assert.equal(await codeOf(pool.allocate("b", "banana")), "NET_IPAM_OUT_OF_SUBNET");
    assert.equal(await codeOf(pool.allocate("b", "192.168.5.0")), "NET_IPAM_ADDRESS_RESERVED");
    assert.equal(await codeOf(pool.allocate("b", "192.168.5.255")), "NET_IPAM_ADDRESS_RESERVED");
    assert.equal(await codeOf(pool.allocate("b", "192.168.5.254")), "NET_IPAM_ADDRESS_RESERVED");
    assert.equal(await codeOf(pool.allocate("a", "192.168.5.11")), "NET_IPAM_OWNER_HAS_ADDRESS");
    assert.equal((await pool.allocate("b")).address, "192.168.5.1", "the gateway is not .1 here");
    const noGw = await AddressPool.open(join(dir, "q.json"), { network: "q", subnet: "10.0.0.0/30", gateway: false });
    assert.equal(noGw.gateway, undefined);
    assert.equal((await noGw.allocate("x")).gateway, undefined);
    assert.equal((await noGw.allocate("y")).address, "10.0.0.2");
    assert.equal(await codeOf(noGw.allocate("z")), "NET_IPAM_EXHAUSTED");
  });
});

void test("concurrent allocations are serialized: distinct addresses, all persisted", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "c.json");
    const pool = await AddressPool.open(file, { network: "c", subnet: "10.1.0.0/24" });
    const got = await Promise.all(Array.from({ length: 40 }, (_, i) => pool.allocate(`vm-${i}`)));
    assert.equal(new Set(got.map((g) => g.address)).size, 40);
    const again = await AddressPool.open(file, { network: "c", subnet: "10.1.0.0/24" });
    assert.equal(again.list().length, 40);
  });
});

void test("bad config and bad files are refused with their own codes", async () => {
  await withDir(async (dir) => {
    const f = join(dir, "x.json");
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.0.1/24" })), "NET_IPAM_CONFIG_INVALID");
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.0.0/31" })), "NET_IPAM_CONFIG_INVALID");
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.0.0/24", gateway: "10.0.1.1" })), "NET_IPAM_CONFIG_INVALID");
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.0.0/24", reserved: ["10.0.0.9-10.0.0.3"] })), "NET_IPAM_CONFIG_INVALID");
    await AddressPool.open(f, { network: "x", subnet: "10.0.0.0/24" });
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.1.0/24" })), "NET_IPAM_LOAD_FAILED", "another subnet");
    assert.equal(await codeOf(AddressPool.open(f, { network: "y", subnet: "10.0.0.0/24" })), "NET_IPAM_LOAD_FAILED", "another network");
    await writeFile(f, "{ not json");
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.0.0/24" })), "NET_IPAM_LOAD_FAILED");
    await writeFile(f, JSON.stringify({ version: 1, network: "x", subnet: "10.0.0.0/24", next: "10.0.0.1", allocations: { "10.0.9.9": { owner: "a", allocatedAt: "" } } }));
    assert.equal(await codeOf(AddressPool.open(f, { network: "x", subnet: "10.0.0.0/24" })), "NET_IPAM_LOAD_FAILED");
    // A directory where the file should be: saving fails, the allocation is rolled back.
    const pool = await AddressPool.open(join(dir, "ok.json"), { network: "ok", subnet: "10.0.0.0/24" });
    await rm(join(dir, "ok.json"));
    await mkdir(join(dir, "ok.json"));
    assert.equal(await codeOf(pool.allocate("a")), "NET_IPAM_SAVE_FAILED");
    assert.equal(pool.get("a"), undefined);
    assert.equal(pool.list().length, 0);
  });
});

void test("shared pools: two owners of one file (host agents on a shared datastore) never hand out the same address", async () => {
  await withDir(async (dir) => {
    const file = join(dir, "nets", "red.ipam.json");
    const config = { network: "red", subnet: "10.9.0.0/27", shared: true };
    const a = await AddressPool.open(file, config);
    const b = await AddressPool.open(file, config);
    const got = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? a : b).allocate(`vm${i}`)));
    assert.equal(new Set(got.map((x) => x.address)).size, 20, "20 distinct addresses");
    assert.equal(await codeOf(a.allocate("other", got[1]!.address)), "NET_IPAM_ADDRESS_IN_USE");
    await b.release("vm0");
    await a.refresh();
    assert.equal(a.get("vm0"), undefined, "a sees b's release after a refresh");
    assert.equal(a.list().length, 19);
    assert.deepEqual((await readdir(join(dir, "nets"))).sort(), ["red.ipam.json"], "no lock or temp file left");
  });
});
