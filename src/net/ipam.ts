/**
 * Address management for one virtual network: a subnet, its gateway, reserved addresses, and the
 * addresses given to owners (VMs, host devices). State is a JSON file, rewritten atomically (temp
 * file, fsync, rename) after every change; changes are serialized, so concurrent calls are safe
 * within one process. One process owns a network's file.
 *
 * Allocation is next-fit from a persisted cursor: a released address is reused only after the
 * rest of the subnet has been handed out, which keeps stale ARP caches from pointing a fresh VM's
 * address at a departed VM's MAC.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { z } from "zod";
import { withFileLock } from "../common/lock.js";
import { formatIssues } from "../common/validation.js";
import { IpamError } from "./errors.js";
import { formatIpv4Address, parseIpv4Address } from "./frames.js";

export interface Cidr {
  /** Network address (host bits zero). */
  base: number;
  prefixLength: number;
  /** Number of addresses in the subnet. */
  size: number;
}

/** "10.10.0.0/24" to its parts; host bits must be zero. */
export function parseCidr(text: string): Cidr {
  const m = /^([0-9.]+)\/([0-9]{1,2})$/.exec(text);
  if (m === null) throw new IpamError("config", `'${text}' is not a CIDR subnet like 10.10.0.0/24`);
  let base: number;
  try {
    base = parseIpv4Address(m[1]!);
  } catch (err) {
    throw new IpamError("config", `'${text}' is not a CIDR subnet like 10.10.0.0/24`, err);
  }
  const prefixLength = Number(m[2]);
  if (prefixLength > 32) throw new IpamError("config", `prefix length /${prefixLength} is over 32`);
  const size = 2 ** (32 - prefixLength);
  if (base % size !== 0) throw new IpamError("config", `'${text}' has host bits set (the subnet is ${formatIpv4Address(base - (base % size))}/${prefixLength})`);
  return { base, prefixLength, size };
}

export function cidrContains(c: Cidr, address: number): boolean {
  return address >= c.base && address < c.base + c.size;
}

export interface IpamConfig {
  /** The virtual network's name (recorded in the file, checked on open). */
  network: string;
  /** The subnet, e.g. "10.10.0.0/24" (prefix /8 to /30). */
  subnet: string;
  /** The guests' default gateway: an address in the subnet, the first host address by default, false for none. */
  gateway?: string | false;
  /** Addresses never allocated unless requested by name: "10.10.0.5" or ranges "10.10.0.2-10.10.0.9". */
  reserved?: readonly string[];
  /**
   * Several processes use the file (host agents on one shared datastore): every change takes a
   * lock file next to it (`FILE.lock`) and re-reads the file first. Reads (get, list) answer
   * from what this process saw last.
   */
  shared?: boolean;
}

export interface Allocation {
  address: string;
  prefixLength: number;
  /** "10.10.0.5/24": what the guest configures (hop.ip=). */
  cidr: string;
  /** The network's gateway (hop.gw=), if it has one. */
  gateway?: string;
  owner: string;
  allocatedAt: string;
}

const fileSchema = z.object({
  version: z.literal(1),
  network: z.string(),
  subnet: z.string(),
  next: z.string(),
  allocations: z.record(z.string(), z.object({ owner: z.string().min(1), allocatedAt: z.string() })),
});

type IpamFile = z.infer<typeof fileSchema>;

interface Held {
  owner: string;
  allocatedAt: string;
}

export class AddressPool {
  readonly network: string;
  readonly subnet: string;
  readonly prefixLength: number;
  readonly gateway: string | undefined;
  readonly file: string;
  private readonly cidr: Cidr;
  private readonly gatewayNum: number | undefined;
  private readonly reservedSet: Set<number>;
  private readonly byAddress = new Map<number, Held>();
  private readonly byOwner = new Map<string, number>();
  private next: number;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly shared: boolean;

  private constructor(file: string, config: IpamConfig, cidr: Cidr, gateway: number | undefined, reserved: Set<number>) {
    this.file = file;
    this.network = config.network;
    this.cidr = cidr;
    this.subnet = `${formatIpv4Address(cidr.base)}/${cidr.prefixLength}`;
    this.prefixLength = cidr.prefixLength;
    this.gatewayNum = gateway;
    this.gateway = gateway === undefined ? undefined : formatIpv4Address(gateway);
    this.reservedSet = reserved;
    this.next = this.firstHost;
    this.shared = config.shared === true;
  }

