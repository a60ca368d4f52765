/**
 * The cluster manager's inventory store: the interface and its two implementations.
 * (The conformance suite, suite.ts, is for tests and is imported from there directly.)
 */
export type { EventFilter, InventoryStore, NewEvent, TaskFilter } from "./store.js";
export { MemoryStore } from "./memory.js";
export { SqliteStore, type SqliteStoreOptions } from "./sqlite.js";
