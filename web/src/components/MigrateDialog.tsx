/**
 * Migrate a VM: pick the mode (live, quick, cold, each with what it needs) and a target host
 * (hosts that are down, disconnected or in maintenance are not offered), then watch the rounds
 * on a live chart from `migration.progress` events, and read the report at the end. Cancel
 * while it runs.
 */
import { useCallback, useEffect, useRef, useState } from "react";
import type { ClusterVm, HostInfo, TaskRow } from "../../../src/cluster/api-types.js";
import type { ClusterEvent } from "../../../src/cluster/types.js";
import type { MigrationMode, MigrationProgress, MigrationReport, RoundReport } from "../../../src/migration/report.js";
import { errorText } from "../api.js";
import { isTaskRow, useCluster, useClusterEvents, useStore } from "../store.js";
import { MigrationChart } from "./MigrationChart.js";
import { MigrationReportView } from "./MigrationReportView.js";
import { ErrorNote } from "./Panel.js";

type VmState = ClusterVm["state"];

interface ModeInfo {
  mode: MigrationMode;
  title: string;
  what: string;
  needs: readonly VmState[];
  needsText: string;
}

export const MODES: readonly ModeInfo[] = [
  {
    mode: "live",
    title: "Live",
    what: "Copies memory in rounds while the guest runs, then pauses it for a few milliseconds to send the rest; connections survive.",
    needs: ["running"],
    needsText: "a running VM",
  },
  {
    mode: "quick",
    title: "Quick",
    what: "Pauses the guest, saves its state to the shared datastore and restores it on the target (a pause of a fraction of a second).",
    needs: ["running", "paused"],
    needsText: "a running (or paused) VM",
  },
  {
    mode: "cold",
    title: "Cold",
    what: "Hands a powered-off VM's definition and disk over to the target; nothing runs meanwhile.",
    needs: ["stopped", "defined", "crashed"],
    needsText: "a stopped VM",
  },
];

/** Why a host is not offered as a target for `vm` in `mode` (undefined: it is offered). */
export function hostUnavailable(h: HostInfo, vm: ClusterVm, mode: MigrationMode): string | undefined {
  if (h.name === vm.host) return "the VM is already there";
  if (h.connection !== "connected") return h.connection;
  if (h.maintenance !== "none") return h.maintenance === "in" ? "in maintenance" : "entering maintenance";
  const free = h.capacity.memoryMiB - h.reservedMiB;
  if (mode !== "cold" && free < vm.config.memoryMiB) return `${free} MiB free, the VM needs ${vm.config.memoryMiB} MiB`;
  return undefined;
}

function reportOf(t: TaskRow): MigrationReport | undefined {
  const r = t.result as { report?: MigrationReport } | undefined;
  return r?.report;
}

type Stage = "choose" | "running" | "done" | "failed";

