/** The sign-in page: the cluster token, checked against the manager before it is kept (sessionStorage). */
import { useState } from "react";
import { ErrorNote } from "../components/Panel.js";

export function Login({ error, onLogin }: { error: string | undefined; onLogin: (token: string) => Promise<void> }): React.JSX.Element {
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  return (
    <div className="login-page">
      <form
        className="login-card"
        onSubmit={(e) => {
          e.preventDefault();
          setBusy(true);
          void onLogin(token.trim()).finally(() => setBusy(false));
        }}
      >
        <h1>Hopvisor</h1>
        <p className="muted">Sign in to the cluster manager with the cluster token.</p>
        <label className="field">
          <span>Cluster token</span>
          <input type="password" name="token" autoComplete="current-password" value={token} onChange={(e) => setToken(e.target.value)} autoFocus required />
        </label>
        <ErrorNote error={error} testId="login-error" />
        <button type="submit" className="primary" disabled={busy || token.trim() === ""}>
          {busy ? "Checking…" : "Sign in"}
        </button>
        <p className="hint">The token is kept in this browser tab only, and sent with every API call.</p>
      </form>
    </div>
  );
}
