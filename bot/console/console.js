/*
 * console.js - baton's browser console: sign in with a token, talk to baton
 * over /ws (docs/console.md), decide on plan cards, follow executions.
 *
 * Plain JavaScript, no framework, no build step. The page is served with a
 * strict Content-Security-Policy, so nothing here uses inline scripts, eval
 * or HTML strings: every string from the server reaches the page through
 * textContent (the el() helper below), never through innerHTML.
 *
 * Cards are keyed by approval_id. A card is drawn once and redrawn in place
 * whenever a newer copy arrives (in a `plan`, `card` or `state` message), so
 * a reconnect that replays the state refreshes what is on screen instead of
 * adding to it.
 */
(function () {
    'use strict';

    const TOKEN_KEY = 'baton.token';
    const BACKOFF_START_MS = 500;
    const BACKOFF_CAP_MS = 15000;

    const LEVEL_NAMES = ['no approval', 'confirm', 'plan review', 'step by step'];
    const CARD_STATES = {
        pending: 'Waiting for approval',
        releasing: 'Releasing step by step',
        approved: 'Approved',
        denied: 'Denied',
        cancelled: 'Cancelled',
        expired: 'Expired'
    };
    const EXEC_STATES = {
        pending_approval: 'Not started',
        approved: 'Starting',
        queued: 'Queued',
        running: 'Running',
        completed: 'Completed',
        failed: 'Failed',
        cancelled: 'Cancelled',
        timed_out: 'Timed out',
        interrupted: 'Interrupted'
    };
    const STEP_STATES = {
        pending: 'pending',
        running: 'running',
        completed: 'completed',
        failed: 'failed',
        skipped: 'skipped',
        cancelled: 'cancelled',
        timed_out: 'timed out',
        interrupted: 'interrupted',
        compensated: 'undone'
    };
    const OPEN_STATES = new Set(['pending', 'releasing']);
    const CLOSED_LABELS = {approved: 'Decided', denied: 'Denied', cancelled: 'Cancelled',
        expired: 'Expired'};
    const EXEC_ACTIVE = new Set(['approved', 'queued', 'running']);
    const COLUMN_LABELS = {
        name: 'Name', ip: 'IP address', os: 'OS', role: 'Role', environment: 'Environment',
        status: 'Status', datacenter: 'Datacenter', hostname: 'Host name', count: 'Count'
    };

    /* Everything the page knows. */
    const S = {
        token: null,
        ws: null,
        online: false,          /* signed in on the current socket */
        user: null,
        role: null,
        attempt: 0,             /* reconnect attempts since the last welcome */
        reconnectTimer: 0,
        reconnectAt: 0,
        nextId: 1,
        inflight: new Map(),    /* message id -> what it was for */
        cards: new Map(),       /* approval_id -> {card, el, note, inflight} */
        said: [],               /* this tab's requests, for the Up key */
        saidPos: -1,
        historyTimer: 0
    };

    const $ = (id) => document.getElementById(id);
    const reducedMotion = window.matchMedia &&
        window.matchMedia('(prefers-reduced-motion: reduce)').matches;

    /* ---- small helpers ------------------------------------------------------ */

    /* Make an element. props: class, text, testid, on<event>, hidden, and
     * plain attributes; children: nodes, strings (as text) or arrays. */
    function el(tag, props, ...children) {
        const e = document.createElement(tag);
        for (const [k, v] of Object.entries(props || {})) {
            if (v === null || v === undefined || v === false)
                continue;
            if (k === 'class')
                e.className = v;
            else if (k === 'text')
                e.textContent = String(v);
            else if (k === 'testid')
                e.dataset.testid = v;
            else if (k === 'hidden')
                e.hidden = true;
            else if (k.startsWith('on') && typeof v === 'function')
                e.addEventListener(k.slice(2), v);
            else
                e.setAttribute(k, v === true ? '' : String(v));
        }
        appendAll(e, children);
        return e;
    }

    /* replaceChildren that skips null (the DOM one would print "null"). */
    function replaceKids(parent, ...children) {
        parent.replaceChildren();
        appendAll(parent, children);
    }

    function appendAll(parent, children) {
        for (const c of children) {
            if (c === null || c === undefined || c === false)
                continue;
            if (Array.isArray(c))
                appendAll(parent, c);
            else if (c instanceof Node)
                parent.appendChild(c);
            else
                parent.appendChild(document.createTextNode(String(c)));
        }
    }

    function str(v) {
        if (v === null || v === undefined)
            return '';
        if (typeof v === 'object')
            return Array.isArray(v) ? v.map(str).join(', ') : JSON.stringify(v);
        return String(v);
    }

    function plural(n, one, many) {
        return n + ' ' + (n === 1 ? one : (many || one + 's'));
    }

    function listWords(names) {
        if (!names || names.length === 0)
            return '';
        if (names.length === 1)
            return names[0];
        return names.slice(0, -1).join(', ') + ' or ' + names[names.length - 1];
    }

    function clockTime(ms) {
        if (!ms)
            return '';
        return new Date(ms).toLocaleTimeString([], {hour: '2-digit', minute: '2-digit'});
    }

    function fullTime(ms) {
        return ms ? new Date(ms).toLocaleString() : '';
    }

    function ago(ms) {
        const s = Math.round((Date.now() - ms) / 1000);
        if (s < 45)
            return 'just now';
        if (s < 3600)
            return Math.round(s / 60) + ' min ago';
        if (s < 86400)
            return Math.round(s / 3600) + ' h ago';
        return new Date(ms).toLocaleDateString();
    }

    function timeLeft(ms) {
        const s = Math.max(0, Math.ceil(ms / 1000));
        const h = Math.floor(s / 3600);
        const m = Math.floor((s % 3600) / 60);
        const sec = String(s % 60).padStart(2, '0');
        return h > 0 ? h + ':' + String(m).padStart(2, '0') + ':' + sec : m + ':' + sec;
    }

    function timeEl(ms) {
        return el('time', {datetime: new Date(ms || Date.now()).toISOString(), title: fullTime(ms)},
            clockTime(ms || Date.now()));
    }

    /* ---- connection ----------------------------------------------------------- */

    function setConn(kind, text) {
        const c = $('conn');
        c.className = 'conn conn-' + kind;
        c.textContent = text;
    }

    function showBanner(tone, parts) {
        const b = $('banner');
        b.className = 'banner banner-' + tone;
        b.dataset.kind = tone;
        b.replaceChildren();
        appendAll(b, parts);
        b.hidden = false;
    }

    function hideBanner() {
        $('banner').hidden = true;
        $('banner').replaceChildren();
    }

    function send(msg) {
        if (!S.ws || S.ws.readyState !== WebSocket.OPEN)
            return false;
        S.ws.send(JSON.stringify(msg));
        return true;
    }

    /* Send a request that expects an answer; remembers what it was for. */
    function request(msg, what) {
        if (!S.online)
            return 0;
        const id = S.nextId++;
        msg.id = id;
        if (!send(msg))
            return 0;
        S.inflight.set(id, what);
        return id;
    }

    function connect() {
        clearTimeout(S.reconnectTimer);
        S.reconnectTimer = 0;
        if (!S.token)
            return;
        const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
        setConn('connecting', 'Connecting…');
        let ws;
        try {
            ws = new WebSocket(url);
        } catch (e) {
            closed();
            return;
        }
        S.ws = ws;
        ws.addEventListener('open', () => {
            if (S.ws !== ws)
                return;
            const id = S.nextId++;
            S.inflight.set(id, {type: 'hello'});
            ws.send(JSON.stringify({type: 'hello', id: id, token: S.token}));
        });
        ws.addEventListener('message', (ev) => {
            if (S.ws === ws)
                receive(ev.data);
        });
        ws.addEventListener('close', () => {
            if (S.ws !== ws)
                return;
            S.ws = null;
            closed();
        });
    }

    /* The socket closed (or never opened): tell the user, fail what waited
     * for an answer, and try again later with exponential backoff and
     * jitter (0.5 s doubling up to 15 s). */
    function closed() {
        const wasOnline = S.online;
        S.online = false;
        failInflight();
        updateComposer();
        if (!S.token)
            return;
        const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * Math.pow(2, S.attempt));
        const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2);
        S.attempt++;
        S.reconnectAt = Date.now() + delay;
        S.reconnectTimer = setTimeout(connect, delay);
        setConn('offline', 'Disconnected');
        showReconnecting(wasOnline);
    }

    /* The reconnecting banner; redrawn only when it is not already up, so
     * the once-a-second update does not take the focus off "Retry now". */
    function showReconnecting(justLost) {
        const secs = Math.max(1, Math.ceil((S.reconnectAt - Date.now()) / 1000));
        const text = (justLost ? 'Connection to baton lost. ' : 'Cannot reach baton. ') +
            'Reconnecting… next try in ' + plural(secs, 'second') + '.';
        const b = $('banner');
        const current = b.querySelector('.banner-text');
        if (!b.hidden && b.dataset.kind === 'reconnecting' && current) {
            current.textContent = current.textContent.replace(/next try in .*$/,
                'next try in ' + plural(secs, 'second') + '.');
            return;
        }
        showBanner('warn', [
            el('span', {class: 'spinner', 'aria-hidden': 'true'}),
            el('span', {class: 'banner-text', testid: 'banner-text'}, text),
            el('button', {type: 'button', class: 'btn btn-small', onclick: connect}, 'Retry now')
        ]);
        b.dataset.kind = 'reconnecting';
    }

    function failInflight() {
        for (const [, w] of S.inflight) {
            if (w.type === 'say') {
                renderProblem(w.slot, 'The connection dropped before baton answered. ' +
                    'If this was a change, it may still have been recorded: the cards and ' +
                    'your requests list will show it once baton is back.');
            } else if (w.type === 'decide' || w.type === 'cancel') {
                const entry = S.cards.get(w.approvalId);
                if (entry) {
                    entry.inflight = 0;
                    entry.note = {tone: 'info', transient: true, text: 'The connection dropped ' +
                        'before baton answered; the card catches up once baton is back.'};
                    renderCard(entry);
                }
            }
        }
        S.inflight.clear();
    }

    /* ---- signing in --------------------------------------------------------------- */

    function showSignin(message) {
        $('app').hidden = true;
        $('who').hidden = true;
        $('signin').hidden = false;
        const err = $('signin-error');
        err.textContent = message || '';
        err.hidden = !message;
        const btn = $('signin-form').querySelector('button[type=submit]');
        btn.disabled = false;
        btn.textContent = 'Sign in';
        $('token-input').value = '';
        $('token-input').focus();
        setConn('offline', 'Signed out');
        document.title = 'baton console';
    }

    function signOut(message) {
        S.token = null;
        try {
            sessionStorage.removeItem(TOKEN_KEY);
        } catch (e) { /* storage disabled: nothing kept */ }
        clearTimeout(S.reconnectTimer);
        const ws = S.ws;
        S.ws = null;
        S.online = false;
        S.inflight.clear();
        if (ws)
            ws.close();
        hideBanner();
        resetConversation();
        S.user = null;
        showSignin(message);
    }

    function startSignin(token) {
        S.token = token;
        try {
            sessionStorage.setItem(TOKEN_KEY, token);
        } catch (e) { /* storage disabled: the token lives as long as the page */ }
        S.attempt = 0;
        const old = S.ws;
        S.ws = null;
        if (old)
            old.close();
        connect();
    }

    function welcome(msg) {
        const sameUser = S.user === msg.user;
        if (!sameUser)
            resetConversation();
        S.user = msg.user;
        S.role = msg.role;
        S.online = true;
        S.attempt = 0;
        hideBanner();
        setConn('online', 'Connected');
        $('signin').hidden = true;
        $('app').hidden = false;
        $('who').hidden = false;
        $('who-user').textContent = msg.user;
        $('who-role').textContent = msg.role;
        $('who-role').className = 'role-badge role-' + (msg.role || 'viewer');
        updateComposer();
        for (const entry of S.cards.values())
            renderCard(entry);
        renderPanels();
        requestHistory();
        if (!sameUser)
            $('say-input').focus();
    }

    function resetConversation() {
        S.cards.clear();
        const log = $('log');
        const intro = $('intro');
        log.replaceChildren(intro);
        $('history-list').replaceChildren();
        $('history-empty').hidden = false;
        $('audit').hidden = true;
        renderPanels();
    }

    /* ---- messages from baton ---------------------------------------------------------- */

    function receive(text) {
        let msg;
        try {
            msg = JSON.parse(text);
        } catch (e) {
            return;
        }
        if (!msg || typeof msg !== 'object')
            return;
        const w = msg.in_reply_to !== undefined && msg.in_reply_to !== null
            ? S.inflight.get(msg.in_reply_to) : undefined;
        if (w)
            S.inflight.delete(msg.in_reply_to);
        switch (msg.type) {
        case 'welcome':
            welcome(msg);
            break;
        case 'error':
            onError(msg, w);
            break;
        case 'reply':
        case 'result':
            if (w && w.type === 'say') {
                renderReply(w.slot, msg);
                historySoon();
            } else if (w && (w.type === 'decide' || w.type === 'cancel'))
                decisionAnswer(w, msg);
            else if (msg.text)
                logSystem(msg.text, msg.kind === 'error' ? 'error' : 'info');
            break;
        case 'plan': {
            const card = msg.card || cardFromPlan(msg, w);
            if (w && w.type === 'say') {
                w.slot.removeAttribute('aria-busy');
                w.slot.dataset.kind = 'plan';
                w.slot.className = 'msg msg-bot kind-plan';
            }
            upsertCard(card, w && w.type === 'say' ? w.slot : null);
            historySoon();
            break;
        }
        case 'card':
            upsertCard(msg.card, null);
            break;
        case 'state':
            replayState(msg.cards);
            break;
        case 'history':
            renderHistory(msg.requests || []);
            break;
        case 'audit':
            renderAudit(msg);
            break;
        case 'notice':
            logSystem(msg.text, 'notice');
            break;
        default:
            break; /* `pending` and anything newer: not shown */
        }
    }

    function onError(msg, w) {
        const text = msg.message || msg.code || 'something went wrong';
        if (msg.code === 'bad_token') {
            signOut('That token was not accepted: ' + text);
            return;
        }
        if (w && w.type === 'hello' && !S.online) {
            /* Signing in failed for another reason (the store, a busy
             * server): the connection stays; try the same token again. */
            showBanner('warn', [el('span', {class: 'banner-text', testid: 'banner-text'},
                'Signing in failed: ' + text + ' '),
            el('button', {type: 'button', class: 'btn btn-small', onclick: () => {
                const id = S.nextId++;
                S.inflight.set(id, {type: 'hello'});
                send({type: 'hello', id: id, token: S.token});
            }}, 'Try again')]);
        } else if (w && w.type === 'say') {
            renderProblem(w.slot, text, msg.code);
        } else if (w && (w.type === 'decide' || w.type === 'cancel')) {
            const entry = S.cards.get(w.approvalId);
            if (entry) {
                entry.inflight = 0;
                entry.note = {tone: 'error', text: text};
                renderCard(entry);
            }
        } else if (w && w.type === 'audit') {
            const list = $('audit-list');
            list.replaceChildren(el('li', {class: 'audit-error', role: 'alert'},
                msg.code === 'unknown_type'
                    ? 'This baton cannot show audit trails in the console yet (' + text + ').'
                    : text));
        } else if (w && w.type === 'history') {
            $('history-empty').hidden = false;
            $('history-empty').textContent = 'Could not load your requests: ' + text;
        } else if (msg.code === 'unauthenticated' && S.token) {
            /* The server forgot us (it restarted between messages): sign in again. */
            const ws = S.ws;
            S.ws = null;
            if (ws)
                ws.close();
            connect();
        } else {
            logSystem(text, 'error');
        }
    }

    /* ---- the conversation ------------------------------------------------------------ */

    function nearBottom() {
        const log = $('log');
        return log.scrollHeight - log.scrollTop - log.clientHeight < 120;
    }

    function scrollToEnd() {
        const log = $('log');
        log.scrollTop = log.scrollHeight;
    }

    function appendEntry(li, force) {
        const stick = force || nearBottom();
        $('log').appendChild(li);
        if (stick)
            scrollToEnd();
    }

    function logSystem(text, tone) {
        appendEntry(el('li', {class: 'entry system system-' + tone, testid: 'system-' + tone,
            role: tone === 'error' ? 'alert' : null},
        el('p', {class: 'pre'}, text), timeEl(Date.now())));
    }

    function userBubble(who, text, ms) {
        return el('div', {class: 'msg msg-user' + (who === S.user ? '' : ' msg-other')},
            el('div', {class: 'msg-meta'},
                el('span', {class: 'msg-who'}, who === S.user ? 'You' : who), timeEl(ms)),
            el('p', {class: 'msg-text pre', testid: 'said'}, text));
    }

    function say(text) {
        text = text.trim();
        if (!text)
            return;
        if (!S.online) {
            showBanner('warn', [el('span', {class: 'banner-text', testid: 'banner-text'},
                'Not sent: baton is not connected. The page reconnects by itself; ' +
                'send again once it is back.')]);
            return;
        }
        const slot = el('div', {class: 'msg msg-bot pending', testid: 'reply', 'aria-busy': 'true'},
            el('span', {class: 'typing', 'aria-label': 'baton is working'},
                el('span', {}), el('span', {}), el('span', {})));
        const li = el('li', {class: 'entry exchange'}, userBubble(S.user, text, Date.now()), slot);
        const id = request({type: 'say', text: text}, {type: 'say', slot: slot, text: text});
        if (!id)
            return;
        appendEntry(li, true);
        S.said.push(text);
        S.saidPos = -1;
        $('say-input').value = '';
    }

    function fillInput(text) {
        const input = $('say-input');
        input.value = text;
        input.focus();
        input.setSelectionRange(text.length, text.length);
    }

    function renderProblem(slot, text, code) {
        const stick = nearBottom();
        slot.removeAttribute('aria-busy');
        slot.className = 'msg msg-bot kind-error';
        slot.dataset.kind = 'error';
        slot.replaceChildren(el('p', {class: 'reply-text pre', role: 'alert'},
            el('span', {class: 'kind-label'}, code === 'rate_limited' ? 'Slow down' : 'Error'),
            ' ', text));
        if (stick)
            scrollToEnd();
    }

    /* An answer to `say`: text, a table, a question, or suggestions. */
    function renderReply(slot, msg) {
        const stick = nearBottom();
        const kind = msg.kind || 'answer';
        const data = msg.data || {};
        const text = msg.text || '';
        slot.removeAttribute('aria-busy');
        slot.className = 'msg msg-bot kind-' + kind;
        slot.dataset.kind = kind;
        slot.replaceChildren();
        if (kind === 'error') {
            slot.appendChild(el('p', {class: 'reply-text pre', role: 'alert'},
                el('span', {class: 'kind-label'}, 'Error'), ' ', text));
        } else if (kind === 'clarify') {
            slot.appendChild(el('p', {class: 'reply-text pre'},
                el('span', {class: 'kind-label'}, 'Question'), ' ', text));
            slot.appendChild(el('p', {class: 'hint'}, 'Type your answer below.'));
            $('say-input').focus();
        } else if (kind === 'unknown') {
            renderUnknown(slot, text, data.suggestions || []);
        } else {
            const table = tableFrom(data.data);
            if (table) {
                const lines = text.split('\n');
                slot.appendChild(el('p', {class: 'reply-text'}, lines[0].replace(/:$/, '')));
                slot.appendChild(table);
            } else {
                appendText(slot, text);
            }
        }
        if (stick)
            scrollToEnd();
    }

    /* Plain text; command output (lines in columns) in a monospace block
     * so its columns line up. */
    function appendText(slot, text) {
        const lines = text.split('\n');
        const columnar = lines.slice(1).filter((l) => /\S {2,}\S/.test(l)).length >= 2;
        if (!columnar) {
            slot.appendChild(el('p', {class: 'reply-text pre'}, text));
            return;
        }
        slot.appendChild(el('p', {class: 'reply-text'}, lines[0]));
        slot.appendChild(el('pre', {class: 'output', testid: 'output'}, lines.slice(1).join('\n')));
    }

    function renderUnknown(slot, text, suggestions) {
        const lines = text.split('\n');
        const at = lines.findIndex((l) => /^you could try:?$/i.test(l.trim()));
        let before = lines;
        let after = [];
        if (at >= 0) {
            before = lines.slice(0, at);
            after = lines.slice(at + 1).filter((l) => !/^\s+["“]/.test(l));
        }
        slot.appendChild(el('p', {class: 'reply-text pre'}, before.join('\n')));
        if (suggestions.length > 0) {
            slot.appendChild(el('div', {class: 'suggestions'},
                el('span', {class: 'muted'}, 'You could try:'),
                suggestions.map((s) => el('button', {type: 'button', class: 'chip',
                    testid: 'suggestion', onclick: () => fillInput(String(s))}, String(s)))));
        }
        if (after.length > 0 && after.join('').trim())
            slot.appendChild(el('p', {class: 'reply-text muted pre'}, after.join('\n')));
    }

    /* A table for {columns, rows} or for a list of objects; null otherwise. */
    function tableFrom(d) {
        let columns = null;
        let rows = null;
        if (d && Array.isArray(d.columns) && Array.isArray(d.rows)) {
            columns = d.columns.map(String);
            rows = d.rows.map((r) => Array.isArray(r) ? r : columns.map((c) => r && r[c]));
        } else if (Array.isArray(d) && d.length > 0 && d[0] && typeof d[0] === 'object' &&
                   !Array.isArray(d[0])) {
            columns = Object.keys(d[0]).slice(0, 8);
            rows = d.map((r) => columns.map((c) => r[c]));
        }
        if (!columns || rows.length === 0)
            return null;
        const head = el('tr', {}, columns.map((c) =>
            el('th', {scope: 'col'}, COLUMN_LABELS[c] || c.replace(/_/g, ' '))));
        const body = rows.map((r) => el('tr', {}, columns.map((c, i) => {
            const v = str(r[i]);
            if (c === 'name')
                return el('th', {scope: 'row'}, v);
            if (c === 'environment' || c === 'status')
                return el('td', {}, el('span', {class: 'tag tag-' + c + ' tag-' +
                    v.toLowerCase().replace(/[^a-z0-9-]/g, '')}, v));
            if (c === 'ip')
                return el('td', {class: 'mono'}, v);
            return el('td', {}, v);
        })));
        return el('div', {class: 'table-wrap', tabindex: '0', role: 'region',
            'aria-label': plural(rows.length, 'row')},
        el('table', {class: 'data', testid: 'table'},
            el('caption', {class: 'visually-hidden'}, plural(rows.length, 'row')),
            el('thead', {}, head), el('tbody', {}, body)));
    }

    /* ---- cards ---------------------------------------------------------------------- */

    function replayState(cards) {
        if (!Array.isArray(cards))
            return;
        const sorted = cards.slice().sort((a, b) => (a.created_ms || 0) - (b.created_ms || 0));
        for (const c of sorted)
            upsertCard(c, null, true);
        renderPanels();
    }

    /* Show card (a newer copy replaces the one on screen). slot: where a
     * card answering this tab's `say` goes; otherwise a card not yet on
     * screen gets its own entry at the end of the conversation. */
    function upsertCard(card, slot, quiet) {
        if (!card || !card.approval_id)
            return;
        let entry = S.cards.get(card.approval_id);
        if (!entry) {
            entry = {
                card: card,
                el: el('article', {class: 'card', id: 'card-' + card.approval_id,
                    testid: 'card-' + card.approval_id, tabindex: '-1'}),
                note: null,
                inflight: 0
            };
            S.cards.set(card.approval_id, entry);
            if (slot) {
                slot.replaceChildren(entry.el);
            } else {
                appendEntry(el('li', {class: 'entry exchange', 'data-own': 'card'},
                    userBubble(card.requester || '?', card.request || card.summary || '',
                        card.created_ms),
                    el('div', {class: 'msg msg-bot kind-plan', testid: 'reply',
                        'data-kind': 'plan'}, entry.el)));
            }
        } else {
            const older = entry.card.updated_ms && card.updated_ms &&
                card.updated_ms < entry.card.updated_ms && !entry.card.legacy;
            if (!older) {
                /* A recorded decision's note has done its job once the
                 * card itself shows the change. */
                const changed = !card.legacy && card.updated_ms !== entry.card.updated_ms;
                if (entry.note && changed && (entry.note.tone === 'ok' || entry.note.transient))
                    entry.note = null;
                /* A decision in flight shows on the card before its answer
                 * (which, for a plan that runs at once, comes only when the
                 * run ends): stop showing "Sending…" then. */
                if (entry.inflight && changed)
                    entry.inflight = 0;
                entry.card = card;
            }
            if (slot && entry.el.parentNode !== slot) {
                /* The `card` broadcast came before the `plan` answering
                 * this tab's request: move the card next to the request. */
                const oldEntry = entry.el.closest('li.entry');
                slot.replaceChildren(entry.el);
                if (oldEntry && oldEntry.dataset.own === 'card')
                    oldEntry.remove();
            }
        }
        const stick = nearBottom();
        renderCard(entry);
        if (stick && slot)
            scrollToEnd();
        if (!quiet)
            renderPanels();
    }

    function levelName(c) {
        return c.level_name || LEVEL_NAMES[c.level] || '';
    }

    function execOf(c) {
        const steps = c.steps || [];
        const e = c.execution || {};
        const done = typeof e.done === 'number' ? e.done
            : steps.filter((s) => s.state && s.state !== 'pending' && s.state !== 'running').length;
        /* A plan not yet started may report total 0: count its steps. */
        const total = typeof e.total === 'number' && e.total > 0 ? e.total : steps.length;
        return {state: e.state || 'pending_approval', done: done, total: total};
    }

    function renderCard(entry) {
        const c = entry.card;
        const root = entry.el;
        const hadFocus = root.contains(document.activeElement) && document.activeElement !== root;
        const exec = execOf(c);
        /* Outputs the reader opened stay open across redraws. */
        const openOutputs = new Set(Array.from(root.querySelectorAll('details.step-output[open]'))
            .map((d) => Number(d.dataset.step)));
        const risk = ['low', 'medium', 'high', 'critical'].includes(c.risk) ? c.risk : 'critical';
        const open = OPEN_STATES.has(c.state);
        root.className = 'card card-risk-' + risk + ' card-' + (c.state || 'pending') +
            (root.classList.contains('flash') ? ' flash' : '');
        root.dataset.state = c.state || '';
        root.dataset.level = String(c.level);
        root.dataset.exec = exec.state;
        root.setAttribute('aria-label', 'Plan: ' + (c.summary || ''));

        const head = el('header', {class: 'card-head'},
            el('span', {class: 'risk-badge risk-' + risk, testid: 'risk'}, risk + ' risk'),
            el('h3', {class: 'card-title'}, c.summary || 'Plan'),
            el('span', {class: 'state-badge state-' + c.state, testid: 'card-state'},
                cardStateText(c, exec)));

        const approved = c.approved_by || [];
        const mayDecide = c.may_decide || [];
        const facts = el('dl', {class: 'facts'},
            fact('Approval', 'level', 'Level ' + c.level + ' · ' + levelName(c)),
            fact('Targets', 'targets', (c.targets && c.targets.length) ? c.targets.join(', ') : '—'),
            fact('Approvals', 'approvals',
                el('span', {}, approved.length + ' of ' + (c.approvals_required || 0)),
                approved.length ? el('span', {class: 'muted'}, ' · ' + approved.join(', ')) : null),
            !open && mayDecide.length === 0 ? null : fact('Who may decide', 'may-decide', mayDecide.length
                ? mayDecide.map((n, i) => [i ? ', ' : '', el('span', {class: approved.includes(n)
                    ? 'person decided' : 'person', title: approved.includes(n) ? 'approved' : null},
                n === S.user ? n + ' (you)' : n, approved.includes(n) ? ' ✓' : '')])
                : '—'),
            fact(open ? 'Expires in' : CLOSED_LABELS[c.state] || 'Closed', 'expires',
                expiryNode(c, open)));

        const steps = el('ol', {class: 'steps', testid: 'steps'},
            (c.steps || []).map((s) => stepRow(c, s, openOutputs)));

        const pct = exec.total > 0 ? Math.round(100 * Math.min(exec.done, exec.total) / exec.total) : 0;
        const bar = el('div', {class: 'progress-bar'});
        bar.style.width = pct + '%';
        const progress = el('div', {class: 'progress-row'},
            el('div', {class: 'progress progress-' + exec.state, testid: 'progress',
                role: 'progressbar', 'aria-label': 'Execution progress', 'aria-valuemin': '0',
                'aria-valuemax': '100', 'aria-valuenow': String(pct),
                'aria-valuetext': exec.done + ' of ' + exec.total + ' steps',
                'data-done': String(exec.done), 'data-total': String(exec.total),
                'data-state': exec.state}, bar),
            el('span', {class: 'progress-label', testid: 'progress-label'},
                exec.done + ' of ' + plural(exec.total, 'step') + ' · ' + execText(c, exec)));

        const tone = exec.state === 'completed' ? 'is-ok'
            : ['failed', 'timed_out', 'interrupted'].includes(exec.state) ? 'is-error' : 'is-neutral';
        const result = c.result_text
            ? el('p', {class: 'card-result pre ' + tone, testid: 'result'}, c.result_text)
            : null;
        const note = entry.note
            ? el('p', {class: 'card-note pre note-' + entry.note.tone, testid: 'note',
                role: entry.note.tone === 'error' ? 'alert' : 'status'}, entry.note.text)
            : null;

        replaceKids(root, head,
            el('p', {class: 'card-request'},
                el('span', {class: 'muted'}, (c.requester === S.user ? 'You' : c.requester || '?') +
                    ' asked '), '“' + (c.request || '') + '”',
                el('span', {class: 'muted'}, ' · '), timeEl(c.created_ms)),
            facts, decisionsLine(c), steps, progress, result, note, actions(entry, open));
        if (hadFocus) {
            const first = root.querySelector('.card-actions button:not([disabled])');
            (first || root).focus({preventScroll: true});
        }
    }

    /* Who decided what, in order (the card's `decisions`, when sent). */
    function decisionsLine(c) {
        const ds = Array.isArray(c.decisions) ? c.decisions : [];
        if (ds.length === 0)
            return null;
        return el('ul', {class: 'decisions', testid: 'decisions', 'aria-label': 'Decisions'},
            ds.map((d) => {
                const verb = d.decision === 'deny' ? 'denied' : d.step ? 'released' : 'approved';
                const what = d.step ? ' step ' + d.step : '';
                return el('li', {class: 'decision decision-' + verb},
                    el('span', {class: 'decision-mark', 'aria-hidden': 'true'},
                        verb === 'denied' ? '✗' : verb === 'released' ? '▸' : '✓'),
                    el('strong', {}, d.user === S.user ? 'you' : d.user || '?'),
                    ' ' + verb + what,
                    d.via && d.via !== 'console' ? el('span', {class: 'muted'}, ' via ' + d.via) : null,
                    el('span', {class: 'muted'}, ' · '), timeEl(d.ts_ms));
            }));
    }

    function execText(c, exec) {
        if (exec.state === 'pending_approval' && c.state === 'releasing')
            return exec.done > 0 ? 'Paused until step ' + (c.next_step || exec.done + 1) +
                ' is released' : 'Waiting for step 1 to be released';
        if (exec.state === 'pending_approval' && !OPEN_STATES.has(c.state))
            return c.state === 'approved' ? 'Starting' : 'Not run';
        if (exec.state === 'queued')
            return 'Queued for a background worker';
        return EXEC_STATES[exec.state] || exec.state;
    }

    function cardStateText(c, exec) {
        if (c.state === 'approved' && exec.state !== 'pending_approval')
            return EXEC_STATES[exec.state] || exec.state;
        if (c.state === 'releasing' && exec.state === 'running')
            return 'Running a released step';
        return CARD_STATES[c.state] || c.state;
    }

    function fact(label, testid, ...value) {
        return el('div', {class: 'fact'}, el('dt', {}, label),
            el('dd', {testid: testid}, value));
    }

    function expiryNode(c, open) {
        if (!c.expires_ms)
            return '—';
        if (open) {
            return el('span', {class: 'countdown', testid: 'countdown',
                'data-expires': String(c.expires_ms), title: 'at ' + fullTime(c.expires_ms)},
            timeLeft(c.expires_ms - Date.now()));
        }
        if (c.state === 'expired')
            return el('span', {}, 'at ' + clockTime(c.expires_ms));
        const ds = Array.isArray(c.decisions) ? c.decisions : [];
        const last = ds.length ? ds[ds.length - 1].ts_ms : c.updated_ms;
        return el('span', {}, last ? 'at ' + clockTime(last) : '—');
    }

    function stepRow(c, s, openOutputs) {
        const st = s.state || 'pending';
        const inputs = Object.entries(s.inputs || {})
            .filter(([k, v]) => !(k === 'host' && v === s.target))
            .map(([k, v]) => k + ' = ' + str(v));
        const released = (c.released_steps || []).includes(s.number);
        const next = c.state === 'releasing' && c.next_step === s.number;
        return el('li', {class: 'step step-' + st + (next ? ' step-next' : ''),
            testid: 'step-' + s.number, 'data-state': st},
        el('span', {class: 'step-num', 'aria-hidden': 'true'}, String(s.number)),
        el('div', {class: 'step-main'},
            el('div', {class: 'step-line'},
                el('span', {class: 'visually-hidden'}, 'Step ' + s.number + ': '),
                el('code', {class: 'step-tool'}, s.tool || '?'),
                s.target ? [el('span', {class: 'muted'}, ' on '),
                    el('span', {class: 'step-target'}, s.target)] : null,
                s.risk ? el('span', {class: 'risk-pill risk-' + s.risk}, s.risk) : null,
                c.level === 3 && released ? el('span', {class: 'pill pill-released'}, 'released') : null,
                next ? el('span', {class: 'pill pill-next'}, 'next to release') : null),
            inputs.length ? el('span', {class: 'step-inputs'}, inputs.join(' · ')) : null,
            s.output ? el('details', {class: 'step-output', 'data-step': String(s.number),
                open: openOutputs.has(s.number)},
            el('summary', {}, 'output'), el('pre', {testid: 'step-output'}, s.output)) : null,
            s.error ? el('p', {class: 'step-error pre', testid: 'step-error'}, s.error) : null),
        el('span', {class: 'step-state state-' + st, testid: 'step-state'},
            st === 'running' ? el('span', {class: 'spinner', 'aria-hidden': 'true'}) : null,
            st === 'pending' && ['denied', 'cancelled', 'expired'].includes(c.state)
                ? 'not run' : STEP_STATES[st] || st));
    }

    function actions(entry, open) {
        const c = entry.card;
        const you = c.you || {};
        const busy = !!entry.inflight;
        const what = c.summary || 'this plan';
        const buttons = [];
        if (c.state === 'pending' && you.may_decide) {
            buttons.push(button('Approve', 'btn-approve', 'approve', 'Approve: ' + what,
                () => decide(entry, 'approve', 0), busy));
            buttons.push(button('Deny', 'btn-deny', 'deny', 'Deny: ' + what,
                () => decide(entry, 'deny', 0), busy));
        }
        if (c.state === 'releasing' && you.may_release && c.next_step) {
            buttons.push(button('Release step ' + c.next_step, 'btn-approve', 'release',
                'Release step ' + c.next_step + ' of: ' + what,
                () => decide(entry, 'approve', c.next_step), busy));
            buttons.push(button('Deny step ' + c.next_step, 'btn-deny', 'deny-step',
                'Deny step ' + c.next_step + ' and stop: ' + what,
                () => decide(entry, 'deny', c.next_step), busy));
        }
        if (you.may_cancel && open) {
            buttons.push(button('Cancel request', 'btn-quiet', 'cancel', 'Cancel your request: ' + what,
                () => cancel(entry), busy));
        }
        let hint = null;
        if (busy) {
            hint = el('span', {class: 'hint', role: 'status'},
                el('span', {class: 'spinner', 'aria-hidden': 'true'}), ' Sending…');
        } else if (open && buttons.length === 0) {
            hint = el('span', {class: 'hint'}, waitingFor(c));
        } else if (open && c.state === 'pending' && !you.may_decide && you.may_cancel) {
            hint = el('span', {class: 'hint'}, waitingFor(c));
        }
        return el('div', {class: 'card-actions', 'aria-busy': busy ? 'true' : null}, buttons, hint);
    }

    function waitingFor(c) {
        const others = (c.may_decide || []).filter((n) => !(c.approved_by || []).includes(n));
        if (c.state === 'releasing') {
            const execState = execOf(c).state;
            if (execState === 'running' || execState === 'queued')
                return 'Step ' + ((c.released_steps || []).slice(-1)[0] || '') + ' is running.';
            return 'Waiting for an approver to release step ' + (c.next_step || '?') + '.';
        }
        const need = Math.max(0, (c.approvals_required || 0) - (c.approved_by || []).length);
        if (others.length === 0)
            return 'Waiting for ' + plural(need, 'approval') + '.';
        return 'Waiting for ' + plural(need, 'approval') + ' from ' + listWords(others) + '.';
    }

    function button(label, cls, testid, aria, onclick, disabled) {
        return el('button', {type: 'button', class: 'btn ' + cls, testid: testid,
            'aria-label': aria, onclick: onclick, disabled: disabled}, label);
    }

    function decide(entry, decision, step) {
        if (entry.inflight)
            return;
        const msg = {type: 'decide', approval: entry.card.approval_id, decision: decision};
        if (step)
            msg.step = step;
        const id = request(msg, {type: 'decide', approvalId: entry.card.approval_id,
            decision: decision, step: step, cardUpdated: entry.card.updated_ms});
        if (!id) {
            entry.note = {tone: 'error', text: 'Not sent: baton is not connected.'};
        } else {
            entry.inflight = id;
            entry.note = null;
        }
        renderCard(entry);
    }

    function cancel(entry) {
        if (entry.inflight)
            return;
        const id = request({type: 'cancel', approval: entry.card.approval_id},
            {type: 'cancel', approvalId: entry.card.approval_id, cardUpdated: entry.card.updated_ms});
        if (!id)
            entry.note = {tone: 'error', text: 'Not sent: baton is not connected.'};
        else
            entry.inflight = id;
        renderCard(entry);
    }

    /* The answer to a decide/cancel: a note on the card. The card itself is
     * refreshed by the `card` message that follows a recorded decision. */
    function decisionAnswer(w, msg) {
        const entry = S.cards.get(w.approvalId);
        if (!entry)
            return;
        entry.inflight = 0;
        const tone = msg.status === 'refused' || msg.kind === 'error' ? 'error'
            : msg.status === 'already' ? 'info' : 'ok';
        /* When the card already shows the decision, a recorded answer
         * would only repeat it. */
        const shown = !entry.card.legacy && entry.card.updated_ms !== w.cardUpdated;
        entry.note = tone === 'ok' && shown ? null
            : {tone: tone, text: msg.text || msg.status || 'done'};
        if (entry.card.legacy)
            legacyApply(entry.card, w, msg);
        renderCard(entry);
        renderPanels();
    }

    /* ---- older servers: a card made from the `plan` reply ----------------------------- */

    /* A server without `card` messages still answers `say` with `plan` and
     * decisions with `result`; build what the card needs from those so the
     * page stays usable. The server decides every click in any case. */
    function cardFromPlan(msg, w) {
        const plan = msg.plan || {};
        const ap = msg.approval || {};
        const level = ap.level || plan.approval_level || 0;
        const mayApprove = level === 1 && ap.requester_may_approve;
        const approver = S.role === 'approver' || S.role === 'admin';
        const now = Date.now();
        return {
            legacy: true,
            approval_id: msg.approval_id,
            request_id: plan.request_id,
            requester: S.user,
            request: w && w.text ? w.text : '',
            summary: plan.summary,
            risk: plan.risk || ap.risk,
            level: level,
            targets: (plan.targets || []).map((t) => (t && t.name) || String(t)),
            created_ms: now,
            updated_ms: now,
            expires_ms: ap.expires_s ? now + ap.expires_s * 1000 : 0,
            state: 'pending',
            approvals_required: ap.approvals_required || 1,
            approved_by: [],
            may_decide: [],
            next_step: null,
            released_steps: [],
            steps: (plan.steps || []).map((s, i) => ({
                number: i + 1, tool: s.tool, target: s.target, risk: s.risk,
                inputs: s.inputs || {}, state: 'pending', error: null, output: null
            })),
            execution: {state: 'pending_approval', done: 0, total: (plan.steps || []).length},
            result_text: null,
            you: {may_decide: mayApprove || (approver && level === 1), may_release: false,
                may_cancel: true}
        };
    }

    function legacyApply(c, w, msg) {
        const d = msg.data || {};
        if (msg.status === 'recorded') {
            if (w.type === 'cancel') {
                c.state = 'cancelled';
            } else if (w.decision === 'deny') {
                c.state = 'denied';
            } else if (w.step) {
                c.released_steps = (c.released_steps || []).concat([w.step]);
                c.next_step = w.step < c.steps.length ? w.step + 1 : null;
                if (!c.next_step)
                    c.state = 'approved';
            } else {
                c.approved_by = (c.approved_by || []).concat([S.user]);
                if (c.approved_by.length >= c.approvals_required) {
                    c.state = c.level === 3 ? 'releasing' : 'approved';
                    c.next_step = c.level === 3 ? 1 : null;
                }
            }
            c.you = {may_decide: false, may_release: c.state === 'releasing' &&
                c.requester !== S.user, may_cancel: false};
        }
        const x = d.execution;
        if (x && Array.isArray(x.steps)) {
            for (const s of x.steps) {
                const mine = c.steps[s.index];
                if (!mine)
                    continue;
                mine.state = s.state;
                const r = s.result || {};
                mine.error = r.error || null;
                mine.output = r.stdout || null;
            }
            c.execution = {state: x.state, done: (x.progress || {}).done || 0,
                total: (x.progress || {}).total || c.steps.length};
            c.result_text = msg.text || null;
        }
        c.updated_ms = Date.now();
    }

    /* ---- side panels ------------------------------------------------------------------- */

    function renderPanels() {
        const pending = [];
        const running = [];
        for (const entry of S.cards.values()) {
            const c = entry.card;
            const you = c.you || {};
            if (OPEN_STATES.has(c.state) &&
                (you.may_decide || you.may_release || you.may_cancel || c.requester === S.user))
                pending.push(entry);
            if (EXEC_ACTIVE.has(execOf(c).state))
                running.push(entry);
        }
        const needsYou = (c) => (c.state === 'pending' && c.you && c.you.may_decide) ||
            (c.state === 'releasing' && c.you && c.you.may_release);
        pending.sort((a, b) => (needsYou(b.card) - needsYou(a.card)) ||
            ((a.card.expires_ms || 0) - (b.card.expires_ms || 0)));
        $('pending-list').replaceChildren(...pending.map((e) => panelItem(e, 'pending-item',
            needsYou(e.card) ? el('span', {class: 'pill pill-you'}, 'needs you') : null,
            e.card.expires_ms ? el('span', {class: 'countdown small', 'data-expires':
                String(e.card.expires_ms)}, timeLeft(e.card.expires_ms - Date.now())) : null)));
        $('pending-empty').hidden = pending.length > 0;
        $('pending-count').textContent = String(pending.length);
        $('running-list').replaceChildren(...running.map((e) => {
            const x = execOf(e.card);
            const bar = el('span', {class: 'mini-bar'});
            bar.style.width = (x.total ? Math.round(100 * x.done / x.total) : 0) + '%';
            return panelItem(e, 'running-item',
                el('span', {class: 'mini-progress', 'aria-hidden': 'true'}, bar),
                el('span', {class: 'small muted'}, x.done + '/' + x.total + ' · ' +
                    (EXEC_STATES[x.state] || x.state)));
        }));
        $('running-empty').hidden = running.length > 0;
        $('running-count').textContent = String(running.length);
        const mine = pending.filter((e) => needsYou(e.card)).length;
        document.title = (mine ? '(' + mine + ') ' : '') + 'baton console';
    }

    function panelItem(entry, testid, ...extra) {
        const c = entry.card;
        const risk = c.risk || 'critical';
        return el('li', {},
            el('button', {type: 'button', class: 'panel-item', testid: testid,
                'data-approval': c.approval_id, onclick: () => focusCard(c.approval_id)},
            el('span', {class: 'risk-dot risk-' + risk, title: risk + ' risk'}),
            el('span', {class: 'panel-item-main'},
                el('span', {class: 'panel-item-title'}, c.summary || c.request || 'Plan'),
                el('span', {class: 'panel-item-sub'},
                    (c.requester === S.user ? 'you' : c.requester) + ' · ' + (c.targets || []).join(', '),
                    ' ', extra))));
    }

    function focusCard(id) {
        const entry = S.cards.get(id);
        if (!entry)
            return;
        entry.el.scrollIntoView({block: 'center', behavior: reducedMotion ? 'auto' : 'smooth'});
        entry.el.focus({preventScroll: true});
        entry.el.classList.remove('flash');
        void entry.el.offsetWidth; /* restart the animation */
        entry.el.classList.add('flash');
        setTimeout(() => entry.el.classList.remove('flash'), 1600);
    }

    /* ---- history and audit ---------------------------------------------------------------- */

    function requestHistory() {
        clearTimeout(S.historyTimer);
        S.historyTimer = 0;
        request({type: 'history'}, {type: 'history'});
    }

    /* Refresh the list after a request was answered; several answers in a
     * row cost one `history` (messages count against the rate limit). */
    function historySoon() {
        if (!S.historyTimer)
            S.historyTimer = setTimeout(requestHistory, 1200);
    }

    function renderHistory(requests) {
        const list = $('history-list');
        list.replaceChildren(...requests.map((r) => el('li', {},
            el('button', {type: 'button', class: 'history-item', testid: 'history-item',
                'data-request': r.request_id, onclick: () => requestAudit(r)},
            el('span', {class: 'history-text'}, r.text || ''),
            el('span', {class: 'history-when', title: fullTime(r.created_ms)},
                ago(r.created_ms) + (r.channel && r.channel !== 'console' ? ' · ' + r.channel : ''))))));
        $('history-empty').textContent = 'No requests yet.';
        $('history-empty').hidden = requests.length > 0;
    }

    function requestAudit(r) {
        const audit = $('audit');
        audit.hidden = false;
        $('audit-request').textContent = '“' + (r.text || '') + '” · ' + fullTime(r.created_ms);
        $('audit-list').replaceChildren(el('li', {class: 'muted'}, 'Loading…'));
        for (const b of document.querySelectorAll('.history-item'))
            b.setAttribute('aria-pressed', b.dataset.request === r.request_id ? 'true' : 'false');
        const id = request({type: 'audit', request_id: r.request_id},
            {type: 'audit', request: r});
        if (!id)
            $('audit-list').replaceChildren(el('li', {class: 'audit-error'},
                'Not connected: the audit trail cannot be loaded now.'));
        audit.scrollIntoView({block: 'nearest'});
    }

    function renderAudit(msg) {
        const entries = msg.entries || [];
        const list = $('audit-list');
        $('audit').hidden = false;
        if (entries.length === 0) {
            list.replaceChildren(el('li', {class: 'muted'}, 'No audit entries for this request.'));
            return;
        }
        list.replaceChildren(...entries.map((e) => el('li', {class: 'audit-entry',
            testid: 'audit-entry'},
        el('div', {class: 'audit-head'},
            el('span', {class: 'audit-action'}, e.action || ''),
            el('span', {class: 'audit-actor'}, e.actor || ''),
            el('time', {title: fullTime(e.ts_ms)}, e.ts_ms
                ? new Date(e.ts_ms).toLocaleTimeString() : '')),
        e.detail !== undefined && e.detail !== null
            ? el('p', {class: 'audit-detail'}, auditDetail(e.detail)) : null)));
    }

    /* An audit entry's detail in one line; ids and hashes shortened. */
    function auditDetail(d) {
        const short = (v) => str(v).replace(/\b([0-9a-f]{8})[0-9a-f]{16,}\b/g, '$1…');
        if (typeof d !== 'object')
            return short(d);
        return Object.entries(d).filter(([, v]) => v !== null && v !== undefined && v !== '')
            .map(([k, v]) => k + ': ' + short(v)).join(' · ');
    }

    /* ---- the clock ------------------------------------------------------------------------ */

    function tick() {
        const now = Date.now();
        for (const n of document.querySelectorAll('.countdown[data-expires]')) {
            const left = Number(n.dataset.expires) - now;
            n.textContent = left > 0 ? timeLeft(left) : 'expiring…';
            n.classList.toggle('soon', left < 60000);
        }
        if (S.reconnectTimer && !$('banner').hidden && !S.online)
            showReconnecting(false);
    }

    function updateComposer() {
        $('send').disabled = !S.online;
        $('say-input').setAttribute('aria-disabled', S.online ? 'false' : 'true');
    }

    /* ---- start ---------------------------------------------------------------------------- */

    function tokenFromFragment() {
        const m = /(?:^#|&)token=([^&]*)/.exec(location.hash || '');
        if (!m)
            return null;
        /* Take the token out of the address bar (and so out of the
         * history and of anything copied from it). */
        history.replaceState(null, '', location.pathname + location.search);
        try {
            return decodeURIComponent(m[1]);
        } catch (e) {
            return m[1];
        }
    }

    function init() {
        $('signin-form').addEventListener('submit', (ev) => {
            ev.preventDefault();
            const token = $('token-input').value.trim();
            if (!token) {
                $('signin-error').textContent = 'Paste your token first.';
                $('signin-error').hidden = false;
                return;
            }
            const btn = ev.target.querySelector('button[type=submit]');
            btn.disabled = true;
            btn.textContent = 'Signing in…';
            $('signin-error').hidden = true;
            startSignin(token);
        });
        $('sign-out').addEventListener('click', () => signOut(null));
        $('say-form').addEventListener('submit', (ev) => {
            ev.preventDefault();
            say($('say-input').value);
        });
        $('say-input').addEventListener('keydown', (ev) => {
            if (ev.key === 'ArrowUp' && S.said.length > 0 &&
                ($('say-input').value === '' || S.saidPos >= 0)) {
                ev.preventDefault();
                S.saidPos = S.saidPos < 0 ? S.said.length - 1 : Math.max(0, S.saidPos - 1);
                fillInput(S.said[S.saidPos]);
            } else if (ev.key === 'ArrowDown' && S.saidPos >= 0) {
                ev.preventDefault();
                S.saidPos++;
                if (S.saidPos >= S.said.length) {
                    S.saidPos = -1;
                    fillInput('');
                } else {
                    fillInput(S.said[S.saidPos]);
                }
            } else if (ev.key === 'Escape') {
                S.saidPos = -1;
            }
        });
        for (const b of document.querySelectorAll('[data-try]'))
            b.addEventListener('click', () => fillInput(b.dataset.try));
        $('history-refresh').addEventListener('click', requestHistory);
        $('audit-close').addEventListener('click', () => {
            $('audit').hidden = true;
        });
        setInterval(tick, 1000);
        window.addEventListener('online', () => {
            if (S.token && !S.ws)
                connect();
        });

        const fromUrl = tokenFromFragment();
        let token = fromUrl;
        if (fromUrl) {
            try {
                sessionStorage.setItem(TOKEN_KEY, fromUrl);
            } catch (e) { /* kept in memory only */ }
        } else {
            try {
                token = sessionStorage.getItem(TOKEN_KEY);
            } catch (e) {
                token = null;
            }
        }
        if (token) {
            S.token = token;
            showBanner('info', [el('span', {class: 'spinner', 'aria-hidden': 'true'}),
                el('span', {class: 'banner-text'}, 'Signing in…')]);
            connect();
        } else {
            showSignin(null);
        }
    }

    /* For the browser tests (tests/e2e/): drop the socket as a network
     * failure would, to watch the page reconnect by itself. The page lets
     * go of the socket at once, as when its `close` event fires: a closing
     * handshake cannot finish while the browser is offline. */
    window.batonConsole = Object.freeze({
        dropConnection: function () {
            const ws = S.ws;
            if (!ws)
                return;
            S.ws = null;
            ws.close();
            closed();
        }
    });

    if (document.readyState === 'loading')
        document.addEventListener('DOMContentLoaded', init);
    else
        init();
}());
