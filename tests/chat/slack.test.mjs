/*
 * slack.test.mjs - baton end to end against the fake Slack (tests/fakes/
 * slack.mjs, proven against the official clients by verify_slack): Socket
 * Mode with acks, answers in threads with Block Kit, a plan card whose
 * buttons decide through signed tokens, refusals as ephemeral messages, the
 * card updated in place, decisions from the CLI shown in Slack, a dropped
 * connection and a refresh that lose no event, and a 429 honoured.
 */
import { startSlack } from '../fakes/slack.mjs';
import { Baton, assert, run, slackId, sleep } from './lib.mjs';

const CH = 'C0OPS';
const APP = 'xapp-1-A0TEST-1-test';
const BOT = 'xoxb-test-bot';

const blocksOf = (slack, m) => slack.current(m.channel, m.ts).blocks;
const header = (blocks) => (blocks.find((b) => b.type === 'header') || { text: { text: '' } }).text.text;
const actions = (blocks) => blocks.filter((b) => b.type === 'actions').flatMap((b) => b.elements);
const allText = (blocks) => JSON.stringify(blocks);

/* baton's first message in the thread of ts. */
async function reply(slack, ts, what) {
    return slack.waitFor(() => slack.messages.find((m) => m.channel === CH && m.thread_ts === ts),
        20000, what);
}

