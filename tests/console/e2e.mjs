// End-to-end scenarios of the approval console in Debian's Chromium, run by tests/console.rs:
//   node tests/console/e2e.mjs <scenario>
// with CONSOLE_URL (http://localhost:PORT) and the scenario's own variables. Prints one JSON
// line with what it saw and exits 0; on a failed expectation, exits 1 with the reason.
//
// Scenarios:
//   approve   LOGIN, REQUEST[, SHOTS]  sign in, register a passkey, find the request, approve it
//                                      with the keyboard alone (screenshots into SHOTS if set)
//   operator  LOGIN, REQUEST           the agent's operator: the peer vote is disabled and says
//                                      why, and a vote forced through the API is refused
//   attacks   LOGIN, REQ_A, REQ_B, REQ_DECIDED, REQ_EXPIRED
//                                      CSRF, an assertion for another request, a replay, votes
//                                      on decided and expired requests
//   expired   LOGIN                    a session outlives its lifetime
//   latency   LOGIN, MARKER            signs in, then reports when a request whose id is in the
//                                      file MARKER appears on the page (the benchmark)

import { readFile } from 'node:fs/promises';

import { launch, addPasskeyAuthenticator, signInAtIdp } from './browser.mjs';

const base = process.env.CONSOLE_URL;
const scenario = process.argv[2];
if (!base || !scenario) {
  console.error('usage: CONSOLE_URL=... node tests/console/e2e.mjs <scenario>');
  process.exit(2);
}

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
}

async function signIn(page, login) {
  await page.goto(base + '/');
  await page.click('#sign-in');
  await signInAtIdp(page, login, { returnUrl: base });
  await page.waitForURL((u) => u.origin === new URL(base).origin && !u.pathname.startsWith('/auth'), { timeout: 15000 });
}

async function registerPasskey(page) {
  if (!page.url().endsWith('/passkey')) await page.goto(base + '/passkey');
  await page.click('#register');
  await page.waitForSelector('#status.done');
  return (await page.textContent('#status')).trim();
}

// The same JSON the console's own script sends, made in the page with its passkey.
async function assertion(page, options) {
  return page.evaluate(async (options) => {
    const fromB64u = (s) => {
      s = s.replace(/-/g, '+').replace(/_/g, '/');
      while (s.length % 4) s += '=';
      const bin = atob(s);
      return Uint8Array.from(bin, (c) => c.charCodeAt(0)).buffer;
    };
    const toB64u = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const pk = options.publicKey;
    pk.challenge = fromB64u(pk.challenge);
    (pk.allowCredentials || []).forEach((c) => { c.id = fromB64u(c.id); });
    const a = await navigator.credentials.get({ publicKey: pk });
    return {
      id: a.id,
      rawId: toB64u(a.rawId),
      type: a.type,
      response: {
        authenticatorData: toB64u(a.response.authenticatorData),
        clientDataJSON: toB64u(a.response.clientDataJSON),
        signature: toB64u(a.response.signature),
        userHandle: a.response.userHandle ? toB64u(a.response.userHandle) : null,
      },
      extensions: {},
    };
  }, options);
}

// A POST from the page (same origin, the session cookie), with the page's CSRF token unless
// `csrf` says otherwise (null: no token).
async function post(page, path, body, csrf) {
  return page.evaluate(async ({ path, body, csrf }) => {
    const token = document.querySelector('meta[name="csrf-token"]')?.content;
    const headers = { 'Content-Type': 'application/json' };
    const t = csrf === undefined ? token : csrf;
    if (t !== null) headers['X-CSRF-Token'] = t;
    const r = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body), credentials: 'same-origin' });
    let json = null;
    try { json = await r.json(); } catch (e) { /* not json */ }
    return { status: r.status, json };
  }, { path, body, csrf });
}

async function digestOf(page, id) {
  await page.goto(`${base}/requests/${id}`);
  return page.getAttribute('#vote-form', 'data-digest');
}

// Every form control has a label, every button a name (a cheap accessibility check).
async function unlabelled(page) {
  return page.evaluate(() => {
    const bad = [];
    for (const el of document.querySelectorAll('input:not([type=hidden]), textarea, select')) {
      const labelled = (el.id && document.querySelector(`label[for="${el.id}"]`)) || el.getAttribute('aria-label') || el.closest('label');
      if (!labelled) bad.push(el.outerHTML.slice(0, 80));
    }
    for (const b of document.querySelectorAll('button, a')) {
      if (!(b.textContent.trim() || b.getAttribute('aria-label'))) bad.push(b.outerHTML.slice(0, 80));
    }
    return bad;
  });
}

