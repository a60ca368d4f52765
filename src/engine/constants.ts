/**
 * Engine facts the host agent needs without loading the emulator itself (v86 is only loaded in
 * VM processes: importing it in the host agent would cost memory and make every fork slower).
 */
export { ENGINE_VERSION } from "./internals.js";

/** VGA memory of every VM (KiB): enough for the text console, small in saved states. */
export const DEFAULT_VGA_KIB = 256;
