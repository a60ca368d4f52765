/** Each pre-copy round of a migration: pages sent (left axis), dirty rate and bandwidth (MiB/s, right axis). */
import { useEffect, useRef } from "react";
import uPlot from "uplot";
import type { RoundReport } from "../../../src/migration/report.js";

const MiB = 1024 * 1024;

function toData(rounds: readonly RoundReport[]): uPlot.AlignedData {
  const sorted = [...rounds].sort((a, b) => a.round - b.round);
  return [sorted.map((r) => r.round), sorted.map((r) => r.pages), sorted.map((r) => r.dirtyBytesPerSec / MiB), sorted.map((r) => r.bandwidthBytesPerSec / MiB)];
}

export function MigrationChart({ rounds }: { rounds: readonly RoundReport[] }): React.JSX.Element {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | undefined>(undefined);

  useEffect(() => {
    const el = box.current;
    if (el === null) return;
    const width = (): number => Math.max(240, Math.floor(el.clientWidth));
    const bars = uPlot.paths.bars?.({ size: [0.6, 48] });
    const opts: uPlot.Options = {
      width: width(),
      height: 220,
      scales: { x: { time: false, range: (_u, min, max) => (Number.isFinite(min) && Number.isFinite(max) ? [min - 0.5, max + 0.5] : [0, 1]) }, pages: { auto: true, range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] }, rate: { auto: true, range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [
        { label: "round", incrs: [1, 2, 5, 10], values: (_u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : "")) },
        { scale: "pages", label: "pages sent", size: 60 },
        { scale: "rate", label: "MiB/s", side: 1, grid: { show: false }, size: 60 },
      ],
      series: [
        { label: "round" },
        {
          label: "pages sent",
          scale: "pages",
          stroke: "#2f6fdf",
          fill: "rgba(47, 111, 223, 0.35)",
          width: 1,
          ...(bars !== undefined ? { paths: bars } : {}),
          points: { show: false },
          value: (_u, v) => (v === null ? "-" : String(Math.round(v))),
        },
        { label: "dirty rate MiB/s", scale: "rate", stroke: "#d9730d", width: 2, points: { show: true, size: 7 }, value: (_u, v) => (v === null ? "-" : v.toFixed(1)) },
        { label: "bandwidth MiB/s", scale: "rate", stroke: "#2e9d5b", width: 2, dash: [6, 4], points: { show: true, size: 7 }, value: (_u, v) => (v === null ? "-" : v.toFixed(1)) },
      ],
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
    };
    const u = new uPlot(opts, toData([]), el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: width(), height: 220 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = undefined;
    };
  }, []);

  useEffect(() => {
    plot.current?.setData(toData(rounds));
  }, [rounds]);

  return (
    <figure className="chart" data-testid="migration-chart" data-points={rounds.length}>
      <div ref={box} className="chart-box" />
      <figcaption className="muted">
        {rounds.length === 0 ? "Waiting for the first round…" : `${rounds.length} round${rounds.length === 1 ? "" : "s"}: pages sent, the guest's dirty rate and the bandwidth of each`}
      </figcaption>
    </figure>
  );
}
