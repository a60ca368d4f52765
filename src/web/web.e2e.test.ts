/**
 * The web client end to end, in headless Chromium against a real cluster (a `hop manager serve`
 * and three `hop host serve` processes, real guests): sign-in (wrong and right token), a VM
 * created from the form with its serial console in the page, a live migration from the dialog
 * with its chart and report, maintenance mode evacuating a host, the tasks and events panels, a
 * target host that dies (the error is shown; once it is down it is not offered), and the layout
 * at a narrow width. Screenshots of the main views go to docs/screenshots/.
 *
 * Needs /usr/bin/chromium (Debian's package; scripts/setup.sh installs it) and a built web client
 * (npm run build:web). Skipped, saying so, only when Chromium is missing.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { chromium, type Browser, type Locator, type Page } from "playwright-core";
import { packageRoot } from "../common/paths.js";
import { ClusterHarness } from "../cluster/testing.js";
import { LocalSupervisor } from "../host/supervisor.js";
import { webDistDir } from "./static.js";
import { expectCode } from "../common/testing.js";

const CHROMIUM = process.env["HOP_CHROMIUM"] ?? "/usr/bin/chromium";
const SHOTS = process.env["HOP_SCREENSHOT_DIR"] ?? join(packageRoot, "docs", "screenshots");
const TOKEN = `test-web-${randomBytes(12).toString("hex")}`;
const WIDE = { width: 1280, height: 800 };
const NARROW = { width: 414, height: 896 };
const skip = existsSync(CHROMIUM) ? false : `${CHROMIUM} is missing: install Debian's chromium package (scripts/setup.sh does it)`;

let dir = "";
let cluster: ClusterHarness | undefined;
let browser: Browser | undefined;
let page: Page;
const pageErrors: string[] = [];
const t0 = Date.now();

function c(): ClusterHarness {
  assert.ok(cluster !== undefined, "the cluster did not start");
  return cluster;
}

function log(msg: string): void {
  process.stdout.write(`# [${((Date.now() - t0) / 1000).toFixed(1)} s] ${msg}\n`);
}

async function until(what: string, cond: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond().catch(() => false)) return;
    if (Date.now() > deadline) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

async function shot(name: string): Promise<void> {
  await page.mouse.move(1, 1); // no hover highlight
  await sleep(250); // let transitions and the chart settle
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
}

/** No horizontal scrolling of the page itself (wide content scrolls inside its own box). */
async function assertNoOverflow(view: string): Promise<void> {
  const r = await page.evaluate<{ scrollWidth: number; innerWidth: number; wide: string[] }>(`(() => {
    const w = window.innerWidth;
    const wide = [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > w + 1 && !e.closest(".table-wrap, .console-scroll, .chart-box"))
      .slice(0, 5)
      .map((e) => e.tagName.toLowerCase() + "." + String(e.className).split(" ").join("."));
    return { scrollWidth: document.documentElement.scrollWidth, innerWidth: w, wide };
  })()`);
  assert.ok(r.scrollWidth <= r.innerWidth, `${view}: the page is ${r.scrollWidth} px wide in a ${r.innerWidth} px window (${r.wide.join(", ")})`);
}

async function go(hash: string): Promise<void> {
  await page.evaluate(`window.location.hash = ${JSON.stringify(hash)}`);
}

function hostCard(name: string): Locator {
  return page.locator(`.host-card[data-host="${name}"]`);
}

async function terminalText(): Promise<string> {
  return page.evaluate<string>(`document.querySelector(".xterm-rows")?.textContent ?? ""`);
}

