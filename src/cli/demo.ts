/**
 * `hop demo`: builds the guest image if needed, starts two host agents on loopback, starts a
 * real Linux VM on the first one from the template, shows its serial console, and talks to
 * the TCP service inside it. (The migration issues extend it to move the VM while a client talks.)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Command } from "commander";
import { HopError } from "../common/errors.js";
import { packageRoot } from "../common/paths.js";
import { ensureImage } from "../image/index.js";
import { HostClient, waitOpen } from "../host/client.js";
import { progressReporter } from "./image.js";

interface Agent {
  name: string;
  proc: ChildProcess;
  url: string;
}

function startAgent(name: string, dir: string, token: string): Promise<Agent> {
  const proc = spawn(process.execPath, [join(packageRoot, "bin", "hop.js"), "host", "serve", "--name", name, "--listen", "127.0.0.1:0", "--datastore", join(dir, name), "--token", token], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, HOP_LOG_LEVEL: process.env["HOP_LOG_LEVEL"] ?? "warn" },
  });
  proc.stderr?.pipe(process.stderr);
  return new Promise((resolve, reject) => {
    const rl = createInterface({ input: proc.stdout as NodeJS.ReadableStream });
    rl.on("line", (line) => {
      const m = /listening on (\S+)/.exec(line);
      if (m?.[1] !== undefined) resolve({ name, proc, url: m[1] });
    });
    proc.once("exit", (code) => reject(new HopError("DEMO_AGENT_FAILED", `host agent ${name} exited (code ${String(code)}) before listening`)));
  });
}

async function stopAgent(a: Agent): Promise<void> {
  if (a.proc.exitCode !== null) return;
  const exited = new Promise((r) => a.proc.once("exit", r));
  a.proc.kill("SIGTERM");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))]);
  if (a.proc.exitCode === null) a.proc.kill("SIGKILL");
}

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  return rows.map((r, n) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ") + (n === 0 ? "\n" + widths.map((w) => "-".repeat(w)).join("  ") : "")).join("\n");
}

export async function runDemo(opts: { keep?: boolean } = {}): Promise<void> {
  const say = (s: string): void => void process.stdout.write(`${s}\n`);
  say("== Hopvisor demo ==");
  const progress = progressReporter(process.stdout.isTTY, process.stdout);
  const image = await ensureImage({ onProgress: (p) => progress.update(p) }).finally(() => progress.stop());
  say(`guest image: kernel ${image.kernelVersion}, ${image.dir}`);

  const dir = await mkdtemp(join(tmpdir(), "hop-demo-"));
  const token = randomBytes(32).toString("hex");
  const agents: Agent[] = [];
  try {
    agents.push(await startAgent("host-a", dir, token), await startAgent("host-b", dir, token));
    for (const a of agents) say(`host agent ${a.name} on ${a.url}`);
    const [a, b] = agents.map((x) => new HostClient(x.url, token));
    if (a === undefined || b === undefined) throw new Error("agents missing");

    await a.create({ name: "demo1", memoryMiB: 128, ip: "10.99.0.10/24", diskMiB: 32 });
    say("starting VM demo1 on host-a (the first start of this hardware profile boots a template once)...");
    const console: string[] = [];
    const info = await a.start("demo1");
    say(`demo1 is ${info.state} (started from ${info.startedFrom ?? "?"} in ${info.startMs ?? "?"} ms, pid ${info.pid ?? "?"})`);

    const ws = a.console("demo1");
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) console.push(data.toString("utf8"));
    });
    await waitOpen(ws);
    await a.exec("demo1", `echo "hello from $(hostname), $(uname -sr), $(cat /proc/meminfo | head -1 | tr -s ' ')" > /dev/ttyS0`);
    await a.exec("demo1", "hb -i 100 -n 5 > /dev/ttyS0");
    await new Promise((r) => setTimeout(r, 300));
    ws.close();
    const lines = console.join("").split("\n").filter((l) => l.trim() !== "").slice(-10);
    say("\n-- demo1 serial console (last lines) --");
    for (const l of lines) say(`  | ${l.replace(/\r/g, "")}`);

    say("\n-- the TCP service in the guest (kvd on port 7000), asked by a client in the guest --");
    const rows: string[][] = [["request", "reply", "ms"]];
    for (const req of ["PING", "SET owner demo", "INCR visits", "INCR visits", "INCR visits", "GET owner", "STATS"]) {
      const t0 = performance.now();
      const r = await a.exec("demo1", `kvc 127.0.0.1 7000 ${req}`);
      rows.push([req, r.stdout.trim() || `(exit ${r.exitCode}) ${r.stderr.trim()}`, (performance.now() - t0).toFixed(1)]);
    }
    say(table(rows));

    const disk = await a.exec("demo1", "echo written-at-$(date +%s) > /data/demo.txt && sync && df -h /data | tail -1");
    say(`\ndata disk: ${disk.stdout.trim()}`);
    say(`guest network: ${(await a.exec("demo1", "ip -4 -o addr show eth0")).stdout.trim()}`);
    const hb = await b.health();
    say(`host-b is up with ${hb.vms} VM(s): ready to receive migrations.`);

    if (opts.keep !== true) {
      say("\nshutting demo1 down through its guest agent...");
      const off = await a.shutdown("demo1", { timeoutMs: 20_000 });
      say(`demo1 is ${off.state}`);
    }
    say("demo done.");
  } finally {
    await Promise.all(agents.map(stopAgent));
    await rm(dir, { recursive: true, force: true });
  }
}

export function register(program: Command): void {
  program
    .command("demo")
    .description("build the guest image if needed, start two host agents on loopback, run a real Linux VM and talk to it")
    .action(async () => {
      await runDemo();
    });
}
