// End-to-end test of the chat page in Debian's Chromium, driven by playwright-core.
// Usage: node page_test.mjs BASE_URL CHROMIUM_PATH SCREENSHOT.png
// Against `chatglm serve --test-engine` (the answer echoes the question one character per token;
// `demo-upper` upper-cases it).
import { chromium } from "playwright-core";

const [base, executablePath, screenshot] = process.argv.slice(2);
if (!base || !executablePath || !screenshot) {
  console.error("usage: node page_test.mjs BASE_URL CHROMIUM_PATH SCREENSHOT.png");
  process.exit(2);
}

function check(cond, what) {
  if (!cond) throw new Error("FAIL: " + what);
  console.log("ok: " + what);
}

const host = new URL(base).host;
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  const problems = [];
  const external = [];
  const requests = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  // Offline: anything not served by this server is refused and recorded.
  await page.route("**/*", (route) => {
    const url = route.request().url();
    if (new URL(url).host === host) return route.continue();
    external.push(url);
    return route.abort();
  });
  page.on("request", (r) => {
    if (r.url().endsWith("/v1/chat/completions")) requests.push(JSON.parse(r.postData()));
  });

  await page.goto(base + "/");
  await page.waitForSelector("#model option", { state: "attached" });
  const models = await page.$$eval("#model option", (os) => os.map((o) => o.value));
  check(JSON.stringify(models) === '["echo","demo-upper"]', "model picker lists " + models);
  const slider = (id) => page.$eval(id, (e) => [e.min, e.max, e.value].join(" "));
  check((await slider("#max-length")) === "0 4096 2048", "Maximum length slider 0..4096, 2048");
  check((await slider("#top-p")) === "0 1 0.7", "Top P slider 0..1, 0.7");
  check((await slider("#temperature")) === "0 1 0.95", "Temperature slider 0..1, 0.95");

  // Record every state the answer bubble passes through, to see it stream.
  await page.evaluate(() => {
    window.__states = [];
    new MutationObserver(() => {
      const last = document.querySelector("#messages .msg.assistant:last-child");
      if (last) window.__states.push(last.textContent.length);
    }).observe(document.getElementById("messages"), { childList: true, subtree: true, characterData: true });
  });
  const question = "Here is **bold** text, <b>not html</b>, and code:\n```python\nprint(\"hi\")\n```";
  await page.fill("#prompt", question);
  await page.click("#send");
  await page.waitForSelector("#messages .msg.assistant.streaming");
  await page.waitForFunction(() => !document.querySelector(".msg.assistant.streaming"), null, { timeout: 30000 });
  const states = await page.evaluate(() => window.__states);
  const partial = new Set(states.filter((n) => n > 0)).size;
  check(partial >= 10, `the answer streamed in (${partial} distinct partial lengths)`);
  const bubble = page.locator("#messages .msg.assistant").last();
  check((await bubble.locator("strong").textContent()) === "bold", "markdown bold rendered");
  check((await bubble.locator("pre code.language-python").textContent()) === 'print("hi")', "code fence rendered as code");
  check((await bubble.locator("b").count()) === 0, "HTML in the answer is escaped, not rendered");
  check((await bubble.textContent()).includes("<b>not html</b>"), "escaped HTML shown as text");
  check((await page.textContent("#status")).startsWith("stop"), "status shows finish_reason stop");

  // The second question carries the first turn as history.
  await page.fill("#prompt", "What did I just say?");
  await page.press("#prompt", "Enter");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant").length === 2
    && !document.querySelector(".msg.streaming"));
  const second = requests[requests.length - 1];
  check(second.messages.length === 3 && second.messages[1].role === "assistant", "history sent with the next question");
  check(second.stream === true && second.max_length === 2048 && second.top_p === 0.7 && second.temperature === 0.95,
    "sampling values from the sliders");
  await page.screenshot({ path: screenshot });
  console.log("screenshot: " + screenshot);

  // Clear history empties the conversation; the next request starts afresh.
  await page.click("#clear");
  check((await page.locator("#messages .msg").count()) === 0, "Clear History empties the chat");
  await page.selectOption("#model", "demo-upper");
  await page.fill("#prompt", "fresh start");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant").length === 1
    && !document.querySelector(".msg.streaming"));
  const third = requests[requests.length - 1];
  check(third.messages.length === 1 && third.model === "demo-upper", "after clearing, only the new question is sent");
  check((await page.locator("#messages .msg.assistant").textContent()) === "FRESH START", "prefix model picked per request");

  check(external.length === 0, "no request left the server (offline): " + external.join(", "));
  check(problems.length === 0, "no page errors: " + problems.join("; "));
} catch (e) {
  console.error(e.message || e);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