void describe("web client against a real cluster", { skip, timeout: 10 * 60_000 }, () => {
  before(async () => {
    assert.ok(existsSync(join(webDistDir(), "index.html")), `the web client is not built (${webDistDir()}): run 'npm run build:web'`);
    await mkdir(SHOTS, { recursive: true });
    dir = await mkdtemp(join(tmpdir(), "hop-web-"));
    // Boot the template once (cached), so host agents start VMs from it in well under a second.
    const sup = new LocalSupervisor({ hostName: "prep", datastore: join(dir, "prep-ds") });
    await sup.init();
    await sup.prepareTemplate(128);
    await sup.close();
    cluster = new ClusterHarness({ dir, hosts: 3, token: TOKEN, capacityMiB: 1024 });
    await cluster.start();
    log(`cluster of 3 hosts up at ${cluster.managerUrl}`);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    const context = await browser.newContext({ viewport: WIDE, deviceScaleFactor: 1 });
    page = await context.newPage();
    page.setDefaultTimeout(30_000);
    page.on("pageerror", (err) => pageErrors.push(`page error: ${err.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") pageErrors.push(`console: ${m.text()}`);
    });
  });

  after(async () => {
    await browser?.close();
    await cluster?.stop();
    if (dir !== "") await rm(dir, { recursive: true, force: true });
  });

  void test("sign-in: a wrong token is refused clearly; the right one shows the inventory", async () => {
    await page.goto(`${c().managerUrl}/`);
    const token = page.locator('input[name="token"]');
    await token.fill("wrong-token-wrong-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    const err = page.getByTestId("login-error");
    await err.waitFor();
    assert.match(await err.innerText(), /refused this token \(AUTH_INVALID\)/);
    await shot("login");

    await token.fill(TOKEN);
    await page.getByRole("button", { name: "Sign in" }).click();
    await until("the three hosts, connected", async () => (await page.locator('.host-card[data-connection="connected"]').count()) === 3);
    await until("the event stream", async () => (await page.getByTestId("live").innerText()).includes("live"));
    await assertNoOverflow("inventory");
  });

  void test("a VM created and started from the form; its serial console in the page", async () => {
    const form = page.getByRole("form", { name: "Create a VM" });
    await form.locator('input[name="name"]').fill("web1");
    await form.locator('input[name="memoryMiB"]').fill("128");
    await form.locator('select[name="host"]').selectOption("h1");
    assert.equal(await form.locator('input[name="start"]').isChecked(), true);
    await form.getByRole("button", { name: "Create VM" }).click();
    await until("web1 running on h1 in the list", async () => (await page.locator('tr[data-vm="web1"][data-state="running"][data-host="h1"]').count()) === 1, 90_000);
    await until("web1 on h1's card", async () => (await hostCard("h1").locator('.chip[data-vm="web1"]').count()) === 1);
    assert.match(await page.getByTestId("create-result").innerText(), /web1 created on h1/);
    log("web1 created and started from the form");
    await shot("inventory");

    await page.locator('tr[data-vm="web1"] a').first().click();
    await page.locator('[data-testid="console"][data-status="connected"]').waitFor();
    const marker = `WEB-MARKER-${randomBytes(4).toString("hex")}`;
    const r = await c().client.exec("web1", `echo ${marker} > /dev/ttyS0`);
    assert.equal(r.exitCode, 0, r.stderr);
    await until(`${marker} in the page's terminal`, async () => (await terminalText()).includes(marker), 20_000);
    // Keys typed in the terminal reach the guest's shell on the serial port.
    await page.locator(".xterm").click();
    await page.keyboard.type("echo TYPED-$((6*7))\n");
    await until("the shell's answer to typed input", async () => (await terminalText()).includes("TYPED-42"), 20_000);
    log("console shows guest output and takes input");
    await assertNoOverflow("VM page");
    await shot("vm");
  });

  void test("live migration from the dialog: rounds on the chart, the report, the VM on the chosen host", async () => {
    await page.locator('button[data-action="migrate"]').click();
    const dlg = page.getByTestId("migrate-dialog");
    await dlg.waitFor();
    assert.equal(await dlg.locator('input[name="mode"][value="live"]').isChecked(), true, "live is the default for a running VM");
    assert.equal(await dlg.locator('input[name="mode"][value="cold"]').isDisabled(), true, "cold needs a stopped VM");
    const options = await dlg.locator('select[name="to"] option').evaluateAll((els) => els.map((e) => (e as unknown as { value: string }).value));
    assert.deepEqual(options.sort(), ["h2", "h3"], "the VM's own host is not offered");
    await dlg.locator('select[name="to"]').selectOption("h2");

    // Cancel: a migration held to 1 MiB/s is cancelled from the dialog; the VM stays where it was.
    await dlg.locator("details.advanced summary").click();
    await dlg.locator('input[name="bandwidth"]').fill("1");
    await dlg.getByTestId("migrate-start").click();
    await until("the pre-copy to run", async () => (await dlg.getByTestId("migrate-status").innerText()).includes("precopy"), 30_000);
    await dlg.getByTestId("migrate-cancel").click();
    await until("the migration to end, cancelled", async () => (await dlg.getAttribute("data-stage")) === "failed", 60_000);
    const cancelled = await dlg.getByTestId("migrate-error").innerText();
    assert.match(cancelled, /cancel/i);
    log(`cancelled from the dialog: ${cancelled}`);
    const stayed = await c().client.get("web1");
    assert.equal(stayed.host, "h1");
    assert.equal(stayed.state, "running");
    await dlg.getByRole("button", { name: "Try again" }).click();
    await dlg.locator('select[name="to"]').selectOption("h2");

    // A link of 64 MiB/s and a 10 ms pause target: several pre-copy rounds to watch.
    await dlg.locator("details.advanced summary").click();
    await dlg.locator('input[name="bandwidth"]').fill("64");
    await dlg.locator('input[name="downtimeTargetMs"]').fill("10");
    await shot("migrate-dialog");
    // Give the guest memory to dirty while it moves, so the pre-copy takes several rounds.
    const load = await c().client.exec("web1", "dirty -w 24 -r 64 -s 30 > /dev/null 2>&1 &");
    assert.equal(load.exitCode, 0, load.stderr);
    await sleep(500);

    await dlg.getByTestId("migrate-start").click();
    await until(
      "the migration to end",
      async () => {
        const stage = await dlg.getAttribute("data-stage");
        if (stage === "failed") assert.fail(`the migration failed: ${await dlg.getByTestId("migrate-error").innerText()}`);
        return stage === "done";
      },
      120_000,
    );
    const liveRounds = Number(await dlg.getAttribute("data-live-rounds"));
    assert.ok(liveRounds >= 2, `the chart got rounds from migration.progress events (${liveRounds})`);
    const chart = dlg.getByTestId("migration-chart");
    assert.ok(Number(await chart.getAttribute("data-points")) >= 1);
    assert.equal(await chart.locator("canvas").count(), 1, "uPlot drew the chart");
    const report = dlg.getByTestId("migration-report");
    assert.match(await report.getByTestId("report-total").innerText(), /\d+(\.\d+)? (ms|s)$/);
    assert.match(await report.getByTestId("report-pause").innerText(), /\d+(\.\d+)? (ms|s)$/);
    assert.match(await report.getByTestId("report-bytes").innerText(), /\d+(\.\d+)? (B|KiB|MiB|GiB)/);
    assert.ok(Number(await report.getByTestId("report-rounds").innerText()) >= 1);
    const breakdown = await report.getByTestId("report-breakdown").innerText();
    for (const part of ["stop", "final copy", "state save", "transfer", "restore", "resume"]) assert.ok(breakdown.includes(part), `pause breakdown shows ${part}`);
    log(`live migration done: ${liveRounds} live round event(s); ${(await dlg.getByTestId("migrate-status").innerText()).trim()}`);
    await shot("migrate-report");

    assert.equal((await c().client.get("web1")).host, "h2", "the manager has web1 on h2");
    await dlg.getByRole("button", { name: "Close" }).first().click();
    await until("the page to show web1 on h2", async () => (await page.getByTestId("vm-host").innerText()) === "h2");
    // The console followed the VM to its new host.
    const marker = `AFTER-MOVE-${randomBytes(4).toString("hex")}`;
    await c().client.exec("web1", `echo ${marker} > /dev/ttyS0`);
    await until(`${marker} in the terminal after the migration`, async () => (await terminalText()).includes(marker), 20_000);
    const history = page.locator('.vm-tasks tr[data-kind="vm.migrate"][data-state="succeeded"]');
    await until("the migration in the VM's task history", async () => (await history.count()) >= 1);
  });

  void test("maintenance mode from the Hosts view: the host's VMs leave as tasks; then it returns", async () => {
    await c().client.create({ name: "web2", memoryMiB: 128, host: "h2", start: true });
    await page.locator("nav a", { hasText: "Hosts" }).click();
    const h2 = hostCard("h2");
    await until("web1 and web2 on h2", async () => (await h2.locator(".host-vms .chip").count()) === 2);
    await h2.getByTestId("enter-maintenance").click();
    const evac = h2.getByTestId("evacuation");
    await until("the evacuation's migrations to appear", async () => (await evac.locator("li[data-task]").count()) >= 1, 30_000);
    await until(
      "h2 in maintenance with no VMs",
      async () => (await h2.getAttribute("data-maintenance")) === "in" && (await h2.locator(".host-vms .chip").count()) === 0 && (await evac.getAttribute("data-state")) === "succeeded",
      120_000,
    );
    await until("both migrations shown as succeeded", async () => (await evac.locator('li[data-task][data-state="succeeded"]').count()) === 2);
    log("h2 evacuated from the Hosts view");
    await assertNoOverflow("hosts");
    await shot("hosts-maintenance");

    const host = await c().client.host("h2");
    assert.equal(host.maintenance, "in");
    assert.deepEqual(host.vms, []);
    const parentId = await evac.getAttribute("data-task");
    assert.ok(parentId !== null);
    const children = await c().client.tasks({ parentId });
    assert.equal(children.length, 2);
    for (const ch of children) assert.equal(ch.state, "succeeded");

    await h2.getByTestId("exit-maintenance").click();
    await until("h2 back in service", async () => (await h2.getAttribute("data-maintenance")) === "none");
    assert.equal((await c().client.host("h2")).maintenance, "none");
  });

  void test("the tasks and events panels filter", async () => {
    await go("#/tasks");
    const rows = page.locator("tr[data-task]");
    await page.locator('select[name="kind"]').selectOption("vm.migrate");
    await until("only migrations listed", async () => {
      const kinds = await rows.evaluateAll((els) => els.map((e) => (e as unknown as { dataset: { kind: string } }).dataset.kind));
      return kinds.length >= 3 && kinds.every((k) => k === "vm.migrate");
    });
    await page.locator('select[name="vm"]').selectOption("web2");
    await until("only web2's migrations", async () => {
      const vms = await rows.evaluateAll((els) => els.map((e) => (e as unknown as { dataset: { vm: string } }).dataset.vm));
      return vms.length >= 1 && vms.every((v) => v === "web2");
    });
    await page.locator('select[name="vm"]').selectOption("");
    await page.locator('select[name="kind"]').selectOption("");
    await page.locator('select[name="state"]').selectOption("succeeded");
    await until("only succeeded tasks", async () => {
      const states = await rows.evaluateAll((els) => els.map((e) => (e as unknown as { dataset: { state: string } }).dataset.state));
      return states.length >= 5 && states.every((s) => s === "succeeded");
    });
    await page.locator('select[name="state"]').selectOption("");
    await assertNoOverflow("tasks");
    await shot("tasks");

    await go("#/events");
    const events = page.locator("li.event");
    await page.locator('input[name="type"]').fill("host.maintenance");
    await until("only maintenance events", async () => {
      const types = await events.evaluateAll((els) => els.map((e) => (e as unknown as { dataset: { type: string } }).dataset.type));
      return types.length >= 3 && types.every((t) => t.startsWith("host.maintenance"));
    });
    await page.locator('select[name="host"]').selectOption("h1");
    await until("no maintenance events of h1", async () => (await events.count()) === 0);
    await page.locator('select[name="host"]').selectOption("");
    await page.locator('input[name="type"]').fill("");
    await page.locator('select[name="severity"]').selectOption("info");
    await until("only info events", async () => {
      const sev = await events.evaluateAll((els) => els.map((e) => (e as unknown as { dataset: { severity: string } }).dataset.severity));
      return sev.length >= 5 && sev.every((s) => s === "info");
    });
    await page.locator('select[name="severity"]').selectOption("");
    await assertNoOverflow("events");
    await shot("events");
  });

  void test("a target host that dies: the error is shown; once it is down it is not offered, nor accepted by the API", async () => {
    const vm = await c().client.get("web1");
    const web2 = await c().client.get("web2");
    // The host to kill: web2's, so HA has something to restart, unless web1 is there too.
    const victim = web2.host !== vm.host ? web2.host : ["h1", "h2", "h3"].find((h) => h !== vm.host)!;
    await go(`#/vms/web1`);
    await page.locator('button[data-action="migrate"]').click();
    const dlg = page.getByTestId("migrate-dialog");
    await dlg.locator('select[name="to"]').selectOption(victim);
    await c().killHost(victim);
    log(`host agent ${victim} killed (kill -9 of its process group)`);
    await dlg.getByTestId("migrate-start").click();
    await until("the migration to fail", async () => (await dlg.getAttribute("data-stage")) === "failed", 90_000);
    const error = await dlg.getByTestId("migrate-error").innerText();
    assert.ok(error.trim().length > 10, `an error is shown (${error})`);
    log(`the dialog shows: ${error}`);
    await shot("migrate-error");
    const after = await c().client.get("web1");
    assert.equal(after.host, vm.host, "web1 stayed where it was");
    assert.equal(after.state, "running");

    await c().waitHosts([victim], "down", 60_000);
    const retry = dlg.getByRole("button", { name: "Try again" });
    if ((await retry.count()) > 0) await retry.click();
    await until(`${victim} no longer offered`, async () => {
      const values = await dlg.locator('select[name="to"] option').evaluateAll((els) => els.map((e) => (e as unknown as { value: string }).value));
      return !values.includes(victim) && (await dlg.getByTestId("not-offered").locator(`[data-host="${victim}"]`).innerText()).includes("down");
    });
    await shot("migrate-host-down");
    // Forced through the API, the manager refuses it with a clear error.
    const refused = await expectCode(c().client.migrate("web1", { to: victim }), "HOST_UNAVAILABLE", 409);
    log(`the API refuses: ${refused.message}`);
    await dlg.getByRole("button", { name: "Close" }).first().click();

    await page.locator("nav a", { hasText: "Hosts" }).click();
    await until(`${victim} shown down`, async () => (await hostCard(victim).getAttribute("data-connection")) === "down");
    await until("host.down in the HA events", async () => (await page.locator('li.event[data-type="host.down"]').count()) >= 1);
    if (web2.host === victim) {
      await until("HA restarting web2, shown", async () => (await page.locator('li.event[data-type="ha.restarted"]').count()) >= 1, 60_000);
      await until("web2 running elsewhere", async () => {
        const v = await c().client.get("web2");
        return v.host !== victim && v.state === "running";
      }, 60_000);
    }
    await shot("hosts-ha");
  });

  void test("a narrow window (414 px): panels stack and nothing overflows", async () => {
    await page.setViewportSize(NARROW);
    const views: [string, string, string][] = [
      ["inventory-narrow", "#/", ".host-card"],
      ["vm-narrow", "#/vms/web1", '[data-testid="console"][data-status="connected"]'],
      ["hosts-narrow", "#/hosts", ".host-card"],
      ["tasks-narrow", "#/tasks", "tr[data-task]"],
      ["events-narrow", "#/events", "li.event"],
    ];
    for (const [name, hash, ready] of views) {
      await go(hash);
      await page.locator(ready).first().waitFor();
      if (name === "vm-narrow") {
        const marker = `NARROW-${randomBytes(3).toString("hex")}`;
        await c().client.exec("web1", `echo ${marker} > /dev/ttyS0; uname -a > /dev/ttyS0; free -m > /dev/ttyS0`);
        await until(`${marker} in the terminal`, async () => (await terminalText()).includes(marker), 20_000);
      }
      await sleep(300);
      await assertNoOverflow(name);
      if (name === "inventory-narrow" || name === "vm-narrow") await shot(name);
    }
    // The migrate dialog too.
    await go("#/vms/web1");
    await page.locator('button[data-action="migrate"]').click();
    await page.getByTestId("migrate-dialog").waitFor();
    await assertNoOverflow("migrate dialog");
    await page.getByTestId("migrate-dialog").getByRole("button", { name: "Close" }).first().click();
    await page.setViewportSize(WIDE);
  });

  void test("the page logged no errors", () => {
    // Expected: the 401 of the wrong token at sign-in, the refused migration to the dead host.
    const unexpected = pageErrors.filter((e) => !/Failed to load resource: the server responded with a status of (401|409)\b/.test(e));
    assert.deepEqual(unexpected, []);
    log(`done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  });
});
