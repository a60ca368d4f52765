/** Tasks: kind, target, state, progress, message or error, duration; running ones can be cancelled. */
import { useState } from "react";
import type { TaskRow } from "../../../src/cluster/api-types.js";
import { errorText } from "../api.js";
import { fmtDuration, fmtTime } from "../format.js";
import { vmHref } from "../route.js";
import { useStore } from "../store.js";
import { TaskStateBadge } from "./Badges.js";
import { ErrorNote } from "./Panel.js";

function target(t: TaskRow): string {
  const to = t.params["to"];
  const from = t.params["from"];
  if (t.kind === "vm.migrate" && typeof to === "string") return `${typeof from === "string" ? from : t.host ?? "?"} → ${to}${typeof t.params["mode"] === "string" ? ` (${t.params["mode"]})` : ""}`;
  return t.host ?? "";
}

export function TaskTable({ tasks, showVm = true, empty = "No tasks." }: { tasks: readonly TaskRow[]; showVm?: boolean; empty?: string }): React.JSX.Element {
  const store = useStore();
  const [error, setError] = useState<string | undefined>();
  const cancel = async (id: string): Promise<void> => {
    try {
      store.upsertTask(await store.api.cancelTask(id));
      setError(undefined);
    } catch (err) {
      setError(errorText(err));
    }
  };
  return (
    <>
      <ErrorNote error={error} />
      <div className="table-wrap">
        <table className="table task-table">
          <thead>
            <tr>
              <th>Created</th>
              <th>Kind</th>
              {showVm ? <th>VM</th> : null}
              <th>Host / move</th>
              <th>State</th>
              <th className="hide-narrow">Message</th>
              <th className="num">Duration</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {tasks.map((t) => (
              <tr key={t.id} data-task={t.id} data-kind={t.kind} data-state={t.state} data-vm={t.vm ?? ""} data-host={t.host ?? ""} data-parent={t.parentId ?? ""} className={t.parentId !== undefined ? "child-task" : undefined}>
                <td className="nowrap">{fmtTime(t.createdAt)}</td>
                <td className="nowrap">
                  {t.parentId !== undefined ? <span className="muted">↳ </span> : null}
                  {t.kind}
                </td>
                {showVm ? <td>{t.vm !== undefined ? <a href={vmHref(t.vm)}>{t.vm}</a> : ""}</td> : null}
                <td className="nowrap">{target(t)}</td>
                <td>
                  <TaskStateBadge state={t.state} />
                  {t.state === "running" ? <progress max={1} value={t.progress} /> : null}
                </td>
                <td className="hide-narrow msg">{t.error !== undefined ? <span className="error-text">{`${t.error.message} (${t.error.code})`}</span> : (t.message ?? "")}</td>
                <td className="num nowrap">{fmtDuration(t.startedAt ?? t.createdAt, t.endedAt)}</td>
                <td>
                  {(t.state === "running" || t.state === "queued") && !t.cancelRequested ? (
                    <button type="button" className="small" onClick={() => void cancel(t.id)}>
                      Cancel
                    </button>
                  ) : null}
                </td>
              </tr>
            ))}
            {tasks.length === 0 ? (
              <tr>
                <td colSpan={8} className="muted">
                  {empty}
                </td>
              </tr>
            ) : null}
          </tbody>
        </table>
      </div>
    </>
  );
}
