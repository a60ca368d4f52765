import { HopError } from "../common/errors.js";

export class ImageBuildError extends HopError {
  constructor(message: string, cause?: unknown, code = "IMAGE_BUILD_FAILED") {
    super(code, `guest image build failed: ${message}`, { cause });
  }
}

/** A program or Debian package the builder needs is not on this machine. */
export class ImageToolMissingError extends ImageBuildError {
  constructor(program: string, debianPackage: string) {
    super(`'${program}' is not installed (Debian package ${debianPackage}; as root: apt-get install ${debianPackage})`, undefined, "IMAGE_TOOL_MISSING");
  }
}
