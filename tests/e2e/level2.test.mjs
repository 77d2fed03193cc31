/*
 * level 2: alice asks to deploy billing-api 1.2.3 on localhost. Her card
 * has no Approve (never the requester at level 2). carol, already signed
 * in, gets the card live (`card`); bob signs in afterwards and gets it from
 * the replay (`state`). bob approves; every page shows the card approved
 * and the execution running to completed (a deploy is estimated over 30 s,
 * so it goes through the background queue, which `baton serve` runs).
 */
import { test } from 'node:test';
import { scenario, say, cardIn, card, waitCard, progress, stepStates, assert } from './lib.mjs';

test('level 2: another approver reviews the plan', { timeout: 170000 }, async () => {
    await scenario('level2', { steps: { default: 1 } }, async (w) => {
        const carol = await w.open('carol');
        const alice = await w.open('alice');
        const reply = await say(alice, 'deploy billing-api 1.2.3 on localhost');
        const { card: c, id } = await cardIn(reply);
        assert(await c.getAttribute('data-level') === '2', 'a level-2 plan');
        assert(await c.locator('li.step').count() === 4, 'four steps');
        assert(await c.locator('[data-testid=approve]').count() === 0, 'alice may not approve her own');
        assert(await c.locator('[data-testid=cancel]').isVisible(), 'alice may cancel it');
        const hint = await c.locator('.card-actions').textContent();
        assert(/Waiting for 1 approval from bob, carol or erin/.test(hint), `who is awaited: ${hint}`);
        await w.shot(alice, 'alice: level-2 card, no Approve');

        /* carol was signed in already: the card reaches her as it happens. */
        await card(carol, id).waitFor({ state: 'visible' });
        assert(await card(carol, id).locator('[data-testid=approve]').isVisible(),
            'carol may approve');
        assert(await carol.locator('[data-testid=pending-item]').count() === 1,
            'carol\'s pending panel lists it');

        /* bob signs in after the request: the state replay brings it. */
        const bob = await w.open('bob');
        const bc = card(bob, id);
        await bc.waitFor({ state: 'visible' });
        assert(/alice/.test(await bc.locator('.msg-who, .card-request').first().textContent()),
            'bob sees who asked');
        await bob.locator('[data-testid=pending-item]').first().click();
        await w.shot(bob, 'bob: the replayed card with Approve');

        await bc.locator('[data-testid=approve]').click();
        for (const page of [bob, alice, carol])
            await waitCard(page, id, 'state', 'approved');
        assert(await card(carol, id).locator('[data-testid=approve]').count() === 0,
            'carol\'s buttons are gone once bob approved');
        await waitCard(alice, id, 'exec', ['queued', 'running', 'completed']);
        await w.shot(alice, 'alice: approved by bob, executing');

        for (const page of [alice, bob, carol])
            await waitCard(page, id, 'exec', 'completed', 60000);
        for (const page of [alice, bob]) {
            const p = await progress(page, id);
            assert(p.pct === 100 && p.done === 4 && p.total === 4,
                `${page.baton.user}: progress at 100 %: ${JSON.stringify(p)}`);
            const states = await stepStates(page, id);
            assert(states.every((s) => s === 'completed'), `${page.baton.user}: steps ${states}`);
        }
        const approvals = await card(alice, id).locator('[data-testid=approvals]').textContent();
        assert(/1 of 1/.test(approvals) && /bob/.test(approvals), `approved by bob: ${approvals}`);
        await w.shot(alice, 'alice: completed');
        await w.shot(bob, 'bob: completed');

        const problems = w.problemsSeen();
        assert(problems.length === 0, `errors on the page:\n${problems.join('\n')}`);
    });
});
