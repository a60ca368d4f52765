/** The end of a migration: total time, the pause and where it went, bytes, rounds. */
import type { DowntimeBreakdown, MigrationReport } from "../../../src/migration/report.js";
import { fmtBytes, fmtMs, fmtRate } from "../format.js";

const PARTS: { key: keyof DowntimeBreakdown; label: string; color: string }[] = [
  { key: "stopMs", label: "stop", color: "#7b8794" },
  { key: "finalCopyMs", label: "final copy", color: "#2f6fdf" },
  { key: "stateSaveMs", label: "state save", color: "#8e44ad" },
  { key: "transferMs", label: "transfer", color: "#d9730d" },
  { key: "restoreMs", label: "restore", color: "#2e9d5b" },
  { key: "resumeMs", label: "resume", color: "#c0392b" },
];

export function MigrationReportView({ report }: { report: MigrationReport }): React.JSX.Element {
  const total = PARTS.reduce((s, p) => s + report.downtime[p.key], 0);
  return (
    <section className="report" data-testid="migration-report" aria-label="Migration report">
      <h3>
        {report.mode} migration: {report.from} → {report.to}
      </h3>
      <dl className="kv report-kv">
        <dt>Total time</dt>
        <dd data-testid="report-total">{fmtMs(report.totalMs)}</dd>
        <dt>Pause</dt>
        <dd data-testid="report-pause">{report.mode === "cold" ? "- (the VM was off)" : fmtMs(report.downtimeMs)}</dd>
        <dt>Bytes</dt>
        <dd data-testid="report-bytes">
          {fmtBytes(report.bytes)} <span className="muted">({report.bytes.toLocaleString("en-US")} B, {report.pages.toLocaleString("en-US")} pages)</span>
        </dd>
        <dt>Rounds</dt>
        <dd data-testid="report-rounds">{report.rounds.length}</dd>
        {report.stopReason !== undefined ? (
          <>
            <dt>Stopped because</dt>
            <dd>{report.stopReason}</dd>
          </>
        ) : null}
        <dt>Throttle</dt>
        <dd>
          max {report.throttleMax} %, stunned {fmtMs(report.stunnedMs)}
        </dd>
      </dl>
      {report.mode !== "cold" ? (
        <>
          <h4>Pause breakdown</h4>
          <div className="stackbar" aria-hidden="true">
            {PARTS.map((p) => (total > 0 && report.downtime[p.key] > 0 ? <span key={p.key} style={{ flexGrow: report.downtime[p.key], background: p.color }} title={`${p.label} ${fmtMs(report.downtime[p.key])}`} /> : null))}
          </div>
          <ul className="breakdown" data-testid="report-breakdown">
            {PARTS.map((p) => (
              <li key={p.key}>
                <span className="swatch" style={{ background: p.color }} />
                {p.label} <strong>{fmtMs(report.downtime[p.key])}</strong>
              </li>
            ))}
          </ul>
        </>
      ) : null}
      {report.rounds.length > 0 ? (
        <>
          <h4>Rounds</h4>
          <div className="table-wrap">
            <table className="table rounds-table">
              <thead>
                <tr>
                  <th className="num">#</th>
                  <th className="num">Pages</th>
                  <th className="num">Bytes</th>
                  <th className="num">Time</th>
                  <th className="num">Bandwidth</th>
                  <th className="num">Dirty rate</th>
                  <th className="num">Left</th>
                  <th className="hide-narrow">Decision</th>
                </tr>
              </thead>
              <tbody>
                {report.rounds.map((r) => (
                  <tr key={r.round}>
                    <td className="num">{r.round}</td>
                    <td className="num">{r.pages}</td>
                    <td className="num">{fmtBytes(r.bytes)}</td>
                    <td className="num">{fmtMs(r.durationMs)}</td>
                    <td className="num">{fmtRate(r.bandwidthBytesPerSec)}</td>
                    <td className="num">{fmtRate(r.dirtyBytesPerSec)}</td>
                    <td className="num">{r.remainingPages}</td>
                    <td className="hide-narrow">{r.decision}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      ) : null}
    </section>
  );
}
