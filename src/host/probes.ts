/**
 * What a real client on the host sees of a guest while it migrates: a TCP client of the guest's
 * kvd (one request every few ms, every reply checked against its request) and the system's
 * ping. Used by the network tests, the network benchmark and the demo.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { connect, type Socket } from "node:net";
import { HopError } from "../common/errors.js";

export interface KvdProbeOptions {
  host: string;
  port?: number;
  /** Milliseconds between requests (default 5). */
  intervalMs?: number;
  /**
   * "seq": `SEQ n` with n = 0, 1, … and each reply must be `SEQ n` for the oldest open request;
   * "incr": `INCR key`, each reply `VALUE v` with v one more than the last (the counter lives in the guest).
   */
  mode?: "seq" | "incr";
  key?: string;
  connectTimeoutMs?: number;
}

export interface KvdProbeStats {
  sent: number;
  replies: number;
  /** Replies that were not the expected one (wrong number, out of order, garbage), and socket errors. */
  errors: number;
  /** Requests still unanswered. */
  outstanding: number;
  firstValue?: number;
  lastValue?: number;
  closed: boolean;
  errorMessages: string[];
}

/** A kvd client sending a request every `intervalMs` on one TCP connection and checking every reply. */
export class KvdProbe {
  private readonly sock: Socket;
  private timer: NodeJS.Timeout | undefined;
  private buf = "";
  private next = 0;
  private expect = 0;
  private lastValue: number | undefined;
  private firstValue: number | undefined;
  /** Arrival times (performance.now()) of replies. */
  readonly replyTimes: number[] = [];
  /** Mode "incr": the counter value of each reply (NaN for a bad reply). */
  readonly replyValues: number[] = [];
  private errors = 0;
  private readonly messages: string[] = [];
  private closed = false;

  private constructor(
    sock: Socket,
    private readonly o: KvdProbeOptions,
  ) {
    this.sock = sock;
    sock.setNoDelay(true);
    sock.setEncoding("latin1");
    sock.on("data", (d: string) => this.onData(d));
    sock.on("error", (err) => this.fail(`socket error: ${err.message}`));
    sock.on("close", () => {
      if (!this.closed) this.fail("the connection closed");
      this.closed = true;
    });
  }

  static connect(o: KvdProbeOptions): Promise<KvdProbe> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: o.host, port: o.port ?? 7000 });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new HopError("PROBE_CONNECT_TIMEOUT", `connecting to kvd at ${o.host}:${o.port ?? 7000} timed out`));
      }, o.connectTimeoutMs ?? 10_000);
      s.once("connect", () => {
        clearTimeout(timer);
        s.removeAllListeners("error");
        resolve(new KvdProbe(s, o));
      });
      s.once("error", (err) => {
        clearTimeout(timer);
        reject(new HopError("PROBE_CONNECT_FAILED", `connecting to kvd at ${o.host}:${o.port ?? 7000} failed: ${err.message}`, { cause: err }));
      });
    });
  }

  /** Starts sending (one request now, then every intervalMs). */
  start(): void {
    if (this.timer !== undefined) return;
    const send = (): void => {
      if (this.closed) return;
      const line = this.o.mode === "incr" ? `INCR ${this.o.key ?? "probe"}\n` : `SEQ ${this.next}\n`;
      this.next++;
      this.sock.write(line);
    };
    send();
    this.timer = setInterval(send, this.o.intervalMs ?? 5);
  }

  /** Stops sending; resolves when every request is answered (or after `drainMs`). */
  async stop(drainMs = 5_000): Promise<KvdProbeStats> {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    const deadline = Date.now() + drainMs;
    while (this.expect < this.next && !this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return this.stats();
  }

  close(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.closed = true;
    this.sock.destroy();
  }

  stats(): KvdProbeStats {
    return {
      sent: this.next,
      replies: this.expect,
      errors: this.errors,
      outstanding: this.next - this.expect,
      ...(this.firstValue !== undefined ? { firstValue: this.firstValue } : {}),
      ...(this.lastValue !== undefined ? { lastValue: this.lastValue } : {}),
      closed: this.closed,
      errorMessages: [...this.messages],
    };
  }

  /** The longest time between two replies (or from `from` to the first reply) within [from, to]. */
  longestGap(from = -Infinity, to = Infinity): number {
    let gap = 0;
    let prev = from === -Infinity ? undefined : from;
    for (const t of this.replyTimes) {
      if (t < from) continue;
      if (t > to) break;
      if (prev !== undefined) gap = Math.max(gap, t - prev);
      prev = t;
    }
    return gap;
  }

  private fail(message: string): void {
    this.errors++;
    if (this.messages.length < 20) this.messages.push(message);
  }

  private onData(d: string): void {
    this.buf += d;
    for (;;) {
      const i = this.buf.indexOf("\n");
      if (i < 0) break;
      const line = this.buf.slice(0, i).replace(/\r$/, "");
      this.buf = this.buf.slice(i + 1);
      this.replyTimes.push(performance.now());
      const n = this.expect++;
      if (this.o.mode === "incr") {
        const m = /^VALUE (\d+)$/.exec(line);
        const v = m?.[1] !== undefined ? Number(m[1]) : undefined;
        this.replyValues.push(v ?? NaN);
        if (v === undefined) this.fail(`reply ${n}: '${line}'`);
        else {
          if (this.lastValue !== undefined && v !== this.lastValue + 1) this.fail(`reply ${n}: counter ${v} after ${this.lastValue}`);
          this.firstValue ??= v;
          this.lastValue = v;
        }
      } else if (line !== `SEQ ${n}`) this.fail(`reply ${n}: '${line}' (expected 'SEQ ${n}')`);
    }
  }
}

