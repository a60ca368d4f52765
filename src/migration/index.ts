/** Live migration: wire protocol, sender/receiver state machines, convergence policy, dirty scanner, page codec. */
export {
  PROTOCOL_VERSION,
  FRAME_MAGIC,
  FRAME_HEADER_BYTES,
  MAX_PAYLOAD_BYTES,
  MAX_CONTROL_PAYLOAD_BYTES,
  PAGE_SIZE,
  DEVICE_CHUNK_BYTES,
  Command,
  PageEncoding,
  commandName,
  pageEncodingName,
  crc32,
  encodeFrame,
  encodeZeroPagesPayload,
  bitmapPopcount,
  frameHeader,
  FrameDecoder,
  encodeMessage,
  decodeMessage,
  encodePagesPayload,
  decodePagesPayload,
  errorFrame,
  authProof,
  verifyProof,
  newNonce,
  toMigrationError,
  MigrationError,
  MigrationProtocolError,
  MigrationRemoteError,
  MigrationAbortedError,
  MigrationStateError,
  MigrationOutcomeUnknownError,
  type MigrationErrorCode,
  type Frame,
  type Message,
  type PageEntry,
  type VmMigrationConfig,
} from "./protocol.js";
export { ReceiverStateMachine, RECEIVER_ACCEPTS, type ReceiverAction, type ReceiverExpect, type ReceiverOptions, type ReceiverStateName, type ReceiverStep } from "./receiver.js";
export { SenderStateMachine, SENDER_ACCEPTS, type SenderEvent, type SenderOptions, type SenderStateName, type SenderStep } from "./sender.js";
export { decideNextStep, nextThrottleStep, THROTTLE_STEPS, MAX_THROTTLE, POLICY_DEFAULTS, type PolicyDecision, type PolicyInput, type StopReason, type ThrottleReason } from "./policy.js";
export { changedChunks, DirtyTracker, isZeroPage, yieldToEventLoop, BLOCK_BYTES, type DirtyCallback, type ScanOptions } from "./dirty.js";
export { PageBatchWriter, applyZeroPages, encodePage, encodePageInto, applyPage, applyPages, deltaEncodeInto, deltaApply, type PageEncodeOptions, type BatchStats } from "./pages.js";
export { lz4CompressBlock, lz4DecompressBlock, lz4CompressBound, Lz4FormatError } from "./lz4.js";
export { FrameConnection } from "./transport.js";
export { LiveMigrationSource, LIVE_DEFAULTS, migrationHostAreaBytes, type SourceHooks, type SourceOutcome, type SourceParams } from "./source.js";
export { LiveMigrationTarget, type TargetHooks, type TargetParams, type TargetSwitchoverInfo } from "./target.js";
export { Stunner } from "./stun.js";
export type { Migratable, Pausable, Snapshottable } from "./vm.js";
export type { DowntimeBreakdown, LiveMigrationOptions, MigrationMode, MigrationProgress, MigrationReport, RoundReport } from "./report.js";
export { WasmDelta, prepareDeltaEncoder, DELTA_OUT_BYTES } from "./wasmdelta.js";
export { warmPageCodec } from "./warm.js";
