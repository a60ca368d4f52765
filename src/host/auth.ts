import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { FastifyReply, FastifyRequest } from "fastify";
import { HopError } from "../common/errors.js";

/** A fresh host token: 32 random bytes as hex. */
export function generateToken(): string {
  return randomBytes(32).toString("hex");
}

/**
 * Constant-time token comparison. Both sides are hashed first so that timingSafeEqual gets
 * equal-length inputs and the length of the real token does not leak either.
 */
export function tokensEqual(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given, "utf8").digest();
  const b = createHash("sha256").update(expected, "utf8").digest();
  return timingSafeEqual(a, b);
}

export class AuthError extends HopError {
  constructor(code: "AUTH_REQUIRED" | "AUTH_INVALID", message: string) {
    super(code, message, { status: 401 });
  }
}

function isWebSocketUpgrade(req: FastifyRequest): boolean {
  return req.headers.upgrade?.toLowerCase() === "websocket";
}

/**
 * The token a request carries: `Authorization: Bearer <token>`, or for WebSocket upgrades
 * also `?token=<token>` (browsers cannot set headers on a WebSocket).
 */
export function requestToken(req: FastifyRequest): string | undefined {
  const header = req.headers.authorization;
  if (header !== undefined) {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    if (m?.[1] !== undefined) return m[1];
  }
  if (isWebSocketUpgrade(req)) {
    const q = (req.query as Record<string, unknown> | undefined)?.["token"];
    if (typeof q === "string" && q !== "") return q;
  }
  return undefined;
}

/** Throws AUTH_REQUIRED / AUTH_INVALID (401) unless the request carries `token`. */
export function checkAuth(req: FastifyRequest, token: string): void {
  const given = requestToken(req);
  if (given === undefined) {
    const hasHeader = req.headers.authorization !== undefined;
    throw new AuthError(
      "AUTH_REQUIRED",
      hasHeader ? "the Authorization header must be 'Bearer <token>'" : "this host agent needs a token: send 'Authorization: Bearer <token>'",
    );
  }
  if (!tokensEqual(given, token)) throw new AuthError("AUTH_INVALID", "the token is not valid for this host agent");
}

/** A fastify onRequest hook enforcing the bearer token on every request, HTTP and WebSocket. */
export function authHook(token: string): (req: FastifyRequest, reply: FastifyReply) => Promise<void> {
  if (token === "") throw new HopError("TOKEN_EMPTY", "the host agent token must not be empty");
  return async (req, reply) => {
    try {
      checkAuth(req, token);
    } catch (err) {
      void reply.header("www-authenticate", 'Bearer realm="hopvisor"');
      throw err;
    }
  };
}

/** Removes a `token=` query parameter from a URL before it is logged. */
export function redactUrl(url: string): string {
  return url.replace(/([?&]token=)[^&]*/gi, "$1[redacted]");
}