run('slack', async () => {
    const slack = await startSlack({ appToken: APP, botToken: BOT, botUserId: 'U0BATON',
        channels: { [CH]: 'ops' } });
    let baton = null;
    try {
        baton = await Baton.start('slack', {
            chat: `chat:\n  update_interval_ms: 200\n  slack:\n    api_url: ${slack.apiUrl}\n`
                + `    channels: [${CH}]\n`,
            env: { SLACK_APP_TOKEN: APP, SLACK_BOT_TOKEN: BOT }
        });
        await slack.waitFor(() => slack.connections === 1, 15000, 'baton connects over Socket Mode');

        /* 1. A read: answered in the thread, the table as sections of fields. */
        const q = slack.mention({ user: slackId('alice'), channel: CH,
            text: 'list the linux servers in production' });
        const ans = await reply(slack, q.ts, 'the answer to a read');
        const ack = slack.acks.find((a) => a.envelope_id === q.envelope_id);
        assert(ack && ack.latencyMs < 3000, `the envelope was acked within 3 s (${JSON.stringify(ack)})`);
        assert(/production|assets/i.test(ans.text), `the answer talks about the assets: ${ans.text}`);
        assert(ans.blocks.some((b) => b.type === 'section' && Array.isArray(b.fields)),
            'the table is shown as section fields');
        assert(slack.validateBlocks(ans.blocks).length === 0, 'the answer is valid Block Kit');

        /* 2. A change: a plan card in the thread with Approve / Deny. */
        const req = slack.mention({ user: slackId('alice'), channel: CH, text: 'deploy billing-api 1.2.3 on localhost' });
        const card = await reply(slack, req.ts, 'the plan card');
        let blocks = blocksOf(slack, card);
        assert(/Approval needed/.test(header(blocks)), `card header: ${header(blocks)}`);
        const buttons = actions(blocks);
        assert(buttons.map((b) => b.action_id).join() === 'approve,deny', `buttons: ${allText(buttons)}`);
        assert(buttons.every((b) => b.value.length > 20 && b.value.length <= 2000), 'buttons carry tokens');
        assert(/localhost/.test(allText(blocks)) && /level 2/.test(header(blocks)),
            'the card names the target and the level');

        /* 3. The requester may not approve a level-2 plan: ephemeral refusal. */
        slack.click({ user: slackId('alice'), channel: CH, message_ts: card.ts, action_id: 'approve' });
        const refusal = await slack.waitFor(() => slack.ephemerals.find((e) => e.user === slackId('alice')),
            20000, 'an ephemeral refusal for alice');
        assert(/may not|never the requester|not/i.test(refusal.text), `refusal: ${refusal.text}`);
        assert(refusal.thread_ts === req.ts, 'the refusal is in the thread');
        assert(/Approval needed/.test(header(blocksOf(slack, card))), 'the card still waits');

        /* 4. Someone baton does not know: told how to be linked. */
        slack.mention({ user: 'U0STRANGER', channel: CH, text: 'how many assets do we have?' });
        const hint = await slack.waitFor(() => slack.ephemerals.find((e) => e.user === 'U0STRANGER'),
            20000, 'an identity hint for a stranger');
        assert(/identities: \{slack: U0STRANGER\}/.test(hint.text), `hint: ${hint.text}`);

        /* 5. An approver approves: it runs and the card is updated in place. */
        const envId = slack.click({ user: slackId('bob'), channel: CH, message_ts: card.ts,
            action_id: 'approve' });
        await slack.waitFor(() => /Done/.test(header(blocksOf(slack, card))), 30000,
            'the card shows Done');
        blocks = blocksOf(slack, card);
        assert(actions(blocks).length === 0, 'no buttons on a finished card');
        assert(/bob/.test(allText(blocks)), 'the card says bob approved');
        assert(slack.messages.filter((m) => m.thread_ts === req.ts).length === 1,
            'the card was updated, not posted again');

        /* 6. The same click delivered again runs nothing twice. */
        slack.redeliver(envId);
        await sleep(2000);
        const steps = baton.audit().filter((e) => e.event === 'step_finished')
            .map((e) => `${e.detail.execution_id}:${e.detail.index}`);
        assert(steps.length > 0 && new Set(steps).size === steps.length,
            `every step ran once (audit: ${steps.join(' ')})`);
        assert(baton.audit().filter((e) => e.event === 'approval_decided').length === 1,
            'one decision recorded');

        /* 7. A dropped connection loses no event: a request made while
         * baton is away is delivered when it is back, and answered. */
        const opened = slack.connectionsOpened;
        slack.drop();
        const late = slack.mention({ user: slackId('carol'), channel: CH, text: 'how many assets do we have?' });
        await reply(slack, late.ts, 'the answer to a request made during the outage');
        assert(slack.connectionsOpened > opened, 'baton opened a new connection');

        /* 8. refresh_requested: a new connection first, then the old one goes. */
        const before = slack.connectionsOpened;
        slack.disconnect('refresh_requested', { closeAfterMs: 3000 });
        await slack.waitFor(() => slack.connectionsOpened > before, 15000, 'a successor connection');
        const during = slack.mention({ user: slackId('carol'), channel: CH, text: 'how many assets do we have?' });
        await reply(slack, during.ts, 'the answer during a refresh');

        /* 9. A 429 on chat.postMessage is waited out (Retry-After 2 s). */
        slack.rateLimit('chat.postMessage', 1, 2);
        const t0 = Date.now();
        const limited = slack.mention({ user: slackId('dave'), channel: CH, text: 'how many assets do we have?' });
        await reply(slack, limited.ts, 'the answer after a 429');
        assert(slack.rateLimited.length >= 1, 'a 429 was sent');
        assert(Date.now() - t0 >= 2000, `baton waited Retry-After (${Date.now() - t0} ms)`);

        /* 10. A decision made elsewhere (the CLI) shows in Slack. */
        const req2 = slack.mention({ user: slackId('alice'), channel: CH, text: 'restart nginx on localhost' });
        const card2 = await reply(slack, req2.ts, 'a second plan card');
        const aid = actions(blocksOf(slack, card2)).length
            && blocksOf(slack, card2).find((b) => b.type === 'actions').block_id;
        assert(aid, 'the card names its approval');
        baton.cli('approve', aid, '--as', 'carol');
        await slack.waitFor(() => /Done/.test(header(blocksOf(slack, card2))), 30000,
            'the CLI decision shows on the Slack card');

        /* 11. A direct message is answered too. */
        const dm = slack.message({ user: slackId('alice'), channel: 'D0ALICE', channel_type: 'im',
            text: 'how many assets do we have?' });
        await slack.waitFor(() => slack.messages.find((m) => m.channel === 'D0ALICE' && m.thread_ts === dm.ts),
            20000, 'the answer to a DM');

        const metrics = await baton.metrics();
        assert(/baton_chat_connected\{surface="slack"\} 1/.test(metrics), 'metrics say connected');
        for (const m of slack.messages)
            assert(slack.validateBlocks(m.blocks || []).length === 0, `valid blocks in ${m.ts}`);
    } catch (e) {
        if (baton)
            console.log(`--- baton.log ---\n${baton.log()}`);
        throw e;
    } finally {
        if (baton)
            await baton.stop();
        await slack.close();
    }
});
