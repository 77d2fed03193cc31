// mattermost.mjs - a protocol-faithful fake of a Mattermost server for tests:
// the REST v4 routes a bot uses, the WebSocket event stream, and interactive
// message buttons, on a free 127.0.0.1 port. In-process: a test imports it and
// drives it through the returned object (tests/chat/README.md describes it).
//
//   import { startMattermost } from '../fakes/mattermost.mjs';
//   const mm = await startMattermost({ botToken, botUserId, botUsername, users });
//   ... mm.url, mm.post({...}), await mm.click({...}), await mm.waitFor(...) ...
//   await mm.close();
//
// `ws` comes from the npm install of tests/chat (BATON_CHAT_DIR, which CTest
// sets), or from opts.ws / opts.chatDir.
//
// What it does like Mattermost (read from the server's source: api4/
// websocket.go, app/platform/web_conn.go, web_hub.go, websocket_router.go,
// app/integration_action.go, app/post.go, app/ratelimit.go; and checked
// with the official @mattermost/client Client4 and WebSocketClient):
// - REST answers carry "Content-Type: application/json" exactly (Client4 only
//   parses JSON for that exact value); errors are {id, message,
//   detailed_error, request_id, status_code}. Posts in answers and events
//   have their buttons' `integration` (url, context) stripped
//   (Post.StripActionIntegrations): clients never see the context.
// - Buttons: actions without an id get a 26-character id when the post is
//   stored; only ids matching [A-Za-z0-9]+ can be clicked (the route
//   /posts/{post_id}/actions/{action_id:[A-Za-z0-9]+}: others are 404).
//   A click POSTs {user_id, user_name, channel_id, channel_name, team_id,
//   team_domain, post_id, trigger_id, type: <the action's type or "">,
//   data_source, context} as JSON to integration.url; a non-200 answer fails
//   the click (400) and changes nothing. An answer's `update` is applied as
//   Mattermost's UpdatePost does: the message is REPLACED (an update without
//   `message` blanks it), props replaced when given (from_webhook,
//   override_username, override_icon_url kept), kept when absent; then a
//   post_edited event. `ephemeral_text` becomes an ephemeral post to the
//   clicking user, in the thread of the post.
// - WebSocket /api/v4/websocket: authenticated by the upgrade request's
//   "Authorization: Bearer|Token" header, or else by a first message
//   {seq, action:"authentication_challenge", data:{token}} (a bad token
//   closes the socket; no authentication within 5 s closes it too). Once
//   authenticated: hello {event:"hello", data:{connection_id,
//   server_version}, broadcast:{user_id, ...}, seq:0}, then events with seq
//   1, 2, ... per connection. The challenge is answered {status:"OK",
//   seq_reply} after the hello; other requests before it get
//   {status:"FAIL", seq_reply, error}. {action:"ping"} is answered with
//   data {text:"pong", version, server_time, node_id}.
// - Reconnect (?connection_id=&sequence_number=), as the server does it:
//   a connection id is only reused when the upgrade request itself is
//   authenticated (header); with the challenge every connection is new.
//   Unknown id (or more than resumeWindowMs since it closed, or more than 256
//   events queued while it was away): a new connection id and a hello with
//   seq 0. A malformed id, or a known id without a valid sequence_number:
//   the socket is closed. Known id: the server kept the last 128 events sent
//   on it (its "dead queue") and queued the events broadcast while it was
//   away; if sequence_number is in the dead queue, the events from it on are
//   sent again with their seqs (no hello); if it is the next seq, nothing is
//   replayed (no hello); otherwise (events lost) a new connection id and a
//   hello with seq 0. Queued events follow, with the next seqs.
// - posted events for every post, the bot's own included (a bot must ignore
//   its own posts): data {channel_display_name, channel_name, channel_type,
//   post: <JSON string>, sender_name: "@user", set_online, team_id,
//   mentions?: <JSON string of user ids: @botUsername in the message, or the
//   other member of a direct channel>}, broadcast {omit_users:null, user_id:"",
//   channel_id, team_id:"", connection_id:"", omit_connection_id:""}.
// - 429 when armed with rateLimit(): body "limit exceeded" (text/plain, from
//   http.Error), headers X-Ratelimit-Limit, X-Ratelimit-Remaining: 0,
//   X-Ratelimit-Reset and Retry-After (seconds), before authentication.
import crypto from 'node:crypto';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';

const BODY_MAX = 4 << 20;
const ID_ALPHABET = 'ybndrfg8ejkmcpqxot1uwisza345h769';
const DEAD_QUEUE = 128;
const SEND_QUEUE = 256;
const MAX_RUNES = 16383;
const RETAIN_PROPS = ['from_webhook', 'override_username', 'override_icon_url'];
const SERVER_VERSION = '9.11.0';

