/*
 * deny: alice asks to restart nginx on localhost; bob denies. Both pages
 * show the card denied and nothing ran; Approve is gone everywhere. The
 * history panel then shows the request and its audit trail.
 */
import { test } from 'node:test';
import { scenario, say, cardIn, card, waitCard, progress, stepStates, assert } from './lib.mjs';

test('deny: an approver stops the plan', { timeout: 170000 }, async () => {
    await scenario('deny', { steps: { systemctl: 1 } }, async (w) => {
        const alice = await w.open('alice');
        const bob = await w.open('bob');
        const reply = await say(alice, 'restart nginx on localhost');
        const { id } = await cardIn(reply);
        const bc = card(bob, id);
        await bc.locator('[data-testid=deny]').waitFor({ state: 'visible' });
        await bc.locator('[data-testid=deny]').click();
        for (const page of [bob, alice])
            await waitCard(page, id, 'state', 'denied');
        for (const page of [bob, alice]) {
            const c = card(page, id);
            assert(await c.locator('[data-testid=approve], [data-testid=deny], [data-testid=cancel]')
                .count() === 0, `${page.baton.user}: no buttons on a denied card`);
            assert(/Denied/.test(await c.locator('[data-testid=card-state]').textContent()),
                `${page.baton.user}: the badge says Denied`);
            const p = await progress(page, id);
            assert(p.done === 0 && p.pct === 0, `${page.baton.user}: nothing ran: ${JSON.stringify(p)}`);
            const states = await stepStates(page, id);
            assert(!states.includes('completed') && !states.includes('running'),
                `${page.baton.user}: no step ran: ${states}`);
        }
        const decisions = await card(alice, id).locator('[data-testid=decisions]').textContent()
            .catch(() => '');
        assert(/bob denied/.test(decisions), `alice sees who denied: ${decisions}`);
        assert(await alice.locator('[data-testid=pending-item]').count() === 0,
            'nothing pending any more');
        await w.shot(alice, 'alice: denied by bob');
        await w.shot(bob, 'bob: denied');

        /* The request's audit trail from the history panel. */
        await alice.locator('[data-testid=history-refresh]').click();
        const item = alice.locator('[data-testid=history-item]').filter({ hasText: 'restart nginx' });
        await item.first().waitFor({ state: 'visible' });
        await item.first().click();
        await alice.locator('[data-testid=audit-panel]').waitFor({ state: 'visible' });
        await alice.locator('[data-testid=audit-entry]').first().waitFor({ state: 'visible' });
        const actions = await alice.locator('[data-testid=audit-entry] .audit-action').allTextContents();
        assert(actions.length >= 2, `the audit trail has entries: ${actions.join(', ')}`);
        await w.shot(alice, 'alice: the audit trail of the denied request');

        const problems = w.problemsSeen();
        assert(problems.length === 0, `errors on the page:\n${problems.join('\n')}`);
    });
});
