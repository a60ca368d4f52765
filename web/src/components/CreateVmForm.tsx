/** New VM: name, memory, optional host (else the manager places it), start at once. */
import { useState } from "react";
import type { ClusterVmCreateRequest, HostInfo } from "../../../src/cluster/api-types.js";
import { errorText } from "../api.js";
import { vmHref } from "../route.js";
import { useStore } from "../store.js";

export function CreateVmForm({ hosts }: { hosts: readonly HostInfo[] }): React.JSX.Element {
  const store = useStore();
  const [name, setName] = useState("");
  const [memory, setMemory] = useState(128);
  const [host, setHost] = useState("");
  const [start, setStart] = useState(true);
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string; vm?: string } | undefined>();
  const usable = hosts.filter((h) => h.connection === "connected" && h.maintenance === "none");

  const submit = async (): Promise<void> => {
    setBusy(true);
    setResult(undefined);
    const req: ClusterVmCreateRequest = { name: name.trim(), memoryMiB: memory, start, ...(host !== "" ? { host } : {}) };
    try {
      const vm = await store.api.create(req);
      store.upsertVm(vm);
      setResult({ ok: true, text: `${vm.name} created on ${vm.host}${start ? ` (${vm.state})` : ""}`, vm: vm.name });
      setName("");
    } catch (err) {
      setResult({ ok: false, text: errorText(err) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <form
      className="create-vm"
      aria-label="Create a VM"
      onSubmit={(e) => {
        e.preventDefault();
        void submit();
      }}
    >
      <label className="field">
        <span>Name</span>
        <input name="name" value={name} onChange={(e) => setName(e.target.value)} placeholder="web1" pattern="[a-z0-9][a-z0-9\-]{0,62}" title="a-z, 0-9 and '-', starting with a letter or digit" required />
      </label>
      <label className="field narrow">
        <span>Memory (MiB)</span>
        <input name="memoryMiB" type="number" min={96} max={2048} step={4} value={memory} onChange={(e) => setMemory(Number(e.target.value))} required />
      </label>
      <label className="field">
        <span>Host</span>
        <select name="host" value={host} onChange={(e) => setHost(e.target.value)}>
          <option value="">any (the manager places it)</option>
          {usable.map((h) => (
            <option key={h.name} value={h.name}>
              {h.name} ({h.capacity.memoryMiB - h.reservedMiB} MiB free)
            </option>
          ))}
        </select>
      </label>
      <label className="check">
        <input name="start" type="checkbox" checked={start} onChange={(e) => setStart(e.target.checked)} />
        <span>start</span>
      </label>
      <button type="submit" className="primary" disabled={busy || name.trim() === ""}>
        {busy ? "Creating…" : "Create VM"}
      </button>
      {result !== undefined ? (
        <p className={result.ok ? "ok form-result" : "error form-result"} role={result.ok ? "status" : "alert"} data-testid="create-result">
          {result.vm !== undefined ? <a href={vmHref(result.vm)}>{result.text}</a> : result.text}
        </p>
      ) : null}
    </form>
  );
}
