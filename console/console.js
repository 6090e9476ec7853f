// hookd console: a small page over the same /v2 API every client uses. The API token stays in
// sessionStorage (gone with the tab); every text from the API is set as text, never as HTML.
'use strict';

const TOKEN_KEY = 'hookd.token';
const PAGE_SIZE = 20;
const EVENT_TYPES = [
  'ACTOR.RUN.CREATED', 'ACTOR.RUN.SUCCEEDED', 'ACTOR.RUN.FAILED', 'ACTOR.RUN.ABORTED',
  'ACTOR.RUN.TIMED_OUT', 'ACTOR.RUN.RESURRECTED', 'ACTOR.BUILD.CREATED',
  'ACTOR.BUILD.SUCCEEDED', 'ACTOR.BUILD.FAILED', 'ACTOR.BUILD.ABORTED', 'ACTOR.BUILD.TIMED_OUT',
];
const main = document.getElementById('main');
// Bumped on every page change: a page's timers and late answers check it and stop.
let generation = 0;

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + token() };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch('/v2' + path, init);
  } catch (e) {
    throw new ApiError('hookd cannot be reached: ' + e.message, 0);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { /* not JSON: the status says it */ }
  if (!res.ok) {
    const message = json && json.error && json.error.message;
    throw new ApiError(message || 'HTTP ' + res.status, res.status);
  }
  return json;
}

/** An element with attributes (on* are listeners) and children (nodes or text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A time in the browser's zone, its ISO value on hover. */
function time(iso) {
  if (!iso) return '—';
  return h('time', { datetime: iso, title: iso }, new Date(iso).toLocaleString());
}

function status(s) {
  return h('span', { class: 'status-' + s }, s);
}

function errorBox(e) {
  return h('p', { class: 'error', role: 'alert' }, e.message);
}

function show(title, ...content) {
  main.replaceChildren(h('h1', {}, title), ...content);
  document.title = title + ' · hookd console';
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function field(label, input, hint) {
  const id = input.id;
  return h('div', {}, h('label', { for: id }, label), input, hint || null);
}

function checkbox(id, label, checked) {
  return h('label', { class: 'inline', for: id },
    h('input', { type: 'checkbox', id, checked: !!checked }), label);
}

// ---- sign in ----

function signIn(message) {
  document.getElementById('nav').hidden = true;
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', required: true });
  const out = h('div', { 'aria-live': 'polite' }, message ? errorBox({ message }) : null);
  const form = h('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        await api('GET', '/webhooks?limit=1');
        document.getElementById('nav').hidden = false;
        go(location.hash && location.hash !== '#/sign-in' ? location.hash : '#/');
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        out.replaceChildren(errorBox(e));
      }
    },
  }, field('API token', input), h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')));
  show('Sign in', h('p', {}, 'Paste an API token of a hookd user. It is kept in this tab only.'), form, out);
  input.focus();
}

// ---- overview ----

/** Calls and failures of the last hour, and the targets failing now, from `dispatches`. */
function recentState(dispatches, nowMs) {
  const hourAgo = nowMs - 3600 * 1000;
  let calls = 0;
  let failedCalls = 0;
  const targets = new Map();
  for (const d of dispatches) {
    let target;
    try { target = new URL(d.webhook.requestUrl).origin; } catch (_) { target = d.webhook.requestUrl; }
    for (const c of d.calls) {
      if (Date.parse(c.startedAt) < hourAgo) continue;
      calls += 1;
      const ok = c.responseStatus !== null && c.responseStatus >= 200 && c.responseStatus < 300;
      if (!ok) failedCalls += 1;
    }
    const last = d.calls[d.calls.length - 1];
    const failing = d.status === 'FAILED' || (d.status === 'ACTIVE' && last && last.errorMessage);
    if (!failing) continue;
    const t = targets.get(target) || { active: 0, failed: 0, last: null, lastDispatch: null };
    if (d.status === 'ACTIVE') t.active += 1; else t.failed += 1;
    if (last && (!t.last || Date.parse(last.startedAt) > Date.parse(t.last.startedAt))) {
      t.last = last;
      t.lastDispatch = d;
    }
    targets.set(target, t);
  }
  return { calls, failedCalls, targets };
}

