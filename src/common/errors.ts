/**
 * One error class per failure, each with a stable `code` (as undici does).
 * Errors are named after the step that failed and keep their cause.
 */
export class HopError extends Error {
  readonly code: string;
  /** HTTP status the API maps this error to. */
  readonly status: number;
  constructor(code: string, message: string, options?: { cause?: unknown; status?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = options?.status ?? 500;
  }
  toJSON(): { code: string; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** Wraps any thrown value into a message string, for logs and error chains. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
