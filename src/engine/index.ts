export { Engine, prepareEngine, DEFAULT_VGA_KIB, toArrayBuffer, type EngineOptions, type NicModel, type DiskBackend, type SavedClock } from "./engine.js";
export { ENGINE_VERSION } from "./internals.js";
export { EngineInitError, EngineSelfTestError, EngineStateError } from "./errors.js";
export { engineNow, setEngineNow, continueEngineClock } from "./clock.js";