  /**
   * Opens the pool persisted in `file`, creating it (and its directory) when missing. The file's
   * network and subnet must match the config; gateway and reserved addresses come from the config.
   */
  static async open(file: string, config: IpamConfig): Promise<AddressPool> {
    const cidr = parseCidr(config.subnet);
    if (cidr.prefixLength < 8 || cidr.prefixLength > 30) throw new IpamError("config", `subnet ${config.subnet}: the prefix must be /8 to /30`);
    const inSubnet = (text: string, what: string): number => {
      let n: number;
      try {
        n = parseIpv4Address(text);
      } catch (err) {
        throw new IpamError("config", `${what} '${text}' is not an IPv4 address`, err);
      }
      if (!cidrContains(cidr, n)) throw new IpamError("config", `${what} ${text} is outside ${config.subnet}`);
      return n;
    };
    let gateway: number | undefined;
    if (config.gateway === undefined) gateway = cidr.base + 1;
    else if (config.gateway !== false) gateway = inSubnet(config.gateway, "gateway");
    const reserved = new Set<number>();
    for (const r of config.reserved ?? []) {
      const [a, b] = r.split("-", 2);
      const from = inSubnet(a!.trim(), "reserved address");
      const to = b === undefined ? from : inSubnet(b.trim(), "reserved address");
      if (to < from) throw new IpamError("config", `reserved range ${r} ends before it starts`);
      for (let n = from; n <= to; n++) reserved.add(n);
    }
    const pool = new AddressPool(file, config, cidr, gateway, reserved);
    if (pool.shared) await pool.locked(() => pool.load());
    else await pool.load();
    return pool;
  }

  private get firstHost(): number {
    return this.cidr.base + 1;
  }

  private get lastHost(): number {
    return this.cidr.base + this.cidr.size - 2;
  }

