// Smoke test of the console test harness, no Rust involved:
//   node tests/console/smoke.mjs
// idp.mjs (a child process) + a tiny relying party served here + Chromium
// (browser.mjs): OpenID Connect code flow with PKCE, then a passkey
// registration and assertion with user verification, under a strict CSP.
// Exit 0 on success; non-zero with a message on failure. SMOKE_VERBOSE=1
// shows the IdP's stderr live. Screenshot: /tmp/smoke.png.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { createInterface } from 'node:readline';

import { createRemoteJWKSet, jwtVerify } from 'jose';

import { launch, addPasskeyAuthenticator, signInAtIdp } from './browser.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const CLIENT_ID = 'mandate-console';
const SCREENSHOT = '/tmp/smoke.png';
const t0 = performance.now();
const timings = [];
const step = (name) => {
  timings.push([name, performance.now()]);
  if (process.env.SMOKE_VERBOSE) console.log(`.. ${name}`);
};
const b64url = (buf) => Buffer.from(buf).toString('base64url');

function fail(msg) {
  throw new Error(msg);
}

// ---------------------------------------------------------------- the RP

const CSP = "default-src 'self'; frame-ancestors 'none'";
const pending = new Map(); // state -> { nonce, verifier }
let rpOrigin;
let oidc; // discovery document
let jwks;

const html = (title, body) => `<!doctype html>
<html><head><meta charset="utf-8"><title>${title}</title></head>
<body>${body}</body></html>`;
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// In the page, under the CSP: the script is a file of this origin.
const PASSKEY_JS = `
const b64u = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
  .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
const out = document.getElementById('result');
function uvOf(authenticatorData) {
  const flags = new Uint8Array(authenticatorData)[32];
  return { flags, up: (flags & 0x01) !== 0, uv: (flags & 0x04) !== 0 };
}
async function run() {
  const user = document.body.dataset.user;
  const created = await navigator.credentials.create({ publicKey: {
    rp: { id: 'localhost', name: 'mandate console (smoke)' },
    user: { id: new TextEncoder().encode(user), name: user, displayName: user },
    challenge: crypto.getRandomValues(new Uint8Array(32)),
    pubKeyCredParams: [{ type: 'public-key', alg: -7 }, { type: 'public-key', alg: -257 }],
    authenticatorSelection: { residentKey: 'required', requireResidentKey: true,
      userVerification: 'required', authenticatorAttachment: 'platform' },
    attestation: 'none',
    timeout: 10000,
  } });
  const regData = created.response.getAuthenticatorData();
  const reg = uvOf(regData);
  if (!reg.uv) throw new Error('registration: UV flag not set, flags=' + reg.flags);
  // Discoverable: no allowCredentials, the authenticator picks the passkey.
  const asserted = await navigator.credentials.get({ publicKey: {
    rpId: 'localhost',
    challenge: crypto.getRandomValues(new Uint8Array(32)),
    userVerification: 'required',
    timeout: 10000,
  } });
  const got = uvOf(asserted.response.authenticatorData);
  if (!got.uv) throw new Error('assertion: UV flag not set, flags=' + got.flags);
  if (asserted.id !== created.id) throw new Error('assertion used another credential');
  const userHandle = new TextDecoder().decode(asserted.response.userHandle);
  if (userHandle !== user) throw new Error('userHandle ' + userHandle + ' != ' + user);
  return { credentialId: created.id, regFlags: reg.flags, getFlags: got.flags,
    authenticatorData: b64u(asserted.response.authenticatorData), userHandle };
}
// The CSP must be in force: the inline script on the page must not have run.
if (document.body.dataset.inline) throw new Error('an inline script ran despite the CSP');
document.getElementById('go').addEventListener('click', () => {
  out.textContent = 'running';
  run().then((r) => { out.textContent = JSON.stringify(r); out.dataset.status = 'ok'; },
    (e) => { out.textContent = String(e && e.stack || e); out.dataset.status = 'error'; });
});
document.body.dataset.ready = '1';
`;

