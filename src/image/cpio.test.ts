import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { kernelCmdline } from "./cmdline.js";
import { writeCpio } from "./cpio.js";

function hasCpio(): boolean {
  try {
    execFileSync("cpio", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

void test("the newc archive lists every entry with its size and mode, 4-byte aligned", () => {
  const data = Buffer.from("#!/bin/sh\necho hi\n");
  const archive = writeCpio([
    { name: "bin", mode: 0o040755 },
    { name: "bin/hello", mode: 0o100755, data },
    { name: "bin/sh", mode: 0o120777, data: Buffer.from("busybox") },
  ]);
  const names: string[] = [];
  let off = 0;
  for (;;) {
    assert.equal(archive.toString("ascii", off, off + 6), "070701", `magic at ${off}`);
    const field = (i: number): number => parseInt(archive.toString("ascii", off + 6 + i * 8, off + 14 + i * 8), 16);
    const mode = field(1);
    const size = field(6);
    const nameSize = field(11);
    const name = archive.toString("utf8", off + 110, off + 110 + nameSize - 1);
    names.push(name);
    off += 110 + nameSize;
    off += (4 - (off % 4)) % 4;
    if (name === "bin/hello") {
      assert.equal(mode, 0o100755);
      assert.ok(archive.subarray(off, off + size).equals(data));
    }
    off += size;
    off += (4 - (off % 4)) % 4;
    if (name === "TRAILER!!!") break;
  }
  assert.deepEqual(names, ["bin", "bin/hello", "bin/sh", "TRAILER!!!"]);
  assert.equal(off, archive.length);
});

void test("GNU cpio unpacks the archive (skipped with a reason when cpio is not installed)", async (t) => {
  if (!hasCpio()) {
    t.skip("GNU cpio is not installed (Debian package cpio); the format is checked by the test above");
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), "hop-cpio-"));
  try {
    await writeFile(join(dir, "a.cpio"), writeCpio([{ name: "x", mode: 0o040755 }, { name: "x/f", mode: 0o100644, data: Buffer.from("content") }, { name: "x/l", mode: 0o120777, data: Buffer.from("f") }]));
    execFileSync("sh", ["-c", "mkdir out && cd out && cpio -id --quiet < ../a.cpio"], { cwd: dir });
    assert.equal(await readFile(join(dir, "out", "x", "f"), "utf8"), "content");
    assert.equal(await readlink(join(dir, "out", "x", "l")), "f");
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

void test("the kernel command line carries the hop.* keys the init reads", () => {
  const c = kernelCmdline({ hostname: "web1", ip: "10.0.0.5/24", gw: "10.0.0.1", mac: "02:68:6f:00:00:01", mountDisk: true });
  assert.match(c, /^console=ttyS0 /);
  for (const k of ["hop.hostname=web1", "hop.ip=10.0.0.5/24", "hop.gw=10.0.0.1", "hop.mac=02:68:6f:00:00:01", "hop.disk=mount"]) assert.ok(c.split(" ").includes(k), k);
  assert.ok(!kernelCmdline({}).includes("hop."));
});
