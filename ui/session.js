// One session: verify result, chain of custody, the statement timeline and,
// for SSH terminals, a replay in asciinema-player (embedded, pinned).
import { api, h, badge, when, title } from './app.js';

function verdict(v) {
  const kind = { verified: 'ok', unsigned: 'warn', failed: 'bad' }[v.status] || 'plain';
  const words = {
    verified: 'Verified: signed by the gateway and complete.',
    unsigned: 'Unsigned: complete, but the gateway signs no recordings ([recording] signing_key).',
    failed: 'Failed: this recording may be forged or incomplete.',
  }[v.status] || v.status;
  return h('section', { class: `verdict ${kind}`, 'aria-labelledby': 'v-title', role: v.status === 'failed' ? 'alert' : null },
    h('h2', { id: 'v-title' }, 'Verification ', badge(v.status, kind)),
    h('p', {}, words),
    v.problems.length ? h('ul', { class: 'problems' }, v.problems.map((p) => h('li', {}, p))) : null,
    h('ul', { class: 'facts' }, v.facts.map((f) => h('li', {}, f))));
}

function chain(d) {
  const hands = d.chain || [];
  const roles = hands.map((_, i) => (hands.length === 1 ? 'originator and caller' : i === 0 ? 'originator' : i === hands.length - 1 ? 'caller' : 'intermediary'));
  return h('section', { 'aria-labelledby': 'c-title' },
    h('h2', { id: 'c-title' }, 'Chain of custody'),
    h('ol', { class: 'chain' }, hands.map((m, i) => h('li', {}, h('span', { class: 'hand' }, m), h('span', { class: 'role' }, roles[i])))),
    d.root_audit_id ? h('p', {}, 'Delegated; the chain started at ', h('a', { href: `#/session/${encodeURIComponent(d.root_audit_id)}`, class: 'mono' }, d.root_audit_id)) : null);
}

function summary(d) {
  const s = d.summary;
  const start = d.events.find((e) => e.type === 'session_start') || {};
  const items = [
    ['Principal', s.principal], ['Connection', s.connection], ['Mode', s.mode],
    ['Started', when(s.started)], ['Client', start.client_addr], ['Granted by', start.granted_by],
    ['Statements', s.statements ?? '–'], ['Rows', s.rows ?? '–'], ['Outcome', badge(s.outcome)],
  ];
  return h('dl', { class: 'summary' }, items.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '–')]));
}

function masked(m) {
  const parts = Object.entries(m || {}).map(([k, n]) => `${k}: ${n}`);
  return parts.length ? h('span', { class: 'masked' }, parts.join(', ')) : '–';
}

