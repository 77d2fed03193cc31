/*
 * level 3: alice asks to delete the orders database on localhost. bob and
 * carol approve (two distinct approvers); the card turns to releasing and
 * "Release step 1" appears for the approvers, never for alice. bob
 * releases step 1, which runs; then carol releases step 2; the execution
 * completes.
 */
import { test } from 'node:test';
import {
    scenario, say, cardIn, card, waitCard, waitStep, progress, stepStates, assert
} from './lib.mjs';

async function releaseButton(page, id, step) {
    const b = card(page, id).locator('[data-testid=release]');
    await b.waitFor({ state: 'visible' });
    const text = await b.textContent();
    assert(text === `Release step ${step}`, `${page.baton.user}: the button says "${text}"`);
    return b;
}

test('level 3: two approvers, then every step released', { timeout: 170000 }, async () => {
    await scenario('level3', { steps: { default: 1 } }, async (w) => {
        const alice = await w.open('alice');
        const bob = await w.open('bob');
        const carol = await w.open('carol');
        const reply = await say(alice, 'delete the orders database on localhost');
        const { card: c, id } = await cardIn(reply);
        assert(await c.getAttribute('data-level') === '3', 'a level-3 plan');
        assert(await c.locator('[data-testid=risk]').textContent() === 'critical risk', 'critical');
        const facts = await c.locator('.facts').textContent();
        assert(/step by step/.test(facts) && /0 of 2/.test(facts), `level 3, 0 of 2: ${facts}`);
        assert(await c.locator('[data-testid=approve]').count() === 0, 'alice may not approve');

        await card(bob, id).locator('[data-testid=approve]').click();
        await carol.waitForFunction((sel) => /1 of 2/.test(document.querySelector(sel)?.textContent),
            `[data-testid="card-${id}"] [data-testid=approvals]`);
        assert(await card(bob, id).locator('[data-testid=approve]').count() === 0,
            'bob decided: his Approve is gone');
        await card(carol, id).scrollIntoViewIfNeeded();
        await w.shot(carol, 'carol: 1 of 2 approvals, her turn');
        await card(carol, id).locator('[data-testid=approve]').click();

        for (const page of [alice, bob, carol])
            await waitCard(page, id, 'state', 'releasing');
        await releaseButton(carol, id, 1);
        const rel = await releaseButton(bob, id, 1);
        assert(await card(alice, id).locator('[data-testid=release]').count() === 0,
            'alice may not release a step');
        await w.shot(bob, 'bob: Release step 1');

        await rel.click();
        await waitStep(bob, id, 1, ['running', 'completed'], 60000);
        await w.shot(bob, 'bob: step 1 released and running');
        await waitStep(alice, id, 1, ['completed'], 60000);
        assert(await stepStates(alice, id).then((s) => s[1]) === 'pending', 'step 2 waits');
        const rel2 = await releaseButton(carol, id, 2);
        await card(carol, id).scrollIntoViewIfNeeded();
        await w.shot(carol, 'carol: step 1 done, Release step 2');
        await rel2.click();

        for (const page of [alice, bob, carol])
            await waitCard(page, id, 'exec', 'completed', 60000);
        await waitCard(alice, id, 'state', 'approved');
        const p = await progress(alice, id);
        assert(p.pct === 100 && p.done === 2 && p.total === 2, `progress: ${JSON.stringify(p)}`);
        const states = await stepStates(carol, id);
        assert(states.join() === 'completed,completed', `steps: ${states}`);
        assert(await carol.locator('[data-testid=release]').count() === 0, 'nothing left to release');
        await card(alice, id).scrollIntoViewIfNeeded();
        await w.shot(alice, 'alice: completed step by step');

        const problems = w.problemsSeen();
        assert(problems.length === 0, `errors on the page:\n${problems.join('\n')}`);
    });
});
