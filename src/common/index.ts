export { HopError, errorMessage } from "./errors.js";
export { packageRoot, defaultCacheDir } from "./paths.js";
export { createLogger, type Logger } from "./log.js";
export { withFileLock } from "./lock.js";
