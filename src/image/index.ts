export { ensureImage, recipeHash, type GuestImage, type ImageManifest, type BuildProgress, type EnsureImageOptions } from "./build.js";
export { kernelCmdline, BASE_CMDLINE } from "./cmdline.js";
export { ImageBuildError, ImageToolMissingError } from "./errors.js";
export { writeCpio, type CpioEntry } from "./cpio.js";
