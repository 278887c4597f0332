#!/usr/bin/env node
// End-to-end check of glimpse-server's chat page in headless Chromium.
//
//   node scripts/browser/chat_page_test.mjs --url http://127.0.0.1:PORT/ \
//       --image PATH.png --question "what shape is in the image?" --expect triangle \
//       --screenshot OUT.png [--api-key KEY] [--followup "what color is it?"] \
//       [--max-tokens N] [--timeout 90] [--chromium /usr/bin/chromium]
//
// Needs scripts/setup_browser.sh (system chromium + playwright-core; no browser download).
// Talks only to the --url origin: any other request the page makes is blocked and fails the test.
//
// Steps: open the page; (with --api-key: if the server refuses without the key, check the
// page says so, then type the key into #api-key); wait for a model in #model; attach --image
// through #attach; ask --question; wait for the reply (.msg.assistant[data-done="1"]); check it
// contains --expect (case-insensitive) and that its .stats line shows; screenshot OUT.png.
// Second turn without an image (--followup): the request must carry the whole conversation
// (image included) and the reply must finish non-empty; screenshot OUT-2.png. Then an error:
// max tokens 100000 must give a .msg.error bubble (the server's 400); screenshot OUT-3.png;
// with max tokens back to normal one more turn must succeed (the page still works).
// --max-tokens N sets the page's max tokens for the normal turns (default: the page's 64).
// Prints one JSON summary line and exits 0; on failure prints "chat_page_test: FAIL: reason"
// to stderr, saves OUT-fail.png when it can, and exits 1.

import { parseArgs } from "node:util";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const t0 = Date.now();
let browserContext = null;
let userDataDir = null;
let failShot = null;
let finished = false;

function cleanupDir() {
  if (userDataDir) {
    try { fs.rmSync(userDataDir, { recursive: true, force: true }); } catch (_) { /* ignore */ }
    userDataDir = null;
  }
}

async function fail(reason, page) {
  if (finished) return;
  finished = true;
  const line = String(reason && reason.message ? reason.message : reason).split("\n")[0];
  if (page && failShot) {
    try { await page.screenshot({ path: failShot, timeout: 5000 }); } catch (_) { /* ignore */ }
  }
  console.error("chat_page_test: FAIL: " + line);
  try { if (browserContext) await Promise.race([browserContext.close(), sleep(5000)]); } catch (_) { /* ignore */ }
  cleanupDir();
  process.exit(1);
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: "string" },
      image: { type: "string" },
      question: { type: "string", default: "what shape is in the image?" },
      expect: { type: "string" },
      followup: { type: "string", default: "what color is it?" },
      screenshot: { type: "string" },
      "api-key": { type: "string" },
      "max-tokens": { type: "string" },
      timeout: { type: "string", default: "90" },
      chromium: { type: "string", default: process.env.CHROMIUM || "/usr/bin/chromium" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  }));
} catch (e) {
  await fail(e.message);
}
if (opts.help) {
  console.log("usage: node chat_page_test.mjs --url URL --image PNG --expect WORD --screenshot OUT.png " +
    "[--question Q] [--followup Q] [--api-key KEY] [--max-tokens N] [--timeout SECONDS] [--chromium PATH]");
  process.exit(0);
}
for (const k of ["url", "image", "expect", "screenshot"]) {
  if (!opts[k]) await fail("missing --" + k + " (see --help)");
}
if (!fs.existsSync(opts.image)) await fail("no such image: " + opts.image);
if (!fs.existsSync(opts.chromium)) await fail(opts.chromium + " is missing: run scripts/setup_browser.sh");
const timeoutS = Number(opts.timeout);
if (!(timeoutS > 0)) await fail("bad --timeout " + opts.timeout);
if (opts["max-tokens"] != null && !/^[1-9]\d*$/.test(opts["max-tokens"])) await fail("bad --max-tokens " + opts["max-tokens"]);
const origin = (() => { try { return new URL(opts.url).origin; } catch (_) { return null; } })();
if (!origin) await fail("bad --url " + opts.url);

const shot1 = path.resolve(opts.screenshot);
const stem = shot1.replace(/\.png$/i, "");
const shot2 = stem + "-2.png";
const shot3 = stem + "-3.png";
failShot = stem + "-fail.png";