async function rpHandler(req, res) {
  const url = new URL(req.url, rpOrigin);
  const send = (status, type, body, headers = {}) => {
    res.writeHead(status, {
      'content-type': type, 'content-security-policy': CSP, 'cache-control': 'no-store', ...headers,
    });
    res.end(body);
  };
  try {
    if (url.pathname === '/login') {
      const state = b64url(randomBytes(16));
      const nonce = b64url(randomBytes(16));
      const verifier = b64url(randomBytes(32));
      pending.set(state, { nonce, verifier });
      const auth = new URL(oidc.authorization_endpoint);
      auth.search = new URLSearchParams({
        client_id: CLIENT_ID,
        redirect_uri: `${rpOrigin}/callback`,
        response_type: 'code',
        scope: 'openid email',
        state,
        nonce,
        code_challenge: b64url(createHash('sha256').update(verifier).digest()),
        code_challenge_method: 'S256',
        ...(url.searchParams.get('prompt') ? { prompt: url.searchParams.get('prompt') } : {}),
      });
      res.writeHead(303, { location: auth.href, 'cache-control': 'no-store' });
      res.end();
      return;
    }
    if (url.pathname === '/callback') {
      const p = url.searchParams;
      if (p.get('error')) fail(`IdP error: ${p.get('error')}: ${p.get('error_description')}`);
      const flow = pending.get(p.get('state'));
      if (!flow) fail('unknown state');
      pending.delete(p.get('state'));
      if (p.get('iss') !== oidc.issuer) fail(`iss ${p.get('iss')} != ${oidc.issuer}`);
      const tokenRes = await fetch(oidc.token_endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          grant_type: 'authorization_code',
          code: p.get('code'),
          redirect_uri: `${rpOrigin}/callback`,
          client_id: CLIENT_ID,
          code_verifier: flow.verifier,
        }),
      });
      const tokens = await tokenRes.json();
      if (!tokenRes.ok) fail(`token endpoint ${tokenRes.status}: ${JSON.stringify(tokens)}`);
      // The payload, decoded (and, since jose is at hand, verified).
      const [, payloadPart] = tokens.id_token.split('.');
      const claims = JSON.parse(Buffer.from(payloadPart, 'base64url').toString());
      await jwtVerify(tokens.id_token, jwks, { issuer: oidc.issuer, audience: CLIENT_ID });
      if (claims.nonce !== flow.nonce) fail(`nonce ${claims.nonce} != ${flow.nonce}`);
      if (claims.email !== `${claims.sub}@example.test` || claims.email_verified !== true) {
        fail(`email claims: ${JSON.stringify(claims)}`);
      }
      lastClaims = claims;
      send(200, 'text/html; charset=utf-8', html('signed in',
        `<p id="who">signed in as ${esc(claims.sub)}</p>`
        + `<p><a id="passkey" href="/passkey?user=${encodeURIComponent(claims.sub)}">passkey</a></p>`));
      return;
    }
    if (url.pathname === '/passkey') {
      send(200, 'text/html; charset=utf-8', html('passkey',
        `<p>passkey for ${esc(url.searchParams.get('user'))}</p>`
        + '<button id="go" type="button">register and sign</button>'
        + '<pre id="result"></pre>'
        + '<script>document.body.dataset.inline = "ran";</script>'
        + '<script src="/passkey.js"></script>')
        .replace('<body>', `<body data-user="${esc(url.searchParams.get('user'))}">`));
      return;
    }
    if (url.pathname === '/passkey.js') {
      send(200, 'text/javascript; charset=utf-8', PASSKEY_JS);
      return;
    }
    if (url.pathname === '/favicon.ico') {
      send(204, 'image/x-icon', '');
      return;
    }
    send(404, 'text/plain', 'not found');
  } catch (err) {
    send(500, 'text/plain; charset=utf-8', `rp error: ${err.message}`);
  }
}
let lastClaims;

