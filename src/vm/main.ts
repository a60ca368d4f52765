import "./zodconfig.js";
import { runVmProcess } from "./process.js";

runVmProcess();