// Hard bound on the whole run.
const hardTimer = setTimeout(() => {
  console.error(`chat_page_test: FAIL: hard timeout after ${timeoutS}s`);
  cleanupDir();
  process.exit(1);
}, timeoutS * 1000);
hardTimer.unref();
const deadline = t0 + timeoutS * 1000 - 3000;
const left = (cap) => Math.max(1000, Math.min(cap, deadline - Date.now()));

let chromium;
try {
  ({ chromium } = await import("playwright-core"));
} catch (e) {
  await fail("playwright-core is not installed: run scripts/setup_browser.sh (" + e.message + ")");
}

let page = null;
const external = [];
const pageErrors = [];
const chatBodies = [];
try {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "glimpse-chromium-"));
  browserContext = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.chromium,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1100, height: 760 },
    deviceScaleFactor: 1,
    timeout: left(30000),
  });
  // Only the server under test may be reached.
  await browserContext.route("**/*", (route) => {
    const u = route.request().url();
    let ok = false;
    try { const p = new URL(u); ok = p.origin === origin || p.protocol === "data:" || p.protocol === "blob:"; } catch (_) { /* no */ }
    if (ok) return route.continue();
    external.push(u);
    return route.abort("blockedbyclient");
  });
  page = browserContext.pages()[0] || await browserContext.newPage();
  page.on("pageerror", (e) => pageErrors.push(String(e && e.message ? e.message : e)));
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().endsWith("/v1/chat/completions")) {
      try { chatBodies.push(JSON.parse(r.postData() || "null")); } catch (_) { chatBodies.push(null); }
    }
  });

  const res = await page.goto(opts.url, { waitUntil: "load", timeout: left(15000) });
  if (!res || !res.ok()) throw new Error(`GET ${opts.url} answered ${res ? res.status() : "nothing"}`);
  const ctype = res.headers()["content-type"] || "";
  if (!ctype.includes("text/html")) throw new Error(`GET ${opts.url} content-type is '${ctype}', not text/html`);

  const modelReady = async () => {
    try {
      await page.waitForFunction(() => {
        const s = document.getElementById("model");
        return s && !s.disabled && s.value !== "" && s.options.length > 0;
      }, null, { timeout: left(15000) });
    } catch (e) {
      const shown = await page.evaluate(() => {
        const e = document.querySelector(".msg.error");
        return e ? e.textContent.trim() : "";
      }).catch(() => "");
      throw new Error("no chat model appeared in #model" + (shown ? "; the page says: " + shown : " (" + e.message.split("\n")[0] + ")"));
    }
  };

  let auth401Shown = null;
  if (opts["api-key"]) {
    // Without the key the page should say it needs one; then it loads models once it is typed in.
    await page.waitForFunction(() => {
      const s = document.getElementById("model");
      return (s && s.value !== "") || document.querySelector(".msg.error");
    }, null, { timeout: left(15000) });
    const errText = await page.evaluate(() => {
      const e = document.querySelector(".msg.error");
      return e ? e.textContent : null;
    });
    auth401Shown = errText != null;
    if (errText != null && !/api key/i.test(errText)) throw new Error("models failed to load, but not for a missing API key: " + errText);
    await page.fill("#api-key", opts["api-key"]);
    await page.dispatchEvent("#api-key", "change");
  }
  await modelReady();
  const model = await page.$eval("#model", (s) => s.value);
  const contextInfo = await page.$eval("#model-info", (e) => e.textContent.trim());

  const normalMaxTokens = opts["max-tokens"] || await page.inputValue("#max-tokens");
  await page.fill("#max-tokens", normalMaxTokens);
  if (await page.isDisabled("#attach")) throw new Error(`#attach is disabled for model ${model}`);

  const replyN = async (n) => {
    await page.waitForFunction((n) => {
      const a = document.querySelectorAll(".msg.assistant");
      return a.length >= n && a[n - 1].getAttribute("data-done") === "1";
    }, n, { timeout: left(60000) });
    return page.evaluate((n) => {
      const b = document.querySelectorAll(".msg.assistant")[n - 1];
      const content = b.querySelector(".content");
      const row = b.closest(".row");
      const stats = row ? row.querySelector(".stats") : null;
      return {
        text: (content ? content.textContent : b.textContent).trim(),
        error: b.classList.contains("error"),
        stats: stats ? stats.textContent.trim() : "",
        statsVisible: !!(stats && stats.offsetParent !== null && stats.getBoundingClientRect().height > 0),
        finish: b.getAttribute("data-finish"),
      };
    }, n);
  };
  const ask = async (text) => {
    await page.fill("#prompt", text);
    await page.waitForFunction(() => !document.getElementById("send").disabled, null, { timeout: left(5000) });
    await page.click("#send", { timeout: left(5000) });
  };

  // Turn 1: image + question.
  await page.setInputFiles("#attach", opts.image);
  await page.waitForFunction(() => document.querySelectorAll("#thumbs .thumb").length === 1, null, { timeout: left(5000) });
  await ask(opts.question);
  const r1 = await replyN(1);
  if (r1.error) throw new Error("turn 1 ended in an error: " + r1.text);
  if (!r1.text.toLowerCase().includes(opts.expect.toLowerCase())) {
    throw new Error(`turn 1 reply ${JSON.stringify(r1.text)} lacks ${JSON.stringify(opts.expect)}`);
  }
  if (!r1.stats || !r1.statsVisible) throw new Error("turn 1 shows no .stats line");
  if (await page.locator("#thumbs .thumb").count() !== 0) throw new Error("thumbnails still shown after sending");
  if (await page.locator(".msg.user img").count() < 1) throw new Error("the user bubble does not show the image");
  const b1 = chatBodies[0];
  if (!b1 || b1.stream !== true || !Array.isArray(b1.messages)) throw new Error("turn 1 request body is not a streaming chat request");
  const img1 = Array.isArray(b1.messages[0].content) && b1.messages[0].content.find((p) => p.type === "image_url");
  if (!img1 || !/^data:image\/[a-z+.-]+;base64,/.test(img1.image_url.url)) throw new Error("turn 1 request lacks a data: URI image part");
  await page.screenshot({ path: shot1, timeout: left(10000) });

  // Turn 2: no image; the whole conversation goes back.
  await ask(opts.followup);
  const r2 = await replyN(2);
  if (r2.error) throw new Error("turn 2 ended in an error: " + r2.text);
  if (!r2.text) throw new Error("turn 2 reply is empty");
  const b2 = chatBodies[1];
  if (!b2 || b2.messages.length !== 3 || b2.messages[1].role !== "assistant" ||
      !Array.isArray(b2.messages[0].content) || b2.messages[2].content !== opts.followup) {
    throw new Error("turn 2 request does not carry the conversation: " + JSON.stringify(b2 && b2.messages.map((m) => m.role)));
  }
  await page.screenshot({ path: shot2, timeout: left(10000) });

  // Turn 3: an error from the server is shown, and the page keeps working.
  const errorsBefore = await page.locator(".msg.error").count();
  await page.fill("#max-tokens", "100000");
  await ask(opts.question);
  const r3 = await replyN(3);
  const errorsAfter = await page.locator(".msg.error").count();
  if (errorsAfter <= errorsBefore) throw new Error("max_tokens 100000 showed no .msg.error (reply: " + JSON.stringify(r3.text) + ")");
  const errorText = (await page.locator(".msg.error").last().textContent()).trim();
  if (!errorText) throw new Error("the error bubble is empty");
  await page.screenshot({ path: shot3, timeout: left(10000) });

  await page.fill("#max-tokens", normalMaxTokens);
  await ask(opts.followup);
  const r4 = await replyN(4);
  if (r4.error || !r4.text) throw new Error("the page did not recover after the error: " + JSON.stringify(r4.text));
  const b4 = chatBodies[3];
  if (!b4 || b4.messages.length !== 5) {
    throw new Error("after the error the conversation should hold 2 turns + the new question, got " + (b4 ? b4.messages.length : "no request"));
  }

  if (external.length) throw new Error("the page tried to reach other origins: " + external.slice(0, 3).join(" "));
  if (pageErrors.length) throw new Error("uncaught page error: " + pageErrors[0]);

  const summary = {
    ok: true,
    url: opts.url,
    model,
    model_info: contextInfo,
    max_tokens: +normalMaxTokens,
    auth_401_shown: auth401Shown,
    turn1: { reply: r1.text, stats: r1.stats, finish: r1.finish },
    turn2: { reply: r2.text, stats: r2.stats, finish: r2.finish },
    error: errorText,
    recovered: { reply: r4.text, stats: r4.stats },
    screenshots: [shot1, shot2, shot3],
    elapsed_s: +((Date.now() - t0) / 1000).toFixed(1),
  };
  finished = true;
  await Promise.race([browserContext.close(), sleep(5000)]);
  cleanupDir();
  console.log(JSON.stringify(summary));
  process.exit(0);
} catch (e) {
  await fail(e, page);
}
