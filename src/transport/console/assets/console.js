// The console's only script: the passkey ceremonies (registration, and the confirmation of a
// vote, a resume or a breaker reset). Served from /static/ (the Content-Security-Policy allows
// no inline script). Every request it sends carries the page's CSRF token.
(function () {
  'use strict';

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : '';
  }

  // kind: 'waiting', 'done' or 'problem' (the status region's class).
  function say(message, kind) {
    var s = document.getElementById('status');
    if (!s) return;
    s.textContent = message;
    s.className = kind;
  }

  function fromB64u(s) {
    s = s.replace(/-/g, '+').replace(/_/g, '/');
    while (s.length % 4) s += '=';
    var bin = atob(s);
    var b = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i);
    return b.buffer;
  }

  function toB64u(buf) {
    var b = new Uint8Array(buf);
    var s = '';
    for (var i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  async function post(url, body) {
    var r = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf() },
      body: JSON.stringify(body)
    });
    var j = {};
    try { j = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(j.error || ('refused (HTTP ' + r.status + ')'));
    return j;
  }

  async function register() {
    var started = await post('/passkey/options', {});
    var pk = started.options.publicKey;
    pk.challenge = fromB64u(pk.challenge);
    pk.user.id = fromB64u(pk.user.id);
    (pk.excludeCredentials || []).forEach(function (c) { c.id = fromB64u(c.id); });
    var cred = await navigator.credentials.create({ publicKey: pk });
    var done = await post('/passkey/register', {
      id: started.id,
      credential: {
        id: cred.id,
        rawId: toB64u(cred.rawId),
        type: cred.type,
        response: {
          attestationObject: toB64u(cred.response.attestationObject),
          clientDataJSON: toB64u(cred.response.clientDataJSON)
        },
        extensions: {}
      }
    });
    return done.message;
  }

  async function confirmAction(body) {
    var started = await post('/confirm/options', body);
    var pk = started.options.publicKey;
    pk.challenge = fromB64u(pk.challenge);
    (pk.allowCredentials || []).forEach(function (c) { c.id = fromB64u(c.id); });
    var a = await navigator.credentials.get({ publicKey: pk });
    var done = await post('/confirm', {
      nonce: started.nonce,
      credential: {
        id: a.id,
        rawId: toB64u(a.rawId),
        type: a.type,
        response: {
          authenticatorData: toB64u(a.response.authenticatorData),
          clientDataJSON: toB64u(a.response.clientDataJSON),
          signature: toB64u(a.response.signature),
          userHandle: a.response.userHandle ? toB64u(a.response.userHandle) : null
        },
        extensions: {}
      }
    });
    return done.message;
  }

  async function run(button, work) {
    button.disabled = true;
    say('Waiting for your passkey…', 'waiting');
    try {
      say(await work(), 'done');
    } catch (e) {
      say('Not done: ' + e.message, 'problem');
      button.disabled = false;
    }
  }

  document.addEventListener('click', function (ev) {
    var b = ev.target.closest('button');
    if (!b || b.disabled) return;
    if (b.hasAttribute('data-register')) {
      run(b, register);
    } else if (b.dataset.confirm === 'approve' || b.dataset.confirm === 'reject') {
      var form = document.getElementById('vote-form');
      var note = document.getElementById('note');
      run(b, function () {
        return confirmAction({
          kind: 'vote',
          id: form.dataset.request,
          digest: form.dataset.digest,
          decision: b.dataset.confirm,
          note: note && note.value ? note.value : null
        });
      });
    } else if (b.dataset.confirm === 'resume') {
      run(b, function () { return confirmAction({ kind: 'resume' }); });
    } else if (b.dataset.confirm === 'reset') {
      run(b, function () { return confirmAction({ kind: 'reset', agent: b.dataset.agent }); });
    }
  });
})();