async function overview() {
  const g = generation;
  show('Overview', h('p', {}, 'Loading…'));
  try {
    const [st, webhooksPage, active, failedPage, oldest, recent] = await Promise.all([
      api('GET', '/hookd/status'),
      api('GET', '/webhooks?limit=1'),
      api('GET', '/webhook-dispatches?status=ACTIVE&limit=1'),
      api('GET', '/webhook-dispatches?status=FAILED&limit=1'),
      api('GET', '/webhook-dispatches?status=ACTIVE&limit=1&desc=0'),
      api('GET', '/webhook-dispatches?limit=1000&desc=1'),
    ]);
    if (g !== generation) return;
    const card = (label, value, link) => h('div', { class: 'card' },
      h('div', {}, label), h('div', { class: 'value' }, link ? h('a', { href: link }, value) : value));
    const first = oldest.data.items[0];
    const r = recentState(recent.data.items, Date.now());
    const bytes = st.data.storeFileBytes;
    show('Overview',
      h('div', { class: 'cards' },
        card('Webhooks', webhooksPage.data.total, '#/webhooks'),
        card('ACTIVE dispatches', active.data.total, '#/dispatches?status=ACTIVE'),
        card('Oldest ACTIVE since', first ? time(first.createdAt) : '—'),
        card('FAILED dispatches', failedPage.data.total, '#/dispatches?status=FAILED'),
        card('Calls, last hour', r.calls),
        card('Failed calls, last hour', r.failedCalls)),
      h('p', {}, `Calls counted over the latest ${recent.data.count} dispatches. hookd ${st.data.version}, `
        + `store: ${st.data.storeBackend}` + (bytes === null ? '' : `, ${(bytes / 1048576).toFixed(1)} MiB`)),
      h('h2', {}, 'Failing targets'),
      r.targets.size === 0 ? h('p', {}, 'None.') : h('table', { id: 'failing-targets' },
        h('thead', {}, h('tr', {}, ['Target', 'ACTIVE, retrying', 'FAILED', 'Last error', 'Last call']
          .map((t) => h('th', {}, t)))),
        h('tbody', {}, [...r.targets].map(([target, t]) => h('tr', {},
          h('td', {}, target), h('td', {}, t.active), h('td', {}, t.failed),
          h('td', {}, t.last ? t.last.errorMessage || '—' : '—'),
          h('td', {}, t.lastDispatch
            ? h('a', { href: '#/dispatches/' + t.lastDispatch.id }, time(t.last.startedAt)) : '—'))))));
  } catch (e) {
    failed(e);
  }
}

// ---- webhooks ----

