/**
 * Imported first by a VM process (src/vm/main.ts), before any module defines a schema: zod
 * decides when a schema is defined whether to compile a fast path for it (new Function, on its
 * first parse). In a VM process that first parse came during a live migration, with the guest
 * waiting: the source's first parse of a reply held its guest ~10 ms (seen in a profile). A VM
 * process parses a few small control messages, for which the interpreted path costs next to
 * nothing.
 */
import { z } from "zod";

z.config({ jitless: true });
