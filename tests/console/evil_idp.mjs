// A misbehaving-on-purpose OpenID provider for tests/console_oidc.rs.
//
// It does the authorization code flow with PKCE honestly (checks client_id, redirect_uri,
// response_type, the S256 challenge, single-use codes, the verifier) and then answers the token
// request with an ID token whose flaw is chosen by MODE:
//
//   ok                valid token
//   wrong_aud         aud is another client
//   wrong_iss         iss is another issuer (the same server under 127.0.0.1)
//   wrong_nonce       nonce is not the one of the authorization request
//   no_nonce          no nonce claim
//   bad_sig           signed with another key, under the published kid
//   expired           exp ten minutes ago
//   alg_none          unsigned (alg "none")
//   hmac_pubkey       HS256 with the published RSA public key (PEM) as the HMAC key
//   email_unverified  email_verified false
//   unknown_kid       signed with a key whose kid is never published
//   rotate            signed with a key published only from the second JWKS fetch on
//   multi_aud_no_azp  aud [client, other] without azp
//   multi_aud_azp     aud [client, other] with azp = client (valid)
//   wrong_azp         azp is another client
//   other_issuer      the discovery document names another issuer
//   redirect_discovery  discovery answers 302 to the real document
//   huge_discovery    discovery answers 2 MiB
//
// Environment: MODE (default ok), SUB (default peer-1), CLIENT_ID (default mandate-console),
// REDIRECT_URI (default http://localhost:8443/auth/callback), CLIENT_SECRET (if set, the token
// endpoint requires HTTP Basic client authentication with it).
//
// Binds 127.0.0.1 on a free port and prints one JSON line {"issuer":..., "port":...} when
// listening. GET /stats answers how often each endpoint was called. Exits on SIGTERM.

import http from "node:http";
import crypto from "node:crypto";
import { generateKeyPair, exportJWK, exportSPKI, SignJWT } from "jose";

let MODE = process.env.MODE || "ok";
let SUB = process.env.SUB || "peer-1";
const CLIENT_ID = process.env.CLIENT_ID || "mandate-console";
const REDIRECT_URI = process.env.REDIRECT_URI || "http://localhost:8443/auth/callback";
const CLIENT_SECRET = process.env.CLIENT_SECRET || "";

const KNOWN_MODES = new Set([
  "ok", "wrong_aud", "wrong_iss", "wrong_nonce", "no_nonce", "bad_sig", "expired", "alg_none",
  "hmac_pubkey", "email_unverified", "unknown_kid", "rotate", "multi_aud_no_azp",
  "multi_aud_azp", "wrong_azp", "other_issuer", "redirect_discovery", "huge_discovery",
]);
if (!KNOWN_MODES.has(MODE)) {
  process.stderr.write(`evil_idp: unknown MODE ${MODE}\n`);
  process.exit(2);
}

const main = await generateKeyPair("RS256", { extractable: true });
const forger = await generateKeyPair("RS256", { extractable: true });
const rotated = await generateKeyPair("RS256", { extractable: true });
const stranger = await generateKeyPair("RS256", { extractable: true });

async function publicJwk(key, kid) {
  return { ...(await exportJWK(key.publicKey)), kid, alg: "RS256", use: "sig" };
}
const mainJwk = await publicJwk(main, "k1");
const rotatedJwk = await publicJwk(rotated, "k2");
const mainSpki = await exportSPKI(main.publicKey);

const stats = { discovery: 0, jwks: 0, authorize: 0, token: 0 };
const codes = new Map(); // code -> { nonce, challenge, redirect_uri, client_id, used }
let issuer = "";
let port = 0;

function b64url(buf) {
  return Buffer.from(buf).toString("base64url");
}

function send(res, status, body, headers = {}) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, {
    "content-type": typeof body === "string" ? "text/plain" : "application/json",
    "cache-control": "no-store",
    ...headers,
  });
  res.end(text);
}

