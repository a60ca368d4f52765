#!/usr/bin/env -S node --no-memory-reducer
import "../dist/src/cli/main.js";