async function webhooks(params) {
  const g = generation;
  const type = params.get('eventType') || '';
  const scope = params.get('scope') || '';
  const scopeId = params.get('id') || '';
  const enabled = params.get('enabled') || '';
  const typeSelect = h('select', { id: 'f-event-type' }, h('option', { value: '' }, 'Any'),
    EVENT_TYPES.map((t) => h('option', { value: t, selected: t === type }, t)));
  const scopeSelect = h('select', { id: 'f-scope' },
    h('option', { value: '' }, 'Any'),
    h('option', { value: 'actor', selected: scope === 'actor' }, 'Actor'),
    h('option', { value: 'task', selected: scope === 'task' }, 'Task'));
  const idInput = h('input', { type: 'text', id: 'f-id', value: scopeId });
  const enabledSelect = h('select', { id: 'f-enabled' }, h('option', { value: '' }, 'Any'),
    h('option', { value: 'yes', selected: enabled === 'yes' }, 'Enabled'),
    h('option', { value: 'no', selected: enabled === 'no' }, 'Disabled'));
  const filters = h('form', {
    class: 'filters',
    onsubmit: (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (typeSelect.value) q.set('eventType', typeSelect.value);
      if (scopeSelect.value && idInput.value.trim()) {
        q.set('scope', scopeSelect.value);
        q.set('id', idInput.value.trim());
      }
      if (enabledSelect.value) q.set('enabled', enabledSelect.value);
      go('#/webhooks?' + q);
    },
  }, field('Event type', typeSelect), field('Condition', scopeSelect), field('Actor or task id', idInput),
  field('State', enabledSelect), h('button', { type: 'submit', class: 'secondary' }, 'Filter'));
  const list = h('div', {}, h('p', {}, 'Loading…'));
  show('Webhooks', h('div', { class: 'actions' }, h('a', { href: '#/webhooks/new' }, 'Create a webhook')),
    filters, list);
  try {
    let path = '/webhooks';
    if (scope && scopeId) {
      path = (scope === 'task' ? '/actor-tasks/' : '/actors/') + encodeURIComponent(scopeId) + '/webhooks';
    }
    const page = await api('GET', path + '?limit=1000&desc=1');
    if (g !== generation) return;
    const items = page.data.items.filter((w) => (!type || w.eventTypes.includes(type))
      && (!enabled || w.isEnabled === (enabled === 'yes')));
    list.replaceChildren(items.length === 0 ? h('p', {}, 'No webhook matches.') : h('table', {},
      h('thead', {}, h('tr', {}, ['Webhook', 'Event types', 'Condition', 'Enabled', 'Created']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, items.map((w) => h('tr', {},
        h('td', {}, h('a', { href: '#/webhooks/' + w.id }, w.description || w.requestUrl)),
        h('td', {}, w.eventTypes.join(', ')),
        h('td', {}, conditionText(w.condition)),
        h('td', {}, w.isEnabled ? 'yes' : 'no'),
        h('td', {}, time(w.createdAt)))))));
  } catch (e) {
    list.replaceChildren(errorBox(e));
  }
}

function conditionText(c) {
  if (!c) return '—';
  if (c.actorId) return 'Actor ' + c.actorId;
  if (c.actorTaskId) return 'Task ' + c.actorTaskId;
  if (c.actorRunId) return 'Run ' + c.actorRunId;
  return '—';
}

async function webhookEdit(id) {
  const g = generation;
  try {
    const w = (await api('GET', '/webhooks/' + encodeURIComponent(id))).data;
    if (g === generation) webhookForm(w);
  } catch (e) {
    failed(e);
  }
}

/** The create form (`w` null) or the edit form of `w`. */
function webhookForm(w) {
  const v = w || { eventTypes: [], condition: {}, isEnabled: true };
  const types = h('fieldset', {}, h('legend', {}, 'Event types'),
    EVENT_TYPES.map((t, i) => checkbox('type-' + i, t, v.eventTypes.includes(t))));
  const input = (id, value, type) => h('input', { type: type || 'text', id, value: value || '' });
  const area = (id, value) => {
    const el = h('textarea', { id, spellcheck: 'false' });
    el.value = value || '';
    return el;
  };
  const inputs = {
    actorId: input('actorId', v.condition && v.condition.actorId),
    actorTaskId: input('actorTaskId', v.condition && v.condition.actorTaskId),
    requestUrl: input('requestUrl', v.requestUrl, 'url'),
    payloadTemplate: area('payloadTemplate', v.payloadTemplate),
    headersTemplate: area('headersTemplate', v.headersTemplate),
    description: input('description', v.description),
  };
  const flags = ['shouldInterpolateStrings', 'ignoreSslErrors', 'doNotRetry', 'isEnabled'];
  const flagBoxes = flags.map((f) => checkbox(f, f, v[f]));
  // Where the API's message goes: beside the field it names, and at the top.
  const hints = {};
  for (const name of Object.keys(inputs)) {
    hints[name] = h('p', { class: 'error', id: name + '-error', role: 'alert', hidden: true });
  }
  const formError = h('div', { 'aria-live': 'polite', id: 'form-error' });
  const form = h('form', {
    onsubmit: async (ev) => {
      ev.preventDefault();
      for (const [name, hint] of Object.entries(hints)) {
        hint.hidden = true;
        inputs[name].removeAttribute('aria-describedby');
      }
      const body = {
        eventTypes: EVENT_TYPES.filter((_, i) => document.getElementById('type-' + i).checked),
        condition: {},
        requestUrl: inputs.requestUrl.value.trim(),
      };
      if (inputs.actorId.value.trim()) body.condition.actorId = inputs.actorId.value.trim();
      if (inputs.actorTaskId.value.trim()) body.condition.actorTaskId = inputs.actorTaskId.value.trim();
      for (const t of ['payloadTemplate', 'headersTemplate', 'description']) {
        const text = inputs[t].value;
        if (text.trim()) body[t] = text;
        else if (w) body[t] = null;
      }
      for (const f of flags) body[f] = document.getElementById(f).checked;
      try {
        const saved = w
          ? await api('PUT', '/webhooks/' + encodeURIComponent(w.id), body)
          : await api('POST', '/webhooks', body);
        go('#/webhooks/' + saved.data.id);
      } catch (e) {
        formError.replaceChildren(errorBox(e));
        const named = Object.keys(inputs).find((n) => e.message.includes(n));
        if (named) {
          hints[named].textContent = e.message;
          hints[named].hidden = false;
          inputs[named].setAttribute('aria-describedby', named + '-error');
          inputs[named].focus();
        }
      }
    },
  },
  formError,
  types,
  field('Actor id (condition)', inputs.actorId),
  field('Task id (condition)', inputs.actorTaskId),
  field('Request URL', inputs.requestUrl, hints.requestUrl),
  field('Payload template', inputs.payloadTemplate, hints.payloadTemplate),
  field('Headers template', inputs.headersTemplate, hints.headersTemplate),
  h('fieldset', {}, h('legend', {}, 'Options'), flagBoxes),
  field('Description', inputs.description, hints.description),
  h('div', { class: 'actions' }, h('button', { type: 'submit' }, w ? 'Save' : 'Create'),
    h('a', { href: w ? '#/webhooks/' + w.id : '#/webhooks' }, 'Cancel')));
  show(w ? 'Edit webhook' : 'Create a webhook', form);
}

async function webhook(id) {
  const g = generation;
  show('Webhook', h('p', {}, 'Loading…'));
  let w;
  try {
    w = (await api('GET', '/webhooks/' + encodeURIComponent(id))).data;
  } catch (e) {
    return failed(e);
  }
  if (g !== generation) return;
  const path = '/webhooks/' + encodeURIComponent(w.id);
  const out = h('div', { 'aria-live': 'polite', id: 'action-result' });
  const secret = h('div', {});
  const act = (label, fn, cls) => h('button', {
    type: 'button',
    class: cls,
    onclick: async () => {
      try {
        await fn();
      } catch (e) {
        out.replaceChildren(errorBox(e));
      }
    },
  }, label);
  const since = h('input', { type: 'datetime-local', id: 'redeliver-since' });
  const redeliverStatus = h('select', { id: 'redeliver-status' },
    h('option', { value: 'FAILED' }, 'FAILED'), h('option', { value: 'SUCCEEDED' }, 'SUCCEEDED'));
  show('Webhook ' + (w.description || w.requestUrl),
    h('dl', {},
      h('dt', {}, 'Id'), h('dd', {}, w.id),
      h('dt', {}, 'Request URL'), h('dd', {}, w.requestUrl),
      h('dt', {}, 'Event types'), h('dd', {}, w.eventTypes.join(', ')),
      h('dt', {}, 'Condition'), h('dd', {}, conditionText(w.condition)),
      h('dt', {}, 'Enabled'), h('dd', {}, w.isEnabled ? 'yes' : 'no'),
      h('dt', {}, 'Options'), h('dd', {}, ['shouldInterpolateStrings', 'ignoreSslErrors', 'doNotRetry']
        .filter((f) => w[f]).join(', ') || '—'),
      h('dt', {}, 'Dispatches'), h('dd', {}, w.stats ? w.stats.totalDispatches : 0),
      h('dt', {}, 'Last dispatch'), h('dd', {}, w.lastDispatch ? status(w.lastDispatch.status) : '—'),
      h('dt', {}, 'Created'), h('dd', {}, time(w.createdAt)),
      h('dt', {}, 'Payload template'), h('dd', {}, h('pre', {}, w.payloadTemplate || '(default)')),
      h('dt', {}, 'Headers template'), h('dd', {}, h('pre', {}, w.headersTemplate || '(none)'))),
    h('div', { class: 'actions' },
      h('a', { href: '#' + path + '/edit' }, 'Edit'),
      act('Test', async () => {
        const d = (await api('POST', path + '/test')).data;
        out.replaceChildren(h('p', { class: 'notice' }, 'Test dispatch sent: ',
          h('a', { href: '#/dispatches/' + d.id }, d.id)));
      }, 'secondary'),
      act('Show signing secret', async () => {
        const s = (await api('GET', path + '/signing-secret')).data;
        secret.replaceChildren(h('p', {}, 'Signing secret: '), h('pre', { id: 'signing-secret' }, s.key));
      }, 'secondary'),
      act('Rotate signing secret', async () => {
        if (!confirm('Rotate the signing secret? The old one keeps verifying for a while.')) return;
        const s = (await api('POST', path + '/signing-secret/rotate')).data;
        secret.replaceChildren(h('p', {}, 'New signing secret: '), h('pre', { id: 'signing-secret' }, s.key));
      }, 'secondary'),
      act('Delete', async () => {
        if (!confirm('Delete this webhook? Its ACTIVE dispatches end FAILED.')) return;
        await api('DELETE', path);
        go('#/webhooks');
      }, 'danger')),
    secret,
    h('h2', {}, 'Redeliver in bulk'),
    h('form', {
      class: 'filters',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const body = { status: redeliverStatus.value };
        if (since.value) body.since = new Date(since.value).toISOString();
        try {
          const r = (await api('POST', path + '/redeliver', body)).data;
          out.replaceChildren(h('p', { class: 'notice' }, r.count + ' dispatches are being delivered again.'));
        } catch (e) {
          out.replaceChildren(errorBox(e));
        }
      },
    }, field('Status', redeliverStatus), field('Created since (optional)', since),
    h('button', { type: 'submit', class: 'secondary' }, 'Redeliver')),
    out,
    h('h2', {}, 'Dispatches'),
    dispatchList(path + '/dispatches', new URLSearchParams(), g, '#' + path));
}

