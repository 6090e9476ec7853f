// The official JS apify-client (2.25.0) against a running hookd.
// Run by tests/it/clients.rs with HOOKD_URL, HOOKD_TOKEN (alice) and HOOKD_TOKEN2 (bob).
const assert = require('node:assert/strict');
const { ApifyClient } = require('apify-client');

const URL = process.env.HOOKD_URL;
const alice = new ApifyClient({ token: process.env.HOOKD_TOKEN, baseUrl: URL, maxRetries: 0 });
const bob = new ApifyClient({ token: process.env.HOOKD_TOKEN2, baseUrl: URL, maxRetries: 0 });

async function main() {
    let checks = 0;
    const ok = (cond, what) => { assert.ok(cond, what); checks += 1; };
    const hooks = alice.webhooks();

    const w = await hooks.create({
        eventTypes: ['ACTOR.RUN.SUCCEEDED'], condition: { actorId: 'act1' },
        requestUrl: 'https://example.com/hook', isAdHoc: false, description: 'first',
        shouldInterpolateStrings: true,
    });
    ok(w.id.length === 17, 'id');
    ok(w.createdAt instanceof Date && !Number.isNaN(w.createdAt.getTime()), 'createdAt parses as a Date');
    ok(w.condition.actorId === 'act1', 'condition');
    ok(w.stats.totalDispatches === 0 && w.lastDispatch === null, 'stats');
    const got = await alice.webhook(w.id).get();
    assert.deepEqual(got, w); checks += 1;

    // Over 1 KiB: the client sends it brotli-compressed.
    const big = `{"resource": {{resource}}, "pad": "${'y'.repeat(2000)}"}`;
    const b = await hooks.create({ eventTypes: ['ACTOR.BUILD.FAILED'], condition: { actorId: 'act2' },
        requestUrl: 'https://example.com/big', payloadTemplate: big });
    ok(b.payloadTemplate === big, 'large template round-trips');

    // actor(id).webhooks().create() posts to /v2/actors/{id}/webhooks.
    const a = await alice.actor('act3').webhooks().create({ eventTypes: ['ACTOR.RUN.FAILED'],
        requestUrl: 'https://example.com/a3' });
    ok(a.condition.actorId === 'act3', 'condition.actorId defaulted from the path');
    const t = await alice.task('task1').webhooks().create({ eventTypes: ['ACTOR.RUN.ABORTED'],
        requestUrl: 'https://example.com/t1' });
    ok(t.condition.actorTaskId === 'task1', 'condition.actorTaskId defaulted from the path');

    const k1 = await hooks.create({ eventTypes: ['ACTOR.RUN.CREATED'], condition: { actorRunId: 'r1' },
        isAdHoc: true, requestUrl: 'https://example.com/k', idempotencyKey: 'js-key' });
    const k2 = await hooks.create({ eventTypes: ['ACTOR.RUN.CREATED'], condition: { actorRunId: 'r1' },
        isAdHoc: true, requestUrl: 'https://example.com/k', idempotencyKey: 'js-key' });
    ok(k1.id === k2.id, 'idempotencyKey');

    const all = await hooks.list();
    ok(all.total === 5 && all.count === 5 && all.limit === 1000 && all.desc === false, 'list');
    const page = await hooks.list({ limit: 2, offset: 1, desc: true });
    ok(page.count === 2 && page.offset === 1 && page.desc === true, 'page');
    ok(page.items[0].id === all.items[3].id, 'desc order');
    ok(!('payloadTemplate' in all.items[0]), 'list items leave out templates');
    const al = await alice.actor('act1').webhooks().list();
    ok(al.total === 1 && al.items[0].id === w.id, 'actor(id).webhooks().list()');
    const tl = await alice.task('task1').webhooks().list();
    ok(tl.total === 1 && tl.items[0].id === t.id, 'task(id).webhooks().list()');

    const u = await alice.webhook(w.id).update({ description: 'changed' });
    ok(u.description === 'changed' && u.requestUrl === w.requestUrl, 'update');
    ok(u.isEnabled === true, 'isEnabled defaults to true');
    const off = await alice.webhook(w.id).update({ isEnabled: false });
    ok(off.isEnabled === false && (await alice.webhook(w.id).get()).isEnabled === false,
        'isEnabled false round-trips');
    const on = await alice.webhook(w.id).update({ isEnabled: true });
    ok(on.isEnabled === true && (await alice.webhook(w.id).get()).isEnabled === true,
        'isEnabled true again');

    let threw = false;
    try {
        await hooks.create({ eventTypes: ['ACTOR.RUN.SUCCEEDED'], condition: { actorId: 'x' },
            requestUrl: 'https://example.com/x', payloadTemplate: '{"a": {{nope}}}' });
    } catch (e) {
        threw = true;
        ok(e.type === 'invalid-input' && e.statusCode === 400, `error ${e.type}`);
    }
    ok(threw, 'bad template rejected');

    ok((await alice.webhook('AAAAAAAAAAAAAAAAA').get()) === undefined, 'unknown id is undefined');
    ok((await bob.webhook(w.id).get()) === undefined, "another user's id is undefined");
    // Dispatches: test(), the lists, one dispatch (delivered to the suite's receiver).
    const dh = await hooks.create({ eventTypes: ['ACTOR.RUN.SUCCEEDED'], condition: { actorId: 'act-d' },
        requestUrl: process.env.HOOKD_RECEIVER });
    const td = await alice.webhook(dh.id).test();
    ok(td.eventType === 'TEST' && td.webhookId === dh.id && td.eventData === null, 'test()');
    ok(td.createdAt instanceof Date, 'dispatch createdAt parses');
    let delivered;
    for (let i = 0; i < 600; i += 1) {
        delivered = await alice.webhookDispatch(td.id).get();
        if (delivered.status !== "ACTIVE") break;
        await new Promise((r) => setTimeout(r, 50));
    }
    ok(delivered.status === 'SUCCEEDED' && delivered.calls.length === 1 && delivered.calls[0].responseStatus === 200, `delivered: ${JSON.stringify(delivered)}`);
    ok(delivered.calls[0].startedAt instanceof Date, 'call times parse as dates');
    const dl = await alice.webhook(dh.id).dispatches().list();
    ok(dl.total === 1 && dl.items[0].id === td.id, 'webhook(id).dispatches().list()');
    const allDispatches = await alice.webhookDispatches().list({ desc: true });
    ok(allDispatches.total === 1 && allDispatches.items[0].id === td.id, 'webhookDispatches().list()');
    ok((await bob.webhookDispatch(td.id).get()) === undefined, "another user's dispatch is undefined");
    ok((await bob.webhook(dh.id).test()) === undefined, "another user's test() is undefined");
    ok((await alice.webhookDispatch('AAAAAAAAAAAAAAAAA').get()) === undefined, 'unknown dispatch');

    await alice.webhook(w.id).delete();
    ok((await alice.webhook(w.id).get()) === undefined, 'deleted id is undefined');
    console.log(`js client suite: ${checks} checks passed`);
}

main().catch((e) => { console.error('FAILED:', e); process.exit(1); });
