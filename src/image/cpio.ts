/** A minimal writer for the "newc" cpio format the Linux kernel unpacks as an initramfs. */
export interface CpioEntry {
  name: string;
  /** File type and permission bits, e.g. 0o100755 for an executable, 0o040755 for a directory, 0o120777 for a symlink. */
  mode: number;
  data?: Buffer;
  /** Device number for character/block device nodes. */
  rdev?: [number, number];
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, "0");
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const add = (name: string, mode: number, data: Buffer, rdev: [number, number] = [0, 0]): void => {
    const nameBuf = Buffer.from(name + "\0", "utf8");
    const header =
      "070701" +
      [ino++, mode, 0, 0, (mode & 0o170000) === 0o040000 ? 2 : 1, 0, data.length, 0, 0, rdev[0], rdev[1], nameBuf.length, 0].map(hex8).join("");
    parts.push(Buffer.from(header, "ascii"), nameBuf, pad4(110 + nameBuf.length), data, pad4(data.length));
  };
  for (const e of entries) add(e.name, e.mode, e.data ?? Buffer.alloc(0), e.rdev);
  add("TRAILER!!!", 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}
