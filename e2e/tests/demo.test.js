// The demo chat (`/`) in two browser contexts: messages and presence flow both ways, and a
// context that goes offline while the other keeps sending comes back showing every message
// exactly once, in order (issue 7, "Examples and browser tests").
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startAviary } from '../lib/aviary.js';
import { launch, screenshot, watchPage } from '../lib/browser.js';

const WAIT = { timeout: 20_000 };
let aviary;
let browser;

before(async () => {
  [aviary, browser] = await Promise.all([startAviary(), launch()]);
});

after(async () => {
  await browser?.close();
  await aviary?.stop();
});

/** Opens the demo as `name` in a fresh context and waits until it is connected and present. */
async function join(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  const problems = watchPage(page);
  await page.goto(`${aviary.url}/?name=${name}`);
  await page.locator('#connection-state[data-state="connected"]').waitFor(WAIT);
  await page.locator('#presence-list li', { hasText: name }).waitFor(WAIT);
  return { context, page, problems };
}

/** The texts of the chat messages, in the order the page shows them. */
function texts(page) {
  return page.locator('#messages li').evaluateAll((items) => items.map((li) => li.children[1]?.textContent ?? ''));
}

async function send(page, text) {
  await page.locator('#message-input').fill(text);
  await page.locator('#message-input').press('Enter');
}

/** Waits until the page shows exactly `expected` (texts, in order). */
async function expectMessages(page, expected) {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll('#messages li')].map((li) => li.children[1]?.textContent ?? '');
      return got.length >= want.length && got.slice(-want.length).join('\n') === want.join('\n');
    },
    expected,
    WAIT,
  ).catch(() => {});
  assert.deepEqual(await texts(page), expected);
}

test('demo chat: messages and presence both ways, and an offline tab catches up exactly once, in order', async (t) => {
  const alice = await join('alice');
  const bob = await join('bob');

  await t.test('each sees the other in presence', async () => {
    await alice.page.locator('#presence-list li', { hasText: 'bob' }).waitFor(WAIT);
    await bob.page.locator('#presence-list li', { hasText: 'alice' }).waitFor(WAIT);
    assert.equal(await alice.page.locator('#presence-count').textContent(), '2');
    assert.equal(await bob.page.locator('#presence-count').textContent(), '2');
  });

  const expected = [];
  await t.test('messages flow both ways', async () => {
    await send(alice.page, 'hello from alice');
    expected.push('hello from alice');
    await expectMessages(bob.page, expected);
    await send(bob.page, 'hello from bob');
    expected.push('hello from bob');
    await expectMessages(alice.page, expected);
    await expectMessages(bob.page, expected);
    // Names are shown with each message.
    assert.equal(await bob.page.locator('#messages li').first().locator('.who').textContent(), 'alice');
  });

  await t.test('alice goes offline; bob keeps sending; alice queues a message', async () => {
    await alice.context.setOffline(true);
    await alice.page.locator('#connection-state:not([data-state="connected"])').waitFor(WAIT);
    assert.match(await alice.page.locator('#connection-text').textContent(), /Offline|Reconnecting|Connecting/);
    for (let i = 1; i <= 5; i += 1) {
      await send(bob.page, `while alice is away ${i}`);
      expected.push(`while alice is away ${i}`);
    }
    await expectMessages(bob.page, expected);
    // Alice types while offline: the SDK queues it and the page shows it as pending.
    await send(alice.page, 'sent while offline');
    await alice.page.locator('#pending li', { hasText: 'sent while offline' }).waitFor(WAIT);
    // Alice has not received anything sent while she was away.
    assert.deepEqual(await texts(alice.page), expected.slice(0, 2));
  });

  await t.test('alice comes back: every missed message once, in order, then her queued one', async () => {
    await alice.context.setOffline(false);
    await alice.page.locator('#connection-state[data-state="connected"]').waitFor(WAIT);
    expected.push('sent while offline');
    await expectMessages(alice.page, expected);
    await expectMessages(bob.page, expected);
    await alice.page.locator('#pending li').waitFor({ state: 'detached', ...WAIT });
    // Offsets are strictly increasing on both pages: nothing duplicated or reordered.
    for (const page of [alice.page, bob.page]) {
      const offsets = await page.locator('#messages li').evaluateAll((items) => items.map((li) => Number(li.dataset.offset)));
      assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b));
      assert.equal(new Set(offsets).size, offsets.length);
    }
    await alice.page.locator('#presence-list li', { hasText: 'bob' }).waitFor(WAIT);
    await bob.page.locator('#presence-list li', { hasText: 'alice' }).waitFor(WAIT);
  });

  await t.test('screenshots and a clean console', async () => {
    await screenshot(alice.page, 'demo-chat-alice');
    await screenshot(bob.page, 'demo-chat-bob');
    assert.deepEqual([...alice.problems, ...bob.problems], []);
  });

  await t.test('bob leaves: alice sees him go', async () => {
    await bob.context.close();
    await alice.page.locator('#presence-list li', { hasText: 'bob' }).waitFor({ state: 'detached', ...WAIT });
    assert.equal(await alice.page.locator('#presence-count').textContent(), '1');
  });
  await alice.context.close();
});
