/*
 * reconnect mid-execution: alice approves a level-1 restart whose step
 * takes a few seconds; the network goes away (the browser goes offline and
 * the socket drops) while it runs. The banner says it is reconnecting; once
 * the network is back the page reconnects by itself, and the replayed
 * state brings the card to completed / 100 % — still one card, not two.
 */
import { test } from 'node:test';
import { scenario, say, cardIn, card, waitCard, progress, stepStates, assert } from './lib.mjs';

test('reconnect: the page comes back by itself and catches up', { timeout: 170000 }, async () => {
    await scenario('reconnect', { steps: { systemctl: 4 } }, async (w) => {
        const alice = await w.open('alice');
        const reply = await say(alice, 'restart nginx on localhost');
        const { card: c, id } = await cardIn(reply);
        await c.locator('[data-testid=approve]').click();
        await waitCard(alice, id, 'exec', 'running');

        /* Record what the banner says, however briefly it shows. */
        await alice.evaluate(() => {
            window.bannerSeen = [];
            const b = document.querySelector('[data-testid=banner]');
            new MutationObserver(() => {
                if (!b.hidden)
                    window.bannerSeen.push(b.textContent);
            }).observe(b, { attributes: true, childList: true, subtree: true, characterData: true });
        });
        /* Offline: new connections fail too, so the page has to retry. */
        await alice.context().setOffline(true);
        await alice.evaluate(() => window.batonConsole.dropConnection());
        await alice.waitForFunction(() => window.bannerSeen.some((t) => /Reconnecting/.test(t)));
        const banner = alice.locator('[data-testid=banner]');
        if (await banner.isVisible()) {
            assert(/Disconnected/.test(await alice.locator('[data-testid=conn]').textContent()),
                'the status says disconnected');
            assert(await alice.locator('[data-testid=send]').isDisabled(), 'Send is off while offline');
            await w.shot(alice, 'offline: reconnecting banner');
        } else {
            console.log('note: the page was back before the banner could be photographed');
        }
        /* Let the step finish while the page is away. */
        await alice.waitForTimeout(4500);

        await alice.context().setOffline(false);
        await banner.waitFor({ state: 'hidden', timeout: 30000 });
        assert(/Connected/.test(await alice.locator('[data-testid=conn]').textContent()),
            'connected again');
        await waitCard(alice, id, 'exec', 'completed', 30000);
        const p = await progress(alice, id);
        assert(p.pct === 100 && p.done === 1, `progress at 100 %: ${JSON.stringify(p)}`);
        assert((await stepStates(alice, id)).join() === 'completed', 'the step completed');
        assert(await alice.locator(`[data-testid="card-${id}"]`).count() === 1,
            'the replay refreshed the card instead of adding a second one');
        assert(await alice.locator('article.card').count() === 1, 'one card on the page');
        await card(alice, id).scrollIntoViewIfNeeded();
        await w.shot(alice, 'back: card completed from the replay');

        /* Still usable after the reconnect. */
        const again = await say(alice, 'how many assets do we have?');
        assert(await again.getAttribute('data-kind') === 'answer', 'asks work again');

        /* A reload (new socket, same tab) replays the card too. */
        await alice.reload();
        await card(alice, id).waitFor({ state: 'visible' });
        await waitCard(alice, id, 'exec', 'completed');
        assert(await alice.locator('article.card').count() === 1, 'one card after a reload');
        await w.shot(alice, 'reloaded: the card comes back from the replay');

        /* Failed WebSocket handshakes while offline are expected. */
        const problems = w.problemsSeen([/WebSocket connection to .* failed/, /ERR_INTERNET_DISCONNECTED/]);
        assert(problems.length === 0, `errors on the page:\n${problems.join('\n')}`);
    });
});
