import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { flushPromises, type VueWrapper } from '@vue/test-utils'
import { stubFetch } from './helpers'
import { conversation } from './fixtures'
import { mountAt } from './mountAt'

let wrapper: VueWrapper | null = null
beforeEach(() => sessionStorage.clear())
afterEach(() => {
  wrapper?.unmount()
  wrapper = null
})

/** An IntersectionObserver the test can fire by hand. */
class FakeObserver {
  static last: FakeObserver | null = null
  targets: Element[] = []
  constructor(private readonly callback: IntersectionObserverCallback) {
    FakeObserver.last = this
  }
  observe(target: Element) {
    this.targets.push(target)
  }
  unobserve() {}
  disconnect() {}
  show(visible: boolean) {
    const entries = this.targets.map((target) => ({ target, isIntersecting: visible }))
    this.callback(entries as unknown as IntersectionObserverEntry[], this as unknown as IntersectionObserver)
  }
}

const firstPage = {
  items: [
    conversation({ id: 2, platform: 'slack', key: 'C01/1700000000.1', messages: 6, last_text: 'x'.repeat(400) }),
    conversation({ id: 1, platform: 'telegram', key: '-100200300', messages: 1, last_text: null }),
  ],
  next_cursor: 31,
}
const secondPage = { items: [conversation({ id: 0, platform: 'webhook', key: 'ticket-42' })], next_cursor: null }

describe('the conversations page', () => {
  it('lists conversations with platform, key, count and the last text cut short', async () => {
    stubFetch(() => ({ body: { ...firstPage, next_cursor: null } }))
    ;({ wrapper } = await mountAt('/conversations'))
    expect(wrapper.find('h1').text()).toBe('Conversations')
    const items = wrapper.findAll('[data-testid="conversation-item"]')
    expect(items).toHaveLength(2)
    expect(items[0].text()).toContain('Slack')
    expect(items[0].text()).toContain('C01/1700000000.1')
    expect(items[0].text()).toContain('6 messages')
    expect(items[0].find('.conversation-text').text().length).toBeLessThanOrEqual(160)
    expect(items[0].find('a').attributes('href')).toBe('/admin/conversations/2')
    expect(items[1].text()).toContain('1 message')
  })

  it('restores the search and platform from the URL, and asks the API with them', async () => {
    const calls = stubFetch(() => ({ body: { items: [], next_cursor: null } }))
    ;({ wrapper } = await mountAt('/conversations?q=refund&platform=telegram'))
    expect((wrapper.find('input[type="search"]').element as HTMLInputElement).value).toBe('refund')
    expect((wrapper.find('select').element as HTMLSelectElement).value).toBe('telegram')
    expect(calls[0].query.get('q')).toBe('refund')
    expect(calls[0].query.get('platform')).toBe('telegram')
    expect(wrapper.text()).toContain('No conversation matches these filters.')
  })

  it('changing the platform filter reloads the list and updates the URL', async () => {
    const calls = stubFetch(() => ({ body: { items: [], next_cursor: null } }))
    let router
    ;({ wrapper, router } = await mountAt('/conversations'))
    await wrapper.find('select').setValue('webhook')
    await flushPromises()
    expect(router.currentRoute.value.query).toEqual({ platform: 'webhook' })
    expect(calls.at(-1)!.query.get('platform')).toBe('webhook')
  })

  it('loads the next page when the end of the list scrolls into view', async () => {
    vi.stubGlobal('IntersectionObserver', FakeObserver)
    const calls = stubFetch((call) => ({ body: call.query.get('cursor') === '31' ? secondPage : firstPage }))
    ;({ wrapper } = await mountAt('/conversations'))
    expect(wrapper.findAll('[data-testid="conversation-item"]')).toHaveLength(2)

    FakeObserver.last!.show(true)
    await flushPromises()

    expect(calls).toHaveLength(2)
    expect(calls[1].query.get('cursor')).toBe('31')
    expect(wrapper.findAll('[data-testid="conversation-item"]')).toHaveLength(3)
    expect(wrapper.text()).toContain('3 conversations, all shown')
  })

  it('also has a Load more button', async () => {
    const calls = stubFetch((call) => ({ body: call.query.get('cursor') === '31' ? secondPage : firstPage }))
    ;({ wrapper } = await mountAt('/conversations'))
    const more = wrapper.findAll('button').find((b) => b.text() === 'Load more')!
    await more.trigger('click')
    await flushPromises()
    expect(calls[1].query.get('cursor')).toBe('31')
    expect(wrapper.findAll('[data-testid="conversation-item"]')).toHaveLength(3)
  })
})