export interface PingResult {
  /** Sequence numbers answered, in arrival order, with arrival times. */
  replies: { seq: number; at: number }[];
  transmitted: number;
}

/**
 * The system's ping (iputils) at `intervalMs` (below 200 ms needs root). stop() ends it with
 * SIGINT; lost(from, to) lists the sequence numbers in between that got no reply.
 */
export class Pinger {
  private readonly child: ChildProcess;
  readonly replies: { seq: number; at: number }[] = [];
  private out = "";
  private readonly exited: Promise<void>;

  constructor(
    readonly target: string,
    readonly intervalMs = 10,
    spawnFn: (argv: string[]) => ChildProcess = (argv) => spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] }),
  ) {
    this.child = spawnFn(["ping", "-n", "-i", String(intervalMs / 1000), "-W", "2", target]);
    this.exited = new Promise((r) => this.child.once("exit", () => r()));
    let partial = "";
    this.child.stdout?.setEncoding("utf8");
    this.child.stdout?.on("data", (d: string) => {
      this.out += d;
      if (this.out.length > 100_000) this.out = this.out.slice(-50_000);
      const lines = (partial + d).split("\n");
      partial = lines.pop() ?? "";
      const now = performance.now();
      for (const l of lines) {
        const m = /icmp_seq=(\d+)/.exec(l);
        if (m?.[1] !== undefined && !/DUP/.test(l)) this.replies.push({ seq: Number(m[1]), at: now });
      }
    });
    this.child.on("error", () => undefined);
  }

  /** Stops ping (SIGINT) and returns what it saw. */
  async stop(): Promise<PingResult> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGINT");
    await this.exited;
    const m = /(\d+) packets transmitted/.exec(this.out);
    return { replies: [...this.replies], transmitted: m?.[1] !== undefined ? Number(m[1]) : 0 };
  }

  /** Sequence numbers in [fromSeq, toSeq] (default: the first and last reply seen) that got no reply. */
  lost(fromSeq?: number, toSeq?: number): number[] {
    const seqs = this.replies.map((r) => r.seq);
    if (seqs.length === 0) return [];
    const lo = fromSeq ?? Math.min(...seqs);
    const hi = toSeq ?? Math.max(...seqs);
    const got = new Set(seqs);
    const out: number[] = [];
    for (let s = lo; s <= hi; s++) if (!got.has(s)) out.push(s);
    return out;
  }

  /** The sequence number of the last reply received before time `t`. */
  seqAt(t: number): number | undefined {
    let s: number | undefined;
    for (const r of this.replies) {
      if (r.at > t) break;
      s = r.seq;
    }
    return s;
  }
}
