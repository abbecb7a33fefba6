// The reviewers' console in a real browser (tests/console.rs): Debian's
// chromium, headless, driven by playwright-core (pinned, installed by
// scripts/test.sh under target/npm). Everything it is to find comes in
// CONSOLE_E2E (JSON); it prints one line per check and exits 1 on the first
// that fails. Screenshots go to the folder the input names.
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const input = JSON.parse(process.env.CONSOLE_E2E);
const TIMEOUT = 20000;

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok ${what}`);
}

async function launch() {
  const profile = fs.mkdtempSync(path.join(require('os').tmpdir(), 'custody-chromium-'));
  // A fresh profile each run: Playwright passes it as --user-data-dir.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  return { browser, profile };
}

async function open(browser, base) {
  const page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`); });
  // Nothing but the console's own origin is ever asked for.
  page.on('request', (r) => { if (!r.url().startsWith(base)) problems.push(`foreign request: ${r.url()}`); });
  return { page, problems };
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(input.shots, name), fullPage: true });
}

async function sessionsList(page) {
  await page.goto(`${input.auditor}/ui/`);
  await page.waitForSelector('table.sessions tbody tr');
  const text = await page.textContent('table.sessions');
  for (const [what, id] of [['pg', input.pg], ['ssh', input.ssh], ['delegated', input.delegated], ['tampered', input.tampered]]) {
    check(text.includes(id), `the list shows the ${what} session`);
  }
  check((await page.locator('table.sessions .badge').count()) > 0, 'outcomes are badges');
  // Filters are form fields with labels; applying one narrows the list.
  await page.getByLabel('Connection').fill('web-1');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForFunction(() => location.hash.includes('connection=web-1'));
  await page.waitForSelector('table.sessions tbody tr');
  const narrowed = await page.textContent('table.sessions tbody');
  check(narrowed.includes(input.ssh) && !narrowed.includes(input.pg), 'the connection filter narrows the list');
  await page.goto(`${input.auditor}/ui/#/sessions?mode=exec`);
  await page.waitForSelector('table.sessions tbody tr');
  await shot(page, 'sessions.png');
}

async function pgSession(page) {
  await page.goto(`${input.auditor}/ui/#/session/${input.pg}`);
  await page.waitForSelector('table.timeline');
  const body = await page.textContent('main');
  check(body.includes('select'), 'the PostgreSQL session shows its statement');
  check(!body.includes(input.secret), 'the secret value is not on the page');
  check(await page.locator('.verdict.ok').count() === 1, 'the PostgreSQL session verifies');
  const masked = await page.textContent('table.timeline');
  check(/email: \d/.test(masked), 'masked counts per detector are shown');
  await shot(page, 'session-pg.png');
}

async function sshSession(page, problems) {
  await page.goto(`${input.auditor}/ui/#/session/${input.ssh}`);
  await page.waitForSelector('.ap-player');
  await page.locator('.ap-playback-button').click();
  try {
    await page.waitForFunction(() => (document.querySelector('.ap-term')?.textContent || '').includes('marker-42'));
  } catch (e) {
    const where = path.join(require('os').tmpdir(), 'custody-console-failed-ssh.png');
    await page.screenshot({ path: where, fullPage: true });
    const html = await page.evaluate(() => document.querySelector('.player').outerHTML.slice(0, 1500));
    throw new Error(`${e.message} (screenshot ${where})\n${problems.join('\n')}\n${html}`);
  }
  check(true, 'the SSH session replays in the player');
  await shot(page, 'session-ssh.png');
}

async function sshExecSession(page) {
  await page.goto(`${input.auditor}/ui/#/session/${input.ssh_exec}`);
  await page.waitForSelector('table.timeline');
  check((await page.textContent('table.timeline')).includes('exec-out-42'), "an SSH exec session shows the command's output");
}

async function delegatedSession(page) {
  await page.goto(`${input.auditor}/ui/#/session/${input.delegated}`);
  await page.waitForSelector('ol.chain li');
  const hands = await page.locator('ol.chain .hand').allTextContents();
  check(JSON.stringify(hands) === JSON.stringify(input.chain), `the chain is drawn originator to caller (${hands.join(' → ')})`);
  await shot(page, 'session-delegated.png');
}

async function tamperedSession(page) {
  await page.goto(`${input.auditor}/ui/#/session/${input.tampered}`);
  await page.waitForSelector('.verdict');
  check(await page.locator('.verdict.bad').count() === 1, 'the tampered recording shows as failed');
  const problems = await page.textContent('.verdict .problems');
  check(problems.includes('altered'), 'and says what is wrong');
}

async function approve(page) {
  await page.goto(`${input.auditor}/ui/#/reviews`);
  const card = page.locator('section.review', { hasText: input.review });
  await card.waitFor();
  // Deny needs a reason: refused on the page without one.
  await card.getByRole('button', { name: 'Deny' }).click();
  check((await card.locator('.status').textContent()).includes('reason is required'), 'deny asks for a reason');
  await shot(page, 'reviews.png');
  await card.getByLabel(/Reason/).fill('checked with the on-call DBA');
  await card.getByRole('button', { name: 'Approve' }).click();
  await card.locator('.state .badge', { hasText: 'approved' }).waitFor();
  check(true, 'the review is approved from the page');
}

async function ownOnly(page) {
  await page.goto(`${input.own}/ui/`);
  await page.waitForSelector('table.sessions tbody tr');
  const text = await page.textContent('table.sessions tbody');
  check(text.includes(input.bob) && !text.includes(input.pg), 'a non-auditor sees only its own sessions');
  check((await page.textContent('main')).includes('your own sessions'), 'and is told so');
  await page.goto(`${input.own}/ui/#/session/${input.pg}`);
  await page.waitForSelector('p.error');
  check((await page.textContent('p.error')).startsWith('403'), "another's session is refused (403)");
}

async function main() {
  const { browser, profile } = await launch();
  try {
    const { page, problems } = await open(browser, input.auditor);
    await sessionsList(page);
    await pgSession(page);
    await sshSession(page, problems);
    await sshExecSession(page);
    await delegatedSession(page);
    await tamperedSession(page);
    await approve(page);
    check(problems.length === 0, `no page errors or foreign requests ${problems.join('; ')}`);
    const other = await open(browser, input.own);
    await ownOnly(other.page);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
