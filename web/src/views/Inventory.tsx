/** The cluster at a glance: hosts with load and VMs, every VM, networks and datastores. */
import { CreateVmForm } from "../components/CreateVmForm.js";
import { HostCard } from "../components/HostCard.js";
import { StateBadge } from "../components/Badges.js";
import { vmHref } from "../route.js";
import { useCluster } from "../store.js";
import { Panel } from "../components/Panel.js";

export function Inventory(): React.JSX.Element {
  const c = useCluster();
  return (
    <div className="inventory">
      <Panel id="hosts-h" title="Hosts" count={c.hosts.length} className="hosts-panel">
        {c.loaded && c.hosts.length === 0 ? <p className="muted">No host has joined yet.</p> : null}
        <div className="host-grid">
          {c.hosts.map((h) => (
            <HostCard key={h.name} host={h} vms={c.vms} />
          ))}
        </div>
      </Panel>

      <Panel id="vms-h" title="Virtual machines" count={c.vms.length} className="vms-panel">
        <CreateVmForm hosts={c.hosts} />
        <div className="table-wrap">
          <table className="table vm-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>State</th>
                <th>Host</th>
                <th>IP</th>
                <th className="num">Memory</th>
                <th className="num hide-narrow">CPU</th>
              </tr>
            </thead>
            <tbody>
              {c.vms.map((v) => (
                <tr key={v.name} data-vm={v.name} data-host={v.host} data-state={v.state}>
                  <td>
                    <a href={vmHref(v.name)}>{v.name}</a>
                  </td>
                  <td>
                    <StateBadge state={v.state} />
                  </td>
                  <td>{v.host}</td>
                  <td className="mono">{v.config.ip ?? "-"}</td>
                  <td className="num">{v.config.memoryMiB} MiB</td>
                  <td className="num hide-narrow">{v.cpuPct !== undefined ? `${Math.round(v.cpuPct)} %` : "-"}</td>
                </tr>
              ))}
              {c.loaded && c.vms.length === 0 ? (
                <tr>
                  <td colSpan={6} className="muted">
                    No VMs yet: create one above.
                  </td>
                </tr>
              ) : null}
            </tbody>
          </table>
        </div>
      </Panel>

      <Panel id="net-h" title="Networks" count={c.networks.length}>
        {c.networks.length === 0 ? (
          <p className="muted">No virtual networks.</p>
        ) : (
          <div className="table-wrap">
            <table className="table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th className="num">VNI</th>
                  <th>Subnet</th>
                  <th>Gateway</th>
                </tr>
              </thead>
              <tbody>
                {c.networks.map((n) => (
                  <tr key={n.name}>
                    <td>{n.name}</td>
                    <td className="num">{n.vni}</td>
                    <td className="mono">{n.subnet}</td>
                    <td className="mono">{n.gateway ?? "-"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </Panel>

      <Panel id="ds-h" title="Datastores" count={c.datastores.length}>
        {c.datastores.length === 0 ? (
          <p className="muted">No datastores.</p>
        ) : (
          <ul className="plain-list">
            {c.datastores.map((d) => (
              <li key={d.id}>
                <span className="mono">{d.id}</span> <span className="muted">shared by {d.hosts.join(", ")}</span>
              </li>
            ))}
          </ul>
        )}
      </Panel>
    </div>
  );
}
