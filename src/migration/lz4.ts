/**
 * LZ4 block format (https://github.com/lz4/lz4/blob/dev/doc/lz4_Block_format.md), written here
 * for pages of guest RAM: a greedy single-pass compressor with a 4 KiB-entry hash table, and a
 * decompressor that checks every bound (its input comes from the network).
 *
 * A block is a series of sequences: token (high nibble literal length, low nibble match
 * length - 4; 15 means "more length bytes follow, each added, until one is not 255"), the
 * literals, a u16 LE offset back into the output, and the extra match length bytes. The last
 * sequence has literals only; the last 5 bytes are always literals and the last match starts at
 * least 12 bytes before the end.
 */

const MIN_MATCH = 4;
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const MAX_OFFSET = 65535;
const HASH_BITS = 12;
const HASH_SIZE = 1 << HASH_BITS;

/** Thrown by lz4DecompressBlock on malformed input. */
export class Lz4FormatError extends Error {
  constructor(message: string) {
    super(`invalid LZ4 block: ${message}`);
    this.name = "Lz4FormatError";
  }
}

// The hash table holds position + base; entries below `base` are from an earlier call, so the
// table needs no clearing between pages.
const table = new Int32Array(HASH_SIZE);
let base = 1;

function hash(v: number): number {
  return Math.imul(v, 2654435761) >>> (32 - HASH_BITS);
}

/** Worst-case compressed size of `n` input bytes. */
export function lz4CompressBound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

/**
 * Compresses `src` as one LZ4 block into `dest` starting at `destOff`, writing at most
 * `maxLen` bytes. Returns the compressed length, or -1 if it would not fit in `maxLen`.
 * Inputs up to 64 KiB use the whole window; longer inputs work but only match within 64 KiB.
 */
export function lz4CompressBlock(src: Uint8Array, dest: Uint8Array, destOff: number, maxLen: number): number {
  const n = src.length;
  const limit = destOff + Math.min(maxLen, dest.length - destOff);
  let op = destOff;
  let anchor = 0;
  if (base > 0x3fff0000 - n) {
    table.fill(0);
    base = 1;
  }
  const b = base;
  base += n + 1;

  if (n >= MF_LIMIT + 1) {
    const dv = new DataView(src.buffer, src.byteOffset, n);
    const matchLimit = n - LAST_LITERALS; // a match must end at or before this
    const startLimit = n - MF_LIMIT; // and start before this
    let ip = 0;
    let misses = 0;
    while (ip < startLimit) {
      const seq = dv.getInt32(ip, true);
      const h = hash(seq);
      const ref = table[h]! - b;
      table[h] = ip + b;
      if (ref >= 0 && ip - ref <= MAX_OFFSET && dv.getInt32(ref, true) === seq) {
        let mEnd = ip + MIN_MATCH;
        let r = ref + MIN_MATCH;
        while (mEnd + 4 <= matchLimit && dv.getInt32(mEnd, true) === dv.getInt32(r, true)) {
          mEnd += 4;
          r += 4;
        }
        while (mEnd < matchLimit && src[mEnd] === src[r]) {
          mEnd++;
          r++;
        }
        // Extend backwards over literals that also match.
        let start = ip;
        let refStart = ref;
        while (start > anchor && refStart > 0 && src[start - 1] === src[refStart - 1]) {
          start--;
          refStart--;
        }
        op = writeSequence(src, anchor, start - anchor, start - refStart, mEnd - start, dest, op, limit);
        if (op < 0) return -1;
        // Seed the table inside the match so the next match can find it.
        if (mEnd - 2 > ip) table[hash(dv.getInt32(mEnd - 2, true))] = mEnd - 2 + b;
        ip = mEnd;
        anchor = ip;
        misses = 0;
      } else {
        misses++;
        ip += 1 + (misses >> 5); // skip faster through incompressible data
      }
    }
  }
  // Last literals.
  const litLen = n - anchor;
  const need = 1 + extensionBytes(litLen) + litLen;
  if (op + need > limit) return -1;
  if (litLen >= 15) {
    dest[op++] = 0xf0;
    op = writeLengthExtension(dest, op, litLen - 15);
  } else {
    dest[op++] = litLen << 4;
  }
  dest.set(src.subarray(anchor, n), op);
  op += litLen;
  return op - destOff;
}

