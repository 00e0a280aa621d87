// The demo page: MAGE's persistent-session example with @sessiondb/client.
// The game server (server.mjs) logs players in and hands over the key;
// everything else goes from this page to sessiondb, cross-origin.

import { SessionClient } from '/client/index.js';

const $ = (id) => document.getElementById(id);
const config = await (await fetch('/config.json')).json();

// The client keeps the key in localStorage: saved on session.set, removed
// on session.unset, as MAGE's example does by hand.
const session = new SessionClient({ baseUrl: config.sessiondbUrl, storage: localStorage });

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').prepend(item);
}

function showLogin() {
  $('status').textContent = 'Logged out';
  $('game').hidden = true;
  $('login').hidden = false;
  $('stream-state').textContent = 'not following';
  $('stream-dot').classList.remove('live');
}

function showGame(info) {
  $('status').textContent = `Logged in as ${info.actorId}`;
  $('player').textContent = info.actorId;
  $('session-id').textContent = info.id;
  $('expires').textContent = new Date(info.expiresAt).toLocaleTimeString();
  $('login').hidden = true;
  $('ended').hidden = true;
  $('game').hidden = false;
}

async function showGold() {
  $('gold').textContent = String((await session.getData('gold')) ?? 0);
}

session.on('session.set', (path, info) => {
  log(`${path} ${info.actorId} (${info.id})`);
  showGame(info);
});

session.on('session.unset', (path, reason) => {
  log(`${path} ${reason}`);
  $('reason').textContent = reason;
  $('ended').hidden = false;
  showLogin();
});

session.on('stream.open', () => {
  $('stream-state').textContent = 'live';
  $('stream-dot').classList.add('live');
});

session.on('stream.retry', (path, { delay }) => {
  $('stream-state').textContent = `reconnecting in ${(delay / 1000).toFixed(1)} s`;
  $('stream-dot').classList.remove('live');
});

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('error').hidden = true;
  try {
    const answer = await fetch('/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: $('name').value }),
    });
    const body = await answer.json();
    if (!answer.ok) {
      throw new Error(body.message ?? body.error);
    }
    await session.restore(body.key);
    await showGold();
  } catch (error) {
    $('error').textContent = `Could not log in: ${error.reason ?? error.message}`;
    $('error').hidden = false;
  }
});

$('add-gold').addEventListener('click', async () => {
  const gold = (await session.getData('gold')) ?? 0;
  await session.setData('gold', gold + 1);
  await showGold();
});

$('logout').addEventListener('click', () => session.logout().catch((e) => log(`logout: ${e.reason}`)));

// After a reload: restore the stored key, if any.
const stored = session.storedKey();
if (stored) {
  session.restore(stored, async (err) => {
    if (err) {
      log(`stored key refused: ${err.reason}`);
      $('reason').textContent = err.reason;
      $('ended').hidden = false;
      showLogin();
    } else {
      await showGold();
    }
  });
} else {
  showLogin();
}
