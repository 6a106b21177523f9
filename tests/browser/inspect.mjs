// Drives Debian's Chromium, headless and offline, through a page `nabla inspect` wrote, as a
// user would, and prints what it saw as one JSON object for tests/inspect.rs to judge:
//   node inspect.mjs PAGE.html SCREENSHOT.png [LABEL]
// It opens every tab, records every console error, page error and network request; with LABEL
// (`grad h1`) it opens the Fused tab, types the label into the search box, clicks the node, and
// reports the kernel the details name and the source lines highlighted.
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [pagePath, screenshot, label] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.NABLA_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic"],
});
const report = { console_errors: [], page_errors: [], requests: [], tabs: [] };
try {
  const context = await browser.newContext({ offline: true, viewport: { width: 1600, height: 900 } });
  const page = await context.newPage();
  page.on("console", m => { if (m.type() === "error") report.console_errors.push(m.text()); });
  page.on("pageerror", e => report.page_errors.push(String(e)));
  const url = pathToFileURL(path.resolve(pagePath)).href;
  await context.route("**/*", route => {
    const asked = route.request().url();
    if (asked !== url) report.requests.push(asked);
    return asked === url ? route.continue() : route.abort();
  });
  const opened = Date.now();
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 60000 });
  report.load_ms = Date.now() - opened;
  report.render_ms = Number(await page.getAttribute("body", "data-render-ms"));
  for (const tab of await page.$$eval("#tabs button", bs => bs.map(b => b.dataset.tab))) {
    await page.click(`#tabs button[data-tab="${tab}"]`);
    report.tabs.push(tab);
  }
  if (label) try {
    await page.click('#tabs button[data-tab="fused"]');
    await page.fill("#search", label);
    await page.press("#search", "Enter");
    const node = page.locator(`#view [data-label="${label}"]`).first();
    await node.click();
    report.selected_node = Number(await node.getAttribute("data-node"));
    const kernel = page.locator("#details dd [data-kernel]").first();
    await kernel.waitFor({ timeout: 5000 });
    report.kernel = Number(await kernel.getAttribute("data-kernel"));
    report.kernel_text = await kernel.textContent();
    report.highlighted = await page.$$eval("#source li.hl", lis => lis.map(li => Number(li.dataset.line)));
  } catch (e) {
    report.error = String(e).split("\n")[0];
    report.details = await page.innerHTML("#details");
  }
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
