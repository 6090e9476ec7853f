// The console in a real browser (Debian's chromium, driven by playwright-core): sign in, a
// template error shown inline, a webhook made through the form, an event sent through the API,
// its failed dispatch with the receiver's answer, Redeliver once the receiver is fixed; another
// user reaches none of it; no request leaves the daemon's origin. Run by tests/it/console.rs.
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const { chromium } = require('playwright-core');

const URL_ = process.env.HOOKD_URL;
const ALICE = process.env.HOOKD_TOKEN;
const BOB = process.env.HOOKD_TOKEN2;
const RECEIVER = process.env.HOOKD_RECEIVER;
const FIX = process.env.HOOKD_RECEIVER_FIX;
const SHOTS = process.env.SCREENSHOTS;
const WAIT_MS = 30000;

async function api(token, method, p, body) {
  const res = await fetch(URL_ + '/v2' + p, {
    method,
    headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json().catch(() => null) };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
}

/** A new tab in a fresh context (its own sessionStorage) that records every request. */
async function tab(browser, requests) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.on('request', (r) => requests.push(r.url()));
  page.on('pageerror', (e) => { throw e; });
  page.setDefaultTimeout(WAIT_MS);
  await page.goto(URL_ + '/console/');
  return page;
}

/** Form controls on the page that have no label (an accessible name). */
async function unlabeled(page) {
  return page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((el) => el.labels.length === 0 && !el.getAttribute('aria-label'))
    .map((el) => el.outerHTML));
}

