/*
 * mattermost.test.mjs - baton end to end against the fake Mattermost
 * (tests/fakes/mattermost.mjs, proven against the official clients by
 * verify_mattermost): the WebSocket event stream, answers in threads, a plan
 * card whose buttons call baton back with signed tokens, refusals as
 * ephemeral posts, the card updated in place, forged callbacks refused, a
 * decision from the console shown on Mattermost, and a dropped WebSocket
 * resumed with connection_id + sequence_number so no event is lost.
 */
import { createRequire } from 'node:module';
import path from 'node:path';

import { newId, startMattermost } from '../fakes/mattermost.mjs';
import { Baton, USERS, assert, freePort, mattermostId, run, sleep } from './lib.mjs';

const TOKEN = 'mm-test-bot-token-5f0c';
const BOT = newId();
const CH = newId();       /* configured: every message is read */
const OTHER = newId();    /* not configured: mentions only */
const DM = newId();       /* alice's direct channel with the bot */
const STRANGER = newId(); /* a Mattermost user baton does not know */

const require = createRequire(path.join(process.env.BATON_CHAT_DIR || '.', 'package.json'));
const WebSocket = require('ws');

const att = (post) => ((post.props || {}).attachments || [])[0] || { title: '', text: '', actions: [] };
const buttons = (post) => (att(post).actions || []).map((a) => a.id);

/* callback_url names baton's port, so the port is chosen first. */
async function startBaton(port, opts) {
    return Baton.start('mattermost', { ...opts, port });
}

/* The console: sign in over /ws with a token and send one decision. */
async function consoleDecide(baton, user, approval, decision) {
    const token = baton.cli('token', user).trim().split('\n').pop().trim();
    const ws = new WebSocket(`ws://127.0.0.1:${baton.port}/ws`);
    const answers = [];
    ws.on('message', (d) => answers.push(JSON.parse(d.toString())));
    await new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
    });
    ws.send(JSON.stringify({ id: 1, type: 'hello', token }));
    const deadline = Date.now() + 10000;
    while (!answers.some((m) => m.in_reply_to === 1) && Date.now() < deadline)
        await sleep(20);
    assert(answers.some((m) => m.type === 'welcome'), `console sign-in: ${JSON.stringify(answers)}`);
    ws.send(JSON.stringify({ id: 2, type: 'decide', approval, decision }));
    while (!answers.some((m) => m.in_reply_to === 2) && Date.now() < deadline + 20000)
        await sleep(20);
    ws.close();
    return answers.find((m) => m.in_reply_to === 2);
}