  private async load(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") {
        await this.save();
        return;
      }
      throw new IpamError("load", `reading ${this.file} failed`, err);
    }
    let data: IpamFile;
    try {
      const parsed = fileSchema.safeParse(JSON.parse(text));
      if (!parsed.success) throw new Error(formatIssues(parsed.error.issues, "file"));
      data = parsed.data;
    } catch (err) {
      throw new IpamError("load", `${this.file} is not a valid address file: ${err instanceof Error ? err.message : String(err)}`, err);
    }
    if (data.network !== this.network || data.subnet !== this.subnet) {
      throw new IpamError("load", `${this.file} belongs to network '${data.network}' ${data.subnet}, not '${this.network}' ${this.subnet}`);
    }
    for (const [addr, h] of Object.entries(data.allocations)) {
      let n: number;
      try {
        n = parseIpv4Address(addr);
      } catch (err) {
        throw new IpamError("load", `${this.file}: '${addr}' is not an IPv4 address`, err);
      }
      if (!cidrContains(this.cidr, n)) throw new IpamError("load", `${this.file}: ${addr} is outside ${this.subnet}`);
      if (this.byOwner.has(h.owner)) throw new IpamError("load", `${this.file}: owner '${h.owner}' holds two addresses`);
      this.byAddress.set(n, { ...h });
      this.byOwner.set(h.owner, n);
    }
    try {
      const n = parseIpv4Address(data.next);
      if (cidrContains(this.cidr, n)) this.next = n;
    } catch {
      // A bad cursor only changes where the next search starts.
    }
  }

  /** Atomic replace: write a temp file in the same directory, fsync, rename, fsync the directory. */
  private async save(): Promise<void> {
    const allocations: IpamFile["allocations"] = {};
    for (const [n, h] of [...this.byAddress].sort((a, b) => a[0] - b[0])) allocations[formatIpv4Address(n)] = h;
    const data: IpamFile = { version: 1, network: this.network, subnet: this.subnet, next: formatIpv4Address(this.next), allocations };
    const tmp = `${this.file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    try {
      await mkdir(dirname(this.file), { recursive: true });
      const fh = await open(tmp, "w", 0o644);
      try {
        await fh.writeFile(`${JSON.stringify(data, null, 2)}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.file);
      const dir = await open(dirname(this.file), "r");
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw new IpamError("save", `writing ${this.file} failed`, err);
    }
  }

  /** Runs mutations one at a time, so each one's file write reflects it and those before it. */
  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const task = this.shared ? (): Promise<T> => this.locked(async () => {
      await this.reload();
      return fn();
    }) : fn;
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Holds the pool's lock file (shared pools) while `fn` runs. */
  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    await mkdir(dirname(this.file), { recursive: true });
    return withFileLock(`${this.file}.lock`, fn, { timeoutMs: 30_000, staleMs: 30_000 }).catch((err: unknown) => {
      if (err instanceof IpamError) throw err;
      throw new IpamError("save", `locking ${this.file} failed: ${err instanceof Error ? err.message : String(err)}`, err);
    });
  }

  /** Forgets the in-memory state and reads the file again (another process may have changed it). */
  private async reload(): Promise<void> {
    this.byAddress.clear();
    this.byOwner.clear();
    this.next = this.firstHost;
    await this.load();
  }

  /** Re-reads the file of a shared pool (to see other processes' changes); a no-op otherwise. */
  async refresh(): Promise<void> {
    if (!this.shared) return;
    await this.serialize(async () => undefined);
  }

  private isReserved(n: number): boolean {
    return n < this.firstHost || n > this.lastHost || n === this.gatewayNum || this.reservedSet.has(n);
  }

  private describe(n: number, h: Held): Allocation {
    const a: Allocation = { address: formatIpv4Address(n), prefixLength: this.prefixLength, cidr: `${formatIpv4Address(n)}/${this.prefixLength}`, owner: h.owner, allocatedAt: h.allocatedAt };
    if (this.gateway !== undefined) a.gateway = this.gateway;
    return a;
  }

  /**
   * Gives `owner` an address: `requested` if given (it may be a reserved address, never the
   * network, broadcast or gateway address), else the next free one. Calling again for an owner
   * returns its address; asking for a different one is an error (release first).
   */
  allocate(owner: string, requested?: string): Promise<Allocation> {
    return this.serialize(async () => {
      if (owner === "") throw new IpamError("config", "the owner is empty");
      let want: number | undefined;
      if (requested !== undefined) {
        try {
          want = parseIpv4Address(requested);
        } catch (err) {
          throw new IpamError("out-of-subnet", `'${requested}' is not an IPv4 address`, err);
        }
        if (!cidrContains(this.cidr, want)) throw new IpamError("out-of-subnet", `${requested} is outside ${this.subnet}`);
      }
      const mine = this.byOwner.get(owner);
      if (mine !== undefined) {
        if (want === undefined || want === mine) return this.describe(mine, this.byAddress.get(mine)!);
        throw new IpamError("owner", `'${owner}' already holds ${formatIpv4Address(mine)} in '${this.network}' (release it first)`);
      }
      let n: number;
      if (want !== undefined) {
        if (want < this.firstHost || want > this.lastHost) throw new IpamError("reserved", `${requested} is the network or broadcast address of ${this.subnet}`);
        if (want === this.gatewayNum) throw new IpamError("reserved", `${requested} is the gateway of '${this.network}'`);
        const holder = this.byAddress.get(want);
        if (holder !== undefined) throw new IpamError("in-use", `${requested} is held by '${holder.owner}' in '${this.network}'`);
        n = want;
      } else {
        const found = this.findFree();
        if (found === undefined) throw new IpamError("exhausted", `no free address left in ${this.subnet} ('${this.network}': ${this.byAddress.size} allocated, ${this.reservedCount()} reserved)`);
        n = found;
        this.next = n + 1 > this.lastHost ? this.firstHost : n + 1;
      }
      const held: Held = { owner, allocatedAt: new Date().toISOString() };
      const prevNext = this.next;
      this.byAddress.set(n, held);
      this.byOwner.set(owner, n);
      try {
        await this.save();
      } catch (err) {
        this.byAddress.delete(n);
        this.byOwner.delete(owner);
        this.next = prevNext;
        throw err;
      }
      return this.describe(n, held);
    });
  }

  private findFree(): number | undefined {
    const span = this.lastHost - this.firstHost + 1;
    let n = this.next < this.firstHost || this.next > this.lastHost ? this.firstHost : this.next;
    for (let i = 0; i < span; i++) {
      if (!this.isReserved(n) && !this.byAddress.has(n)) return n;
      n = n === this.lastHost ? this.firstHost : n + 1;
    }
    return undefined;
  }

  private reservedCount(): number {
    let k = this.gatewayNum === undefined ? 0 : 1;
    for (const n of this.reservedSet) if (n !== this.gatewayNum && n >= this.firstHost && n <= this.lastHost) k++;
    return k;
  }

  /** Releases the owner's address; returns it, or undefined when the owner held none. */
  release(owner: string): Promise<Allocation | undefined> {
    return this.serialize(async () => {
      const n = this.byOwner.get(owner);
      if (n === undefined) return undefined;
      const held = this.byAddress.get(n)!;
      this.byOwner.delete(owner);
      this.byAddress.delete(n);
      try {
        await this.save();
      } catch (err) {
        this.byOwner.set(owner, n);
        this.byAddress.set(n, held);
        throw err;
      }
      return this.describe(n, held);
    });
  }

  /** Releases whatever owner holds `address`; returns the allocation or undefined. */
  async releaseAddress(address: string): Promise<Allocation | undefined> {
    const owner = this.ownerOf(address);
    return owner === undefined ? undefined : this.release(owner);
  }

  get(owner: string): Allocation | undefined {
    const n = this.byOwner.get(owner);
    return n === undefined ? undefined : this.describe(n, this.byAddress.get(n)!);
  }

  ownerOf(address: string): string | undefined {
    let n: number;
    try {
      n = parseIpv4Address(address);
    } catch {
      return undefined;
    }
    return this.byAddress.get(n)?.owner;
  }

  list(): Allocation[] {
    return [...this.byAddress].sort((a, b) => a[0] - b[0]).map(([n, h]) => this.describe(n, h));
  }

  /** Addresses still free for allocate() without a request. */
  available(): number {
    let used = 0;
    for (const n of this.byAddress.keys()) if (!this.isReserved(n)) used++;
    return this.lastHost - this.firstHost + 1 - this.reservedCount() - used;
  }
}