function loadWs(opts) {
  if (opts.ws)
    return opts.ws;
  const dir = opts.chatDir || process.env.BATON_CHAT_DIR;
  const req = createRequire(dir ? path.join(dir, 'package.json') : import.meta.url);
  return req('ws');
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function pollUntil(pred, timeoutMs, what, prefix, describe) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v)
      return v;
    if (Date.now() >= deadline)
      throw new Error(`${prefix}: timed out after ${timeoutMs} ms waiting for ${what}${describe ? `\n${describe()}` : ''}`);
    await sleep(20);
  }
}

/* Mattermost ids: 26 characters of its base32 alphabet. */
export function newId() {
  let s = '';
  for (const b of crypto.randomBytes(26))
    s += ID_ALPHABET[b % 32];
  return s;
}

export function isValidId(id) {
  return typeof id === 'string' && /^[a-z0-9]{26}$/.test(id);
}

function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

/* Post.StripActionIntegrations: what clients get. */
function forClient(post) {
  const p = clone(post);
  delete p.history;
  const atts = p.props && Array.isArray(p.props.attachments) ? p.props.attachments : [];
  for (const a of atts)
    for (const act of (a && Array.isArray(a.actions) ? a.actions : []))
      if (act)
        delete act.integration;
  return p;
}

function generateActionIds(props) {
  const atts = props && Array.isArray(props.attachments) ? props.attachments : [];
  for (const a of atts)
    for (const act of (a && Array.isArray(a.actions) ? a.actions : []))
      if (act && !act.id)
        act.id = newId();
}

/* model.ParseSlackLinksToMarkdown: <url|text> -> [text](url). */
function slackLinksToMarkdown(s) {
  return s.replace(/<([^<>|]+)\|([^<>]+)>/g, '[$2]($1)');
}

/**
 * Starts the fake. opts (all optional): botToken ("mm-bot-token"),
 * botUserId (a new id), botUsername ("baton"), users {id: username},
 * userTokens {token: userId} (users who may call the API / click through it),
 * teamId (a new id), teamName ("fake"), channels {id: {name, display_name,
 * type: "O"|"P"|"D"|"G", team_id, members}} (unknown channel ids are made open
 * channels of the team on first use), resumeWindowMs (300000),
 * authTimeoutMs (5000), pingIntervalMs (60000), integrationTimeoutMs (30000),
 * ws, chatDir.
 */
