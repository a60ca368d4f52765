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
import type WebSocket from "ws";
import { HostClient, waitOpen } from "../host/client.js";
import { progressReporter } from "./image.js";

interface Agent {
  name: string;
  proc: ChildProcess;
  url: string;
}

/** A host agent process; all demo agents share one datastore (as hosts share a SAN or NFS export). */
function startAgent(name: string, datastore: string, token: string, peers: string[] = []): Promise<Agent> {
  const args = [join(packageRoot, "bin", "hop.js"), "host", "serve", "--name", name, "--listen", "127.0.0.1:0", "--datastore", datastore, "--token", token];
  for (const p of peers) args.push("--peer", p);
  const proc = spawn(process.execPath, args, {
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
    // host-b first, so host-a can be told where it is; host-a's address goes to host-b through a URL in each migrate call.
    const datastore = join(dir, "datastore");
    const agentB = await startAgent("host-b", datastore, token);
    agents.push(agentB);
    const agentA = await startAgent("host-a", datastore, token, [`host-b=${agentB.url}`]);
    agents.push(agentA);
    for (const x of [agentA, agentB]) say(`host agent ${x.name} on ${x.url}`);
    const a = new HostClient(agentA.url, token);
    const b = new HostClient(agentB.url, token);

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

    const where = await migrationTour(say, { a: { client: a, url: agentA.url }, b: { client: b, url: agentB.url } });

    if (opts.keep !== true) {
      say("\nshutting demo1 down through its guest agent...");
      const off = await where.shutdown("demo1", { timeoutMs: 20_000 });
      say(`demo1 is ${off.state}`);
    }
    say("demo done.");
  } finally {
    await Promise.all(agents.map(stopAgent));
    await rm(dir, { recursive: true, force: true });
  }
}

interface Side {
  client: HostClient;
  url: string;
}

/**
 * Moves demo1 back and forth (three live migrations, then one quick migration) while a client
 * keeps asking the VM's TCP service (kvd, through the guest agent of whichever host runs the
 * VM) and the guest prints a heartbeat every 10 ms on its serial console; then prints what the
 * client saw next to what the hosts measured. Returns the client of the host the VM ends on.
 */
async function migrationTour(say: (s: string) => void, hosts: { a: Side; b: Side }): Promise<HostClient> {
  say("\n-- moving demo1 while a client talks to it --");
  let here: "a" | "b" = "a";
  const other = (h: "a" | "b"): "a" | "b" => (h === "a" ? "b" : "a");
  // Heartbeats from the consoles of both hosts (a host's console stream opens once the VM is there).
  const beats: { seq: number; at: number }[] = [];
  const sockets: WebSocket[] = [];
  const watchConsole = (side: Side): void => {
    const ws = side.client.console("demo1");
    let partial = "";
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (!isBinary) return;
      const now = performance.now();
      const lines = (partial + data.toString("latin1")).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) {
        const m = /HB (\d+)/.exec(l);
        if (m?.[1] !== undefined) beats.push({ seq: Number(m[1]), at: now });
      }
    });
    ws.on("error", () => undefined);
    sockets.push(ws);
  };
  for (const side of [hosts.a, hosts.b]) {
    const ev = side.client.events();
    ev.on("message", (data: Buffer) => {
      const e = JSON.parse(data.toString("utf8")) as { type: string; vm?: string; state?: string };
      if (e.type === "vm.state" && e.vm === "demo1" && e.state === "incoming") watchConsole(side);
    });
    ev.on("error", () => undefined);
    sockets.push(ev);
    await waitOpen(ev);
  }
  watchConsole(hosts.a);
  await hosts.a.client.exec("demo1", "hb -i 10 > /dev/ttyS0 2>&1 &");

  // The client: INCR every 20 ms, on whichever host answers for the VM.
  const replies: { at: number; ms: number; value: number }[] = [];
  let failures = 0;
  let running = true;
  const client = (async () => {
    while (running) {
      const t0 = performance.now();
      try {
        const r = await hosts[here].client.exec("demo1", "kvc 127.0.0.1 7000 INCR clicks", { timeoutMs: 10_000 });
        const m = /VALUE (\d+)/.exec(r.stdout);
        if (m?.[1] !== undefined) replies.push({ at: performance.now(), ms: performance.now() - t0, value: Number(m[1]) });
      } catch {
        // The VM moved under the request: ask the other host.
        failures++;
        here = other(here);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await new Promise((r) => setTimeout(r, 1500));

  const rows: string[][] = [["move", "mode", "total ms", "pause on hosts ms", "longest heartbeat silence ms", "client replies", "slowest reply ms", "counter"]];
  const moves: { to: "a" | "b"; mode: "live" | "quick" }[] = [
    { to: "b", mode: "live" },
    { to: "a", mode: "live" },
    { to: "b", mode: "live" },
    { to: "a", mode: "quick" },
  ];
  for (const move of moves) {
    const from = other(move.to);
    const t0 = performance.now();
    const r0 = replies.length;
    const report = await hosts[from].client.migrate("demo1", { to: hosts[move.to].url, mode: move.mode });
    here = move.to;
    await new Promise((r) => setTimeout(r, 1000));
    const window = beats.filter((x) => x.at >= t0 - 100);
    let silence = 0;
    for (let i = 1; i < window.length; i++) silence = Math.max(silence, window[i]!.at - window[i - 1]!.at);
    const seen = replies.slice(r0);
    const values = seen.map((x) => x.value);
    const inOrder = values.every((v, i) => i === 0 || v === values[i - 1]! + 1);
    rows.push([
      `host-${from} -> host-${move.to}`,
      move.mode,
      report.totalMs.toFixed(0),
      report.downtimeMs.toFixed(1),
      silence.toFixed(0),
      String(seen.length),
      Math.max(0, ...seen.map((x) => x.ms)).toFixed(0),
      values.length > 0 ? `${values[0]}..${values[values.length - 1]}${inOrder ? "" : " (gap!)"}` : "-",
    ]);
  }
  running = false;
  await client;
  const seqs = beats.map((x) => x.seq);
  const holes = seqs.filter((v, i) => i > 0 && v !== seqs[i - 1]! + 1).length;
  for (const ws of sockets) ws.close();
  say(table(rows));
  say(`heartbeats: ${beats.length} received, ${holes === 0 ? "sequence continuous (no beat lost or repeated)" : `${holes} breaks in the sequence`}`);
  say(`client: ${replies.length} replies, counter ${replies[0]?.value ?? "-"}..${replies[replies.length - 1]?.value ?? "-"}, ${failures} request(s) re-sent to the new host after a move`);
  say(`guest clock after the moves: ${(await hosts[here].client.exec("demo1", "date -u +%H:%M:%S")).stdout.trim()} (host: ${new Date().toISOString().slice(11, 19)})`);
  return hosts[here].client;
}

export function register(program: Command): void {
  program
    .command("demo")
    .description("build the guest image if needed, start two host agents on loopback, run a real Linux VM and talk to it")
    .action(async () => {
      await runDemo();
    });
}
