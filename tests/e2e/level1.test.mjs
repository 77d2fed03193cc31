/*
 * level 1: alice asks to restart nginx on localhost; the plan card offers
 * her Approve (she may confirm her own level-1 request); she approves and
 * the progress bar reaches 100 % with the step completed. dave (viewer)
 * sees the card without any button.
 */
import { test } from 'node:test';
import {
    scenario, say, cardIn, card, waitCard, waitStep, progress, stepStates, assert
} from './lib.mjs';

test('level 1: the requester confirms, the step runs', { timeout: 170000 }, async () => {
    await scenario('level1', { steps: { systemctl: 2 } }, async (w) => {
        const alice = await w.open('alice');
        const reply = await say(alice, 'restart nginx on localhost');
        const { card: c, id } = await cardIn(reply);
        assert(await c.getAttribute('data-level') === '1', 'a level-1 plan');
        assert(await c.getAttribute('data-state') === 'pending', 'the card is pending');
        const facts = await c.locator('.facts').textContent();
        assert(/Level 1 · confirm/.test(facts), `the card names the level: ${facts}`);
        assert(/localhost/.test(facts), `the card names the target: ${facts}`);
        assert(await c.locator('[data-testid=risk]').textContent() === 'medium risk', 'risk badge');
        assert(await c.locator('[data-testid=countdown]').count() === 1, 'a countdown to expiry');
        assert(await c.locator('[data-testid=approve]').isVisible(), 'alice may confirm her own');
        assert(await c.locator('[data-testid=deny]').isVisible(), 'and deny it');
        assert(await c.locator('[data-testid=cancel]').isVisible(), 'and cancel it');
        const pend = alice.locator('[data-testid=pending-panel] [data-testid=pending-item]');
        assert(await pend.count() === 1, 'the pending panel lists the card');
        await w.shot(alice, 'level-1 plan card with Approve');

        /* dave, a viewer, sees no button on anything: alice's card is not
         * his to see, and his own change request is refused. */
        const dave = await w.open('dave');
        const refused = await say(dave, 'restart nginx on localhost');
        assert(await refused.getAttribute('data-kind') === 'error', 'a viewer\'s change is refused');
        assert(/viewers/.test(await refused.textContent()), 'and says why');
        assert(await dave.locator('article.card').count() === 0, 'no card for a viewer');
        assert(await dave.locator('[data-testid=approve], [data-testid=deny], [data-testid=release], ' +
            '[data-testid=cancel]').count() === 0, 'a viewer sees no decision buttons');
        await w.shot(dave, 'dave (viewer): refused, no buttons');

        await c.locator('[data-testid=approve]').click();
        /* The step takes 2 s: the card shows it running, then completed. */
        await waitStep(alice, id, 1, ['running']);
        assert(await c.locator('[data-testid=approve]').count() === 0, 'no Approve once approved');
        assert(await c.getAttribute('data-exec') === 'running', 'the execution runs');
        await w.shot(alice, 'step running');
        await waitCard(alice, id, 'exec', 'completed');
        const p = await progress(alice, id);
        assert(p.pct === 100 && p.done === 1 && p.total === 1, `progress at 100 %: ${JSON.stringify(p)}`);
        const states = await stepStates(alice, id);
        assert(states.join() === 'completed', `the step completed: ${states}`);
        assert(await alice.locator('[data-testid=running-item]').count() === 0,
            'nothing left in the running panel');
        await card(alice, id).scrollIntoViewIfNeeded();
        await w.shot(alice, 'completed, 100 %');

        const problems = w.problemsSeen();
        assert(problems.length === 0, `errors on the page:\n${problems.join('\n')}`);
    });
});