function discovery() {
  return {
    issuer: MODE === "other_issuer" ? `http://127.0.0.1:${port}` : issuer,
    authorization_endpoint: `${issuer}/authorize`,
    token_endpoint: `${issuer}/token`,
    jwks_uri: `${issuer}/jwks`,
    response_types_supported: ["code"],
    subject_types_supported: ["public"],
    id_token_signing_alg_values_supported: ["RS256"],
    scopes_supported: ["openid", "email"],
    token_endpoint_auth_methods_supported: ["client_secret_basic", "none"],
    code_challenge_methods_supported: ["S256"],
    grant_types_supported: ["authorization_code"],
    claims_supported: ["sub", "iss", "aud", "exp", "iat", "nonce", "email", "email_verified"],
  };
}

function authorize(url, res) {
  const p = url.searchParams;
  const bad = (why) => send(res, 400, `authorize: ${why}\n`);
  if (p.get("client_id") !== CLIENT_ID) return bad("unknown client_id");
  if (p.get("redirect_uri") !== REDIRECT_URI) return bad("redirect_uri is not registered");
  if (p.get("response_type") !== "code") return bad("response_type must be code");
  if (p.get("code_challenge_method") !== "S256") return bad("code_challenge_method must be S256");
  const challenge = p.get("code_challenge") || "";
  if (!/^[A-Za-z0-9_-]{43}$/.test(challenge)) return bad("code_challenge missing or malformed");
  const scopes = (p.get("scope") || "").split(" ");
  if (!scopes.includes("openid")) return bad("scope must include openid");
  const state = p.get("state");
  if (!state) return bad("state missing");
  const nonce = p.get("nonce");
  if (!nonce) return bad("nonce missing");
  const code = b64url(crypto.randomBytes(24));
  codes.set(code, { nonce, challenge, redirect_uri: REDIRECT_URI, client_id: CLIENT_ID, used: false });
  const to = new URL(REDIRECT_URI);
  to.searchParams.set("code", code);
  to.searchParams.set("state", state);
  res.writeHead(302, { location: to.toString(), "cache-control": "no-store" });
  res.end();
}

function clientAuth(req, form) {
  // Returns [client_id, secret] from HTTP Basic (RFC 6749 2.3.1: form-encoded parts) or the body.
  const h = req.headers.authorization || "";
  if (h.startsWith("Basic ")) {
    const dec = Buffer.from(h.slice(6), "base64").toString("utf8");
    const i = dec.indexOf(":");
    if (i < 0) return [null, null];
    const unform = (s) => decodeURIComponent(s.replace(/\+/g, " "));
    return [unform(dec.slice(0, i)), unform(dec.slice(i + 1))];
  }
  return [form.get("client_id"), form.get("client_secret")];
}

async function idToken(entry) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: SUB,
    email: `${SUB}@example.test`,
    email_verified: MODE !== "email_unverified",
    nonce: entry.nonce,
  };
  let iss = issuer;
  let aud = CLIENT_ID;
  let exp = now + 300;
  let iat = now;
  switch (MODE) {
    case "wrong_aud": aud = "someone-else"; break;
    case "wrong_iss": iss = `http://127.0.0.1:${port}`; break;
    case "wrong_nonce": claims.nonce = "not-" + entry.nonce; break;
    case "no_nonce": delete claims.nonce; break;
    case "expired": exp = now - 600; iat = now - 900; break;
    case "multi_aud_no_azp": aud = [CLIENT_ID, "someone-else"]; break;
    case "multi_aud_azp": aud = [CLIENT_ID, "someone-else"]; claims.azp = CLIENT_ID; break;
    case "wrong_azp": claims.azp = "someone-else"; break;
  }
  if (MODE === "alg_none") {
    const header = b64url(JSON.stringify({ alg: "none", kid: "k1" }));
    const payload = b64url(JSON.stringify({ ...claims, iss, aud, exp, iat }));
    return `${header}.${payload}.`;
  }
  const jwt = new SignJWT(claims).setIssuer(iss).setAudience(aud).setExpirationTime(exp).setIssuedAt(iat);
  switch (MODE) {
    case "hmac_pubkey":
      return jwt.setProtectedHeader({ alg: "HS256", kid: "k1" }).sign(new TextEncoder().encode(mainSpki));
    case "bad_sig":
      return jwt.setProtectedHeader({ alg: "RS256", kid: "k1" }).sign(forger.privateKey);
    case "unknown_kid":
      return jwt.setProtectedHeader({ alg: "RS256", kid: "k-unknown" }).sign(stranger.privateKey);
    case "rotate":
      return jwt.setProtectedHeader({ alg: "RS256", kid: "k2" }).sign(rotated.privateKey);
    default:
      return jwt.setProtectedHeader({ alg: "RS256", kid: "k1" }).sign(main.privateKey);
  }
}

