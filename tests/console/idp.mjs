// A real OpenID provider for the approval console's end-to-end tests
// (oidc-provider, with its built-in development login and consent pages).
//
//   REDIRECT_URIS=http://localhost:8080/callback node tests/console/idp.mjs
//
// Environment: REDIRECT_URIS (comma-separated, required), CLIENT_ID (default
// "mandate-console"), IDP_PORT (default 0: a free port). Binds 127.0.0.1 only;
// the issuer is http://localhost:PORT. Prints exactly one JSON line on stdout
// once listening, {"issuer":"http://localhost:PORT","port":PORT}; everything
// else (oidc-provider's development notices, request errors) goes to stderr.
// Any login name is accepted (any non-empty password); sub = the login name,
// email = <login>@example.test, email_verified = true.

import http from 'node:http';

// oidc-provider prints its development notices with console.info (stdout):
// keep stdout for the one JSON line.
for (const name of ['log', 'info', 'warn', 'debug']) {
  console[name] = (...args) => console.error(...args);
}

const { default: Provider } = await import('oidc-provider');

const redirectUris = (process.env.REDIRECT_URIS || '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
if (redirectUris.length === 0) {
  console.error('idp.mjs: REDIRECT_URIS is required (comma-separated redirect URIs)');
  process.exit(2);
}
const clientId = process.env.CLIENT_ID || 'mandate-console';
const wantedPort = Number(process.env.IDP_PORT || 0);
if (!Number.isInteger(wantedPort) || wantedPort < 0 || wantedPort > 65535) {
  console.error(`idp.mjs: IDP_PORT is not a port: ${process.env.IDP_PORT}`);
  process.exit(2);
}

// Bind first, so that the issuer can carry the real port when IDP_PORT=0.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(wantedPort, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://localhost:${port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_name: 'mandate approval console (test)',
      token_endpoint_auth_method: 'none',
      redirect_uris: redirectUris,
      response_types: ['code'],
      grant_types: ['authorization_code'],
      application_type: 'web',
    },
  ],
  // PKCE for every client (public clients need it by default anyway); the
  // provider only supports S256.
  pkce: { required: () => true },
  scopes: ['openid', 'email'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
  },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@example.test`, email_verified: true };
      },
    };
  },
  // Test-only fixed keys. Over plain http ctx.secure is false, so the
  // provider sets its cookies without the Secure attribute (SameSite=Lax,
  // HttpOnly): they work on http://localhost.
  cookies: { keys: ['mandate-console-test-cookie-key-1'] },
  // Explicit lifetimes (seconds), which also silences the "default ttl.X
  // function called" notices.
  ttl: {
    Interaction: 600, Session: 3600, Grant: 3600, AccessToken: 600, IdToken: 600,
  },
  features: {
    devInteractions: { enabled: true },
  },
  // Put the scope's claims (email, email_verified) in the ID token itself,
  // not only at the userinfo endpoint: the console maps approvers by sub or
  // email from the ID token.
  conformIdTokenClaims: false,
});

provider.on('server_error', (ctx, err) => {
  console.error('idp.mjs server_error:', err);
});

server.on('request', provider.callback());

process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
