// The console's shell: a hash router, the API client and small DOM helpers.
// Every call goes to the origin that served the page; whatever stands in
// front of it (`custody ui`, or a proxy such as IAP) adds the bearer token,
// so no token ever lives in this page, its URLs or its storage.
import { sessionsPage } from './sessions.js';
import { sessionPage } from './session.js';
import { reviewsPage } from './reviews.js';

export class ApiError extends Error {
  constructor(status, body) {
    const reason = body && typeof body === 'object' ? body.reason || body.error : body;
    super(`${status}: ${reason || 'request failed'}`);
    this.status = status;
    this.body = body;
  }
}

/** JSON (or text, with `raw`) from the gateway's API. */
export async function api(path, { method = 'GET', body, raw = false } = {}) {
  // `custody ui` forwards only calls that carry this header (no other
  // origin can add it without a CORS preflight); the gateway ignores it.
  const headers = { accept: raw ? '*/*' : 'application/json', 'x-custody-console': '1' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const resp = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let parsed = text;
  if (!raw) {
    try { parsed = JSON.parse(text); } catch { /* left as text */ }
  }
  if (!resp.ok) {
    let err = parsed;
    if (raw) { try { err = JSON.parse(text); } catch { /* text */ } }
    throw new ApiError(resp.status, err);
  }
  return { body: parsed, headers: resp.headers };
}

/** An element; strings among `children` become text (never HTML). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** How an outcome looks: ok, warn, bad or plain. */
export function tone(outcome) {
  const o = String(outcome || '').toLowerCase();
  if (/refused|forbidden|denied|revoked|failed|error|killed/.test(o)) return 'bad';
  if (/not sealed|expired|deadline|shutdown|unsigned|pending|held|approval_requested/.test(o)) return 'warn';
  if (/completed|closed|ended|verified|approved|allowed|sealed|used/.test(o)) return 'ok';
  return 'plain';
}

export function badge(text, kind = tone(text)) {
  return h('span', { class: `badge ${kind}` }, text);
}

export function when(t) {
  if (!t) return '';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toISOString().replace('T', ' ').replace('Z', ' UTC');
}

export function failure(err) {
  return h('p', { class: 'error', role: 'alert' }, err instanceof Error ? err.message : String(err));
}

/** The page's title, focused so screen readers announce the new page. */
export function title(main, text) {
  const t = h('h1', { tabindex: '-1' }, text);
  main.append(t);
  t.focus();
  document.title = `${text} · Custody`;
  return t;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query) };
}

let generation = 0;
async function route() {
  const main = document.getElementById('main');
  const mine = ++generation;
  const { parts, params } = parseHash();
  const page = parts[0] || 'sessions';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === (page === 'session' ? 'sessions' : page)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const fresh = h('div', { class: 'page' });
  main.replaceChildren(fresh);
  // A page that finishes after the viewer moved on draws into a detached node.
  const live = () => mine === generation;
  try {
    if (page === 'session' && parts[1]) await sessionPage(fresh, parts[1], live);
    else if (page === 'reviews') await reviewsPage(fresh, live);
    else await sessionsPage(fresh, params, live);
  } catch (err) {
    if (live()) fresh.append(failure(err));
  }
}

/** Who is looking, as the gateway names them ('' when unknown). */
export const viewer = api('/v1/connections').then(
  ({ body }) => body.principal || '',
  (err) => (err.status === 401 ? null : ''),
);

viewer.then((who) => {
  document.getElementById('viewer').textContent = who === null ? 'not signed in' : who ? `signed in as ${who}` : '';
});
window.addEventListener('hashchange', route);
route();
