// What the e2e scripts share: a static server for a built page, and headless Chromium (Debian's,
// driven by playwright-core; nothing is downloaded).

import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".wasm": "application/wasm", ".json": "application/json", ".svg": "image/svg+xml" };

/// Serves `dir` on 127.0.0.1 (a free port); `rewrite` maps a path ("/models/...") to a function
/// that gets the file's text (.json, .js) or bytes and returns what to serve instead (null: a 404).
export function serve(dir, rewrite = {}) {
  const root = path.resolve(dir);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const rel = decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname);
    const file = path.join(root, path.normalize(rel));
    if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end("not found");
      return;
    }
    let body = fs.readFileSync(file);
    if (rewrite[rel]) {
      const changed = rewrite[rel](/\.(json|js)$/.test(rel) ? body.toString() : body);
      if (changed === null) { // a file the test wants gone
        res.writeHead(404).end("not found");
        return;
      }
      body = Buffer.from(changed);
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] || "application/octet-stream", "content-length": body.length });
    res.end(body);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/// Headless Chromium with the flags every script uses, plus `flag` (e.g. "--disable-gpu").
export function launch(flag = "--disable-gpu") {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", flag, "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

/// Serves `dist`, opens it in headless Chromium (at `query`, e.g. "?pair=small"), waits until the
/// button `ready` (a selector) is enabled (the models loaded), runs `fn(page)`, and closes both
/// whatever happens.
export async function withPage(dist, ready, fn, query = "") {
  const server = await serve(dist);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${server.address().port}/${query}`);
    await page.waitForFunction((sel) => !document.querySelector(sel).disabled, ready, { timeout: 300_000 });
    return await fn(page);
  } finally {
    await browser.close();
    server.close();
  }
}
