import { HopError } from "../common/errors.js";

export class EngineInitError extends HopError {
  constructor(message: string, cause?: unknown) {
    super("ENGINE_INIT_FAILED", `engine start-up failed: ${message}`, { cause });
  }
}

export class EngineSelfTestError extends HopError {
  constructor(message: string) {
    super("ENGINE_SELF_TEST_FAILED", `engine self-test failed (is v86 the pinned version?): ${message}`);
  }
}

export class EngineStateError extends HopError {
  constructor(step: "save" | "restore", message: string, cause?: unknown) {
    super(step === "save" ? "ENGINE_STATE_SAVE_FAILED" : "ENGINE_STATE_RESTORE_FAILED", `state ${step} failed: ${message}`, { cause });
  }
}