run('mattermost', async () => {
    const users = Object.fromEntries(USERS.map((u) => [mattermostId(u), u]));
    users[STRANGER] = 'stranger';
    const alice = mattermostId('alice'), bob = mattermostId('bob');
    const mm = await startMattermost({ botToken: TOKEN, botUserId: BOT, botUsername: 'baton', users,
        channels: { [CH]: { name: 'ops' }, [OTHER]: { name: 'town-square' },
            [DM]: { name: `${BOT}__${alice}`, type: 'D', members: [BOT, alice] } } });
    let baton = null;
    const port = await freePort();
    const callback = `http://127.0.0.1:${port}/hooks/mattermost`;
    /* baton's first post in the thread of root. */
    const reply = (root, what) => mm.waitFor(() => mm.posts.find((p) => p.user_id === BOT
        && p.root_id === root.id), 20000, what);
    try {
        baton = await startBaton(port, {
            chat: `chat:\n  update_interval_ms: 200\n  mattermost:\n    url: ${mm.url}\n`
                + `    callback_url: ${callback}\n    channels: [${CH}]\n`,
            env: { MATTERMOST_TOKEN: TOKEN }
        });
        await mm.waitFor(() => mm.connections === 1, 15000, 'baton connects over the WebSocket');
        assert(mm.calls.some((c) => c.path === '/api/v4/users/me' && c.status === 200),
            'baton asked who it is');

        /* 1. A read in the configured channel: a Markdown table in the thread. */
        const q = mm.post({ user: alice, channel: CH, message: 'list the linux servers in production' });
        const ans = await reply(q, 'the answer to a read');
        assert(/\n\| .* \|\n\|( --- \|)+\n\|/.test(ans.message), `a Markdown table: ${ans.message}`);

        /* 2. A change: a threaded card with Approve / Deny buttons. */
        const req = mm.post({ user: alice, channel: CH, message: '@baton restart nginx on web-prd-01' });
        const card = await reply(req, 'the plan card');
        assert(/Approval needed/.test(att(card).title) && /level 2/.test(att(card).title),
            `card title: ${att(card).title}`);
        assert(/web-prd-01/.test(att(card).text), `the card names the target: ${att(card).text}`);
        assert(buttons(card).join() === 'approve,deny', `buttons: ${buttons(card)}`);
        for (const a of att(card).actions) {
            assert(a.integration.url === callback, `button URL: ${a.integration.url}`);
            assert(a.integration.context.token.length > 20 && /^[0-9a-f]{64}$/.test(a.integration.context.action_secret),
                'the button carries a token and an action secret');
        }
        const aid = att(card).actions[0].integration.context.approval;

        /* 3. The requester may not approve at level 2: ephemeral, nothing runs. */
        const ran = baton.audit().filter((e) => e.event === 'step_finished').length;
        const r3 = await mm.click({ user: alice, post_id: card.id, action_id: 'approve' });
        assert(r3.apiStatus === 200 && !r3.body.update, `refusal answer: ${JSON.stringify(r3.body)}`);
        const refusal = await mm.waitFor(() => mm.ephemerals.find((e) => e.user_id === alice), 10000,
            'an ephemeral refusal for alice');
        assert(/may not/i.test(refusal.message) && refusal.root_id === req.id, `refusal: ${refusal.message}`);
        assert(/Approval needed/.test(att(mm.getPost(card.id)).title) && card.history.length === 0,
            'the card still waits, untouched');
        const audit3 = baton.audit().map((e) => e.event);
        assert(audit3.includes('approval_refused') && !audit3.includes('approval_decided'),
            `refused, and nothing decided: ${audit3}`);
        assert(audit3.filter((e) => e === 'step_finished').length === ran, 'nothing ran');

        /* 4. Someone baton does not know: told how to be linked. */
        const s = mm.post({ user: STRANGER, channel: CH, message: '@baton how many assets do we have?' });
        const hint = await mm.waitFor(() => mm.ephemerals.find((e) => e.user_id === STRANGER), 20000,
            'an identity hint');
        assert(hint.message.includes(`identities: {mattermost: ${STRANGER}}`) && hint.root_id === s.id,
            `hint: ${hint.message}`);

        /* 5. Forged callbacks decide nothing: a wrong secret, and a real
         * button's context pointed at a post that is not its card. */
        const ctx = att(card).actions[0].integration.context;
        const forge = async (body) => (await fetch(callback, { method: 'POST', body: JSON.stringify(body),
            headers: { 'Content-Type': 'application/json' } })).status;
        const base = { user_id: bob, user_name: 'bob', channel_id: CH, trigger_id: 'x', type: '' };
        assert(await forge({ ...base, post_id: card.id, context: { ...ctx, action_secret: '0'.repeat(64) } }) === 403,
            'a wrong action secret is refused');
        assert(await forge({ ...base, post_id: ans.id, context: ctx }) === 403,
            'a context replayed on another post is refused');
        assert(await forge({ nonsense: true }) === 400, 'a body that is not a click is refused');
        assert(!baton.audit().some((e) => e.event === 'approval_decided'), 'nothing was decided');

        /* 6. An approver approves: it runs, and the card changes in place. */
        const r6 = await mm.click({ user: bob, post_id: card.id, action_id: 'approve' });
        assert(r6.apiStatus === 200 && r6.body.update, `approval answer: ${JSON.stringify(r6.body)}`);
        await mm.waitFor(() => /Done|Failed/.test(att(mm.getPost(card.id)).title), 30000,
            'the card shows the finished execution');
        const done = mm.getPost(card.id);
        assert(buttons(done).length === 0, 'no buttons on a finished card');
        assert(/bob/.test(att(done).text) && /service_restart/.test(att(done).text),
            `the finished card: ${att(done).text}`);
        assert(mm.posts.filter((p) => p.user_id === BOT && p.root_id === req.id).length === 1,
            'the card was updated, not posted again');
        assert(baton.audit().filter((e) => e.event === 'approval_decided').length === 1,
            'one decision recorded');

        /* 7. A direct message, decided on the console: shown on Mattermost. */
        const dm = mm.post({ user: alice, channel: DM, message: 'restart nginx on localhost' });
        const card2 = await reply(dm, 'a card in the direct channel');
        assert(buttons(card2).join() === 'approve,deny', `DM card buttons: ${buttons(card2)}`);
        const aid2 = att(card2).actions[0].integration.context.approval;
        assert(aid2 !== aid, 'a second approval');
        const decided = await consoleDecide(baton, 'carol', aid2, 'approve');
        assert(decided && decided.type !== 'error', `console decision: ${JSON.stringify(decided)}`);
        await mm.waitFor(() => /Done/.test(att(mm.getPost(card2.id)).title), 30000,
            'the console decision shows on the Mattermost card');
        assert(/carol/.test(att(mm.getPost(card2.id)).text), 'the card says carol approved');

        /* 8. Another channel: a mention is answered, other talk is not. */
        mm.post({ user: alice, channel: OTHER, message: 'lunch at noon?' });
        const m8 = mm.post({ user: alice, channel: OTHER, message: 'hey @baton, how many assets do we have?' });
        await reply(m8, 'the answer to a mention');
        await sleep(1000);
        assert(mm.posts.filter((p) => p.user_id === BOT && p.channel_id === OTHER).length === 1,
            'only the mention was answered');

        /* 9. A dropped WebSocket loses no event: a request made while baton
         * is away is replayed when it resumes the connection. */
        const before = mm.connectionInfo.find((c) => c.user_id === BOT);
        const opened = mm.connectionsOpened;
        mm.drop();
        const late = mm.post({ user: bob, channel: CH, message: 'how many assets do we have?' });
        await reply(late, 'the answer to a request made while baton was away');
        const after = mm.connectionInfo.find((c) => c.user_id === BOT && c.active);
        assert(mm.connectionsOpened > opened, 'baton opened a new socket');
        assert(after && after.connection_id === before.connection_id
            && ['replayed', 'lossless'].includes(after.resumed),
        `the connection was resumed, not restarted: ${JSON.stringify(mm.connectionInfo)}`);

        /* 10. A server that forgot the connection starts a new one: baton
         * carries on with the new hello. */
        mm.drop();
        await mm.waitFor(() => !mm.connectionInfo.some((c) => c.active), 5000, 'the socket gone');
        mm.forgetConnections();
        await mm.waitFor(() => mm.connectionInfo.some((c) => c.user_id === BOT && c.active
            && c.connection_id !== before.connection_id), 15000, 'a new connection after a restart');
        const q10 = mm.post({ user: bob, channel: CH, message: 'how many assets do we have?' });
        await reply(q10, 'an answer on the new connection');

        const metrics = await baton.metrics();
        assert(/baton_chat_connected\{surface="mattermost"\} 1/.test(metrics), 'metrics say connected');
        assert(/baton_chat_reconnects_total\{surface="mattermost"\} [1-9]/.test(metrics),
            'metrics count the reconnects');
        assert(!baton.log().includes(TOKEN), 'the token is never logged');
        for (const p of mm.posts.filter((x) => x.user_id !== BOT)) {
            const answers = mm.posts.filter((x) => x.user_id === BOT && x.root_id === p.id);
            assert(answers.length <= 1, `post ${p.id} answered ${answers.length} times`);
        }
    } catch (e) {
        if (baton)
            console.log(`--- baton.log ---\n${baton.log()}`);
        console.log(mm.describe());
        throw e;
    } finally {
        if (baton)
            await baton.stop();
        await mm.close();
    }
});