// ---- dispatches ----

function dispatches(params) {
  show('Dispatches', dispatchList('/webhook-dispatches', params, generation, '#/dispatches'));
}

/** A filtered, paginated list of dispatches, newest first, refreshed every 2 s. */
function dispatchList(path, params, g, base) {
  const st = params.get('status') || '';
  const type = params.get('eventType') || '';
  const offset = Number(params.get('offset') || 0);
  const statusSelect = h('select', { id: 'f-status' }, h('option', { value: '' }, 'Any'),
    ['ACTIVE', 'SUCCEEDED', 'FAILED'].map((s) => h('option', { value: s, selected: s === st }, s)));
  const typeSelect = h('select', { id: 'f-dispatch-type' }, h('option', { value: '' }, 'Any'),
    [...EVENT_TYPES, 'TEST'].map((t) => h('option', { value: t, selected: t === type }, t)));
  const query = (o) => {
    const q = new URLSearchParams();
    if (statusSelect.value) q.set('status', statusSelect.value);
    if (typeSelect.value) q.set('eventType', typeSelect.value);
    if (o) q.set('offset', o);
    return q;
  };
  const filters = h('form', {
    class: 'filters',
    onsubmit: (ev) => {
      ev.preventDefault();
      go(base + '?' + query(0));
    },
  }, field('Status', statusSelect), field('Event type', typeSelect),
  h('button', { type: 'submit', class: 'secondary' }, 'Filter'));
  const list = h('div', { 'aria-live': 'polite' }, h('p', {}, 'Loading…'));
  const load = async () => {
    if (g !== generation) return;
    const q = new URLSearchParams({ desc: '1', limit: PAGE_SIZE, offset });
    if (st) q.set('status', st);
    if (type) q.set('eventType', type);
    try {
      const page = (await api('GET', path + '?' + q)).data;
      if (g !== generation) return;
      const pager = h('div', { class: 'actions' },
        h('span', {}, page.total === 0 ? 'None' : `${offset + 1}–${offset + page.count} of ${page.total}`),
        offset > 0 ? h('a', { href: base + '?' + query(Math.max(0, offset - PAGE_SIZE)) }, 'Newer') : null,
        offset + page.count < page.total ? h('a', { href: base + '?' + query(offset + PAGE_SIZE) }, 'Older') : null);
      list.replaceChildren(page.items.length === 0 ? h('p', {}, 'No dispatch matches.') : h('table', {},
        h('thead', {}, h('tr', {}, ['Dispatch', 'Status', 'Event type', 'Target', 'Calls', 'Next call']
          .map((t) => h('th', {}, t)))),
        h('tbody', {}, page.items.map((d) => h('tr', {},
          h('td', {}, h('a', { href: '#/dispatches/' + d.id }, time(d.createdAt))),
          h('td', {}, status(d.status)),
          h('td', {}, d.eventType),
          h('td', {}, d.webhook.requestUrl),
          h('td', {}, d.calls.length),
          h('td', {}, time(d.nextCallAt)))))), pager);
    } catch (e) {
      list.replaceChildren(errorBox(e));
    }
    setTimeout(load, 2000);
  };
  load();
  return h('div', {}, filters, list);
}

