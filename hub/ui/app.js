/*
 * The dashboard's shell: login and logout, hash routing to the views, the error banner, and
 * each view's refresh loop. A view is `{ root, update, every }`: `root` is mounted once, then
 * `update()` refills it from the API now and again after `every` ms (or after the delay it
 * returns; 0 stops). Leaving a view stops its loop, so only the page on screen polls the hub.
 */
/* global window, document, setTimeout, clearTimeout, URLSearchParams */
import { api, ApiError, login, session } from './api.js';
import { deviceView, fleetView } from './fleet.js';
import { driftView } from './drift.js';
import { modelsView, modelView } from './models.js';
import { rolloutsView, rolloutView } from './rollouts.js';

const $ = (id) => document.getElementById(id);

let errorSource = null;
function showError(err, source = 'action') {
  const box = $('error');
  box.textContent = err instanceof ApiError ? err.text : err instanceof Error ? err.message : String(err);
  box.hidden = false;
  errorSource = source;
}
function clearError(source) {
  if (source && errorSource !== source) return;
  $('error').hidden = true;
  $('error').textContent = '';
  errorSource = null;
}

const ctx = {
  api,
  session,
  showError: (err) => showError(err),
  clearError: () => clearError(),
  navigate: (hash) => {
    if (window.location.hash === hash) void route();
    else window.location.hash = hash;
  },
  confirm: (text) => window.confirm(text),
};

function resolve(hash) {
  const [path, qs] = hash.replace(/^#/, '').split('?');
  const parts = (path ?? '').split('/').filter(Boolean).map(decodeURIComponent);
  const query = new URLSearchParams(qs ?? '');
  switch (parts[0]) {
    case 'devices':
      return parts[1] ? { nav: 'fleet', view: deviceView(ctx, parts[1]) } : { nav: 'fleet', view: fleetView(ctx, query) };
    case 'models':
      return parts[1] && parts[2] ? { nav: 'models', view: modelView(ctx, parts[1], parts[2]) } : { nav: 'models', view: modelsView(ctx) };
    case 'rollouts':
      return parts[1] ? { nav: 'rollouts', view: rolloutView(ctx, parts[1]) } : { nav: 'rollouts', view: rolloutsView(ctx, query) };
    case 'drift':
      return { nav: 'drift', view: driftView(ctx, query) };
    default:
      return { nav: 'fleet', view: fleetView(ctx, query) };
  }
}

let generation = 0;
let timer;

function showLogin(message = '') {
  generation++;
  clearTimeout(timer);
  clearError();
  $('nav').hidden = true;
  $('who').hidden = true;
  $('logout').hidden = true;
  $('view').replaceChildren();
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('token').value = '';
  $('token').focus();
}

async function route() {
  if (!session.token) return showLogin();
  const gen = ++generation;
  clearTimeout(timer);
  clearError();
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  $('who').hidden = false;
  $('who').textContent = `${session.name || 'operator'} (${session.role})`;
  const { nav, view } = resolve(window.location.hash);
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === nav);
  $('view').replaceChildren(view.root);
  const tick = async () => {
    let next = view.every;
    try {
      const r = await view.update();
      if (typeof r === 'number') next = r;
      if (gen === generation) clearError('refresh');
    } catch (err) {
      if (gen !== generation) return;
      if (err instanceof ApiError && err.status === 401) return; // the unauthorized handler shows the login
      showError(err, 'refresh');
    }
    if (gen === generation && next > 0) timer = setTimeout(() => void tick(), next);
  };
  await tick();
}

function start() {
  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    $('login-error').textContent = '';
    login(token).then(
      () => {
        if (!window.location.hash || window.location.hash === '#/login') window.location.hash = '#/fleet';
        else void route();
      },
      (err) => {
        $('login-error').textContent =
          err instanceof ApiError && err.status === 401 ? 'That token was refused by the hub (401). Check it and try again.' : `Login failed: ${err instanceof ApiError ? err.text : String(err)}`;
      },
    );
  });
  $('logout').addEventListener('click', () => {
    session.end();
    showLogin('Logged out.');
  });
  window.addEventListener('edgefleet:unauthorized', () => showLogin('The hub no longer accepts this token; log in again.'));
  window.addEventListener('hashchange', () => void route());
  // A login link (`/ui/#token=<token>`, what `npm run demo` prints): the token is taken out of the
  // address and the history at once, then used as if typed. The fragment never reaches a server.
  const linked = /^#token=([^&]+)$/.exec(window.location.hash);
  if (linked) {
    const token = decodeURIComponent(linked[1]);
    window.history.replaceState(null, '', `${window.location.pathname}${window.location.search}`);
    login(token).then(
      () => {
        window.location.hash = '#/fleet';
      },
      (err) => showLogin(err instanceof ApiError && err.status === 401 ? 'The login link holds a token the hub refused (401).' : `Login failed: ${err instanceof ApiError ? err.text : String(err)}`),
    );
    return;
  }
  void route();
}

start();
