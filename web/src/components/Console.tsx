/**
 * The VM's serial console: xterm.js over the manager's console WebSocket, which follows the VM
 * across migrations. Keys typed in the terminal go to the guest's serial port.
 */
import { useEffect, useRef, useState } from "react";
import { Terminal } from "@xterm/xterm";
import { useStore } from "../store.js";

type Status = "connecting" | "connected" | "closed";

/** Close codes after which reconnecting is pointless (bad name, no such VM, VM destroyed). */
const FINAL_CLOSE = new Set([1000, 4400, 4404]);

export function Console({ vm }: { vm: string }): React.JSX.Element {
  const store = useStore();
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState<Status>("connecting");
  const [detail, setDetail] = useState("");

  useEffect(() => {
    const el = box.current;
    if (el === null) return;
    const term = new Terminal({
      cols: 80,
      rows: 24,
      scrollback: 5000,
      cursorBlink: true,
      fontSize: 13,
      fontFamily: "'DejaVu Sans Mono', 'Liberation Mono', ui-monospace, monospace",
      theme: { background: "#0f1720", foreground: "#d8dee9", cursor: "#9fd3ff" },
    });
    term.open(el);
    const encoder = new TextEncoder();
    let ws: WebSocket | undefined;
    let timer: number | undefined;
    let disposed = false;
    let attempts = 0;

    const connect = (): void => {
      const s = store.api.consoleSocket(vm);
      ws = s;
      setStatus("connecting");
      s.onopen = () => {
        // The manager replays the console's scrollback on every attach: start clean.
        if (attempts > 0) term.reset();
        attempts++;
        setStatus("connected");
        setDetail("");
      };
      s.onmessage = (m: MessageEvent) => {
        if (m.data instanceof ArrayBuffer) term.write(new Uint8Array(m.data));
        else if (typeof m.data === "string") term.write(m.data);
      };
      s.onclose = (e: CloseEvent) => {
        if (disposed || ws !== s) return;
        setStatus("closed");
        setDetail(e.reason !== "" ? e.reason : `connection closed (${e.code})`);
        if (!FINAL_CLOSE.has(e.code)) timer = window.setTimeout(connect, 2_000);
      };
    };
    const input = term.onData((d) => {
      if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(d));
    });
    connect();
    return () => {
      disposed = true;
      if (timer !== undefined) window.clearTimeout(timer);
      input.dispose();
      ws?.close(1000, "console closed");
      term.dispose();
    };
  }, [vm, store]);

  return (
    <div className="console" data-testid="console" data-status={status}>
      <div className="console-status">
        <span className={`dot dot-${status}`} aria-hidden="true" />
        {status === "connected" ? "connected: type here to reach the guest's serial port" : status === "connecting" ? "connecting…" : `disconnected: ${detail}`}
      </div>
      <div className="console-scroll">
        <div className="console-term" ref={box} />
      </div>
    </div>
  );
}
