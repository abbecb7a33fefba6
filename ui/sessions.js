// The sessions list: filters in the URL's hash (never a token), paged by
// the server (`next_page_token`), newest first.
import { api, h, badge, when, title } from './app.js';

const FILTERS = [
  ['since', 'Since', 'text', '24h, 7d, 2026-11-30 or an RFC 3339 time'],
  ['principal', 'Principal', 'text', 'user:alice@example.com'],
  ['connection', 'Connection', 'text', 'connection name'],
  ['mode', 'Mode', 'select', ['', 'tunnel', 'exec', 'mcp', 'read', 'review', 'revoke', 'delegate', 'refused']],
  ['outcome', 'Outcome', 'text', 'completed, client closed, not sealed…'],
];

function filterForm(params) {
  const fields = FILTERS.map(([name, label, kind, hint]) => {
    const id = `f-${name}`;
    let input;
    if (kind === 'select') {
      input = h('select', { id, name }, hint.map((v) => h('option', { value: v, selected: params.get(name) === v }, v || 'any')));
    } else {
      input = h('input', { id, name, type: 'text', value: params.get(name) || '', placeholder: hint, autocomplete: 'off' });
    }
    return h('div', { class: 'field' }, h('label', { for: id }, label), input);
  });
  const limit = h('select', { id: 'f-limit', name: 'limit' },
    ['25', '50', '100', '200'].map((v) => h('option', { value: v, selected: (params.get('limit') || '50') === v }, v)));
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter sessions' },
    fields,
    h('div', { class: 'field' }, h('label', { for: 'f-limit' }, 'Per page'), limit),
    h('button', { type: 'submit' }, 'Apply'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
    location.hash = `#/sessions?${q}`;
  });
  return form;
}

function row(s) {
  const link = h('a', { href: `#/session/${encodeURIComponent(s.audit_id)}` }, s.audit_id);
  return h('tr', {},
    h('td', {}, when(s.started)),
    h('td', { class: 'mono' }, link),
    h('td', {}, s.principal),
    h('td', {}, s.connection),
    h('td', {}, s.mode),
    h('td', { class: 'num' }, s.statements ?? '–'),
    h('td', { class: 'num' }, s.rows ?? '–'),
    h('td', {}, badge(s.outcome)));
}

export async function sessionsPage(main, params, live) {
  title(main, 'Sessions');
  main.append(filterForm(params));
  const q = new URLSearchParams(params);
  const status = h('p', { class: 'status', role: 'status' }, 'Loading…');
  main.append(status);
  const { body } = await api(`/v1/sessions?${q}`);
  if (!live()) return;
  const list = body.sessions || [];
  const scope = body.all ? 'all sessions' : 'your own sessions (you are not an auditor)';
  const of = body.total == null ? '' : ` of ${body.total}${params.get('page_token') ? ' from here on' : ''}`;
  status.textContent = `${list.length} session${list.length === 1 ? '' : 's'} shown${of}; ${scope}.`;
  const head = ['Started (UTC)', 'Audit id', 'Principal', 'Connection', 'Mode', 'Statements', 'Rows', 'Outcome'];
  main.append(h('table', { class: 'sessions' },
    h('caption', { class: 'sr-only' }, 'Recorded sessions, newest first'),
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, list.map(row))));
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
  if (params.get('page_token')) {
    const first = new URLSearchParams(params);
    first.delete('page_token');
    pager.append(h('a', { href: `#/sessions?${first}` }, '« Newest'));
  }
  if (body.next_page_token) {
    const next = new URLSearchParams(params);
    next.set('page_token', body.next_page_token);
    pager.append(h('a', { href: `#/sessions?${next}`, rel: 'next' }, 'Older »'));
  }
  main.append(pager);
}
