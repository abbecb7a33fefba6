// Pending reviews the viewer may decide: approve, or deny with a reason
// (required), through the gateway's /v1/reviews endpoints.
import { api, h, badge, when, title, viewer } from './app.js';

function decide(r, section) {
  const id = r.request.id;
  const reasonId = `reason-${id}`;
  const reason = h('textarea', { id: reasonId, name: 'reason', rows: 2, maxlength: 2000 });
  const out = h('p', { class: 'status', role: 'status' });
  const send = async (action) => {
    const text = reason.value.trim();
    if (action === 'deny' && !text) {
      out.textContent = 'A reason is required to deny.';
      reason.setAttribute('aria-invalid', 'true');
      reason.focus();
      return;
    }
    for (const b of section.querySelectorAll('button')) b.disabled = true;
    try {
      const { body } = await api(`/v1/reviews/${encodeURIComponent(id)}/${action}`, { method: 'POST', body: { reason: text } });
      out.textContent = `Review ${id} is now ${body.state}.`;
      section.querySelector('.state').replaceChildren(badge(body.state));
    } catch (err) {
      out.textContent = err.message;
      for (const b of section.querySelectorAll('button')) b.disabled = false;
    }
  };
  return h('form', { class: 'decide', onsubmit: (ev) => ev.preventDefault() },
    h('label', { for: reasonId }, 'Reason (required to deny)'), reason,
    h('div', { class: 'buttons' },
      h('button', { type: 'button', class: 'approve', onclick: () => send('approve') }, 'Approve'),
      h('button', { type: 'button', class: 'deny', onclick: () => send('deny') }, 'Deny')),
    out);
}

function card(r, me) {
  const q = r.request;
  const mine = q.chain.some((m) => m.toLowerCase() === (me || '').toLowerCase());
  const section = h('section', { class: 'review', 'aria-labelledby': `r-${q.id}` },
    h('h2', { id: `r-${q.id}` }, `Review ${q.id} `, h('span', { class: 'state' }, badge(r.state))),
    h('dl', { class: 'summary' },
      h('dt', {}, 'Requested by'), h('dd', {}, q.chain.join(' → ')),
      h('dt', {}, 'Connection'), h('dd', {}, q.connection),
      h('dt', {}, 'Rule'), h('dd', {}, q.rule),
      h('dt', {}, 'Statement'), h('dd', {}, h('code', {}, q.statement)),
      h('dt', {}, 'Approvals'), h('dd', {}, `${r.approvals.length} of ${q.required} (approvers: ${q.approvers.join(', ')})`),
      h('dt', {}, 'Requested'), h('dd', {}, when(q.created * 1000)),
      h('dt', {}, 'Expires'), h('dd', {}, when(q.expires * 1000)),
      h('dt', {}, 'Held request'), h('dd', {}, h('a', { href: `#/session/${encodeURIComponent(q.audit_id)}`, class: 'mono' }, q.audit_id))));
  if (mine) section.append(h('p', {}, 'You requested this: someone else must decide it.'));
  else section.append(decide(r, section));
  return section;
}

export async function reviewsPage(main, live) {
  title(main, 'Reviews');
  const [{ body }, me] = await Promise.all([api('/v1/reviews'), viewer]);
  if (!live()) return;
  const pending = (body.reviews || []).filter((r) => r.state === 'pending');
  main.append(h('p', { class: 'status', role: 'status' },
    pending.length ? `${pending.length} pending review(s) you requested or may decide.` : 'No pending reviews for you.'));
  for (const r of pending) main.append(card(r, me));
}
