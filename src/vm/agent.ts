import { HopError } from "../common/errors.js";

export interface AgentExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export class AgentError extends HopError {
  constructor(code: "AGENT_TIMEOUT" | "AGENT_ERROR" | "AGENT_GONE" | "AGENT_OUTPUT_TOO_LARGE", message: string) {
    super(code, message, { status: code === "AGENT_TIMEOUT" ? 504 : 502 });
  }
}

interface Pending {
  resolve: (r: { kind: string; rest: string[]; stdout: Buffer[]; stderr: Buffer[] }) => void;
  reject: (err: Error) => void;
  stdout: Buffer[];
  stderr: Buffer[];
  size: number;
  timer: NodeJS.Timeout | undefined;
}

/** The guest agent's serial port (COM2; COM1 is the console). */
const AGENT_PORT = 1;
const MAX_OUTPUT = 16 * 1024 * 1024;
const MAX_LINE = 256 * 1024;

/**
 * Host side of the guest agent's line protocol on the second serial port (see
 * src/image/guest/hopagent.c): `PING id`, `EXEC id b64`, `TIME id ms`, `SHUTDOWN id`;
 * replies `PONG`, `OUT`/`ERR` chunks then `EXIT`, `OK`, `ERROR`. Commands may overlap.
 */
export class GuestAgentClient {
  private line: number[] = [];
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  helloSeen = false;

  constructor(private readonly write: (bytes: Uint8Array) => void) {}

  /** A client wired to an engine's second serial port (COM2), where the guest agent listens. */
  static on(engine: { serialWrite(port: number, data: Uint8Array): void; onSerialByte(port: number, fn: (byte: number) => void): unknown }): GuestAgentClient {
    const agent = new GuestAgentClient((bytes) => engine.serialWrite(AGENT_PORT, bytes));
    engine.onSerialByte(AGENT_PORT, (b) => agent.feed(b));
    return agent;
  }

  /** Feed one byte received from the guest's agent port. */
  feed(byte: number): void {
    if (byte === 0x0a) {
      const text = Buffer.from(this.line).toString("latin1").replace(/\r$/, "");
      this.line = [];
      this.onLine(text);
    } else if (this.line.length < MAX_LINE) {
      this.line.push(byte);
    }
  }

  /** Resolves when the agent has said HELLO (after boot) or answers a PING. */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new AgentError("AGENT_TIMEOUT", `guest agent did not answer within ${timeoutMs} ms`);
      try {
        await this.ping(Math.min(left, 1000));
        return;
      } catch (err) {
        if (!(err instanceof AgentError) || err.code !== "AGENT_TIMEOUT") throw err;
      }
    }
  }

  async ping(timeoutMs: number): Promise<void> {
    await this.request("PING", [], timeoutMs);
  }

  async exec(command: string, timeoutMs: number): Promise<AgentExecResult> {
    const r = await this.request("EXEC", [Buffer.from(command, "utf8").toString("base64")], timeoutMs);
    if (r.kind !== "EXIT") throw new AgentError("AGENT_ERROR", `guest agent answered ${r.kind} to EXEC`);
    return {
      exitCode: Number(r.rest[0] ?? "255"),
      stdout: Buffer.concat(r.stdout).toString("utf8"),
      stderr: Buffer.concat(r.stderr).toString("utf8"),
    };
  }

  async setTime(unixMs: number, timeoutMs: number): Promise<void> {
    await this.request("TIME", [String(Math.round(unixMs))], timeoutMs);
  }

  /**
   * Gives a clone its identity (hostname, MAC, IP, gateway, data disk mount) with syscalls in
   * the agent itself: no shell, so it is fast while the JIT is still cold after a restore.
   */
  async ident(id: { hostname: string; mac?: string; ip?: string; gw?: string; mountDisk: boolean }, timeoutMs: number): Promise<void> {
    for (const v of [id.hostname, id.mac, id.ip, id.gw]) {
      if (v !== undefined && !/^[A-Za-z0-9.:/-]+$/.test(v)) throw new AgentError("AGENT_ERROR", `identity field '${v}' has characters the guest agent does not take`);
    }
    const fields = [id.hostname, id.mac ?? "-", id.ip ?? "-", id.gw ?? "-", id.mountDisk ? "mount" : "-"].join(" ");
    await this.request("IDENT", [Buffer.from(fields, "utf8").toString("base64")], timeoutMs);
  }

  async shutdown(timeoutMs: number): Promise<void> {
    await this.request("SHUTDOWN", [], timeoutMs);
  }

  /** Fails every outstanding request (the VM stopped or the channel was reset). */
  failAll(reason: string): void {
    for (const [id, p] of this.pending) {
      if (p.timer !== undefined) clearTimeout(p.timer);
      p.reject(new AgentError("AGENT_GONE", reason));
      this.pending.delete(id);
    }
  }

  private request(verb: string, args: string[], timeoutMs: number): Promise<{ kind: string; rest: string[]; stdout: Buffer[]; stderr: Buffer[] }> {
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      const p: Pending = { resolve, reject, stdout: [], stderr: [], size: 0, timer: undefined };
      p.timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new AgentError("AGENT_TIMEOUT", `guest agent did not finish ${verb} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, p);
      this.write(Buffer.from([verb, id, ...args].join(" ") + "\n", "latin1"));
    });
  }

  private onLine(text: string): void {
    const [kind, id, ...rest] = text.split(" ");
    if (kind === undefined || kind === "") return;
    if (kind === "HELLO") {
      this.helloSeen = true;
      return;
    }
    if (id === undefined) return;
    // Our own request echoed back (the serial line was briefly in cooked mode while the
    // agent started): not a reply; the real reply follows.
    if (kind === "PING" || kind === "EXEC" || kind === "TIME" || kind === "SHUTDOWN") return;
    const p = this.pending.get(id);
    if (p === undefined) return; // a reply to a request that timed out
    if (kind === "OUT" || kind === "ERR") {
      const chunk = Buffer.from(rest[0] ?? "", "base64");
      p.size += chunk.length;
      if (p.size > MAX_OUTPUT) {
        this.finish(id, p);
        p.reject(new AgentError("AGENT_OUTPUT_TOO_LARGE", `command output exceeded ${MAX_OUTPUT} bytes`));
        return;
      }
      (kind === "OUT" ? p.stdout : p.stderr).push(chunk);
      return;
    }
    this.finish(id, p);
    if (kind === "ERROR") {
      p.reject(new AgentError("AGENT_ERROR", `guest agent: ${Buffer.from(rest[0] ?? "", "base64").toString("utf8")}`));
      return;
    }
    p.resolve({ kind, rest, stdout: p.stdout, stderr: p.stderr });
  }

  private finish(id: string, p: Pending): void {
    if (p.timer !== undefined) clearTimeout(p.timer);
    this.pending.delete(id);
  }
}
