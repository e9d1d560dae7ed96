// Launches Debian's Chromium through playwright-core (no browser download), and where
// artifacts (screenshots) go.
import { mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = join(here, '..', 'artifacts');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

export async function launch() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install it with apt-get install -y chromium (or set CHROMIUM_PATH)`);
  }
  await mkdir(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-gpu'],
  });
}

/** Saves a full-page screenshot as artifacts/<name>.png and returns its path. */
export async function screenshot(page, name) {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** Collects Content-Security-Policy violations and uncaught errors a page reports. */
export function watchPage(page) {
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) problems.push(msg.text());
  });
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  return problems;
}

/**
 * Cheap accessibility checks of what is on screen: every form control has a label, every
 * button a name, every chart a text alternative, one h1, a page language. Returns the problems.
 */
export function a11yProblems(page) {
  return page.evaluate(() => {
    const problems = [];
    const visible = (el) => el.getClientRects().length > 0;
    const named = (el) =>
      Boolean(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.labels?.length);
    for (const el of document.querySelectorAll('input:not([type="hidden"]), textarea, select')) {
      if (visible(el) && !named(el)) problems.push(`unlabelled control ${el.outerHTML.slice(0, 80)}`);
    }
    for (const el of document.querySelectorAll('button, a[href]')) {
      if (visible(el) && !(el.textContent.trim() || el.getAttribute('aria-label'))) problems.push(`nameless ${el.outerHTML.slice(0, 80)}`);
    }
    for (const el of document.querySelectorAll('svg[role="img"]')) {
      if (!el.getAttribute('aria-label')) problems.push('chart without a text alternative');
    }
    const h1 = [...document.querySelectorAll('h1')].filter(visible).length;
    if (h1 !== 1) problems.push(`${h1} visible h1 elements`);
    if (!document.documentElement.lang) problems.push('no page language');
    return problems;
  });
}
