/** A list of events, newest first. */
import type { ClusterEvent } from "../../../src/cluster/api-types.js";
import { fmtTime } from "../format.js";
import { SeverityBadge } from "./Badges.js";

export function EventList({ events, empty = "No events." }: { events: readonly ClusterEvent[]; empty?: string }): React.JSX.Element {
  if (events.length === 0) return <p className="muted">{empty}</p>;
  return (
    <ol className="event-list">
      {events.map((e) => (
        <li key={e.id} className={`event sev-${e.severity}`} data-type={e.type} data-severity={e.severity}>
          <span className="event-time">{fmtTime(e.at)}</span>
          <SeverityBadge severity={e.severity} />
          <span className="event-type mono">{e.type}</span>
          <span className="event-msg">{e.message}</span>
        </li>
      ))}
    </ol>
  );
}
