// The admin console (`/console`, issue 9) driven as a tenant admin and as the operator would:
// sign in, create an app and a key, see the key once, publish from the console and see it in
// the live tail, revoke keys and see their connections drop, watch usage; plus the failure
// paths (wrong key, API error, expired session), each asserting what the page shows.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { restClient, startAviary } from '../lib/aviary.js';
import { ARTIFACTS, a11yProblems, launch, screenshot, watchPage } from '../lib/browser.js';

const WAIT = { timeout: 15_000 };
let aviary;
let browser;
let rest;

before(async () => {
  [aviary, browser] = await Promise.all([startAviary(), launch()]);
  rest = restClient(aviary.url);
});

after(async () => {
  await browser?.close();
  await aviary?.stop();
});

async function openConsole() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: aviary.url });
  const page = await context.newPage();
  const problems = watchPage(page);
  await page.goto(`${aviary.url}/console`);
  await page.getByRole('heading', { name: 'Sign in to the Aviary console' }).waitFor(WAIT);
  return { context, page, problems };
}

async function signInAsAdmin(page, tenantId, key) {
  await page.getByLabel('Tenant admin').check();
  await page.getByLabel('Tenant id').fill(tenantId);
  await page.getByLabel('Admin key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** Clicks a button that opens the confirmation dialog, then confirms. */
async function confirmWith(page, button, typed) {
  await button.click();
  const dialog = page.locator('dialog#confirm');
  await dialog.waitFor({ state: 'visible', ...WAIT });
  if (typed) await dialog.getByRole('textbox').fill(typed);
  await dialog.locator('#confirm-ok').click();
  await dialog.waitFor({ state: 'hidden', ...WAIT });
}

test('console is served with a strict policy and a small page weight', async () => {
  const res = await fetch(`${aviary.url}/console`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  const csp = res.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  const html = await res.text();
  const assets = { 'console (HTML)': html };
  const modules = ['/console/console.js', '/console/dom.js', '/console/api.js', '/console/live.js', '/console/usage.js', '/console/webhooks.js'];
  for (const path of ['/console/console.css', ...modules, '/console/aviary-client.js']) {
    const r = await fetch(aviary.url + path);
    assert.equal(r.status, 200, path);
    assert.match(r.headers.get('content-type'), path.endsWith('.css') ? /^text\/css/ : /^text\/javascript/);
    assets[path] = await r.text();
  }
  assert.equal((await fetch(`${aviary.url}/console/nope.js`)).status, 404);
  // Page weight: what the first view loads (HTML + CSS + JS); the SDK loads only on the Live tab.
  const lines = Object.entries(assets).map(([name, body]) => {
    const raw = Buffer.byteLength(body);
    return `${name}\t${raw} bytes\t${gzipSync(body).length} gzip`;
  });
  const first = [html, assets['/console/console.css'], ...modules.map((m) => assets[m])];
  const raw = first.reduce((n, b) => n + Buffer.byteLength(b), 0);
  const gz = first.reduce((n, b) => n + gzipSync(b).length, 0);
  lines.push(`first view (HTML+CSS+JS modules)\t${raw} bytes\t${gz} gzip`);
  await writeFile(join(ARTIFACTS, 'console-weight.txt'), `${lines.join('\n')}\n`);
  assert.ok(raw < 150_000, `console first view is ${raw} bytes`);
});

test('tenant admin: sign in, apps, keys shown once, live tail, revocation, usage', async (t) => {
  const { context, page, problems } = await openConsole();
  let appId;
  let backendSecret;

  await t.test('a wrong key is refused with a clear message', async () => {
    await signInAsAdmin(page, aviary.tenantId, `avt_${'0'.repeat(32)}_${'x'.repeat(40)}`);
    await page.locator('#signin-key-error', { hasText: 'This admin key was not accepted' }).waitFor(WAIT);
    assert.equal(await page.getByLabel('Admin key').getAttribute('aria-invalid'), 'true');
    await page.getByLabel('Admin key').fill(aviary.apiKey);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#signin-key-error', { hasText: 'This is an app API key' }).waitFor(WAIT);
    await screenshot(page, 'console-wrong-key');
    assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-wrong-key');
  });

  await t.test('signs in as the demo tenant admin; the key stays out of the URL', async () => {
    await signInAsAdmin(page, aviary.tenantId, aviary.adminKey);
    await page.getByRole('heading', { name: 'Apps of demo' }).waitFor(WAIT);
    assert.ok(!page.url().includes(aviary.adminKey));
    assert.ok(!page.url().includes('avt_'));
    await page.locator('#apps-table', { hasText: aviary.appId }).waitFor(WAIT);
    const stored = await page.evaluate(() => sessionStorage.getItem('aviary-console:session'));
    assert.ok(stored.includes(aviary.adminKey), 'the key is kept in sessionStorage');
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');
  });

  await t.test('creates an app; a duplicate name is reported next to the field', async () => {
    await page.getByLabel('Name').fill('e2e-shop');
    await page.getByRole('button', { name: 'Create app' }).click();
    await page.getByRole('heading', { name: /App e2e-shop/ }).waitFor(WAIT);
    await page.locator('#flash', { hasText: 'App e2e-shop created' }).waitFor(WAIT);
    appId = page.url().match(/#\/apps\/(app_[0-9a-f]+)/)[1];
    await page.getByRole('link', { name: '← All apps' }).click();
    await page.locator('#apps-table', { hasText: 'e2e-shop' }).waitFor(WAIT);
    await page.getByLabel('Name').fill('e2e-shop');
    await page.getByRole('button', { name: 'Create app' }).click();
    await page.locator('#new-app-name-error:not(:empty)').waitFor(WAIT);
    assert.match(await page.locator('#new-app-name-error').textContent(), /e2e-shop|exists|already|taken/i);
  });

  await t.test('settings: the API\u2019s validation messages show next to their fields; a valid save applies', async () => {
    await page.goto(`${aviary.url}/console#/apps/${appId}/settings`);
    await page.getByRole('heading', { name: 'Settings' }).waitFor(WAIT);
    await page.getByLabel('Max token TTL (seconds)').fill('999999');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.locator('#app-ttl-error', { hasText: 'max_token_ttl_s must be' }).waitFor(WAIT);
    await page.getByLabel('Max token TTL (seconds)').fill('900');
    await page.getByLabel('Allowed Origins').fill('not-an-origin');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.locator('#app-origins-error', { hasText: 'allowed origin' }).waitFor(WAIT);
    assert.equal(await page.locator('#app-ttl-error').textContent(), '');
    await page.getByLabel('Allowed Origins').fill('');
    await page.getByRole('button', { name: 'Add namespace' }).click();
    const row = page.locator('.ns-row').last();
    await row.getByLabel('Name', { exact: true }).fill('bad name');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.locator('#app-namespaces-error', { hasText: 'namespace name' }).waitFor(WAIT);
    await row.getByLabel('Name', { exact: true }).fill('chat');
    await row.getByLabel('History size').fill('50');
    await page.getByLabel('Name', { exact: true }).first().fill('e2e-shop-renamed');
    await page.getByRole('button', { name: 'Save settings' }).click();
    await page.getByRole('status').filter({ hasText: 'Saved at' }).waitFor(WAIT);
    const app = await rest('GET', `/v1/apps/${appId}`, aviary.adminKey);
    assert.equal(app.name, 'e2e-shop-renamed');
    assert.equal(app.max_token_ttl_s, 900);
    assert.deepEqual(app.allowed_origins, []);
    const chat = app.namespaces.find((n) => n.name === 'chat');
    assert.equal(chat.history_size, 50);
    await screenshot(page, 'console-app-settings');
    assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-app-settings');
  });

  await t.test('creates an API key with a capability editor; the secret is shown once', async () => {
    await page.getByRole('link', { name: 'API keys' }).click();
    await page.getByRole('heading', { name: 'New API key' }).waitFor(WAIT);
    // The API's validation of a glob is shown under the capability editor.
    await page.getByLabel('Name', { exact: true }).fill('backend');
    await page.getByLabel('Channel glob').fill('shop lobby');
    await page.getByRole('button', { name: 'Create key' }).click();
    await page.locator('#caps-error', { hasText: 'capability glob "shop lobby"' }).waitFor(WAIT);
    assert.equal(await page.locator('#key-name-error').textContent(), '');
    await page.getByLabel('Channel glob').fill('shop:*');
    await page.getByRole('button', { name: 'Add rule' }).click();
    const second = page.locator('.cap-row').nth(1);
    await second.getByLabel('Channel glob').fill('news');
    await second.getByLabel('subscribe').check();
    await page.getByRole('button', { name: 'Create key' }).click();
    const panel = page.getByRole('region', { name: /Your new API key/ });
    await panel.waitFor(WAIT);
    assert.match(await panel.textContent(), /only time it is shown/);
    backendSecret = await panel.getByLabel('Secret').inputValue();
    assert.match(backendSecret, /^avk_[0-9a-f]{32}_[0-9A-Za-z]{40}$/);
    await panel.getByRole('button', { name: 'Copy' }).click();
    await panel.getByRole('status').filter({ hasText: /Copied|copy it/ }).waitFor(WAIT);
    await screenshot(page, 'console-key-created');
    assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-key-created');
    await panel.getByRole('button', { name: 'I have stored it' }).click();
    await panel.waitFor({ state: 'detached', ...WAIT });
    const row = page.locator('#keys-table tr', { hasText: 'backend' });
    await row.waitFor(WAIT);
    assert.match(await row.textContent(), /shop:\*: subscribe, publish, presence, history/);
    assert.match(await row.textContent(), /news: subscribe(;|$|\d)/);
    assert.match(await row.textContent(), /never/, 'not used yet');
    assert.ok(!(await page.content()).includes(backendSecret), 'the secret is gone from the page');
    // The key works, with exactly the capabilities chosen.
    const minted = await rest('POST', `/v1/apps/${appId}/tokens`, backendSecret, { client_id: 'probe' });
    assert.ok(minted.token);
  });

  let shopper;
  let shopperContext;
  await t.test('live: publish from the console and see it in the live tail; channels and presence', async () => {
    await page.getByRole('link', { name: 'Live' }).click();
    await page.getByRole('heading', { name: 'Tail a channel' }).waitFor(WAIT);
    // A shopper connected with a token minted by the backend key, present on shop:lobby.
    // Its own context (window): a second tab would hide the console, and hidden tabs are throttled.
    shopperContext = await browser.newContext();
    shopper = await shopperContext.newPage();
    await shopper.goto(`${aviary.url}/console/nope`); // any same-origin page
    const { token } = await rest('POST', `/v1/apps/${appId}/tokens`, backendSecret, { client_id: 'shopper-1', info: { name: 'Shopper' } });
    await shopper.evaluate(async (t) => {
      const { Aviary } = await import('/console/aviary-client.js');
      const client = new Aviary({ url: location.origin, getToken: async () => t });
      window.shopper = { client, failure: null };
      client.on('failed', ({ reason }) => (window.shopper.failure = reason.code));
      await client.whenConnected();
      await client.channel('shop:lobby').subscribe(() => {});
      await client.channel('shop:lobby').presence.enter({ cart: 2 });
    }, token);

    await page.getByLabel('Channel', { exact: true }).first().waitFor(WAIT);
    await page.locator('#tail-channel').fill('shop:lobby');
    await page.getByRole('button', { name: 'Start tail' }).click();
    await page.locator('#tail-state[data-state="connected"]', { hasText: 'Tailing shop:lobby' }).waitFor(WAIT);

    await page.locator('#send-channel').fill('shop:lobby');
    await page.locator('#send-data').fill('{"text": "hello from the e2e console"}');
    await page.getByRole('button', { name: 'Send test message' }).click();
    await page.locator('#send-result', { hasText: 'Published to shop:lobby at offset 1' }).waitFor(WAIT);
    await page.locator('#tail li', { hasText: 'hello from the e2e console' }).waitFor(WAIT);
    assert.match(await page.locator('#tail li').first().textContent(), /#1 .*backend.*hello from the e2e console/);

    // Invalid JSON is caught next to the field; an invalid channel comes back from the API.
    await page.locator('#send-data').fill('{not json');
    await page.getByRole('button', { name: 'Send test message' }).click();
    await page.locator('#send-data-error', { hasText: 'Not valid JSON' }).waitFor(WAIT);
    await page.locator('#send-data').fill('{}');
    await page.locator('#send-channel').fill('bad channel name');
    await page.getByRole('button', { name: 'Send test message' }).click();
    await page.locator('#send-channel-error:not(:empty)').waitFor(WAIT);

    // Active channels: the shopper and the tail subscribe to shop:lobby.
    await page.getByRole('button', { name: 'Filter' }).click();
    const channelRow = page.locator('#channels-table tr', { hasText: 'shop:lobby' });
    await channelRow.waitFor(WAIT);
    await page.waitForFunction(() => /shop:lobby\s*2/.test(document.querySelector('#channels-table')?.textContent ?? ''), null, WAIT);
    await channelRow.getByRole('button', { name: 'Presence of shop:lobby' }).click();
    await page.locator('#presence-members li', { hasText: 'shopper-1' }).waitFor(WAIT);
    assert.match(await page.locator('#presence-members').textContent(), /"cart":2/);
    await screenshot(page, 'console-live');
    assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-live');
  });

  await t.test('revoking a key drops the connections it minted tokens for', async () => {
    await page.getByRole('link', { name: 'API keys' }).click();
    const row = page.locator('#keys-table tr', { hasText: 'backend' });
    await row.waitFor(WAIT);
    await confirmWith(page, row.getByRole('button', { name: /Revoke key backend/ }));
    await page.locator('#flash', { hasText: 'Key backend revoked' }).waitFor(WAIT);
    await page.locator('#keys-table tr', { hasText: 'backend' }).filter({ hasText: 'revoked' }).waitFor(WAIT);
    await shopper.waitForFunction(() => window.shopper.failure !== null, null, WAIT);
    assert.equal(await shopper.evaluate(() => window.shopper.failure), 'credentials_revoked');
    await assert.rejects(rest('POST', `/v1/apps/${appId}/tokens`, backendSecret, { client_id: 'x' }), /401/);
    await shopperContext.close();
  });

  await t.test('revoking the console\u2019s own key ends its live tail with a clear reason', async () => {
    await page.getByRole('link', { name: 'Live' }).click();
    await page.locator('#tail-channel').fill('shop:lobby');
    await page.getByRole('button', { name: 'Start tail' }).click();
    await page.locator('#tail-state[data-state="connected"]').waitFor(WAIT);
    const consoleKeyId = await page.evaluate((id) => JSON.parse(sessionStorage.getItem(`aviary-console:app-key:${id}`)).id, appId);
    await rest('DELETE', `/v1/apps/${appId}/keys/${consoleKeyId}`, aviary.adminKey);
    await page.locator('#tail-state[data-state="failed"]').waitFor(WAIT).catch(() => {});
    assert.equal(await page.locator('#tail-state').textContent(), 'Disconnected: the API key that minted its token was revoked (close code 4010).');
    await page.locator('#send-channel').fill('shop:lobby');
    await page.getByRole('button', { name: 'Send test message' }).click();
    await page.getByRole('alert').filter({ hasText: 'API key for this app was revoked' }).waitFor(WAIT);
    await screenshot(page, 'console-live-revoked');
    // Opening the Live tab again makes a new console key, and the tail works again.
    await page.getByRole('link', { name: 'Live' }).click();
    await page.locator('#tail-state', { hasText: 'Not tailing' }).waitFor(WAIT);
    const newKeyId = await page.evaluate((id) => JSON.parse(sessionStorage.getItem(`aviary-console:app-key:${id}`)).id, appId);
    assert.notEqual(newKeyId, consoleKeyId);
    await page.locator('#tail-channel').fill('shop:lobby');
    await page.getByRole('button', { name: 'Start tail' }).click();
    await page.locator('#tail-state[data-state="connected"]').waitFor(WAIT);
    // A new tail starts with the channel's recent history.
    await page.locator('#tail li', { hasText: 'hello from the e2e console' }).waitFor(WAIT);
  });

  await t.test('usage: current figures, quota use and charts', async () => {
    // Scripted load on the demo app: a subscriber and 20 publishes.
    const loadContext = await browser.newContext();
    const load = await loadContext.newPage();
    await load.goto(`${aviary.url}/?name=loadbot`);
    await load.locator('#connection-state[data-state="connected"]').waitFor(WAIT);
    for (let i = 0; i < 20; i += 1) {
      await rest('POST', `/v1/apps/${aviary.appId}/channels/chat:lobby/messages`, aviary.apiKey, { data: { text: `load ${i}` } });
    }
    await page.getByRole('link', { name: 'Usage' }).click();
    await page.getByRole('heading', { name: 'Usage of demo' }).waitFor(WAIT);
    await page.locator('#usage-table', { hasText: 'e2e-shop-renamed' }).waitFor(WAIT);
    await page.locator('#quota-table', { hasText: 'Concurrent connections' }).waitFor(WAIT);
    assert.match(await page.locator('#quota-table').textContent(), /10,000|10000/);
    assert.match(await page.locator('#usage-status').textContent(), /Updated/);
    // aviary dev reports usage every second here: wait for the load to be counted.
    let usage;
    for (const deadline = Date.now() + 15_000; ; ) {
      usage = await rest('GET', `/v1/tenants/${aviary.tenantId}/usage`, aviary.adminKey);
      if (usage.totals.messages_published >= 20 || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.equal(usage.granularity, 'hour');
    assert.ok(usage.totals.messages_published >= 20, `usage counts the scripted load: ${JSON.stringify(usage.totals)}`);
    assert.ok(usage.totals.messages_delivered >= 20, `deliveries to the load page are counted: ${JSON.stringify(usage.totals)}`);
    // The load shows in the totals, in the chart's text alternative and in the drawn line.
    await page.getByRole('link', { name: 'Last 24 hours' }).click();
    await page.waitForFunction(() => Number(document.querySelector('[data-total="messages_published"]')?.textContent.replace(/\D/g, '')) >= 20, null, WAIT);
    await page.locator('svg.chart').nth(3).waitFor(WAIT);
    assert.equal(await page.locator('svg.chart').count(), 4);
    assert.match(await page.locator('#chart-messages').getAttribute('aria-label'), /Published: total (\d{2,}|[2-9]\d)/);
    assert.ok((await page.locator('#chart-messages path').count()) >= 1);
    await page.locator('#usage-zero').waitFor({ state: 'detached', ...WAIT });
    await page.getByRole('link', { name: 'Last 30 days' }).click();
    await page.locator('.tabs a[aria-current="page"]', { hasText: 'Last 30 days' }).waitFor(WAIT);
    await page.locator('#usage-table', { hasText: 'e2e-shop-renamed' }).waitFor(WAIT);
    await page.getByRole('link', { name: 'Last 24 hours' }).click();
    await page.locator('.tabs a[aria-current="page"]', { hasText: 'Last 24 hours' }).waitFor(WAIT);
    await screenshot(page, 'console-usage');
    assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-usage');
    // On a phone-sized screen nothing overflows sideways (wide tables scroll inside their box).
    await page.setViewportSize({ width: 390, height: 800 });
    assert.ok((await page.evaluate(() => document.documentElement.scrollWidth)) <= 390, 'no horizontal overflow at 390 px');
    await screenshot(page, 'console-usage-narrow');
    await page.setViewportSize({ width: 1280, height: 900 });
    await loadContext.close();
  });

  await t.test('an API error shows a clear message and a way to retry, never a blank page', async () => {
    await page.route('**/v1/tenants/*/apps*', (route) =>
      route.fulfill({
        status: 503,
        contentType: 'application/problem+json',
        body: JSON.stringify({ type: 'https://aviary.dev/problems/unavailable', title: 'Service unavailable', status: 503, detail: 'store unreachable' }),
      }),
    );
    await page.getByRole('link', { name: 'Apps' }).click();
    await page.getByRole('heading', { name: 'Something went wrong' }).waitFor(WAIT);
    assert.match(await page.locator('#view-error').textContent(), /The server failed \(503 Service unavailable\): store unreachable/);
    await screenshot(page, 'console-api-error');
    assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-api-error');
    await page.unroute('**/v1/tenants/*/apps*');
    await page.getByRole('button', { name: 'Try again' }).click();
    await page.getByRole('heading', { name: 'Apps of demo' }).waitFor(WAIT);
  });

  await t.test('disable, enable and delete an app, each behind a confirmation', async () => {
    await page.getByLabel('Name').fill('e2e-temp');
    await page.getByRole('button', { name: 'Create app' }).click();
    await page.getByRole('heading', { name: /App e2e-temp/ }).waitFor(WAIT);
    const tempId = page.url().match(/#\/apps\/(app_[0-9a-f]+)/)[1];
    // Cancelling changes nothing.
    await page.getByRole('button', { name: 'Disable app' }).click();
    await page.locator('dialog#confirm').getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await rest('GET', `/v1/apps/${tempId}`, aviary.adminKey)).enabled, true);
    await confirmWith(page, page.getByRole('button', { name: 'Disable app' }));
    await page.locator('#flash', { hasText: 'App e2e-temp disabled' }).waitFor(WAIT);
    await page.getByRole('heading', { name: /App e2e-temp disabled/ }).waitFor(WAIT);
    assert.equal((await rest('GET', `/v1/apps/${tempId}`, aviary.adminKey)).enabled, false);
    await page.getByRole('button', { name: 'Enable app' }).click();
    await page.getByRole('heading', { name: /App e2e-temp enabled/ }).waitFor(WAIT);
    // Deleting asks to type the app's name; the button stays disabled until it matches.
    await page.getByRole('button', { name: 'Delete app…' }).click();
    const dialog = page.locator('dialog#confirm');
    await dialog.getByRole('textbox').fill('wrong');
    assert.equal(await dialog.locator('#confirm-ok').isDisabled(), true);
    await dialog.getByRole('textbox').fill('e2e-temp');
    await dialog.locator('#confirm-ok').click();
    await page.locator('#flash', { hasText: 'App e2e-temp deleted' }).waitFor(WAIT);
    await page.getByRole('heading', { name: 'Apps of demo' }).waitFor(WAIT);
    assert.ok(!(await page.locator('#apps-table').textContent()).includes('e2e-temp'));
    await assert.rejects(rest('GET', `/v1/apps/${tempId}`, aviary.adminKey), /404/);
  });

  await t.test('signing out forgets the key', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('heading', { name: 'Sign in to the Aviary console' }).waitFor(WAIT);
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  });

  assert.deepEqual(problems, [], 'no CSP violations or uncaught errors');
  await context.close();
});

test('an expired session (tenant deleted meanwhile) signs out with an explanation', async () => {
  const created = await rest('POST', '/v1/tenants', aviary.operatorToken, { name: 'short-lived' });
  const { context, page, problems } = await openConsole();
  // Keyboard only: the form starts focused on the tenant id; Tab to the key; Enter signs in.
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'signin-tenant');
  await page.keyboard.type(created.tenant.id);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'signin-key');
  await page.keyboard.type(created.admin_key.secret);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Apps of short-lived' }).waitFor(WAIT);
  // The view's heading takes the focus, so screen readers announce the new page.
  assert.equal(await page.evaluate(() => document.activeElement?.tagName), 'H1');
  await rest('DELETE', `/v1/tenants/${created.tenant.id}`, aviary.operatorToken);
  await page.getByRole('link', { name: 'Usage' }).click();
  await page.getByRole('heading', { name: 'Sign in to the Aviary console' }).waitFor(WAIT);
  await page.locator('#flash', { hasText: 'Your session has ended' }).waitFor(WAIT);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await screenshot(page, 'console-session-ended');
  assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-session-ended');
  assert.deepEqual(problems, []);
  await context.close();
});

test('a revoked admin key ends the session on the next action, with the tenant id kept for signing in again', async () => {
  const created = await rest('POST', '/v1/tenants', aviary.operatorToken, { name: 'revoked-admin' });
  const { context, page, problems } = await openConsole();
  await signInAsAdmin(page, created.tenant.id, created.admin_key.secret);
  await page.getByRole('heading', { name: 'Apps of revoked-admin' }).waitFor(WAIT);
  await rest('DELETE', `/v1/tenants/${created.tenant.id}/admin-keys/${created.admin_key.key_id}`, aviary.operatorToken);
  await page.getByLabel('Name').fill('never-created');
  await page.getByRole('button', { name: 'Create app' }).click();
  await page.getByRole('heading', { name: 'Sign in to the Aviary console' }).waitFor(WAIT);
  await page.locator('#flash', { hasText: 'Your session has ended' }).waitFor(WAIT);
  assert.equal(await page.getByLabel('Tenant id').inputValue(), created.tenant.id);
  assert.equal(await page.getByLabel('Admin key').inputValue(), '');
  assert.deepEqual(problems, []);
  await context.close();
});

test('operator: tenant list with quotas, edit quotas, create a tenant (admin key shown once), manage a tenant', async () => {
  const { context, page, problems } = await openConsole();
  await page.getByLabel('Operator').check();
  await page.getByLabel('Operator token').fill('avo_wrong');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#signin-key-error', { hasText: 'operator token was not accepted' }).waitFor(WAIT);
  await page.getByLabel('Operator token').fill(aviary.operatorToken);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Tenants', exact: true }).waitFor(WAIT);
  const demo = page.locator('#tenants-table tr', { hasText: aviary.tenantId });
  await demo.waitFor(WAIT);
  assert.match(await demo.textContent(), /10,000/);
  // aviary dev meters usage, so the operator sees who went over quota (nobody, here).
  const overQuota = await fetch(`${aviary.url}/v1/tenants/over-quota`, { headers: { authorization: `Bearer ${aviary.operatorToken}` } });
  assert.equal(overQuota.status, 200);
  assert.deepEqual(await overQuota.json(), []);
  await page.locator('#over-quota-none').waitFor(WAIT);

  await demo.getByRole('button', { name: 'Edit quotas of demo' }).click();
  await page.getByLabel('Connections').fill('500');
  await page.getByRole('button', { name: 'Save quotas' }).click();
  await page.locator('#flash', { hasText: 'Quotas of demo saved' }).waitFor(WAIT);
  await page.locator('#tenants-table tr', { hasText: aviary.tenantId }).filter({ hasText: '500' }).waitFor(WAIT);

  await page.getByLabel('Name').fill('acme');
  await page.getByRole('button', { name: 'Create tenant' }).click();
  const panel = page.getByRole('region', { name: 'Admin key of acme' });
  await panel.waitFor(WAIT);
  assert.match(await panel.getByLabel('Secret').inputValue(), /^avt_/);
  await screenshot(page, 'console-operator');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'console-operator-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-operator');
  await panel.getByRole('button', { name: 'I have stored it' }).click();
  await page.locator('#tenants-table', { hasText: 'acme' }).waitFor(WAIT);

  await page.locator('#tenants-table tr', { hasText: aviary.tenantId }).getByRole('button', { name: 'Manage demo' }).click();
  await page.getByRole('heading', { name: 'Apps of demo' }).waitFor(WAIT);
  assert.match(await page.locator('#who').textContent(), /Operator, managing demo/);
  assert.deepEqual(problems, []);
  await context.close();
});

/** A real HTTP receiver on 127.0.0.1:0 recording every POST (raw body and headers). */
async function webhookReceiver() {
  const got = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      got.push({ headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(200).end();
    });
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  return { url: `http://127.0.0.1:${server.address().port}/hooks`, got, close: () => server.close() };
}

test('tenant admin: webhooks: create (secret shown once), test event to a real receiver, deliveries, delete', async () => {
  const { context, page, problems } = await openConsole();
  const rx = await webhookReceiver();
  await signInAsAdmin(page, aviary.tenantId, aviary.adminKey);
  await page.getByRole('heading', { name: 'Apps of demo' }).waitFor(WAIT);
  await page.goto(`${aviary.url}/console#/apps/${aviary.appId}/webhooks`);
  await page.getByRole('heading', { name: 'New webhook' }).waitFor(WAIT);

  // The API's validation shows next to its field.
  await page.getByLabel('URL').fill('ftp://example.com/');
  await page.getByRole('button', { name: 'Create webhook' }).click();
  await page.locator('#webhook-url-error', { hasText: 'http or https' }).waitFor(WAIT);

  await page.getByLabel('URL').fill(rx.url);
  await page.getByLabel('Channels (optional)').fill('chat:*');
  await page.getByRole('button', { name: 'Create webhook' }).click();
  const panel = page.getByRole('region', { name: /Signing secret of/ });
  await panel.waitFor(WAIT);
  const secret = await panel.getByLabel('Secret').inputValue();
  assert.match(secret, /^[0-9a-f]{64}$/);
  await screenshot(page, 'console-webhook-created');
  assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-webhook-created');
  await panel.getByRole('button', { name: 'I have stored it' }).click();
  await panel.waitFor({ state: 'detached', ...WAIT });
  assert.ok(!(await page.content()).includes(secret), 'the secret is gone from the page');
  const row = page.locator('#webhooks-table tr', { hasText: rx.url });
  await row.waitFor(WAIT);
  assert.match(await row.textContent(), /chat:\*/);
  assert.doesNotMatch(await row.textContent(), /message_published/, 'opt-in');

  // Test: the receiver gets a signed test event; the page shows the outcome and the deliveries.
  await row.getByRole('button', { name: `Send a test event to ${rx.url}` }).click();
  await page.locator('#flash', { hasText: `Test delivered to ${rx.url}: HTTP 200` }).waitFor(WAIT);
  assert.equal(rx.got.length, 1);
  const sent = rx.got[0];
  const [t, v1] = sent.headers['aviary-signature'].split(',').map((p) => p.split('=')[1]);
  assert.equal(v1, createHmac('sha256', secret).update(`${t}.${sent.body}`).digest('hex'), 'signed with the secret shown once');
  assert.equal(JSON.parse(sent.body).events[0].name, 'test');
  const deliveries = page.getByRole('table', { name: `Recent deliveries of ${rx.url}` });
  await deliveries.locator('tr.attempt', { hasText: 'test' }).filter({ hasText: '200' }).waitFor(WAIT);
  await screenshot(page, 'console-webhook-deliveries');
  assert.deepEqual(await a11yProblems(page), [], 'accessibility of console-webhook-deliveries');

  await confirmWith(page, row.getByRole('button', { name: `Delete webhook ${rx.url}` }));
  await page.locator('#flash', { hasText: 'Webhook deleted' }).waitFor(WAIT);
  await page.locator('#webhooks-table', { hasText: 'No webhooks yet' }).waitFor(WAIT);
  const left = await rest('GET', `/v1/apps/${aviary.appId}/webhooks`, aviary.adminKey);
  assert.deepEqual(left.items, []);
  assert.deepEqual(problems, []);
  rx.close();
  await context.close();
});