async function signIn(page, token) {
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
  const requests = [];
  try {
    const page = await tab(browser, requests);
    await shot(page, 'sign-in');

    // A wrong token: the API's own message.
    const refused = await api('not-a-token', 'GET', '/webhooks');
    assert.equal(refused.status, 401);
    await signIn(page, 'not-a-token');
    await page.locator('.error', { hasText: refused.json.error.message }).waitFor();

    // By keyboard alone: the token field has the focus, Enter signs in.
    await page.getByLabel('API token').fill('');
    await page.keyboard.type(ALICE);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.locator('.card').first().waitFor();
    await shot(page, 'overview');

    // Create through the form: a broken template is refused with the API's message beside it.
    await page.getByRole('link', { name: 'Webhooks' }).click();
    await page.getByRole('link', { name: 'Create a webhook' }).click();
    await page.getByLabel('ACTOR.RUN.FAILED').check();
    await page.getByLabel('Actor id (condition)').fill('console-actor');
    await page.getByLabel('Request URL').fill(RECEIVER);
    await page.getByLabel('Payload template').fill('{"run": {{resource}');
    await page.getByLabel('doNotRetry').check();
    await page.getByLabel('Description').fill('Console test');
    await page.getByRole('button', { name: 'Create' }).click();
    const inline = page.locator('#payloadTemplate-error');
    await inline.waitFor();
    const said = await api(ALICE, 'POST', '/webhooks', {
      eventTypes: ['ACTOR.RUN.FAILED'], condition: { actorId: 'x' }, requestUrl: RECEIVER,
      payloadTemplate: '{"run": {{resource}',
    });
    assert.equal(said.status, 400);
    assert.equal(await inline.textContent(), said.json.error.message);
    await shot(page, 'webhook-form-error');
    assert.deepEqual(await unlabeled(page), []);
    await page.getByLabel('Payload template').fill('{"run": {{resource}}}');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.getByRole('heading', { name: 'Webhook Console test' }).waitFor();
    const webhookId = page.url().split('#/webhooks/')[1];
    assert.match(webhookId, /^[A-Za-z0-9]{17}$/);
    await shot(page, 'webhook');
    assert.deepEqual(await unlabeled(page), []);

    // An event through the API: its dispatch fails (the receiver answers 500 with a body).
    const sent = await api(ALICE, 'POST', '/webhook-events', {
      eventType: 'ACTOR.RUN.FAILED',
      eventData: { actorId: 'console-actor', actorRunId: 'run-1' },
      resource: { id: 'run-1', actId: 'console-actor', status: 'FAILED' },
    });
    assert.equal(sent.status, 202, JSON.stringify(sent.json));
    const dispatchId = sent.json.data.dispatchIds[0];
    await page.getByRole('link', { name: 'Dispatches' }).click();
    await page.locator('table .status-FAILED').first().waitFor();
    await shot(page, 'dispatches');
    assert.deepEqual(await unlabeled(page), []);
    await page.locator(`a[href="#/dispatches/${dispatchId}"]`).click();
    await page.locator('#calls', { hasText: 'receiver is down' }).waitFor();
    await page.locator('#dispatch-status', { hasText: 'FAILED' }).waitFor();
    await shot(page, 'dispatch-failed');

    // The overview names the failing target, with the last hour's failed call and the store.
    await page.getByRole('link', { name: 'Overview' }).click();
    await page.locator('#failing-targets', { hasText: new URL(RECEIVER).origin }).waitFor();
    await page.getByText('Endpoint responded with HTTP status code 500').waitFor();
    await page.getByText(/hookd \d+\.\d+\.\d+, store: (redb|postgres)/).waitFor();
    await shot(page, 'overview-failing');
    await page.goBack();
    await page.locator('#calls', { hasText: 'receiver is down' }).waitFor();

    // Fixed: Redeliver, and the page follows it to SUCCEEDED.
    assert.equal((await fetch(FIX)).status, 200);
    await page.getByRole('button', { name: 'Redeliver' }).click();
    await page.locator('#dispatch-status', { hasText: 'SUCCEEDED' }).waitFor();
    await shot(page, 'dispatch-succeeded');

    // Another user: Alice's ids answer the API's not-found messages, her lists show nothing.
    const bob = await tab(browser, requests);
    await signIn(bob, BOB);
    await bob.getByRole('heading', { name: 'Overview' }).waitFor();
    await bob.goto(URL_ + '/console/#/webhooks/' + webhookId);
    await bob.locator('.error', { hasText: 'Webhook was not found' }).waitFor();
    await bob.goto(URL_ + '/console/#/dispatches/' + dispatchId);
    await bob.locator('.error', { hasText: 'Webhook dispatch was not found' }).waitFor();
    await bob.goto(URL_ + '/console/#/dispatches');
    await bob.getByText('No dispatch matches.').waitFor();
    await bob.goto(URL_ + '/console/#/webhooks');
    await bob.getByText('No webhook matches.').waitFor();

    // The webhook's page: Test, the signing secret shown and rotated, a bulk redelivery.
    page.on('dialog', (d) => d.accept());
    await page.goto(URL_ + '/console/#/webhooks/' + webhookId);
    await page.getByRole('button', { name: 'Test' }).click();
    await page.locator('#action-result', { hasText: 'Test dispatch sent' }).waitFor();
    await page.getByRole('button', { name: 'Show signing secret' }).click();
    const secret = await page.locator('#signing-secret').textContent();
    assert.match(secret, /^whsec_/);
    await page.getByRole('button', { name: 'Rotate signing secret' }).click();
    await page.locator('#signing-secret', { hasText: /^whsec_/ }).waitFor();
    await page.waitForFunction((s) => document.getElementById('signing-secret').textContent !== s, secret);
    await page.getByRole('button', { name: 'Redeliver' }).click();
    await page.locator('#action-result', { hasText: 'dispatches are being delivered again' }).waitFor();

    // Pages of 20, newest first.
    const many = await api(ALICE, 'POST', '/webhook-events', Array.from({ length: 25 }, (_, i) => ({
      eventType: 'ACTOR.RUN.FAILED',
      eventData: { actorId: 'console-actor', actorRunId: 'page-' + i },
      resource: { id: 'page-' + i },
    })));
    assert.equal(many.status, 202, JSON.stringify(many.json));
    await page.goto(URL_ + '/console/#/dispatches');
    await page.getByText(/^1–20 of 27$/).waitFor();
    await page.getByRole('link', { name: 'Older' }).click();
    await page.getByText(/^21–27 of 27$/).waitFor();
    await page.getByRole('link', { name: 'Newer' }).waitFor();
    await page.goto(URL_ + '/console/#/webhooks/' + webhookId);

    // Edit: disabled, it is listed under Disabled only; then deleted after a confirm.
    await page.getByRole('link', { name: 'Edit' }).click();
    await page.getByLabel('isEnabled').uncheck();
    await page.getByRole('button', { name: 'Save' }).click();
    await page.getByRole('heading', { name: 'Webhook Console test' }).waitFor();
    await page.goto(URL_ + '/console/#/webhooks?enabled=no');
    await page.getByRole('link', { name: 'Console test' }).waitFor();
    await page.goto(URL_ + '/console/#/webhooks?enabled=yes');
    await page.getByText('No webhook matches.').waitFor();
    await page.goto(URL_ + '/console/#/webhooks/' + webhookId);
    await page.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('heading', { name: 'Webhooks' }).waitFor();
    await page.getByText('No webhook matches.').waitFor();
    assert.equal((await api(ALICE, 'GET', '/webhooks/' + webhookId)).status, 404);

    // Narrow screen: the dispatch page still reads.
    await page.goto(URL_ + '/console/#/dispatches/' + dispatchId);
    await page.locator('#dispatch-status', { hasText: 'SUCCEEDED' }).waitFor();
    await page.setViewportSize({ width: 390, height: 800 });
    await shot(page, 'dispatch-narrow');
  } finally {
    await browser.close();
  }
  const origin = new URL(URL_).origin;
  const away = requests.filter((u) => new URL(u).origin !== origin);
  assert.deepEqual(away, [], 'requests left the daemon\'s origin');
  assert.ok(requests.length > 10, 'the pages made their requests');
  console.log(`console: ${requests.length} requests, all to ${origin}; checks passed`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