async function run(page, out) {
  const login = process.env.LOGIN;
  switch (scenario) {
    case 'approve': {
      const id = process.env.REQUEST;
      await signIn(page, login);
      out.first_page = new URL(page.url()).pathname;
      out.registered = await registerPasskey(page);
      await page.goto(base + '/');
      await page.waitForSelector(`a[href="/requests/${id}"]`);
      out.listed = true;
      out.unlabelled_home = await unlabelled(page);
      await page.click(`a[href="/requests/${id}"]`);
      await page.waitForSelector('#approve');
      out.unlabelled_request = await unlabelled(page);
      out.page_text = (await page.innerText('main')).replace(/\s+/g, ' ');
      if (process.env.SHOTS) {
        await page.goto(`${base}/requests/${process.env.SHOT_REQUEST || id}`);
        await page.waitForSelector('#approve');
        await page.screenshot({ path: `${process.env.SHOTS}/console-request-desktop.png`, fullPage: true });
        await page.setViewportSize({ width: 390, height: 844 });
        await page.screenshot({ path: `${process.env.SHOTS}/console-request-phone.png`, fullPage: true });
        await page.setViewportSize({ width: 1000, height: 800 });
        await page.goto(`${base}/requests/${id}`);
        await page.waitForSelector('#approve');
      }
      // The keyboard alone: Tab to the note, type it, Tab to Approve, Enter.
      await page.focus('body');
      let steps = 0;
      while (steps++ < 80 && (await page.evaluate(() => document.activeElement?.id)) !== 'note') {
        await page.keyboard.press('Tab');
      }
      expect(steps < 80, 'Tab reaches the note field');
      await page.keyboard.type('looks right to me');
      await page.keyboard.press('Tab');
      expect((await page.evaluate(() => document.activeElement?.id)) === 'approve', 'Tab goes from the note to Approve');
      await page.keyboard.press('Enter');
      await page.waitForSelector('#status.done, #status.problem');
      out.result = (await page.textContent('#status')).trim();
      expect(out.result.startsWith('Approved'), `the vote is approved: ${out.result}`);
      return;
    }
    case 'operator': {
      const id = process.env.REQUEST;
      await signIn(page, login);
      await registerPasskey(page);
      await page.goto(`${base}/requests/${id}`);
      out.approve_disabled = await page.isDisabled('#approve');
      out.why_not = (await page.textContent('#why-not')).trim();
      out.described_by = await page.getAttribute('#approve', 'aria-describedby');
      // Forced through the API with a real assertion: the broker refuses the vote.
      const digest = await page.getAttribute('#vote-form', 'data-digest');
      const started = await post(page, '/confirm/options', { kind: 'vote', id, digest, decision: 'approve', note: null });
      expect(started.status === 200, `options are given: ${JSON.stringify(started)}`);
      const credential = await assertion(page, started.json.options);
      const forced = await post(page, '/confirm', { nonce: started.json.nonce, credential });
      out.forced = forced;
      return;
    }
    case 'attacks': {
      const [a, b] = [process.env.REQ_A, process.env.REQ_B];
      await signIn(page, login);
      await registerPasskey(page);
      const da = await digestOf(page, a);
      const db = await digestOf(page, b);
      const vote = (id, digest) => ({ kind: 'vote', id, digest, decision: 'approve', note: null });
      out.csrf_missing = await post(page, '/confirm/options', vote(a, da), null);
      out.csrf_wrong = await post(page, '/confirm/options', vote(a, da), 'f'.repeat(64));
      // An assertion made for A, presented to confirm B.
      const forA = await post(page, '/confirm/options', vote(a, da));
      const signedForA = await assertion(page, forA.json.options);
      const forB = await post(page, '/confirm/options', vote(b, db));
      out.other_request = await post(page, '/confirm', { nonce: forB.json.nonce, credential: signedForA });
      // A used for A (counts), then replayed: refused.
      out.used = await post(page, '/confirm', { nonce: forA.json.nonce, credential: signedForA });
      out.replayed = await post(page, '/confirm', { nonce: forA.json.nonce, credential: signedForA });
      // The same assertion under a fresh nonce for A: a replay too.
      const again = await post(page, '/confirm/options', vote(a, da));
      out.replayed_fresh_nonce = again.status === 200
        ? await post(page, '/confirm', { nonce: again.json.nonce, credential: signedForA })
        : again;
      // Decided and expired requests.
      for (const [key, id] of [['decided', process.env.REQ_DECIDED], ['expired', process.env.REQ_EXPIRED]]) {
        if (!id) continue;
        const d = await digestOf(page, id);
        out[`${key}_page`] = (await page.textContent('#why-not'))?.trim() ?? null;
        const s = await post(page, '/confirm/options', vote(id, d));
        if (s.status !== 200) { out[key] = s; continue; }
        const cred = await assertion(page, s.json.options);
        out[key] = await post(page, '/confirm', { nonce: s.json.nonce, credential: cred });
      }
      return;
    }
    case 'expired': {
      await signIn(page, login);
      out.signed_in = new URL(page.url()).pathname;
      await page.waitForTimeout(Number(process.env.WAIT_MS || 3500));
      out.post = await post(page, '/confirm/options', { kind: 'resume' });
      await page.goto(base + '/sessions');
      out.page = (await page.textContent('main')).replace(/\s+/g, ' ').trim();
      return;
    }
    case 'latency': {
      await signIn(page, login);
      await registerPasskey(page);
      await page.goto(base + '/');
      console.log(JSON.stringify({ ready: true }));
      // Poll the page the way an approver's open tab would be refreshed.
      const marker = process.env.MARKER;
      const deadline = Date.now() + 30000;
      while (Date.now() < deadline) {
        let id = '';
        try { id = (await readFile(marker, 'utf8')).trim(); } catch (e) { /* not yet */ }
        if (id) {
          await page.goto(base + '/');
          if (await page.$(`a[href="/requests/${id}"]`)) {
            out.seen_at_ms = Date.now();
            return;
          }
        }
        await page.waitForTimeout(5);
      }
      throw new Error('the request never appeared');
    }
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

const out = { scenario };
const b = await launch();
let code = 0;
try {
  await addPasskeyAuthenticator(b.page);
  await run(b.page, out);
} catch (e) {
  out.error = String(e && e.stack || e);
  out.url = b.page.url();
  try { out.text = (await b.page.textContent('body')).replace(/\s+/g, ' ').slice(0, 2000); } catch (_) { /* gone */ }
  code = 1;
} finally {
  await b.close();
}
console.log(JSON.stringify(out));
process.exit(code);