/** One timeline row: what happened, its timing, rows, masking, verdicts. */
function line(e, t0) {
  const at = `+${((new Date(e.ts) - t0) / 1000).toFixed(3)}s`;
  const cells = (what, detail, ms = '', rows = '', mask = '–', tag = '') =>
    h('tr', { class: `ev ${e.type}` },
      h('td', { class: 'num mono' }, at), h('td', {}, what), h('td', { class: 'detail' }, detail),
      h('td', { class: 'num' }, ms), h('td', { class: 'num' }, rows), h('td', {}, mask), h('td', {}, tag));
  switch (e.type) {
    case 'statement':
      return cells('statement', h('code', {}, e.sql), `${Number(e.duration_ms).toFixed(1)} ms`, e.rows, masked(e.masked),
        e.error ? badge(`error ${e.error.code}`, 'bad') : badge(e.tags.join(' ') || 'ok', 'ok'));
    case 'guardrail':
      return cells('guardrail', [h('code', {}, e.sql), ` rule ${e.rule}`], '', '', '–', badge(e.outcome));
    case 'review':
      return cells('review', `${e.review_id} ${e.action}${e.by ? ` by ${e.by}` : ''}${e.reason ? `: ${e.reason}` : ''}`, '', '', '–', badge(e.action));
    case 'refused':
      return cells('refused', e.reason, '', '', '–', badge('refused', 'bad'));
    case 'ssh_request':
      return cells(`ssh ${e.request}`, e.detail || '', '', '', '–', badge(e.outcome));
    case 'exit':
      return cells('exit', e.signal ? `signal ${e.signal}` : `status ${e.status}`, '', '', '–', badge(e.status === 0 ? 'ok' : 'non-zero', e.status === 0 ? 'ok' : 'warn'));
    case 'file':
      return cells(`file ${e.op}`, `${e.path}${e.to ? ` → ${e.to}` : ''} (${e.bytes_written} B written, ${e.bytes_read} B read)`);
    case 'session_end':
      return cells('session ended', `${e.reason}; ${e.bytes_from_client} bytes in, ${e.bytes_to_client} out`, '', e.rows, '–', badge(e.reason));
    case 'session_start':
      return cells('session started', `${e.principal} → ${e.connection} (${e.mode})`);
    case 'recording_read':
      return cells('recording read', `${e.read_audit_id} (${e.view})`);
    case 'delegation':
      return cells('delegation', `${e.chain.join(' → ')} to ${e.to}`);
    case 'revocation':
      return cells('revocation', `${e.principal}: ${e.reason}`, '', '', '–', badge('revoked', 'bad'));
    case 'error':
      return cells('error', e.message, '', '', '–', badge('error', 'bad'));
    case 'mcp':
      return cells('mcp tool', `${e.tool} called by ${e.client || 'an unnamed client'} ${e.client_version || ''}`.trim());
    case 'upstream_login':
      return cells('upstream login', `${e.method} as ${e.user}`);
    case 'output':
    case 'input': {
      // Shown as text, cut long: the recording has all of it.
      const data = e.data.length > 4000 ? `${e.data.slice(0, 4000)}… (${e.data.length} characters)` : e.data;
      const what = e.type === 'input' ? 'typed' : e.stream === 'e' ? 'stderr' : 'stdout';
      return cells(what, h('code', {}, data));
    }
    case 'cancel':
      return cells('cancel', e.outcome);
    default:
      return cells(e.type.replace(/_/g, ' '), '');
  }
}

function timeline(events, terminal) {
  // A terminal's bytes are the replay's; the timeline counts them only.
  const stream = ['output', 'input', 'pty', 'resize'];
  const shown = terminal ? events.filter((e) => !stream.includes(e.type)) : events;
  const t0 = new Date(events[0]?.ts || 0);
  const replayed = events.length - shown.length;
  const head = ['At', 'Event', 'Detail', 'Time', 'Rows', 'Masked', 'Result'];
  return h('section', { 'aria-labelledby': 't-title' },
    h('h2', { id: 't-title' }, 'Timeline'),
    replayed ? h('p', {}, `${replayed} terminal event(s) (output, input, resizes) are in the replay.`) : null,
    h('table', { class: 'timeline' },
      h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, shown.map((e) => line(e, t0)))));
}

async function replay(section, id) {
  const { body, headers } = await api(`/v1/sessions/${encodeURIComponent(id)}/asciicast`, { raw: true });
  const box = h('div', { class: 'player', id: 'player' });
  section.append(h('p', {}, 'Replay verified: ', badge(headers.get('x-custody-verify') || 'unknown')), box);
  if (!window.AsciinemaPlayer) {
    box.append(h('p', { class: 'error' }, 'The player did not load.'));
    return;
  }
  const opts = { fit: 'width', idleTimeLimit: 1, controls: true, preload: true };
  // A client without a terminal of its own (ssh -tt from a script) reports
  // no size; replay that at 80x24 rather than in one cell.
  let header = {};
  try { header = JSON.parse(body.slice(0, body.indexOf('\n'))); } catch { /* the player says */ }
  if (!(header.width > 1 && header.height > 1)) Object.assign(opts, { cols: 80, rows: 24 });
  window.AsciinemaPlayer.create({ data: body }, box, opts);
}

export async function sessionPage(main, id, live) {
  title(main, `Session ${id}`);
  const { body: d } = await api(`/v1/sessions/${encodeURIComponent(id)}`);
  if (!live()) return;
  main.append(
    h('p', {}, h('a', { href: '#/sessions' }, '← All sessions')),
    verdict(d.verify), summary(d), chain(d));
  if (d.terminal) {
    const section = h('section', { 'aria-labelledby': 'r-title' }, h('h2', { id: 'r-title' }, 'Terminal replay'));
    main.append(section);
    replay(section, id).catch((err) => section.append(h('p', { class: 'error', role: 'alert' }, err.message)));
  }
  main.append(timeline(d.events, d.terminal));
}