async function dispatch(id) {
  const g = generation;
  show('Dispatch', h('p', {}, 'Loading…'));
  const path = '/webhook-dispatches/' + encodeURIComponent(id);
  const out = h('div', { 'aria-live': 'polite', id: 'action-result' });
  const body = h('div', {});
  const render = (d) => {
    const headers = d.request ? Object.entries(d.request.headers).map(([k, v]) => k + ': ' + v).join('\n') : '';
    body.replaceChildren(
      h('dl', {},
        h('dt', {}, 'Status'), h('dd', { id: 'dispatch-status' }, status(d.status)),
        h('dt', {}, 'Event type'), h('dd', {}, d.eventType),
        h('dt', {}, 'Created'), h('dd', {}, time(d.createdAt)),
        h('dt', {}, 'Webhook'), h('dd', {}, h('a', { href: '#/webhooks/' + d.webhookId }, d.webhookId)),
        h('dt', {}, 'Request URL'), h('dd', {}, d.webhook.requestUrl),
        h('dt', {}, 'Next call'), h('dd', {}, time(d.nextCallAt))),
      h('div', { class: 'actions' }, h('button', {
        type: 'button',
        id: 'redeliver',
        disabled: d.status === 'ACTIVE',
        onclick: async () => {
          try {
            await api('POST', path + '/redeliver');
            out.replaceChildren(h('p', { class: 'notice' }, 'Delivering again.'));
            refresh();
          } catch (e) {
            out.replaceChildren(errorBox(e));
          }
        },
      }, 'Redeliver')),
      h('h2', {}, 'Request sent'),
      h('pre', { id: 'request-headers' }, headers || '(no headers)'),
      h('pre', { id: 'request-body' }, d.request ? d.request.body : ''),
      h('h2', {}, 'Calls'),
      d.calls.length === 0 ? h('p', {}, 'No call yet.') : h('table', { id: 'calls' },
        h('thead', {}, h('tr', {}, ['#', 'Started', 'Finished', 'Status', 'Error', 'Response body']
          .map((t) => h('th', {}, t)))),
        h('tbody', {}, d.calls.map((c, i) => h('tr', {},
          h('td', {}, i + 1), h('td', {}, time(c.startedAt)), h('td', {}, time(c.finishedAt)),
          h('td', {}, c.responseStatus === null ? '—' : c.responseStatus),
          h('td', {}, c.errorMessage || '—'),
          h('td', {}, h('pre', {}, c.responseBody || '')))))));
  };
  const refresh = async () => {
    if (g !== generation) return;
    try {
      const d = (await api('GET', path)).data;
      if (g !== generation) return;
      render(d);
      if (d.status === 'ACTIVE') setTimeout(refresh, 1000);
    } catch (e) {
      body.replaceChildren(errorBox(e));
    }
  };
  show('Dispatch ' + id, out, body);
  refresh();
}

// ---- routing ----

function failed(e) {
  if (e.status === 401) return signIn(e.message);
  show('Error', errorBox(e));
}

const ROUTES = [
  [/^\/?$/, overview],
  [/^\/webhooks$/, webhooks],
  [/^\/webhooks\/new$/, () => webhookForm(null)],
  [/^\/webhooks\/([^/]+)\/edit$/, webhookEdit],
  [/^\/webhooks\/([^/]+)$/, webhook],
  [/^\/dispatches$/, dispatches],
  [/^\/dispatches\/([^/]+)$/, dispatch],
];

function route() {
  generation += 1;
  if (!token()) return signIn();
  document.getElementById('nav').hidden = false;
  const hash = location.hash.replace(/^#/, '');
  const [path, query] = hash.split('?');
  const params = new URLSearchParams(query || '');
  for (const [re, page] of ROUTES) {
    const m = path.match(re);
    if (m) return m[1] !== undefined ? page(decodeURIComponent(m[1]), params) : page(params);
  }
  show('Not found', h('p', {}, 'There is no console page here. '), h('a', { href: '#/' }, 'Overview'));
}

document.getElementById('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  go('#/');
});
window.addEventListener('hashchange', route);
route();