async function token(req, res) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 64 * 1024) return send(res, 413, { error: "invalid_request" });
    chunks.push(c);
  }
  const form = new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
  const err = (status, error, description) =>
    send(res, status, { error, error_description: description });
  const [clientId, secret] = clientAuth(req, form);
  if (clientId !== CLIENT_ID) return err(401, "invalid_client", "unknown client");
  if (CLIENT_SECRET && secret !== CLIENT_SECRET) return err(401, "invalid_client", "bad client secret");
  if (form.get("grant_type") !== "authorization_code") return err(400, "unsupported_grant_type", "grant_type");
  const entry = codes.get(form.get("code") || "");
  if (!entry) return err(400, "invalid_grant", "unknown code");
  if (entry.used) return err(400, "invalid_grant", "code already used");
  entry.used = true;
  if (form.get("redirect_uri") !== entry.redirect_uri) return err(400, "invalid_grant", "redirect_uri mismatch");
  const verifier = form.get("code_verifier");
  if (!verifier) return err(400, "invalid_grant", "code_verifier missing");
  const challenge = b64url(crypto.createHash("sha256").update(verifier).digest());
  if (challenge !== entry.challenge) return err(400, "invalid_grant", "code_verifier does not match");
  send(res, 200, {
    access_token: b64url(crypto.randomBytes(24)),
    token_type: "Bearer",
    expires_in: 300,
    id_token: await idToken(entry),
  });
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (req.method === "GET" && url.pathname === "/.well-known/openid-configuration") {
      stats.discovery++;
      if (MODE === "redirect_discovery" && url.searchParams.get("real") !== "1") {
        res.writeHead(302, { location: `${issuer}/.well-known/openid-configuration?real=1` });
        return res.end();
      }
      if (MODE === "huge_discovery") {
        const doc = discovery();
        doc.padding = "x".repeat(2 * 1024 * 1024);
        return send(res, 200, doc);
      }
      return send(res, 200, discovery());
    }
    if (req.method === "GET" && url.pathname === "/jwks") {
      stats.jwks++;
      const keys = [mainJwk];
      if (MODE === "rotate" && stats.jwks > 1) keys.push(rotatedJwk);
      return send(res, 200, { keys });
    }
    if (req.method === "GET" && url.pathname === "/authorize") {
      stats.authorize++;
      return authorize(url, res);
    }
    if (req.method === "POST" && url.pathname === "/token") {
      stats.token++;
      return await token(req, res);
    }
    if (req.method === "GET" && url.pathname === "/stats") return send(res, 200, stats);
    // Test control: switch the flaw without a restart (the keys stay the same).
    if (req.method === "GET" && url.pathname === "/mode") {
      const m = url.searchParams.get("set");
      if (!KNOWN_MODES.has(m)) return send(res, 400, { error: "unknown mode" });
      MODE = m;
      if (url.searchParams.get("sub")) SUB = url.searchParams.get("sub");
      return send(res, 200, { mode: MODE, sub: SUB });
    }
    send(res, 404, "not found\n");
  } catch (e) {
    process.stderr.write(`evil_idp: ${e && e.stack}\n`);
    if (!res.headersSent) send(res, 500, { error: "server_error" });
  }
});

server.listen(Number(process.env.IDP_PORT || 0), "127.0.0.1", () => {
  port = server.address().port;
  issuer = `http://localhost:${port}`;
  process.stdout.write(JSON.stringify({ issuer, port }) + "\n");
});

process.on("SIGTERM", () => {
  server.close();
  process.exit(0);
});
