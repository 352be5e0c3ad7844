// Playwright (playwright-core) driving Debian's Chromium, for the approval
// console's end-to-end tests: launch(), a virtual passkey authenticator, and
// the sign-in at the test IdP (tests/console/idp.mjs, oidc-provider's
// development login and consent pages).

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// The closed network: no QUIC, no background fetches, no component or sync
// traffic. (--headless and --no-sandbox are also what Playwright adds itself.)
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Extra, on by default (launch({ blockExternal: false }) to drop it): every
// host name but localhost fails to resolve at once, inside Chromium. The
// IdP's development pages @import a Google font (render-blocking CSS); with
// a DNS server that drops queries instead of refusing them that would stall.
export const BLOCK_EXTERNAL_ARG = '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost';

const DEFAULT_TIMEOUT_MS = 15_000;

/**
 * Starts Chromium with a fresh temporary profile.
 * options: { timeoutMs = 15000 (default for actions and navigations),
 *   viewport = {width: 1000, height: 800}, blockExternal = true,
 *   args = [] (more Chromium flags) }
 * Returns { browser, context, page, userDataDir, close() }; close() closes
 * the browser and removes the profile directory (it is safe to call twice).
 * `browser` is context.browser() (a Browser with playwright-core 1.65; use
 * `context` for new pages, it is the one context of this browser).
 */
export async function launch(options = {}) {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const userDataDir = await mkdtemp(path.join(tmpdir(), 'mandate-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        ...CHROMIUM_ARGS,
        ...(options.blockExternal ?? true ? [BLOCK_EXTERNAL_ARG] : []),
        // No proxy, whatever the environment says (Chromium on Linux reads
        // http_proxy & co.; Playwright adds nothing when no proxy is given).
        '--no-proxy-server',
        ...(options.args ?? []),
      ],
      proxy: undefined,
      viewport: options.viewport ?? { width: 1000, height: 800 },
      timeout: 30_000,
      env: withoutProxyEnv(process.env),
    });
  } catch (err) {
    await rm(userDataDir, { recursive: true, force: true });
    throw err;
  }
  context.setDefaultTimeout(timeoutMs);
  context.setDefaultNavigationTimeout(timeoutMs);
  const page = context.pages()[0] ?? await context.newPage();
  let closed = false;
  return {
    browser: context.browser(),
    context,
    page,
    userDataDir,
    async close() {
      if (closed) return;
      closed = true;
      try {
        await context.close();
      } finally {
        await rm(userDataDir, { recursive: true, force: true });
      }
    },
  };
}

function withoutProxyEnv(env) {
  const out = {};
  for (const [k, v] of Object.entries(env)) {
    if (!/^(https?|all|no)_proxy$/i.test(k)) out[k] = v;
  }
  return out;
}

/**
 * Adds a CTAP2 platform authenticator (resident keys, user verification,
 * always verified, presence simulated) to the page's target.
 * Returns { cdp, authenticatorId, credentials(), remove() };
 * credentials() resolves to the CDP WebAuthn.Credential list
 * ({ credentialId, isResidentCredential, rpId, privateKey, userHandle,
 * signCount, ... }, base64 fields).
 * The authenticator belongs to this page's CDP session: keep `cdp` alive
 * (don't detach it) while the page uses the passkey.
 */
export async function addPasskeyAuthenticator(page, overrides = {}) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
      ...overrides,
    },
  });
  return {
    cdp,
    authenticatorId,
    async credentials() {
      const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
      return credentials;
    },
    async remove() {
      await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
    },
  };
}

/**
 * The page has been sent to the IdP (oidc-provider's development
 * interactions, tests/console/idp.mjs). Fills the login form (any login,
 * any non-empty password), then clicks "Continue" on the consent page if
 * there is one, until the page has left the IdP's origin (normally the RP's
 * redirect URI, after its own redirects).
 * options:
 *   password = 'test'
 *   timeoutMs = 15000 (for the whole sign-in)
 *   idpOrigin: defaults to the origin of the page once an IdP form shows
 *   returnUrl: string prefix, RegExp or (URL) => boolean; when given, it is
 *     also fine if the IdP shows nothing at all (a live session and grant:
 *     login and consent both skipped) and the page comes back there
 *   onStep: (name, url) => void, called with 'login' and 'consent' as each
 *     form is submitted, and 'returned' at the end
 * Resolves to the URL the page ended at (after domcontentloaded).
 */
