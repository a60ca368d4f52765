import { useEffect, useState } from "react";
import { errorText } from "./api.js";

/** The entries of a filter form whose value is not "" (the "any" choice). */
export function chosen<T extends object>(filter: T): { [K in keyof T]?: Exclude<T[K], ""> } {
  return Object.fromEntries(Object.entries(filter).filter(([, v]) => v !== "")) as { [K in keyof T]?: Exclude<T[K], ""> };
}

/**
 * Rows fetched once per change of `deps` (a filter), kept in state so events can update them;
 * an answer that arrives after the filter changed again is dropped.
 */
export function useFetched<T>(load: () => Promise<T[]>, deps: readonly unknown[]): { rows: T[]; setRows: React.Dispatch<React.SetStateAction<T[]>>; error: string | undefined; loading: boolean } {
  const [rows, setRows] = useState<T[]>([]);
  const [error, setError] = useState<string | undefined>();
  const [loading, setLoading] = useState(true);
  useEffect(() => {
    let current = true;
    setLoading(true);
    load().then(
      (r) => {
        if (!current) return;
        setRows(r);
        setError(undefined);
        setLoading(false);
      },
      (err: unknown) => {
        if (!current) return;
        setError(errorText(err));
        setLoading(false);
      },
    );
    return () => {
      current = false;
    };
  }, deps);
  return { rows, setRows, error, loading };
}
