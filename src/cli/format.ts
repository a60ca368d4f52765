/** Tiny text formatting helpers for human CLI output. */

/** Left-aligned columns separated by two spaces; the last column is not padded. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [headers, ...rows];
  const widths = headers.map((_, col) => Math.max(...all.map((r) => displayWidth(r[col] ?? ""))));
  return all
    .map((r) =>
      headers
        .map((_, col) => {
          const cell = r[col] ?? "";
          return col === headers.length - 1 ? cell : cell + " ".repeat((widths[col] ?? 0) - displayWidth(cell));
        })
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** "key:  value" lines with the values aligned; pairs whose value is undefined are left out. */
export function keyValues(pairs: readonly (readonly [string, string | undefined])[]): string {
  const shown = pairs.filter((p): p is readonly [string, string] => p[1] !== undefined);
  const width = Math.max(0, ...shown.map(([k]) => k.length + 1));
  return shown.map(([k, v]) => `${`${k}:`.padEnd(width)}  ${v}`).join("\n");
}

/** Length on screen, ignoring ANSI escape sequences. */
function displayWidth(s: string): number {
  // eslint-disable-next-line no-control-regex
  return [...s.replace(/\x1b\[[0-9;]*m/g, "")].length;
}

/** "1.2 s" / "340 ms". */
export function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

/** "5s ago", "3m ago", "2h ago", "4d ago" for an ISO time; "-" when absent or unparsable. */
export function formatAgo(iso: string | undefined, now: number = Date.now()): string {
  if (iso === undefined) return "-";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "-";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172_800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86_400)}d ago`;
}

/** "512 MiB", "1.5 GiB" (a size given in MiB). */
export function formatMiB(mib: number): string {
  return mib >= 1024 ? `${(mib / 1024).toFixed(1).replace(/\.0$/, "")} GiB` : `${Math.round(mib)} MiB`;
}
