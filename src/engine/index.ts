export { Engine, DEFAULT_VGA_KIB, type EngineOptions, type NicModel, type DiskBackend } from "./engine.js";
export { ENGINE_VERSION } from "./internals.js";
export { EngineInitError, EngineSelfTestError, EngineStateError } from "./errors.js";
export { engineNow, setEngineNow, continueEngineClock } from "./clock.js";
