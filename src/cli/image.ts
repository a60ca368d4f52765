/** `hop image build`: build (or find in the cache) the guest kernel + initramfs. */
import { defaultCacheDir } from "../common/paths.js";
import cliProgress from "cli-progress";
import type { Command } from "commander";
import { keyValues } from "./format.js";
import { output, withJsonOption } from "./common.js";

interface Progress {
  step: string;
  done: number;
  total: number;
}

/** A progress reporter: one bar per step on a terminal, plain lines otherwise. */
export function progressReporter(tty: boolean, out: NodeJS.WriteStream): { update(p: Progress): void; stop(): void } {
  if (tty) {
    let bar: cliProgress.SingleBar | undefined;
    let step: string | undefined;
    return {
      update(p) {
        if (p.step !== step || bar === undefined) {
          bar?.stop();
          step = p.step;
          bar = new cliProgress.SingleBar(
            { format: "{step} [{bar}] {value}/{total}", stream: out, hideCursor: true, clearOnComplete: false },
            cliProgress.Presets.shades_classic,
          );
          bar.start(Math.max(p.total, 1), p.done, { step: p.step.padEnd(24) });
          return;
        }
        bar.setTotal(Math.max(p.total, 1));
        bar.update(p.done, { step: p.step.padEnd(24) });
      },
      stop() {
        bar?.stop();
      },
    };
  }
  let step: string | undefined;
  let finished = false;
  return {
    // A line when a step starts and one when it completes; no flood of intermediate counts.
    update(p) {
      const complete = p.total > 0 && p.done >= p.total;
      if (p.step !== step) {
        step = p.step;
        finished = complete;
        out.write(complete ? `${p.step}: done (${p.done}/${p.total})\n` : `${p.step}: ${p.done}/${p.total}\n`);
      } else if (complete && !finished) {
        finished = true;
        out.write(`${p.step}: done (${p.done}/${p.total})\n`);
      }
    },
    stop() {},
  };
}

export function register(program: Command): void {
  const image = program.command("image").description("the guest image (kernel + initramfs)");

  withJsonOption(
    image
      .command("build")
      .description("build the guest image from Debian's packages and the engine's wasm module (v86 with a dirty-page log), or reuse the cached ones")
      .option("--refresh", "ask apt for newer packages (rebuilds if any input changed)"),
  ).action(async (opts: { refresh?: boolean; json?: boolean }) => {
    // Loaded here so that the other commands do not pull in the image builder.
    const { ensureImage } = await import("../image/index.js");
    const json = opts.json === true;
    const progress = progressReporter(!json && process.stdout.isTTY, json ? process.stderr : process.stdout);
    const img = await ensureImage({ refresh: opts.refresh === true, onProgress: (p: Progress) => progress.update(p) }).finally(() => progress.stop());
    const { prepareEngine } = await import("../engine/index.js");
    const { prepareDeltaEncoder } = await import("../migration/index.js");
    const engine = await prepareEngine();
    await prepareDeltaEncoder(defaultCacheDir());
    output(opts, { ...img, engineWasm: engine }, () =>
      keyValues([
        ["image", img.dir],
        ["hash", img.hash],
        ["kernel", img.kernelVersion],
        ["engine", engine],
      ]),
    );
  });
}