export async function startMattermost(opts = {}) {
  const WS = loadWs(opts);
  const WebSocketServer = WS.WebSocketServer || WS.Server;
  const cfg = {
    botToken: opts.botToken || 'mm-bot-token',
    botUserId: opts.botUserId || newId(),
    botUsername: opts.botUsername || 'baton',
    teamId: opts.teamId || newId(),
    teamName: opts.teamName || 'fake',
    resumeWindowMs: opts.resumeWindowMs ?? 300000,
    authTimeoutMs: opts.authTimeoutMs ?? 5000,
    pingIntervalMs: opts.pingIntervalMs ?? 60000,
    integrationTimeoutMs: opts.integrationTimeoutMs ?? 30000,
  };
  const users = new Map();
  function addUser(id, username, isBot = false) {
    const now = Date.now();
    users.set(id, {
      id, create_at: now, update_at: now, delete_at: 0, username, auth_data: '', auth_service: '',
      email: `${username}@${cfg.teamName}.example`, email_verified: true, nickname: '', first_name: '',
      last_name: '', position: '', roles: 'system_user', locale: 'en', is_bot: isBot,
      bot_description: isBot ? 'baton' : undefined,
      timezone: { automaticTimezone: '', manualTimezone: '', useAutomaticTimezone: 'true' },
      disable_welcome_email: false,
    });
  }
  addUser(cfg.botUserId, cfg.botUsername, true);
  for (const [id, name] of Object.entries(opts.users || {}))
    addUser(id, name);
  const tokens = new Map([[cfg.botToken, cfg.botUserId]]);
  for (const [tok, uid] of Object.entries(opts.userTokens || {}))
    tokens.set(tok, uid);
  const channels = new Map();
  for (const [id, c] of Object.entries(opts.channels || {}))
    channels.set(id, { id, name: c.name || id, display_name: c.display_name || c.name || id, type: c.type || 'O',
      team_id: c.type === 'D' || c.type === 'G' ? '' : (c.team_id || cfg.teamId), members: c.members || null });
  function channelOf(id) {
    if (!channels.has(id))
      channels.set(id, { id, name: id, display_name: id, type: 'O', team_id: cfg.teamId, members: null });
    return channels.get(id);
  }
  function channelJson(c) {
    const now = Date.now();
    return { id: c.id, create_at: now, update_at: now, delete_at: 0, team_id: c.team_id, type: c.type,
      display_name: c.display_name, name: c.name, header: '', purpose: '', last_post_at: 0, total_msg_count: 0,
      extra_update_at: 0, creator_id: '' };
  }

  const state = {
    calls: [],
    posts: [],
    ephemerals: [],
    events: [],          // every event frame written: {connection_id, user_id, seq, event, at}
    integrationRequests: [],
    rateLimits: [],      // {method, pattern, remaining, retryAfterS}
    rateLimited: [],
    conns: new Map(),    // connection_id -> record (active or kept for resume)
    sockets: new Set(),  // every open socket (authenticated or not)
    connectionsOpened: 0,
    closed: false,
  };
  const timers = new Set();
  function later(ms, fn) {
    const t = setTimeout(() => {
      timers.delete(t);
      if (!state.closed)
        fn();
    }, ms);
    t.unref();
    timers.add(t);
    return t;
  }
  const postById = (id) => state.posts.find((p) => p.id === id);

  /* ---- events */
  function wsEvent(event, data, broadcast) {
    return { event, data, broadcast: { omit_users: null, user_id: '', channel_id: '', team_id: '',
      connection_id: '', omit_connection_id: '', ...broadcast } };
  }

  function writeEvent(conn, ev) {
    const frame = { ...ev, seq: conn.seq };
    conn.seq += 1;
    conn.deadQueue.push(frame);
    if (conn.deadQueue.length > DEAD_QUEUE)
      conn.deadQueue.shift();
    state.events.push({ connection_id: conn.id, user_id: conn.userId, seq: frame.seq, event: frame.event, at: Date.now() });
    try {
      conn.ws.send(JSON.stringify(frame));
    } catch (e) { /* closing: the dead queue has it */ }
  }

  function canSee(conn, ev) {
    const b = ev.broadcast;
    if (b.user_id)
      return conn.userId === b.user_id;
    if (b.omit_users && b.omit_users[conn.userId])
      return false;
    if (b.channel_id) {
      const c = channelOf(b.channel_id);
      return !c.members || c.members.includes(conn.userId);
    }
    return true;
  }

  function publish(ev) {
    for (const conn of state.conns.values()) {
      if (!canSee(conn, ev))
        continue;
      if (conn.ws) {
        writeEvent(conn, ev);
      } else {
        conn.pending.push(ev);
        if (conn.pending.length > SEND_QUEUE)
          state.conns.delete(conn.id);  // the hub drops a connection whose queue is full
      }
    }
  }

  function mentionsOf(post, channel) {
    const ids = [];
    for (const u of users.values()) {
      if (u.id === post.user_id)
        continue;
      const re = new RegExp(`(^|[^A-Za-z0-9_.-])@${u.username.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}($|[^A-Za-z0-9_-])`, 'i');
      if (re.test(post.message))
        ids.push(u.id);
    }
    if (channel.type === 'D') {
      const members = channel.members || channel.name.split('__');
      for (const m of members)
        if (m !== post.user_id && !ids.includes(m) && users.has(m))
          ids.push(m);
    }
    return ids;
  }

  function publishPosted(post) {
    const c = channelOf(post.channel_id);
    const sender = users.get(post.user_id);
    const data = {
      channel_display_name: c.type === 'D' ? `@${sender ? sender.username : ''}` : c.display_name,
      channel_name: c.name,
      channel_type: c.type,
      post: JSON.stringify(forClient(post)),
      sender_name: `@${sender ? sender.username : post.user_id}`,
      set_online: true,
      team_id: c.team_id,
    };
    const mentions = mentionsOf(post, c);
    if (mentions.length)
      data.mentions = JSON.stringify(mentions);
    publish(wsEvent('posted', data, { channel_id: post.channel_id }));
  }

  function publishEdited(post) {
    publish(wsEvent('post_edited', { post: JSON.stringify(forClient(post)) }, { channel_id: post.channel_id }));
  }

  /* ---- posts */
  function apiError(status, id, message, detailed = '') {
    return { status, body: { id, message, detailed_error: detailed, request_id: newId(), status_code: status } };
  }

  function createPost(userId, body) {
    if (!body || typeof body !== 'object')
      return apiError(400, 'api.context.invalid_body_param.app_error', 'Invalid or missing post in request body.');
    if (!body.channel_id || typeof body.channel_id !== 'string')
      return apiError(400, 'api.context.invalid_body_param.app_error', 'Invalid or missing channel_id in request body.');
    const message = typeof body.message === 'string' ? body.message : '';
    if ([...message].length > MAX_RUNES)
      return apiError(400, 'model.post.is_valid.message_length.app_error',
        `Post Message property is longer than the maximum permitted length of ${MAX_RUNES} characters.`);
    const rootId = body.root_id || '';
    if (rootId) {
      const root = postById(rootId);
      if (!root || root.channel_id !== body.channel_id || root.root_id)
        return apiError(400, 'api.post.create_post.root_id.app_error', 'Invalid RootId parameter.');
    }
    const props = body.props && typeof body.props === 'object' ? clone(body.props) : {};
    generateActionIds(props);
    const now = Math.max(Date.now(), state.posts.length ? state.posts[state.posts.length - 1].create_at + 1 : 0);
    const post = {
      id: newId(), create_at: now, update_at: now, edit_at: 0, delete_at: 0, is_pinned: false,
      user_id: userId, channel_id: body.channel_id, root_id: rootId, original_id: '', message,
      type: '', props, hashtags: '', pending_post_id: body.pending_post_id || '', reply_count: 0,
      last_reply_at: 0, participants: null, metadata: {}, history: [],
    };
    channelOf(post.channel_id);
    state.posts.push(post);
    if (rootId) {
      const root = postById(rootId);
      root.reply_count += 1;
      root.last_reply_at = now;
    }
    publishPosted(post);
    return { status: 201, body: forClient(post), post };
  }

  /* Records the previous version and applies message/props. */
  function editPost(post, { message, props }) {
    post.history.push({ message: post.message, props: clone(post.props), update_at: post.update_at,
      edit_at: post.edit_at });
    const now = Math.max(Date.now(), post.update_at + 1);
    if (message !== undefined && message !== post.message) {
      post.message = message;
      post.edit_at = now;
    }
    if (props !== undefined) {
      post.props = clone(props) || {};
      generateActionIds(post.props);
    }
    post.update_at = now;
    publishEdited(post);
  }

  function ephemeral(creatorId, targetUserId, p, source) {
    const now = Date.now();
    const post = {
      id: newId(), create_at: now, update_at: now, edit_at: 0, delete_at: 0, is_pinned: false,
      user_id: creatorId, channel_id: p.channel_id, root_id: p.root_id || '', original_id: '',
      message: p.message || '', type: 'system_ephemeral', props: clone(p.props) || {}, hashtags: '',
      pending_post_id: '', reply_count: 0, last_reply_at: 0, participants: null, metadata: {},
    };
    state.ephemerals.push({ user_id: targetUserId, channel_id: post.channel_id, root_id: post.root_id,
      message: post.message, props: post.props, post, source, at: now });
    publish(wsEvent('ephemeral_message', { post: JSON.stringify(forClient(post)) },
      { user_id: targetUserId, channel_id: post.channel_id }));
    return post;
  }

  /* ---- interactive buttons */
  async function doPostAction(userId, postId, actionId, selectedOption = '') {
    if (!/^[A-Za-z0-9]+$/.test(actionId))
      return { apiStatus: 404, error: 'no route: action ids must match [A-Za-z0-9]+' };
    const post = postById(postId);
    if (!post)
      return { apiStatus: 404, error: 'app.post.get.app_error' };
    let action = null;
    for (const a of (post.props.attachments || []))
      for (const act of (a && a.actions) || [])
        if (act && act.id === actionId)
          action = act;
    if (!action || !action.integration)
      return { apiStatus: 404, error: 'api.post.do_action.action_id.app_error' };
    const user = users.get(userId);
    if (!user)
      return { apiStatus: 404, error: 'app.user.missing_account.const' };
    const channel = channelOf(post.channel_id);
    const request = {
      user_id: userId,
      user_name: user.username,
      channel_id: post.channel_id,
      channel_name: channel.name,
      team_id: channel.team_id,
      team_domain: channel.team_id ? cfg.teamName : '',
      post_id: post.id,
      trigger_id: Buffer.from(`${newId()}:${userId}:${Date.now()}`).toString('base64'),
      type: action.type || '',
      data_source: '',
    };
    let context = action.integration.context ? clone(action.integration.context) : undefined;
    if (action.type === 'select' && selectedOption) {
      context = context || {};
      request.data_source = action.data_source || '';
      context.selected_option = selectedOption;
    }
    if (context !== undefined)
      request.context = context;
    const rec = { at: Date.now(), url: action.integration.url, request, status: null, body: null, error: null };
    state.integrationRequests.push(rec);
    let res;
    let text;
    try {
      res = await fetch(action.integration.url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify(request),
        signal: AbortSignal.timeout(cfg.integrationTimeoutMs),
      });
      text = await res.text();
    } catch (e) {
      rec.error = `integration request failed: ${e.message}`;
      return { apiStatus: 400, error: rec.error, request };
    }
    rec.status = res.status;
    let body = text;
    let parsed = null;
    if (text.length) {
      try {
        parsed = JSON.parse(text);
        body = parsed;
      } catch (e) {
        parsed = undefined;
      }
    }
    rec.body = body;
    if (res.status !== 200) {
      rec.error = `status=${res.status}`;
      return { status: res.status, body, request, apiStatus: 400, error: rec.error };
    }
    if (parsed === undefined) {
      rec.error = 'the integration answered something that is not JSON';
      return { status: res.status, body, request, apiStatus: 400, error: rec.error };
    }
    const answer = parsed || {};
    if (answer.update && typeof answer.update === 'object') {
      let props;
      if (answer.update.props === undefined || answer.update.props === null) {
        props = post.props;
      } else {
        props = clone(answer.update.props);
        for (const k of RETAIN_PROPS) {
          if (k in post.props)
            props[k] = post.props[k];
          else
            delete props[k];
        }
      }
      editPost(post, { message: typeof answer.update.message === 'string' ? answer.update.message : '', props });
    }
    if (typeof answer.ephemeral_text === 'string' && answer.ephemeral_text) {
      const retained = {};
      for (const k of RETAIN_PROPS)
        if (k in post.props)
          retained[k] = post.props[k];
      ephemeral(userId, userId, {
        channel_id: post.channel_id,
        root_id: post.root_id || post.id,
        message: answer.skip_slack_parsing ? answer.ephemeral_text : slackLinksToMarkdown(answer.ephemeral_text),
        props: retained,
      }, 'action');
    }
    return { status: res.status, body, request, apiStatus: 200, trigger_id: request.trigger_id };
  }

  /* ---- REST */
  function reply(res, status, obj, headers = {}) {
    const body = JSON.stringify(obj);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body),
      'X-Request-Id': newId(), 'X-Version-Id': `${SERVER_VERSION}.0.fake.false`, ...headers });
    res.end(body);
  }

  function tokenOf(req) {
    const h = req.headers.authorization || '';
    const m = /^(?:Bearer|Token)\s+(\S+)$/i.exec(h);
    if (m)
      return m[1];
    const cookie = /(?:^|;\s*)MMAUTHTOKEN=([^;]+)/.exec(req.headers.cookie || '');
    return cookie ? cookie[1] : null;
  }

  function matchRoute(pattern, method, pathname) {
    const [pm, pp] = pattern.includes(' ') ? pattern.split(' ', 2) : [null, pattern];
    if (pm && pm.toUpperCase() !== method)
      return false;
    const a = pp.replace(/\/+$/, '').split('/');
    const b = pathname.replace(/\/+$/, '').split('/');
    return a.length === b.length && a.every((seg, i) => /^\{.*\}$/.test(seg) || seg === b[i]);
  }

  async function handleRest(req, res, raw, url) {
    const call = { method: req.method, path: url.pathname, body: undefined, at: Date.now(), status: null };
    state.calls.push(call);
    const answer = (status, obj, headers) => {
      call.status = status;
      call.response = obj;
      reply(res, status, obj, headers);
    };
    const fail = (e) => answer(e.status, e.body);
    for (const rl of state.rateLimits) {
      if (rl.remaining > 0 && matchRoute(rl.pattern, req.method, url.pathname)) {
        rl.remaining -= 1;
        state.rateLimited.push({ method: req.method, path: url.pathname, at: call.at, retryAfter: rl.retryAfterS });
        call.status = 429;
        res.writeHead(429, {
          'Content-Type': 'text/plain; charset=utf-8', 'X-Content-Type-Options': 'nosniff',
          'X-Ratelimit-Limit': String(rl.limit), 'X-Ratelimit-Remaining': '0',
          'X-Ratelimit-Reset': String(rl.retryAfterS), 'Retry-After': String(rl.retryAfterS),
        });
        res.end('limit exceeded\n');
        return;
      }
    }
    state.rateLimits = state.rateLimits.filter((rl) => rl.remaining > 0);
    let body;
    if (raw.length) {
      try {
        body = JSON.parse(raw);
      } catch (e) {
        body = null;
      }
    }
    call.body = body;
    const p = url.pathname.replace(/\/+$/, '');
    if (p === '/api/v4/system/ping' && req.method === 'GET')
      return answer(200, { status: 'OK', ActiveSearchBackend: 'database' });
    const token = tokenOf(req);
    const userId = token ? tokens.get(token) : null;
    if (!userId)
      return fail(apiError(401, 'api.context.session_expired.app_error',
        'Invalid or expired session, please login again.', token ? 'token=unknown' : ''));
    call.user_id = userId;
    let m;
    if (req.method === 'GET' && p === '/api/v4/users/me')
      return answer(200, users.get(userId));
    if (req.method === 'GET' && (m = /^\/api\/v4\/users\/([a-z0-9]{26})$/.exec(p))) {
      const u = users.get(m[1]);
      return u ? answer(200, u) : fail(apiError(404, 'app.user.missing_account.const', 'Unable to find the user.'));
    }
    if (req.method === 'GET' && (m = /^\/api\/v4\/users\/username\/([a-z0-9._-]+)$/.exec(p))) {
      const u = [...users.values()].find((x) => x.username === m[1]);
      return u ? answer(200, u) : fail(apiError(404, 'app.user.missing_account.const', 'Unable to find the user.'));
    }
    if (req.method === 'GET' && (m = /^\/api\/v4\/channels\/([a-z0-9]{26}|[A-Za-z0-9_-]+)$/.exec(p)))
      return answer(200, channelJson(channelOf(m[1])));
    if (body === null)
      return fail(apiError(400, 'api.context.invalid_body_param.app_error', 'Invalid JSON in request body.'));
    if (req.method === 'POST' && p === '/api/v4/posts') {
      const r = createPost(userId, body);
      return r.post ? answer(201, r.body) : fail(r);
    }
    if (req.method === 'POST' && p === '/api/v4/posts/ephemeral') {
      if (!body || !body.user_id || !body.post || !body.post.channel_id)
        return fail(apiError(400, 'api.context.invalid_body_param.app_error', 'Invalid or missing post in request body.'));
      const post = ephemeral(userId, body.user_id, body.post, 'api');
      return answer(201, forClient(post));
    }
    if ((m = /^\/api\/v4\/posts\/([a-z0-9]{26})(\/patch)?$/.exec(p)) && (req.method === 'GET' || req.method === 'PUT')) {
      const post = postById(m[1]);
      if (!post)
        return fail(apiError(404, 'app.post.get.app_error', 'Unable to get the post.'));
      if (req.method === 'GET')
        return answer(200, forClient(post));
      if (post.user_id !== userId)
        return fail(apiError(403, 'api.context.permissions.app_error', 'You do not have the appropriate permissions.'));
      if (!body || typeof body !== 'object')
        return fail(apiError(400, 'api.context.invalid_body_param.app_error', 'Invalid or missing post in request body.'));
      if (m[2]) {
        /* PATCH semantics: only the fields sent change. */
        const msg = typeof body.message === 'string' ? body.message : undefined;
        if (msg !== undefined && [...msg].length > MAX_RUNES)
          return fail(apiError(400, 'model.post.is_valid.message_length.app_error', 'Post Message property is too long.'));
        editPost(post, { message: msg, props: body.props && typeof body.props === 'object' ? body.props : undefined });
      } else {
        /* Full update: omitted fields are blanked. */
        if (body.id && body.id !== post.id)
          return fail(apiError(400, 'api.context.invalid_param.app_error', 'Invalid or missing id in request body.'));
        editPost(post, { message: typeof body.message === 'string' ? body.message : '', props: body.props || {} });
      }
      return answer(200, forClient(post));
    }
    if (req.method === 'POST' && (m = /^\/api\/v4\/posts\/([a-z0-9]{26})\/actions\/([^/]+)$/.exec(p))) {
      const r = await doPostAction(userId, m[1], decodeURIComponent(m[2]), (body && body.selected_option) || '');
      if (r.apiStatus === 200)
        return answer(200, { status: 'OK', trigger_id: r.trigger_id });
      return fail(apiError(r.apiStatus, 'api.post.do_action.action_integration.app_error',
        'Action integration error.', r.error || ''));
    }
    return fail(apiError(404, 'api.context.404.app_error', 'Sorry, we could not find the page.'));
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= BODY_MAX)
        chunks.push(c);
    });
    req.on('end', () => {
      if (size > BODY_MAX) {
        reply(res, 413, apiError(413, 'api.context.request_body_too_large.app_error', 'Request body too large.').body);
        return;
      }
      handleRest(req, res, Buffer.concat(chunks).toString('utf8'), url).catch((e) => {
        if (!res.headersSent)
          reply(res, 500, apiError(500, 'fake.internal', String(e && e.stack)).body);
      });
    });
  });

  /* ---- WebSocket */
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname.replace(/\/+$/, '') !== '/api/v4/websocket') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    /* A token in the header that is not valid: 401 before the upgrade, as
     * the server's handler answers it. */
    const m = /^(?:Bearer|Token)\s+(\S+)$/i.exec(req.headers.authorization || '');
    if (m && !tokens.has(m[1])) {
      const body = JSON.stringify(apiError(401, 'api.context.session_expired.app_error',
        'Invalid or expired session, please login again.').body);
      socket.end(`HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nConnection: close\r\n`
        + `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => onSocket(ws, req, url));
  });

  function helloFor(conn) {
    return wsEvent('hello', { connection_id: conn.id, server_version: `${SERVER_VERSION}.0.fake.false` },
      { user_id: conn.userId });
  }

  function newConn(ws, userId) {
    const conn = { id: newId(), userId, ws, seq: 0, deadQueue: [], pending: [], closedAt: null, reuse: 0 };
    state.conns.set(conn.id, conn);
    return conn;
  }

  function flushPending(conn) {
    const pending = conn.pending;
    conn.pending = [];
    for (const ev of pending)
      writeEvent(conn, ev);
  }

  /* Attach an authenticated socket: resume a known connection or start one. */
  function attach(ws, userId, wantId, seqParam, viaHeader) {
    const known = viaHeader && wantId ? state.conns.get(wantId) : null;
    if (known && known.userId === userId && !known.ws
        && Date.now() - known.closedAt <= cfg.resumeWindowMs) {
      const n = Number(seqParam);
      if (seqParam === null || seqParam === '' || !Number.isInteger(n) || n < 0) {
        ws.terminate();
        return null;
      }
      known.ws = ws;
      known.reuse += 1;
      known.closedAt = null;
      const idx = known.deadQueue.findIndex((f) => f.seq === n);
      const last = known.deadQueue.length ? known.deadQueue[known.deadQueue.length - 1].seq : null;
      if (idx >= 0) {
        known.resumed = 'replayed';
        for (const f of known.deadQueue.slice(idx)) {
          state.events.push({ connection_id: known.id, user_id: userId, seq: f.seq, event: f.event, at: Date.now(),
            replay: true });
          ws.send(JSON.stringify(f));
        }
        known.seq = last + 1;
      } else if (last === null || last === n - 1) {
        known.resumed = 'lossless';
        known.seq = n;
      } else {
        /* Events lost: a new connection id, seq from 0, a hello. */
        state.conns.delete(known.id);
        known.id = newId();
        state.conns.set(known.id, known);
        known.resumed = 'lost';
        known.deadQueue = [];
        known.seq = 0;
        writeEvent(known, helloFor(known));
      }
      flushPending(known);
      return known;
    }
    const conn = newConn(ws, userId);
    writeEvent(conn, helloFor(conn));
    return conn;
  }

  function onSocket(ws, req, url) {
    state.sockets.add(ws);
    state.connectionsOpened += 1;
    const headerToken = (() => {
      const m = /^(?:Bearer|Token)\s+(\S+)$/i.exec(req.headers.authorization || '');
      return m ? m[1] : null;
    })();
    const wantId = url.searchParams.get('connection_id') || '';
    const seqParam = url.searchParams.get('sequence_number');
    const info = { conn: null, token: null };
    let authTimer = null;
    let pinger = null;

    if (headerToken && tokens.has(headerToken)) {
      if (wantId && !isValidId(wantId)) {
        ws.terminate();
        state.sockets.delete(ws);
        return;
      }
      info.token = headerToken;
      info.conn = attach(ws, tokens.get(headerToken), wantId, seqParam, true);
      if (!info.conn) {
        state.sockets.delete(ws);
        return;
      }
    } else {
      authTimer = later(cfg.authTimeoutMs, () => {
        if (!info.conn)
          ws.terminate();
      });
    }
    if (cfg.pingIntervalMs > 0) {
      pinger = setInterval(() => {
        try {
          ws.ping();
        } catch (e) { /* closing */ }
      }, cfg.pingIntervalMs);
      pinger.unref();
    }

    const respond = (obj) => {
      try {
        ws.send(JSON.stringify(obj));
      } catch (e) { /* closing */ }
    };
    ws.on('message', (data, isBinary) => {
      let req;
      try {
        req = JSON.parse(data.toString());
      } catch (e) {
        ws.terminate();  // the server stops reading at a decode error
        return;
      }
      const seq = req && req.seq;
      const wsErr = (id, message, status) => respond({ status: 'FAIL', seq_reply: seq,
        error: { id, message, detailed_error: '', request_id: '', status_code: status } });
      if (!req || !req.action)
        return wsErr('api.web_socket_router.no_action.app_error', 'No websocket action.', 400);
      if (!(seq > 0))
        return wsErr('api.web_socket_router.bad_seq.app_error', 'Invalid sequence for WebSocket message.', 400);
      if (req.action === 'authentication_challenge') {
        if (info.token)
          return;  // already authenticated: ignored, no answer
        const tok = req.data && req.data.token;
        if (typeof tok !== 'string' || !tokens.has(tok)) {
          ws.terminate();
          return;
        }
        info.token = tok;
        if (authTimer) {
          clearTimeout(authTimer);
          timers.delete(authTimer);
        }
        info.conn = attach(ws, tokens.get(tok), '', null, false);
        respond({ status: 'OK', seq_reply: seq });
        return;
      }
      if (!info.token)
        return wsErr('api.web_socket_router.not_authenticated.app_error',
          'Could not connect to the websocket server: not authenticated.', 401);
      if (req.action === 'ping')
        return respond({ status: 'OK', seq_reply: seq,
          data: { text: 'pong', version: SERVER_VERSION, server_time: Date.now(), node_id: '' } });
      if (['user_typing', 'presence', 'user_update_active_status', 'get_statuses', 'get_statuses_by_ids',
        'posted_notify_ack'].includes(req.action))
        return respond({ status: 'OK', seq_reply: seq, data: req.action.startsWith('get_statuses') ? {} : undefined });
      return wsErr('api.web_socket_router.bad_action.app_error', 'Unknown WebSocket action.', 500);
    });
    ws.on('close', () => {
      state.sockets.delete(ws);
      if (pinger)
        clearInterval(pinger);
      if (authTimer) {
        clearTimeout(authTimer);
        timers.delete(authTimer);
      }
      if (info.conn && info.conn.ws === ws) {
        info.conn.ws = null;
        info.conn.closedAt = Date.now();
        const id = info.conn.id;
        later(cfg.resumeWindowMs + 10, () => {
          const c = state.conns.get(id);
          if (c && !c.ws && Date.now() - c.closedAt >= cfg.resumeWindowMs)
            state.conns.delete(id);
        });
      }
    });
    ws.on('error', () => {});
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port || 0, '127.0.0.1', resolve);
  });
  const port = server.address().port;

  const liveConns = () => [...state.conns.values()].filter((c) => c.ws && c.ws.readyState === 1);

  function describe() {
    return [`mattermost fake state: ${liveConns().length} live connection(s), ${state.connectionsOpened} opened,`
      + ` ${state.posts.length} post(s), ${state.ephemerals.length} ephemeral(s)`,
    `  calls: ${state.calls.map((c) => `${c.method} ${c.path} ${c.status}`).join(', ')}`,
    ...state.posts.slice(-10).map((p) => `  post ${p.id} by ${p.user_id}: ${JSON.stringify(p.message).slice(0, 120)}`)]
      .join('\n');
  }

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    config: cfg,
    get botUserId() { return cfg.botUserId; },
    get teamId() { return cfg.teamId; },

    get calls() { return state.calls; },
    /* Stored posts, full (integration included), with history: the previous
     * versions [{message, props, update_at, edit_at}]. */
    get posts() { return state.posts; },
    get ephemerals() { return state.ephemerals; },
    get events() { return state.events; },
    get integrationRequests() { return state.integrationRequests; },
    get rateLimited() { return state.rateLimited; },
    get connections() { return liveConns().length; },
    get connectionsOpened() { return state.connectionsOpened; },
    /* [{connection_id, user_id, active, seq, resumed}] */
    get connectionInfo() {
      return [...state.conns.values()].map((c) => ({ connection_id: c.id, user_id: c.userId, active: !!c.ws,
        seq: c.seq, resumed: c.resumed || null }));
    },
    getPost(id) { return postById(id) || null; },

    /* A user posts: stored and broadcast as `posted` (mentions of
     * @botUsername computed). Returns the stored post. */
    post({ user, channel, message = '', root_id = '', props } = {}) {
      if (!user || !channel)
        throw new Error('mattermost fake: post() needs user and channel');
      if (!users.has(user))
        throw new Error(`mattermost fake: post(): unknown user ${user} (give it in opts.users)`);
      const r = createPost(user, { channel_id: channel, message, root_id, props });
      if (!r.post)
        throw new Error(`mattermost fake: post(): ${r.body.message}`);
      return r.post;
    },

    /* A user clicks a button of a post: Mattermost's request to the
     * integration URL, and its answer applied. Resolves to {status, body,
     * request, apiStatus (what the clicking client would get: 200, 400,
     * 404), error?}. Throws when the post has no such action. */
    async click({ user, post_id, action_id, selected_option = '' } = {}) {
      if (!user || !post_id || !action_id)
        throw new Error('mattermost fake: click() needs user, post_id and action_id');
      const post = postById(post_id);
      if (!post)
        throw new Error(`mattermost fake: click(): no post ${post_id}`);
      const has = (post.props.attachments || []).some((a) => ((a && a.actions) || []).some((x) => x && x.id === action_id));
      if (!has)
        throw new Error(`mattermost fake: click(): post ${post_id} has no action ${action_id}`);
      return doPostAction(user, post_id, action_id, selected_option);
    },

    /* The next `count` requests matching route answer 429: "POST
     * /api/v4/posts", "PUT /api/v4/posts/{id}/patch" (a {...} segment
     * matches any one segment), or a path alone for any method. */
    rateLimit(route, count = 1, retryAfterS = 1) {
      state.rateLimits.push({ pattern: route, remaining: count, retryAfterS, limit: 10 });
    },

    /* Sends an arbitrary event (like the server's Publish). */
    emit(event, data = {}, broadcast = {}) {
      publish(wsEvent(event, data, broadcast));
    },

    /* Destroys every socket without a close frame; the connections stay
     * resumable (connection_id + sequence_number) for resumeWindowMs. */
    drop() {
      const n = state.sockets.size;
      for (const ws of [...state.sockets])
        ws.terminate();
      return n;
    },

    /* Like a server restart: no connection id can be resumed any more. */
    forgetConnections() {
      for (const [id, c] of state.conns)
        if (!c.ws)
          state.conns.delete(id);
    },

    async waitFor(pred, timeoutMs = 10000, what = 'a condition') {
      return pollUntil(pred, timeoutMs, what, 'mattermost fake', describe);
    },

    describe,

    async close() {
      if (state.closed)
        return;
      state.closed = true;
      for (const t of timers)
        clearTimeout(t);
      timers.clear();
      for (const ws of state.sockets)
        ws.terminate();
      wss.close();
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