export function MigrateDialog({ vm, onClose }: { vm: ClusterVm; onClose: () => void }): React.JSX.Element {
  const store = useStore();
  const c = useCluster();
  const [mode, setMode] = useState<MigrationMode>(() => MODES.find((m) => m.needs.includes(vm.state))?.mode ?? "live");
  const [to, setTo] = useState("");
  const [stage, setStage] = useState<Stage>("choose");
  const [task, setTask] = useState<TaskRow | undefined>();
  const [rounds, setRounds] = useState<RoundReport[]>([]);
  const [phase, setPhase] = useState<string>("");
  const [report, setReport] = useState<MigrationReport | undefined>();
  const [error, setError] = useState<string | undefined>();
  const [cancelling, setCancelling] = useState(false);
  /** Rounds received as live events (the report brings them all again at the end). */
  const [liveRounds, setLiveRounds] = useState(0);
  const [bandwidth, setBandwidth] = useState("");
  const [downtimeTarget, setDowntimeTarget] = useState("");
  const taskId = useRef<string | undefined>(undefined);
  const stageRef = useRef<Stage>("choose");
  const dialog = useRef<HTMLDivElement>(null);

  const modeInfo = MODES.find((m) => m.mode === mode) ?? MODES[0]!;
  const modeOk = modeInfo.needs.includes(vm.state);
  const offered = c.hosts.filter((h) => hostUnavailable(h, vm, mode) === undefined);
  const notOffered = c.hosts.filter((h) => h.name !== vm.host && hostUnavailable(h, vm, mode) !== undefined);

  // Keep the chosen host valid as hosts change (a host going down disappears from the choice).
  const offeredNames = offered.map((h) => h.name).join(",");
  useEffect(() => {
    if (stage === "running") return;
    const names = offeredNames === "" ? [] : offeredNames.split(",");
    if (!names.includes(to)) setTo(names[0] ?? "");
  }, [stage, to, offeredNames]);

  const setStageBoth = (s: Stage): void => {
    stageRef.current = s;
    setStage(s);
  };

  /** A task row of our migration (from the POST answer, an event, or the store). */
  const consider = useCallback((t: TaskRow): void => {
    if (t.id !== taskId.current) return;
    setTask(t);
    if (t.state === "succeeded") {
      const r = reportOf(t);
      if (r !== undefined) {
        setReport(r);
        setRounds(r.rounds);
      }
      setPhase("done");
      setStageBoth("done");
    } else if (t.state === "failed" || t.state === "cancelled") {
      setError(t.error !== undefined ? `${t.error.message} (${t.error.code})` : `the migration was ${t.state}`);
      setStageBoth("failed");
    }
  }, []);

  useClusterEvents((ev: ClusterEvent) => {
    if (stageRef.current !== "running" || ev.vm !== vm.name) return;
    if (ev.type === "migration.progress") {
      // Progress may arrive before the POST answers with the task id: take what concerns this VM.
      if (ev.taskId !== undefined && taskId.current !== undefined && ev.taskId !== taskId.current) return;
      const p = ev.data as MigrationProgress | undefined;
      if (p === undefined) return;
      setPhase(p.phase);
      const round = p.round;
      if (round !== undefined) {
        setRounds((rs) => [...rs.filter((r) => r.round !== round.round), round].sort((a, b) => a.round - b.round));
        setLiveRounds((n) => n + 1);
      }
    } else if (ev.type === "task.updated" && isTaskRow(ev.data)) {
      consider(ev.data);
    }
  });

  const start = async (): Promise<void> => {
    setError(undefined);
    setRounds([]);
    setLiveRounds(0);
    setReport(undefined);
    setPhase("submitting");
    setStageBoth("running");
    try {
      const bw = Number(bandwidth);
      const dt = Number(downtimeTarget);
      const t = await store.api.startMigration(vm.name, {
        to,
        mode,
        ...(mode !== "cold" && bandwidth.trim() !== "" && bw > 0 ? { bandwidth: Math.round(bw * 1024 * 1024) } : {}),
        ...(mode === "live" && downtimeTarget.trim() !== "" && dt > 0 ? { downtimeTargetMs: Math.round(dt) } : {}),
      });
      taskId.current = t.id;
      store.upsertTask(t);
      setTask(t);
      // The task may have ended before its answer got here.
      const known = store.getSnapshot().tasks.find((x) => x.id === t.id);
      consider(known !== undefined && known.endedAt !== undefined ? known : t);
    } catch (err) {
      setError(errorText(err));
      setStageBoth("failed");
    }
  };

  const cancel = async (): Promise<void> => {
    if (taskId.current === undefined) return;
    setCancelling(true);
    try {
      consider(await store.api.cancelTask(taskId.current));
    } catch (err) {
      setError(errorText(err));
    } finally {
      setCancelling(false);
    }
  };

  useEffect(() => {
    dialog.current?.focus();
    const onKey = (e: KeyboardEvent): void => {
      if (e.key === "Escape") onClose();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);

  const running = stage === "running";
  return (
    <div className="modal-backdrop" onMouseDown={(e) => e.target === e.currentTarget && !running && onClose()}>
      <div className="modal" role="dialog" aria-modal="true" aria-labelledby="migrate-title" tabIndex={-1} ref={dialog} data-testid="migrate-dialog" data-stage={stage} data-live-rounds={liveRounds}>
        <header className="modal-head">
          <h2 id="migrate-title">
            Migrate {vm.name} <span className="muted">from {vm.host} ({vm.state})</span>
          </h2>
          <button type="button" className="link-button" onClick={onClose} aria-label="Close">
            ✕
          </button>
        </header>

        {stage === "choose" || (stage === "failed" && task === undefined) ? (
          <form
            className="migrate-form"
            onSubmit={(e) => {
              e.preventDefault();
              void start();
            }}
          >
            <fieldset className="modes">
              <legend>Mode</legend>
              {MODES.map((m) => {
                const ok = m.needs.includes(vm.state);
                return (
                  <label key={m.mode} className={`mode${ok ? "" : " disabled"}`}>
                    <input type="radio" name="mode" value={m.mode} checked={mode === m.mode} onChange={() => setMode(m.mode)} disabled={!ok} />
                    <span>
                      <strong>{m.title}</strong> <span className="muted">(needs {m.needsText})</span>
                      <br />
                      <span className="small-text">{m.what}</span>
                    </span>
                  </label>
                );
              })}
            </fieldset>
            {!modeOk ? (
              <p className="error" role="alert">
                {modeInfo.title} migration needs {modeInfo.needsText}; {vm.name} is {vm.state}.
              </p>
            ) : null}
            <label className="field">
              <span>Target host</span>
              <select name="to" value={to} onChange={(e) => setTo(e.target.value)} data-testid="migrate-target">
                {offered.length === 0 ? <option value="">no host can take it</option> : null}
                {offered.map((h) => (
                  <option key={h.name} value={h.name}>
                    {h.name} — {h.capacity.memoryMiB - h.reservedMiB} MiB free, {h.vms.length} VM{h.vms.length === 1 ? "" : "s"}
                  </option>
                ))}
              </select>
            </label>
            {notOffered.length > 0 ? (
              <p className="muted small-text" data-testid="not-offered">
                Not offered:{" "}
                {notOffered.map((h, i) => (
                  <span key={h.name} data-host={h.name}>
                    {i > 0 ? "; " : ""}
                    {h.name} ({hostUnavailable(h, vm, mode)})
                  </span>
                ))}
              </p>
            ) : null}
            {mode !== "cold" ? (
              <details className="advanced">
                <summary>Limits</summary>
                <div className="advanced-fields">
                  <label className="field">
                    <span>Bandwidth limit (MiB/s, empty: none)</span>
                    <input name="bandwidth" type="number" min={1} step={1} value={bandwidth} onChange={(e) => setBandwidth(e.target.value)} />
                  </label>
                  {mode === "live" ? (
                    <label className="field">
                      <span>Pause to aim for (ms, default 30)</span>
                      <input name="downtimeTargetMs" type="number" min={1} max={60000} step={1} value={downtimeTarget} onChange={(e) => setDowntimeTarget(e.target.value)} />
                    </label>
                  ) : null}
                </div>
              </details>
            ) : null}
            <ErrorNote error={error} testId="migrate-error" />
            <div className="modal-actions">
              <button type="button" onClick={onClose}>
                Close
              </button>
              <button type="submit" className="primary" disabled={!modeOk || to === ""} data-testid="migrate-start">
                Migrate to {to === "" ? "…" : to}
              </button>
            </div>
          </form>
        ) : (
          <div className="migrate-run">
            <p className="run-status" data-testid="migrate-status">
              {stage === "running" ? (
                <>
                  <span className="spinner" aria-hidden="true" /> {mode} migration to {to}: {phase === "" ? "starting" : phase}
                  {task?.message !== undefined ? <span className="muted"> — {task.message}</span> : null}
                </>
              ) : stage === "done" ? (
                <span className="ok">Done: {vm.name} runs on {report?.to ?? to}.</span>
              ) : (
                <span className="error">The migration did not complete; {vm.name} carries on where it was.</span>
              )}
            </p>
            {mode !== "cold" && !(stage === "failed" && rounds.length === 0) ? <MigrationChart rounds={rounds} /> : null}
            <ErrorNote error={error} testId="migrate-error" />
            {report !== undefined ? <MigrationReportView report={report} /> : null}
            <div className="modal-actions">
              {running ? (
                <button type="button" className="danger" onClick={() => void cancel()} disabled={cancelling || taskId.current === undefined} data-testid="migrate-cancel">
                  {cancelling ? "Cancelling…" : "Cancel migration"}
                </button>
              ) : null}
              {stage === "failed" ? (
                <button
                  type="button"
                  onClick={() => {
                    taskId.current = undefined;
                    setTask(undefined);
                    setError(undefined);
                    setStageBoth("choose");
                  }}
                >
                  Try again
                </button>
              ) : null}
              <button type="button" onClick={onClose}>
                {running ? "Hide (it carries on)" : "Close"}
              </button>
            </div>
          </div>
        )}
      </div>
    </div>
  );
}