// ---------------------------------------------------------------- the run

let idp;
let idpStderr = '';
let idpExit;
let session;
const pageConsole = [];
const rp = http.createServer((req, res) => { rpHandler(req, res); });

async function startIdp() {
  idp = spawn(process.execPath, [path.join(HERE, 'idp.mjs')], {
    env: { ...process.env, REDIRECT_URIS: `${rpOrigin}/callback`, CLIENT_ID, IDP_PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  idpExit = new Promise((resolve) => idp.on('exit', (code, signal) => resolve({ code, signal })));
  idp.stderr.on('data', (d) => {
    idpStderr += d;
    if (process.env.SMOKE_VERBOSE) process.stderr.write(`[idp] ${d}`);
  });
  const lines = createInterface({ input: idp.stdout });
  const first = await Promise.race([
    new Promise((resolve) => lines.once('line', resolve)),
    idpExit.then(({ code }) => fail(`idp.mjs exited (${code}) before listening:\n${idpStderr}`)),
    new Promise((_, reject) => setTimeout(() => reject(new Error('idp.mjs: no JSON line in 10 s')), 10_000).unref()),
  ]);
  const extra = [];
  lines.on('line', (l) => extra.push(l));
  const info = JSON.parse(first);
  if (!/^http:\/\/localhost:\d+$/.test(info.issuer) || info.issuer !== `http://localhost:${info.port}`) {
    fail(`idp.mjs printed ${first}`);
  }
  return { ...info, extra };
}

async function main() {
  await new Promise((resolve) => rp.listen(0, '127.0.0.1', resolve));
  rpOrigin = `http://localhost:${rp.address().port}`;
  step('rp listening');

  const idpInfo = await startIdp();
  step('idp listening');
  const disc = await fetch(`${idpInfo.issuer}/.well-known/openid-configuration`);
  oidc = await disc.json();
  if (oidc.issuer !== idpInfo.issuer) fail(`discovery issuer ${oidc.issuer}`);
  jwks = createRemoteJWKSet(new URL(oidc.jwks_uri));

  session = await launch();
  const { page } = session;
  page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
  page.on('console', (m) => {
    const line = `[console.${m.type()}] ${page.url()}: ${m.text()}`;
    pageConsole.push(line);
    if (process.env.SMOKE_VERBOSE) console.error(line);
  });
  step('chromium launched');

  // 1. OIDC code flow: login form + consent page.
  await page.goto(`${rpOrigin}/login`, { waitUntil: 'commit' });
  let seen = [];
  const onStep = (name) => seen.push(name);
  const ended = await signInAtIdp(page, 'peer-1', { onStep });
  if (seen.join() !== 'login,consent,returned') fail(`first sign-in steps: ${seen}`);
  if (!ended.startsWith(`${rpOrigin}/callback`)) fail(`ended at ${ended}`);
  const who = await page.locator('#who').innerText();
  if (who !== 'signed in as peer-1') fail(`RP page says: ${who}`);
  step('signed in (login + consent)');

  // 2. Again with prompt=login: login form, consent skipped (the grant is
  // in the IdP session).
  await page.goto(`${rpOrigin}/login?prompt=login`, { waitUntil: 'commit' });
  seen = [];
  await signInAtIdp(page, 'peer-1', { returnUrl: `${rpOrigin}/callback`, onStep });
  if (seen.join() !== 'login,returned') fail(`second sign-in steps: ${seen}`);
  if (await page.locator('#who').innerText() !== 'signed in as peer-1') fail('second sign-in');
  step('signed in again (consent skipped)');

  // 3. Again without prompt: the IdP session and grant cover it, no form at all.
  seen = [];
  await page.goto(`${rpOrigin}/login`, { waitUntil: 'commit' });
  await signInAtIdp(page, 'peer-1', { returnUrl: `${rpOrigin}/callback`, onStep });
  if (seen.join() !== 'returned') fail(`third sign-in steps: ${seen}`);
  if (await page.locator('#who').innerText() !== 'signed in as peer-1') fail('third sign-in');
  step('signed in a third time (login and consent skipped)');

  // 4. Passkey: registration and assertion with UV, script from 'self'.
  const auth = await addPasskeyAuthenticator(page);
  await page.locator('#passkey').click();
  await page.waitForURL(`${rpOrigin}/passkey**`);
  await page.locator('body[data-ready="1"]').waitFor();
  await page.locator('#go').click();
  const result = page.locator('#result[data-status]');
  await result.waitFor();
  if (await result.getAttribute('data-status') !== 'ok') {
    fail(`passkey page: ${await result.innerText()}`);
  }
  const r = JSON.parse(await result.innerText());
  if (!pageConsole.some((l) => /Content Security Policy/.test(l))) {
    fail(`no CSP violation reported for the inline script: ${pageConsole.join(' | ')}`);
  }
  const authData = Buffer.from(r.authenticatorData, 'base64url');
  if ((authData[32] & 0x05) !== 0x05) fail(`authenticatorData flags ${authData[32]}`);
  const rpIdHash = createHash('sha256').update('localhost').digest();
  if (!authData.subarray(0, 32).equals(rpIdHash)) fail('rpIdHash is not sha256("localhost")');
  const creds = await auth.credentials();
  if (creds.length !== 1 || !creds[0].isResidentCredential || creds[0].rpId !== 'localhost'
    || creds[0].signCount < 1) {
    fail(`virtual authenticator credentials: ${JSON.stringify(creds.map(({ privateKey, ...c }) => c))}`);
  }
  step('passkey registered and asserted (UV)');

  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  step('screenshot');

  if (idpInfo.extra.length) fail(`idp.mjs printed more on stdout: ${idpInfo.extra.join(' | ')}`);

  await session.close();
  session = undefined;
  idp.kill('SIGTERM');
  const { code, signal } = await idpExit;
  if (code !== 0) fail(`idp.mjs exited with ${code ?? signal} on SIGTERM`);
  idp = undefined;
  step('closed');

  const total = performance.now() - t0;
  let prev = t0;
  const parts = timings.map(([name, t]) => {
    const s = `${name} ${((t - prev) / 1000).toFixed(2)}s`;
    prev = t;
    return s;
  });
  console.log(`smoke: ok: signed in as ${lastClaims.sub} (${lastClaims.email}); passkey `
    + `${r.credentialId.slice(0, 12)}… flags reg=0x${r.regFlags.toString(16)} get=0x${r.getFlags.toString(16)} (UV set); `
    + `screenshot ${SCREENSHOT}`);
  console.log(`smoke: steps: ${parts.join(', ')}`);
  console.log(`smoke: total ${(total / 1000).toFixed(2)}s`);
}

try {
  await main();
  rp.close();
  process.exitCode = 0;
} catch (err) {
  console.error(`smoke: FAILED: ${err.stack || err}`);
  if (!process.env.SMOKE_VERBOSE) {
    if (idpStderr) console.error(`--- idp.mjs stderr ---\n${idpStderr}`);
    if (pageConsole.length) console.error(`--- browser console ---\n${pageConsole.join('\n')}`);
  }
  try {
    await session?.page.screenshot({ path: SCREENSHOT, fullPage: true, timeout: 3000 });
    console.error(`smoke: screenshot of the failure: ${SCREENSHOT}`);
  } catch { /* no page */ }
  await session?.close().catch(() => {});
  idp?.kill('SIGTERM');
  rp.close();
  process.exitCode = 1;
}
// Nothing should hold the loop open; don't hang CI if something does.
setTimeout(() => process.exit(process.exitCode), 3000).unref();
