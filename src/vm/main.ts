import { runVmProcess } from "./process.js";

runVmProcess();
