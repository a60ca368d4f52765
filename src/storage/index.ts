export { FileDisk, DiskIoError } from "./disk.js";
export { createDataDisk, DiskCreateError } from "./create.js";
export {
  type StateHeader,
  StateFileError,
  STATE_FORMAT_VERSION,
  encodeStateFile,
  encodeRamPagesPayload,
  decodeRamPagesPayload,
  decodeStateFile,
  writeStateFile,
  readStateFile,
  readStateFileIntoRam,
  readStateHeader,
  checkCompatible,
} from "./statefile.js";
export { Datastore } from "./datastore.js";