/** Bytes needed for a length field's extension (the part beyond the token's 15). */
function extensionBytes(len: number): number {
  return len >= 15 ? Math.floor((len - 15) / 255) + 1 : 0;
}

/** Writes a length's extension bytes (255 each, then the rest); returns the new offset. */
function writeLengthExtension(dest: Uint8Array, op: number, rest: number): number {
  while (rest >= 255) {
    dest[op++] = 255;
    rest -= 255;
  }
  dest[op++] = rest;
  return op;
}

function writeSequence(src: Uint8Array, litStart: number, litLen: number, offset: number, matchLen: number, dest: Uint8Array, op: number, limit: number): number {
  const ml = matchLen - MIN_MATCH;
  const need = 1 + extensionBytes(litLen) + litLen + 2 + extensionBytes(ml);
  if (op + need > limit) return -1;
  const tokenAt = op++;
  let token: number;
  if (litLen >= 15) {
    token = 0xf0;
    op = writeLengthExtension(dest, op, litLen - 15);
  } else {
    token = litLen << 4;
  }
  if (litLen > 0) {
    if (litLen < 16) for (let i = 0; i < litLen; i++) dest[op + i] = src[litStart + i]!;
    else dest.set(src.subarray(litStart, litStart + litLen), op);
    op += litLen;
  }
  dest[op++] = offset & 0xff;
  dest[op++] = offset >>> 8;
  if (ml >= 15) {
    token |= 15;
    op = writeLengthExtension(dest, op, ml - 15);
  } else {
    token |= ml;
  }
  dest[tokenAt] = token;
  return op;
}

/**
 * Decompresses one LZ4 block `src` into `dest[destOff, destOff + outLen)`. The block must
 * produce exactly `outLen` bytes; anything else (truncated input, offsets before the start,
 * output overflow, trailing bytes) throws Lz4FormatError.
 */
export function lz4DecompressBlock(src: Uint8Array, dest: Uint8Array, destOff: number, outLen: number): void {
  if (destOff < 0 || destOff + outLen > dest.length) throw new RangeError("lz4DecompressBlock: output range outside dest");
  const srcEnd = src.length;
  const outEnd = destOff + outLen;
  let ip = 0;
  let op = destOff;
  for (;;) {
    if (ip >= srcEnd) throw new Lz4FormatError("input ended before the last sequence");
    const token = src[ip++]!;
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (ip >= srcEnd) throw new Lz4FormatError("input ended inside a literal length");
        b = src[ip++]!;
        litLen += b;
      } while (b === 255);
    }
    if (ip + litLen > srcEnd) throw new Lz4FormatError("literals run past the input");
    if (op + litLen > outEnd) throw new Lz4FormatError("literals overflow the output");
    if (litLen > 0) {
      if (litLen <= 32) for (let i = 0; i < litLen; i++) dest[op + i] = src[ip + i]!;
      else dest.set(src.subarray(ip, ip + litLen), op);
      ip += litLen;
      op += litLen;
    }
    if (ip === srcEnd) break; // the last sequence has no match
    if (ip + 2 > srcEnd) throw new Lz4FormatError("input ended inside a match offset");
    const offset = src[ip]! | (src[ip + 1]! << 8);
    ip += 2;
    if (offset === 0 || offset > op - destOff) throw new Lz4FormatError(`match offset ${offset} points before the start of the output`);
    let matchLen = token & 15;
    if (matchLen === 15) {
      let b: number;
      do {
        if (ip >= srcEnd) throw new Lz4FormatError("input ended inside a match length");
        b = src[ip++]!;
        matchLen += b;
      } while (b === 255);
    }
    matchLen += MIN_MATCH;
    if (op + matchLen > outEnd) throw new Lz4FormatError("match overflows the output");
    let from = op - offset;
    if (offset >= matchLen && matchLen > 32) {
      dest.copyWithin(op, from, from + matchLen);
      op += matchLen;
    } else {
      // Short or overlapping (runs): byte by byte, as the format defines.
      const end = op + matchLen;
      while (op < end) dest[op++] = dest[from++]!;
    }
  }
  if (op !== outEnd) throw new Lz4FormatError(`block decodes to ${op - destOff} bytes, expected ${outLen}`);
}