export async function signInAtIdp(page, login, options = {}) {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  try {
    return await signIn(page, login, options, Date.now() + timeoutMs);
  } catch (err) {
    let body = '';
    try {
      body = (await page.locator('body').innerText({ timeout: 1000 })).slice(0, 600);
    } catch { /* page gone */ }
    err.message = `signInAtIdp(${JSON.stringify(login)}): ${err.message}\n`
      + `  page at: ${page.url()}\n  page text: ${body.replace(/\s+/g, ' ').trim()}`;
    throw err;
  }
}

function urlMatcher(spec) {
  if (spec == null) return null;
  if (typeof spec === 'function') return spec;
  if (spec instanceof RegExp) return (u) => spec.test(u.href);
  return (u) => u.href.startsWith(String(spec));
}

async function signIn(page, login, options, deadline) {
  const left = () => Math.max(1, deadline - Date.now());
  const returned = urlMatcher(options.returnUrl);

  // Both pages are at /interaction/<uid> and post back to that same URL; the
  // answer is a 303 chain (/auth/<uid> ...) to the next interaction (a new
  // uid) or to the RP. So "submitted" = the committed URL changed.
  const loginForm = page.locator('form:has(input[name="prompt"][value="login"])');
  const consentForm = page.locator('form:has(input[name="prompt"][value="consent"])');
  // oidc-provider's error page (bad client, redirect_uri, PKCE ...): fail
  // at once instead of waiting for the deadline.
  const errorPage = page.locator('h1', { hasText: 'oops! something went wrong' });
  const idpError = () => errorPage.waitFor({ state: 'visible', timeout: left() })
    .then(() => 'error');
  const submit = async (form) => {
    const before = page.url();
    await Promise.all([
      page.waitForURL((u) => u.href !== before, { waitUntil: 'commit', timeout: left() }),
      form.locator('button[type="submit"]').click({ timeout: left() }),
    ]);
  };

  // The RP's redirect to the IdP may still be in flight when we are called.
  const first = [
    loginForm.or(consentForm).first().waitFor({ state: 'visible', timeout: left() })
      .then(() => 'idp'),
    idpError(),
  ];
  if (returned) {
    first.push(page.waitForURL(returned, { waitUntil: 'commit', timeout: left() })
      .then(() => 'returned'));
  }
  const arrived = await Promise.race(first);
  if (arrived === 'error') throw new Error('the IdP showed its error page');
  if (arrived === 'returned') {
    await page.waitForLoadState('domcontentloaded', { timeout: left() });
    options.onStep?.('returned', page.url());
    return page.url();
  }
  const idpOrigin = options.idpOrigin ?? new URL(page.url()).origin;
  const offIdp = (u) => u.origin !== idpOrigin;

  if (await loginForm.isVisible()) {
    await loginForm.locator('input[name="login"]').fill(login);
    await loginForm.locator('input[name="password"]').fill(options.password ?? 'test');
    options.onStep?.('login', page.url());
    await submit(loginForm);
  }

  // Next: the consent page (first sign-in of this account for this client)
  // or, when the session's grant already covers the request, the RP.
  while (!offIdp(new URL(page.url()))) {
    const which = await Promise.race([
      consentForm.waitFor({ state: 'visible', timeout: left() }).then(() => 'consent'),
      page.waitForURL(offIdp, { waitUntil: 'commit', timeout: left() }).then(() => 'left'),
      loginForm.waitFor({ state: 'visible', timeout: left() }).then(() => 'login'),
      idpError(),
    ]);
    if (which === 'left') break;
    if (which === 'error') throw new Error('the IdP showed its error page');
    if (which === 'login') throw new Error('the IdP showed its login form again');
    options.onStep?.('consent', page.url());
    await submit(consentForm);
  }
  await page.waitForLoadState('domcontentloaded', { timeout: left() });
  options.onStep?.('returned', page.url());
  return page.url();
}
